"""The study's Table 3.1: 2-D Gaussian blobs, 3 strategies x 3 seeds.

    python -m launch.sweep --grid=launch/grids/gaussian.py --root=/tmp/sweep_gauss
    python -m launch.sweep --grid=launch/grids/gaussian.py:smoke --root=/tmp/sweep_smoke

9 runs (random, coreset, ensembles x seeds 0, 1, 2), one workdir each.
`:smoke` passes the config's own smoke arg (a smaller pool and ensemble, 2
rounds, seeds 0 and 1: 6 runs of a few seconds each).
"""

from launch import grid


def get_grid(arg=None):
  smoke = grid.smoke_only(arg, 'gaussian')
  return [
      grid.spec(
          'configs/gaussian.py',
          'smoke' if smoke else None,
          strategies=('random', 'coreset', 'ensembles'),
          seeds=None if smoke else (0, 1, 2),
      )
  ]
