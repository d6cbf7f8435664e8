r"""Imbalanced CIFAR-10, car vs rest at 1:19: the study's Section 4.4.1,
Figures 4.4 and 4.5 and the CIFAR-10 rows of Table 4.2.

automobile (1) and truck (9) are the positive (minority) class, the other
eight classes negative; the positives of the training pool are downsampled,
deterministically per seed, so they make up 5% of it (40,000 negatives, 2,105
positives). The test set keeps its natural 1:4 ratio. The metric is the
average precision of the minority class; `minority_fraction_queried` records
the share of positives among each round's queries. Query (= warmup) 50, 10
selections. `:pretrained` starts from ImageNet weights
(`--config.model.pretrained_path=...`).

    python -m jal.main --config=configs/imbalance.py --workdir=W
    python -m jal.main --config=configs/imbalance.py:pretrained --workdir=W \
        --config.model.pretrained_path=/weights/resnet18.safetensors

`:cpu` is the same task at a 2-core CPU's scale (setting `imbalance_cpu`):
the study's data, split, 1:19 ratio, query and warmup 50, 10 selections,
5-member ensembles and minority AP, with random, coreset and ensembles over
seeds 0-4. It departs from the study's ResNet-18 protocol in the model and
its training only, and every number it produces carries that caveat:
  - model: LeNet (configs/mnist.py's, on 32x32x3 inputs) instead of a
    ResNet-18 with the CIFAR stem;
  - training: Adam at 1e-3, constant rate, no weight decay, batch 64, 20
    epochs and at least 300 steps per round (the MNIST recipe) instead of
    SGD with Nesterov momentum 0.9, lr 0.05 with cosine decay, weight decay
    5e-4, batch 128, 50 epochs and at least 500 steps; random crop + flip
    as in the study;
  - Coreset's embeddings are LeNet's last hidden layer (84 units), not
    ResNet-18's 512.
It cannot be combined with `:pretrained`.

    python -m jal.main --config=configs/imbalance.py:cpu --workdir=W

Build another imbalanced task with --config.data.positive_classes,
--config.data.minority_fraction and --config.data.imbalanced_split.

Runtime: on an NVIDIA H200 (bfloat16), results/imbalance_h200_subset times
rounds on a CIFAR-10 subset; on the 2-core CPU, results/imbalance_resnet18_cpu_round0
times round 0 on the full pool (hours per round: a fit saves its progress
every `fit_checkpoint_seconds`, so such a run can be stopped and resumed at
any time and ends with the results of an uninterrupted one), and
results/imbalance_cpu holds `:cpu`'s runs with their timings.
"""

from jal import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(
      arg,
      valid=('pretrained', 'cpu', 'smoke'),
      where=__file__,
      one_of=('pretrained', 'cpu'),
      one_of_default=False,
  )
  c = config_lib.base_config()
  c.name = 'imbalance'
  c.data = dict(
      name='cifar10', positive_classes=(1, 9), minority_fraction=0.05, imbalanced_split='train'
  )
  c.query_size = 50
  c.warmup_size = 50
  c.num_rounds = 10
  c = config_lib.resnet_cifar_config(c, args - {'cpu'})
  if 'cpu' in args:
    _cpu_scale(c, smoke='smoke' in args)
  return c


def _cpu_scale(c, smoke: bool):
  """The study's task and protocol with a model and budget a 2-core CPU runs
  (see the module docstring for each departure)."""
  c.name = 'imbalance_cpu' + ('_smoke' if smoke else '')
  c.model.name = 'lenet'
  c.model.stem = None
  c.model.width = None
  c.strategies = ('random', 'coreset', 'ensembles')
  c.seeds = (0,) if smoke else (0, 1, 2, 3, 4)
  c.train.optimizer = 'adam'
  c.train.learning_rate = 1e-3
  c.train.momentum = 0.9  # base_config's value; Adam does not read it
  c.train.weight_decay = 0.0
  c.train.schedule = 'constant'
  if not smoke:
    c.train.batch_size = 64
    c.train.epochs = 20
    c.train.min_steps = 300
