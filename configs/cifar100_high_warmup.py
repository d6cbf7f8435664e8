r"""CIFAR-100 with a 15,000-image warmup: the study's Section 4.3.2, Figure
4.3 and the "High warmup" rows of Table 4.1.

Same-dataset "pretraining": the first 30% of the labels are random, then
queries of 50 (`:low`) or 500 (`:high`), 10 selections.

    python -m jal.main --config=configs/cifar100_high_warmup.py:low --workdir=W

Runtime: `:smoke` 14-41 s on the 2-core CPU (measured in test runs); the full runs are meant for a GPU.
"""

from jal import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(
      arg, valid=('low', 'high', 'smoke'), one_of=('low', 'high'), where=__file__
  )
  c = config_lib.base_config()
  high = 'high' in args
  c.name = 'cifar100_high_warmup_high' if high else 'cifar100_high_warmup_low'
  c.data = dict(name='cifar100')
  c.query_size = 500 if high else 50
  c.warmup_size = 15000
  c.num_rounds = 10
  c = config_lib.resnet_cifar_config(c, args)
  if 'smoke' in args:
    c.warmup_size = 100
  return c
