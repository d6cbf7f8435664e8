"""ResNet-18 in Flax linen, laid out to mirror torchvision's `resnet18`.

The parameter tree maps one-to-one onto torchvision's state dict (see
`jal.pretrained`):

  conv1, bn1                                  <-> conv1, bn1
  layer{i}_{j}/{conv1,bn1,conv2,bn2}          <-> layer{i}.{j}.{conv1,...}
  layer{i}_0/downsample_conv, downsample_bn   <-> layer{i}.0.downsample.{0,1}
  fc                                          <-> fc

Paddings are explicit so that convolutions and max-pooling reproduce
torchvision numerically (SAME padding would pad stride-2 convs asymmetrically).

Two stems:
  'cifar':    3x3 conv stride 1, BN, ReLU, no max-pool (32x32 inputs).
  'imagenet': 7x7 conv stride 2 pad 3, BN, ReLU, 3x3 max-pool stride 2 pad 1.

Every jal model returns `(logits, embedding)`; here the embedding is the
512-d globally average-pooled output of layer4. Optional dropout (`dropout`
> 0) acts on it before the head, with the modes of `jal.models`. The
post-stem activation is also sown into the 'intermediates' collection under
the name 'stem'.
"""

import functools
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jal import member_conv as member_conv_lib

STEMS = ('cifar', 'imagenet')
STAGE_SIZES = (2, 2, 2, 2)
STAGE_WIDTHS = (64, 128, 256, 512)

# BN hyper-parameters matching torchvision (its momentum=0.1 is flax's 0.9).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision initialises convs with kaiming_normal_(mode='fan_out', relu).
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Explicit symmetric padding `k // 2` on both spatial dims (torch style)."""
  p = k // 2
  return ((p, p), (p, p))


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: two 3x3 convs plus an identity/1x1 shortcut.

  Attributes:
    features: output channels.
    strides: stride of the first 3x3 conv (and of the shortcut conv).
    downsample: whether the shortcut is 1x1 conv (stride `strides`) + BN.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    member_conv: how vmapped members' convolutions run (`jal.member_conv`).
  """

  features: int
  strides: int = 1
  downsample: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  member_conv: str = 'grouped'

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """x: [b, h, w, c] -> [b, h / strides, w / strides, features]."""
    conv = functools.partial(
        nn.Conv,
        use_bias=False,
        kernel_init=conv_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        conv_general_dilated=member_conv_lib.conv_general_dilated(self.member_conv),
    )
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
    )
    s = (self.strides, self.strides)

    y = conv(self.features, (3, 3), s, padding=_pad(3), name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv(self.features, (3, 3), padding=_pad(3), name='conv2')(y)
    y = norm(name='bn2')(y)

    shortcut = x
    if self.downsample:
      shortcut = conv(self.features, (1, 1), s, padding=((0, 0), (0, 0)), name='downsample_conv')(x)
      shortcut = norm(name='downsample_bn')(shortcut)
    return nn.relu(y + shortcut)


class ResNet18(nn.Module):
  """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a CIFAR or ImageNet stem.

  Attributes:
    num_classes: number of logits.
    stem: 'cifar' (3x3/1 conv, no pool) or 'imagenet' (7x7/2 conv + max-pool).
    dtype: compute dtype (e.g. jnp.bfloat16 on GPUs); outputs are float32.
    param_dtype: parameter dtype.
    width: channels of the first stage (64 is ResNet-18; pretrained weights
      need 64); stages have width * (1, 2, 4, 8), the embedding width * 8.
    dropout: dropout rate on the embedding before `fc`; 0 builds no layer.
    member_conv: how the convolutions of vmapped members run: 'grouped'
      (XLA's vmap), 'wgrad_in_turn' or 'in_turn' (see `jal.member_conv`).
  """

  # Ensembles train faster one member after another than vmapped on GPUs:
  # train.resolve_plan reads this for members 'auto' (see train.Plan).
  members_in_turn_on_accelerators: ClassVar[bool] = True

  num_classes: int
  stem: str = 'cifar'
  width: int = 64
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  dropout: float = 0.0
  member_conv: str = 'grouped'

  @nn.compact
  def __call__(
      self, x: jnp.ndarray, train: bool = False, mc: bool = False
  ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Forward pass.

    Args:
      x: f32[b, h, w, c], already normalised.
      train: use batch statistics (and update `batch_stats`) and per-example
        dropout if True.
      mc: Monte Carlo dropout: BatchNorm running averages, one dropout mask
        shared by the batch (see `jal.models`).

    Returns:
      logits: f32[b, num_classes].
      embedding: f32[b, 8 * width], the globally pooled penultimate features.
    """
    if self.stem not in STEMS:
      raise ValueError(f'ResNet18: unknown stem {self.stem!r}, expected one of {STEMS}')
    x = jnp.asarray(x, self.dtype)
    if self.stem == 'cifar':
      k, s = 3, 1
    else:
      k, s = 7, 2
    widths = tuple(self.width * w // STAGE_WIDTHS[0] for w in STAGE_WIDTHS)
    x = nn.Conv(
        widths[0],
        (k, k),
        (s, s),
        padding=_pad(k),
        use_bias=False,
        kernel_init=conv_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='conv1',
        conv_general_dilated=member_conv_lib.conv_general_dilated(self.member_conv),
    )(x)
    x = nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='bn1',
    )(x)
    x = nn.relu(x)
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    self.sow('intermediates', 'stem', x)

    for i, (n_blocks, width) in enumerate(zip(STAGE_SIZES, widths)):
      for j in range(n_blocks):
        first = i > 0 and j == 0
        x = BasicBlock(
            width,
            strides=2 if first else 1,
            downsample=first,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            member_conv=self.member_conv,
            name=f'layer{i + 1}_{j}',
        )(x, train=train)

    embedding = jnp.mean(x, axis=(1, 2))
    head_in = embedding
    if self.dropout:
      head_in = nn.Dropout(
          self.dropout, broadcast_dims=(0,) if mc else (), deterministic=not (train or mc)
      )(embedding)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='fc')(
        head_in
    )
    return logits.astype(jnp.float32), embedding.astype(jnp.float32)
