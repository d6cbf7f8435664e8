r"""MNIST with LeNet: the study's Section 3.4, Figure 3.2 and Table 3.2.

The 60,000 training images are the pool; the 10,000 test images the test
set. Warmup size equals the query size, as in the study.

    python -m jal.main --config=configs/mnist.py:low --workdir=/tmp/mnist_low
    python -m jal.main --config=configs/mnist.py:high --workdir=/tmp/mnist_high

`:low` queries 10 labels per round (0.2% in the study's wording), `:high`
600 (1%). Data: the four idx files or mnist.npz in --config.data_dir or
$JAL_DATA_DIR (tensorflow-datasets is the fallback). `:smoke` shrinks it to a
seconds-long run on 2,000 pool images.

Runtime of the whole setting (3 strategies x 3 seeds x 11 rounds): on an
NVIDIA H200 in results/mnist_low and results/mnist_high (timings.jsonl), on
the 2-core CPU in results/mnist_low_cpu (COMMAND.md gives the wall time).
"""

from jal import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(
      arg, valid=('low', 'high', 'smoke'), one_of=('low', 'high'), where=__file__
  )
  c = config_lib.base_config()
  high = 'high' in args
  c.name = 'mnist_high' if high else 'mnist_low'
  c.data = dict(name='mnist')
  c.query_size = 600 if high else 10
  c.warmup_size = c.query_size
  c.num_rounds = 10
  return config_lib.lenet_mnist_config(c, args)
