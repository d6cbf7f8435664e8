r"""CIFAR-10 horse vs automobile with ResNet-18: the study's Figure 3.3 and
the CIFAR-10 2-class rows of Table 3.2.

The 10,000 training images of the two classes are the pool, their 2,000 test
images the test set. Query (= warmup) 10 (`:low`) or 500 (`:high`), 10
selections, random vs coreset vs ensembles over 3 seeds.

    python -m jal.main --config=configs/cifar10_2class.py:low --workdir=W
    python -m jal.main --config=configs/cifar10_2class.py:high --workdir=W

Data: `cifar-10-batches-py/` or `cifar-10-python.tar.gz` in --config.data_dir
or $JAL_DATA_DIR. Runtime: `:smoke` takes seconds on a CPU; the full runs are
meant for a GPU (`python -m launch.accelerator` runs them in resumable
chunks): a CPU trains ResNet-18 at tens of images per second
(results/bench_cpu/vs_torch.jsonl).
"""

from jal import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(
      arg, valid=('low', 'high', 'smoke'), one_of=('low', 'high'), where=__file__
  )
  c = config_lib.base_config()
  high = 'high' in args
  c.name = 'cifar10_2class_high' if high else 'cifar10_2class_low'
  c.data = dict(name='cifar10', classes=(7, 1))  # horse, automobile
  c.query_size = 500 if high else 10
  c.warmup_size = c.query_size
  c.num_rounds = 10
  return config_lib.resnet_cifar_config(c, args)
