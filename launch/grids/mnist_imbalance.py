"""Imbalanced MNIST (configs/mnist_imbalance.py) for three minority digits.

    python -m launch.sweep --grid=launch/grids/mnist_imbalance.py --root=R
    python -m launch.sweep --grid=launch/grids/mnist_imbalance.py:smoke --root=/tmp/mi_smoke

Digits 1, 5 and 8 (fixed before any run), each with random, coreset,
ensembles and balanced_uncertainty over seeds 0-9: 120 runs, one workdir
each. `:smoke` passes the config's smoke arg (2,000 pool images, 2 rounds,
seed 0: 12 runs of seconds each).
"""

from launch import grid

DIGITS = (1, 5, 8)
STRATEGIES = ('random', 'coreset', 'ensembles', 'balanced_uncertainty')
SEEDS = tuple(range(10))


def get_grid(arg=None):
  smoke = grid.smoke_only(arg, 'mnist_imbalance')
  return [
      grid.spec(
          'configs/mnist_imbalance.py',
          f'digit{d}' + (',smoke' if smoke else ''),
          strategies=STRATEGIES,
          seeds=None if smoke else SEEDS,
      )
      for d in DIGITS
  ]
