"""The study's settings: Gaussian blobs (Table 3.1), MNIST low and high budget
(Section 3.4), each with random, coreset and ensembles over 3 seeds.

    python -m launch.sweep --grid=launch/grids/study.py --root=$SCRATCH/study \
        --executor=slurm --slurm_partition=gpu --slurm_gpus_per_node=1
    python -m launch.sweep --grid=launch/grids/study.py:smoke --root=/tmp/study_smoke

`:smoke` passes each config's smoke arg. Settings whose config file does not
exist yet are left out, so later settings (CIFAR-10, ImageNet, retinopathy...)
only need a line in SETTINGS and their config in configs/.
MNIST reads its data from $JAL_DATA_DIR (exported to the jobs).
"""

from jal import config_lib
from launch import grid

STRATEGIES = ('random', 'coreset', 'ensembles')
SEEDS = (0, 1, 2)

# (config file, its arg without 'smoke'), in report order.
SETTINGS = (
    ('configs/gaussian.py', None),
    ('configs/mnist.py', 'low'),
    ('configs/mnist.py', 'high'),
    # Later settings go here, e.g. ('configs/cifar10_2class.py', None),
    # ('configs/cifar100.py', None), ('configs/imbalance.py', None): an entry
    # whose config file does not exist is left out of the grid.
)


def _exists(path):
  try:
    grid.resolve_file(path, 'config')
    return True
  except grid.GridError:
    return False


def get_grid(arg=None):
  args = config_lib.parse_arg(arg)
  unknown = args - {'smoke'}
  if unknown:
    raise grid.GridError(f'study grid: unknown arg(s) {sorted(unknown)}; valid: smoke')
  smoke = 'smoke' in args
  specs = []
  for config, setting_arg in SETTINGS:
    if not _exists(config):
      continue
    parts = [a for a in (setting_arg, 'smoke' if smoke else None) if a]
    specs.append(grid.spec(config, ','.join(parts) or None, strategies=STRATEGIES,
                           seeds=None if smoke else SEEDS))
  return specs
