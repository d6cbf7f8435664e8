r"""Imbalanced MNIST: one digit against the other nine at 1:19, with LeNet.

It departs from the study's Table 4.2 setting in data and model: an MNIST
digit against the other nine instead of CIFAR-10 automobile + truck against
the rest, and LeNet with the MNIST recipe instead of ResNet-18 with SGD.

The study's imbalance experiment (Section 4.4.1, Table 4.2, Figures 4.4 and
4.5) on data that exists on every machine: the study's task shape (a binary
minority-vs-rest task, the minority downsampled to 5% of the training pool,
the test set left at its natural ratio, minority average precision as the
metric, `minority_fraction_queried` per round) with MNIST digits and the
MNIST setting's LeNet recipe (configs/mnist.py) in place of CIFAR-10
car-vs-rest and ResNet-18.

    python -m jal.main --config=configs/mnist_imbalance.py:digit5 --workdir=W
    python -m launch.sweep --grid=launch/grids/mnist_imbalance.py --root=R

`:digitD` makes digit D (0-9) the positive (minority) class; `digit0` if none
is given. The minority digit's training images are downsampled,
deterministically per seed, to 5% of the pool (digit 5: 54,579 negatives and
2,873 positives); the 10,000 test images keep MNIST's natural ratio (892 of
them are 5s). Strategies: random, coreset, ensembles and the imbalance-aware
balanced_uncertainty.

Query and warmup size 50, 10 rounds (550 labels, about 1% of the pool), as in
the study's imbalanced CIFAR-10 setting, so the two are compared at the same
ratio and label counts: at 1:19 a random warmup of 50 holds 2.5 positives on
average and none with probability 0.95^50 = 7.7%, so most runs start with a
few positives and the strategies differ in how fast they find more. A query
of 10 (configs/mnist.py:low) would leave 36% of warmups at 20 labels without
a positive, and the metric would measure the warmup draw more than the
strategy. The training recipe is configs/mnist.py's (5 members, Adam 1e-3,
batch 64, 20 epochs, at least 300 steps).

`:smoke` shrinks it to a seconds-long run on 2,000 pool images.
"""

from jal import config_lib

DIGITS = tuple(f'digit{d}' for d in range(10))


def get_config(arg=None):
  args = config_lib.parse_arg(arg, valid=DIGITS + ('smoke',), one_of=DIGITS, where=__file__)
  digit = int(next((a for a in args if a in DIGITS), DIGITS[0])[len('digit') :])
  c = config_lib.base_config()
  c.name = f'mnist_imbalance_digit{digit}'
  c.data = dict(
      name='mnist', positive_classes=(digit,), minority_fraction=0.05, imbalanced_split='train'
  )
  c.strategies = ('random', 'coreset', 'ensembles', 'balanced_uncertainty')
  c.query_size = 50
  c.warmup_size = 50
  c.num_rounds = 10
  return config_lib.lenet_mnist_config(c, args)
