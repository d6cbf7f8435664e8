"""Classifiers, chosen by name. Each returns `(logits, embedding)`.

Every model is a `flax.linen` module used through `init`/`apply`, so its
variables are a plain pytree and `jax.vmap(model.init)(keys, x)` builds an
ensemble. `__call__(x, train)` takes normalised inputs `f32[b, ...]` and
returns `logits: f32[b, num_classes]` and the penultimate representation
`embedding: f32[b, d]` (what Coreset measures distances on).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
  """ReLU multilayer perceptron; the study's toy model (Section 3.3)."""
  num_classes: int
  hidden: Sequence[int] = (64, 64)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1).astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32), x.astype(jnp.float32)


class LeNet(nn.Module):
  """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling; Section 3.4."""
  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = nn.relu(nn.Conv(6, (5, 5), padding='SAME', dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(16, (5, 5), padding='VALID', dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(120, dtype=self.dtype)(x))
    x = nn.relu(nn.Dense(84, dtype=self.dtype)(x))
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return logits.astype(jnp.float32), x.astype(jnp.float32)


def _resnet18(num_classes, dtype, stem='cifar', width=64):
  from jal import resnet  # pylint: disable=g-import-not-at-top
  return resnet.ResNet18(num_classes=num_classes, stem=stem, width=width, dtype=dtype)


def _mlp(num_classes, dtype, hidden=(64, 64)):
  return MLP(num_classes=num_classes, hidden=tuple(hidden), dtype=dtype)


def _lenet(num_classes, dtype):
  return LeNet(num_classes=num_classes, dtype=dtype)


MODELS = {'mlp': _mlp, 'lenet': _lenet, 'resnet18': _resnet18}

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'auto': None}


def compute_dtype(name: str):
  """'float32', 'bfloat16', or 'auto' (bfloat16 on GPU/TPU, float32 on CPU)."""
  if name == 'auto':
    return jnp.float32 if jax.default_backend() == 'cpu' else jnp.bfloat16
  return _DTYPES[name]


def get_model(model_config, num_classes: int) -> nn.Module:
  """Builds the model named by `model_config.name`.

  Args:
    model_config: ConfigDict with `name`, optional `compute_dtype`
      ('float32', 'bfloat16' or 'auto'; parameters stay float32) and
      model-specific fields (`hidden` for mlp, `stem` and `width` for
      resnet18).
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
  kwargs = {}
  if name == 'mlp' and model_config.get('hidden') is not None:
    kwargs['hidden'] = model_config.hidden
  if name == 'resnet18':
    for field in ('stem', 'width'):
      if model_config.get(field) is not None:
        kwargs[field] = model_config[field]
  return MODELS[name](num_classes, compute_dtype(dtype_name), **kwargs)
