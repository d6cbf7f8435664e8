r"""CIFAR-100 with ResNet-18: the study's Section 4.2, Figure 4.1 and the
"Vanilla" rows of Table 4.1; with `:pretrained`, Section 4.3.1, Figure 4.2
and the "ImageNet pretrained" rows of Table 4.1.

Query (= warmup) 50 (`:low`, 0.1%) or 2,500 (`:high`, 5%), 10 selections.
`:pretrained` starts every ensemble member from the same torchvision
ResNet-18 weights (ImageNet stem, learning rate 0.01); each gets its own
freshly initialised 100-way head.

    python -m jal.main --config=configs/cifar100.py:low --workdir=W
    python -m jal.main --config=configs/cifar100.py:high --workdir=W
    python -m jal.main --config=configs/cifar100.py:low,pretrained --workdir=W \
        --config.model.pretrained_path=/weights/resnet18-f37072fd.pth

The weights are never downloaded: give a torchvision state dict (.pth needs
torch installed; .npz or .safetensors do not).

Data: `cifar-100-python/` or `cifar-100-python.tar.gz` in the data dir.
Runtime: `:smoke` 23-48 s on the 2-core CPU (measured in test runs on a tiny
made-up CIFAR-100, with other jobs on the machine), `:pretrained,smoke` 57-69 s
(with weights the test makes); the full runs are meant for a GPU.
"""

from jal import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(
      arg, valid=('low', 'high', 'pretrained', 'smoke'), one_of=('low', 'high'), where=__file__
  )
  c = config_lib.base_config()
  high = 'high' in args
  c.name = 'cifar100_high' if high else 'cifar100_low'
  c.data = dict(name='cifar100')
  c.query_size = 2500 if high else 50
  c.warmup_size = c.query_size
  c.num_rounds = 10
  return config_lib.resnet_cifar_config(c, args)
