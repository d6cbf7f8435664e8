"""Classifiers, chosen by name. Each returns `(logits, embedding)`.

Every model is a `flax.linen` module used through `init`/`apply`, so its
variables are a plain pytree and `jax.vmap(model.init)(keys, x)` builds an
ensemble. `__call__(x, train, mc)` takes normalised inputs `f32[b, ...]` and
returns `logits: f32[b, num_classes]` and the penultimate representation
`embedding: f32[b, d]` (what Coreset measures distances on).

Dropout (`dropout` > 0, off by default) has three modes:

  train=False, mc=False   evaluation: no dropout, BatchNorm running averages.
  train=True              training: a fresh mask per example ('dropout' rng),
                          BatchNorm batch statistics.
  mc=True                 Monte Carlo dropout (Gal & Ghahramani, ICML 2016):
                          BatchNorm running averages, and one mask per call
                          shared by every example of the batch, so that a
                          call with a given 'dropout' rng is one sampled
                          network applied consistently to all points (what
                          BatchBALD's joint over points assumes).

With `dropout=0` no Dropout layer is built: parameters, outputs and the rngs
a model asks for are those of a model without the option.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jal import member_conv as member_conv_lib


def _dropout(x, rate: float, train: bool, mc: bool):
  """Dropout at `rate` in training or MC mode; identity otherwise or at rate 0.

  In MC mode the mask is broadcast over the batch axis (one sampled network
  per call). Must be called from a compact method.
  """
  if not rate:
    return x
  return nn.Dropout(rate, broadcast_dims=(0,) if mc else (), deterministic=not (train or mc))(x)


class MLP(nn.Module):
  """ReLU multilayer perceptron; the study's toy model (Section 3.3).

  Dropout, if any, follows each hidden activation; the embedding is the last
  hidden activation before it.
  """

  num_classes: int
  hidden: Sequence[int] = (64, 64)
  dtype: Any = jnp.float32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False, mc: bool = False):
    x = emb = x.reshape(x.shape[0], -1).astype(self.dtype)
    for width in self.hidden:
      emb = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
      x = _dropout(emb, self.dropout, train, mc)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32), emb.astype(jnp.float32)


def space_to_depth(x):
  """2x2 blocks of pixels into channels: f32[b, 2h, 2w, c] -> f32[b, h, w, 4c].

  Channel (r * 2 + s) * c + k of output pixel (i, j) is channel k of input
  pixel (2i + r, 2j + s).
  """
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // 2, w // 2, 4 * c)


def phase_kernel(kernel):
  """A stride-1 kernel as the kernel of the same convolution on `space_to_depth`
  inputs, with the four output phases as channels.

  Output pixel (2i + a, 2j + b) of the stride-1 convolution is output pixel
  (i, j), channels (a * 2 + b) * o ..., of the 3x3 (for k = 5) convolution of
  the space-to-depth input: tap u of the original kernel reads input row
  2i + a + u = 2(i + q) + r, i.e. block q, phase r, where 2q + r = a + u.

  Args:
    kernel: f[k, k, c, o] (HWIO).

  Returns:
    f[q, q, 4c, 4o] with q = k // 2 + 1; taps no original tap maps to are 0.
  """
  k, _, c, o = kernel.shape
  q = k // 2 + 1
  select = np.zeros((q, 2, 2, k), np.float32)  # [block, input phase, output phase, tap]
  for blk, r, a in np.ndindex(q, 2, 2):
    if 0 <= 2 * blk + r - a < k:
      select[blk, r, a, 2 * blk + r - a] = 1.0
  select = jnp.asarray(select, kernel.dtype)
  out = jnp.einsum('qrau,psbv,uvco->qprscabo', select, select, kernel)
  return out.reshape(q, q, 4 * c, 4 * o)


class ConvMaxPool(nn.Module):
  """A stride-1 convolution, its bias, then 2x2 max-pooling (stride 2, VALID).

  Parameters are those of `nn.Conv(features, (k, k))` ('kernel' HWIO, 'bias').
  `form` says how the program computes it; both give the same function (to
  float rounding), gradients included:

    'direct'          `lax.conv_general_dilated`, then `nn.max_pool`.
    'space_to_depth'  one convolution on 2x2 space-to-depth inputs with the
                      four output phases as channels (`phase_kernel`), and
                      the pool as a max over the phases. XLA:CPU runs small-
                      channel convolutions far below its matmul rate; this
                      form gives it 4x the channels on a quarter of the
                      pixels and drops the pool's select-and-scatter backward
                      (LeNet on MNIST on a 2-core CPU: results/bench_cpu).
  """

  features: int
  kernel_size: int
  padding: str  # 'SAME' or 'VALID'
  form: str = 'direct'
  dtype: Any = jnp.float32
  conv_general_dilated: Any = None  # jal.member_conv's, or None for lax's

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param(
        'kernel', nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), jnp.float32
    ).astype(self.dtype)
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,), jnp.float32).astype(
        self.dtype
    )
    conv = self.conv_general_dilated or jax.lax.conv_general_dilated
    dims = ('NHWC', 'HWIO', 'NHWC')
    if self.form == 'direct':
      y = conv(x, kernel, (1, 1), self.padding, dimension_numbers=dims)
      return nn.max_pool(y, (2, 2), strides=(2, 2)) + bias
    if self.padding == 'SAME':
      x = jnp.pad(x, ((0, 0), (k // 2, (k - 1) // 2), (k // 2, (k - 1) // 2), (0, 0)))
    ho, wo = (x.shape[1] - k + 1) // 2, (x.shape[2] - k + 1) // 2  # pooled size
    q = k // 2 + 1
    h, w = 2 * (ho + q - 1), 2 * (wo + q - 1)  # input pixels read
    x = jnp.pad(x, ((0, 0), (0, max(h - x.shape[1], 0)), (0, max(w - x.shape[2], 0)), (0, 0)))
    y = conv(
        space_to_depth(x[:, :h, :w]), phase_kernel(kernel), (1, 1), 'VALID', dimension_numbers=dims
    )
    return y.reshape(*y.shape[:3], 4, self.features).max(axis=3) + bias


CONV_POOL_FORMS = ('auto', 'direct', 'space_to_depth')


def conv_pool_form(name: str) -> str:
  """'auto' -> 'space_to_depth' on CPUs, 'direct' elsewhere (accelerators keep
  the form measured there); other names are checked and returned."""
  if name not in CONV_POOL_FORMS:
    raise ValueError(f"unknown conv_pool '{name}'; valid: {', '.join(CONV_POOL_FORMS)}")
  if name == 'auto':
    return 'space_to_depth' if jax.default_backend() == 'cpu' else 'direct'
  return name


class LeNet(nn.Module):
  """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling; Section 3.4.

  Each convolution is followed by 2x2 max-pooling, then ReLU (the same
  function as ReLU then pooling: both are monotone), computed as `conv_pool`
  says (`ConvMaxPool`; 'auto' resolves when the model is built). Dropout, if
  any, follows the two hidden Dense layers (so the second one also drops the
  head's input); the embedding is taken before it.
  """

  num_classes: int
  dtype: Any = jnp.float32
  dropout: float = 0.0
  member_conv: str = 'grouped'  # how vmapped members' convs run: jal.member_conv
  conv_pool: str = 'direct'  # ConvMaxPool's form

  @nn.compact
  def __call__(self, x, train: bool = False, mc: bool = False):
    block = functools.partial(
        ConvMaxPool,
        form=self.conv_pool,
        dtype=self.dtype,
        conv_general_dilated=member_conv_lib.conv_general_dilated(self.member_conv),
    )
    x = x.astype(self.dtype)
    x = nn.relu(block(6, 5, 'SAME', name='Conv_0')(x))
    x = nn.relu(block(16, 5, 'VALID', name='Conv_1')(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(120, dtype=self.dtype)(x))
    x = _dropout(x, self.dropout, train, mc)
    emb = nn.relu(nn.Dense(84, dtype=self.dtype)(x))
    x = _dropout(emb, self.dropout, train, mc)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32), emb.astype(jnp.float32)


def _resnet18(num_classes, dtype, dropout=0.0, stem='cifar', width=64, member_conv='grouped'):
  from jal import resnet  # pylint: disable=g-import-not-at-top

  return resnet.ResNet18(
      num_classes=num_classes,
      stem=stem,
      width=width,
      dtype=dtype,
      dropout=dropout,
      member_conv=member_conv,
  )


def _mlp(num_classes, dtype, dropout=0.0, hidden=(64, 64)):
  return MLP(num_classes=num_classes, hidden=tuple(hidden), dtype=dtype, dropout=dropout)


def _lenet(num_classes, dtype, dropout=0.0, member_conv='grouped', conv_pool='auto'):
  return LeNet(
      num_classes=num_classes,
      dtype=dtype,
      dropout=dropout,
      member_conv=member_conv,
      conv_pool=conv_pool_form(conv_pool),
  )


MODELS = {'mlp': _mlp, 'lenet': _lenet, 'resnet18': _resnet18}
CONVNETS = ('lenet', 'resnet18')  # the models that take `member_conv`


def check_member_conv(model_name: str, kind: str | None) -> str:
  """`kind` ('grouped' if None) if known and `model_name` has convolutions."""
  kind = member_conv_lib.check(kind or 'grouped')
  if kind != 'grouped' and model_name not in CONVNETS:
    raise ValueError(
        f"config.model.member_conv='{kind}' needs a convnet "
        f"({', '.join(CONVNETS)}), got '{model_name}'"
    )
  return kind


_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'auto': None}


def has_dropout(model) -> bool:
  """Whether `model` has dropout, i.e. needs a 'dropout' rng in training."""
  return bool(getattr(model, 'dropout', 0.0))


def compute_dtype(name: str):
  """'float32', 'bfloat16', or 'auto' (bfloat16 on GPU/TPU, float32 on CPU)."""
  if name == 'auto':
    return jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
  return _DTYPES[name]


def get_model(model_config, num_classes: int) -> nn.Module:
  """Builds the model named by `model_config.name`.

  Args:
    model_config: ConfigDict with `name`, optional `compute_dtype`
      ('float32', 'bfloat16' or 'auto'; parameters stay float32), optional
      `dropout` (rate in [0, 1), default 0: see the module docstring) and
      model-specific fields (`hidden` for mlp, `stem` and `width` for
      resnet18), and for convnets optional `member_conv` ('grouped',
      'wgrad_in_turn', 'in_turn': how vmapped members' convolutions run, see
      `jal.member_conv`), and for lenet optional `conv_pool` ('auto',
      'direct', 'space_to_depth': see `ConvMaxPool`).
    num_classes: size of the logits.

  Returns:
    An un-initialised flax module.
  """
  name = model_config.name
  if name not in MODELS:
    raise ValueError(f"unknown model '{name}'; valid: {', '.join(sorted(MODELS))}")
  dtype_name = model_config.get('compute_dtype', 'float32')
  if dtype_name not in _DTYPES:
    raise ValueError(f"unknown compute_dtype '{dtype_name}'; valid: {', '.join(sorted(_DTYPES))}")
  kwargs = {'dropout': float(model_config.get('dropout', 0.0) or 0.0)}
  if name == 'mlp' and model_config.get('hidden') is not None:
    kwargs['hidden'] = model_config.hidden
  if name == 'resnet18':
    for field in ('stem', 'width'):
      if model_config.get(field) is not None:
        kwargs[field] = model_config[field]
  if name == 'lenet':
    kwargs['conv_pool'] = model_config.get('conv_pool', 'auto')
  kind = check_member_conv(name, model_config.get('member_conv'))
  if kind != 'grouped':
    kwargs['member_conv'] = kind
  return MODELS[name](num_classes, compute_dtype(dtype_name), **kwargs)
