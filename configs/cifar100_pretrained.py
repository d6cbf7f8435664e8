r"""CIFAR-100 from ImageNet-pretrained ResNet-18: the study's Section 4.3.1,
Figure 4.2 and the "ImageNet pretrained" rows of Table 4.1.

Every ensemble member starts from the same torchvision ResNet-18 weights
(ImageNet stem); each gets its own freshly initialised 100-way head.

    python -m jal.main --config=configs/cifar100_pretrained.py:low --workdir=W \
        --config.model.pretrained_path=/weights/resnet18-f37072fd.pth

The weights are never downloaded: give a torchvision state dict (.pth needs
torch installed; .npz or .safetensors do not). Query 50 (`:low`) or 2,500
(`:high`). Runtime: `:smoke` 57-69 s on the 2-core CPU with
weights the test makes (measured in test runs, with other jobs running); the full runs are meant for a GPU.
"""

from jal import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, valid=('low', 'high', 'smoke'), one_of=('low', 'high'),
                              where=__file__) | {'pretrained'}
  c = config_lib.base_config()
  high = 'high' in args
  c.name = 'cifar100_high' if high else 'cifar100_low'
  c.data = dict(name='cifar100')
  c.query_size = 2500 if high else 50
  c.warmup_size = c.query_size
  c.num_rounds = 10
  return config_lib.resnet_cifar_config(c, args)
