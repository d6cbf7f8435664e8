"""The study's settings that need no pretrained weights: Gaussian blobs (Table
3.1), MNIST and CIFAR-10 2-class at low and high budget (Table 3.2), CIFAR-100
vanilla and high-warmup (Table 4.1) and imbalanced CIFAR-10 (Table 4.2), each
with random, coreset and ensembles over 3 seeds.

    python -m launch.sweep --grid=launch/grids/study.py --root=$SCRATCH/study \
        --executor=slurm --slurm_partition=gpu --slurm_gpus_per_node=1
    python -m launch.sweep --grid=launch/grids/study.py:smoke --root=/tmp/study_smoke

`:smoke` passes each config's smoke arg. Settings whose config file does not
exist are left out. Data is read from $JAL_DATA_DIR (exported to the jobs).
"""

from launch import grid

STRATEGIES = ('random', 'coreset', 'ensembles')
SEEDS = (0, 1, 2)

# (config file, its arg without 'smoke'), in report order.
SETTINGS = (
    ('configs/gaussian.py', None),
    ('configs/mnist.py', 'low'),
    ('configs/mnist.py', 'high'),
    ('configs/cifar10_2class.py', 'low'),
    ('configs/cifar10_2class.py', 'high'),
    ('configs/cifar100.py', 'low'),
    ('configs/cifar100.py', 'high'),
    ('configs/cifar100_high_warmup.py', 'low'),
    ('configs/cifar100_high_warmup.py', 'high'),
    ('configs/imbalance.py', None),
    # The pretrained settings (cifar100:pretrained, imbalance:pretrained,
    # retinopathy) need --config.model.pretrained_path, which no grid can
    # know: sweep them with a grid of your own that sets it in `overrides`.
)


def _exists(path):
  try:
    grid.resolve_file(path, 'config')
    return True
  except grid.GridError:
    return False


def get_grid(arg=None):
  smoke = grid.smoke_only(arg, 'study')
  specs = []
  for config, setting_arg in SETTINGS:
    if not _exists(config):
      continue
    parts = [a for a in (setting_arg, 'smoke' if smoke else None) if a]
    specs.append(
        grid.spec(
            config, ','.join(parts) or None, strategies=STRATEGIES, seeds=None if smoke else SEEDS
        )
    )
  return specs
