"""The shared strategy interface."""

import dataclasses
from typing import Any, Callable, NamedTuple

from jal.strategies import options as options_lib

# What a strategy may ask the loop to compute over the pool each round.
LOGITS = 'logits'  # f32[m, n, c], every ensemble member's logits
EMBEDDINGS = 'embeddings'  # f32[n, d], member 0's penultimate embeddings
MC_LOGITS = 'mc_logits'  # f32[T, n, c], T stochastic (dropout) passes of member 0
CLASSIFIER = 'classifier'  # Classifier: member 0's network and the raw pool
ALL_NEEDS = frozenset({LOGITS, EMBEDDINGS, MC_LOGITS, CLASSIFIER})


class Classifier(NamedTuple):
  """Member 0's trained network and the pool, for strategies that need more
  than its outputs (input gradients, the images themselves).

  `model` and `spec` are hashable: pass them to `jax.jit` as static
  arguments, and `variables`/`x` as traced ones, so one compilation serves
  every round.

  Attributes:
    model: the flax module; `model.apply(variables, x_norm, train=False)`
      returns `(logits f32[b, c], embeddings f32[b, d])`.
    spec: `train.InputSpec`; `train.prepare_inputs(x[idx], spec)` turns stored
      pool rows into the normalised f32 inputs the model takes.
    variables: member 0's variables, `{'params': ..., **model_state}`.
    x: the pool as stored on device, [n, ...] (uint8 images or f32 features).
    chunk_size: points per forward pass (`config.eval_batch_size`).
  """

  model: Any
  spec: Any
  variables: Any
  x: Any
  chunk_size: int


class Inputs(NamedTuple):
  """Per-round inputs of a strategy, over the whole pool of n points.

  Attributes:
    labeled: bool[n], points already labeled (never to be picked).
    logits: f32[m, n, c] or None if not requested.
    embeddings: f32[n, d] or None if not requested.
    mc_logits: f32[T, n, c] or None if not requested.
    classifier: Classifier or None if not requested.
    mesh: the `jal.sharding` mesh the loop splits pools over, or None (one
      device); kernels that take a mesh (k-Center) use it.
  """

  labeled: Any
  logits: Any = None
  embeddings: Any = None
  mc_logits: Any = None
  classifier: Any = None
  mesh: Any = None


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A registered strategy.

  Attributes:
    name: registry name.
    select: `(inputs, k, key, options) -> i32[k]`.
    needs: subset of `ALL_NEEDS`.
    kind: 'baseline', 'uncertainty', 'diversity', 'hybrid' or 'low_budget'
      (for reports).
    min_members: ensemble size the strategy needs to be meaningful.
    options: every `config.strategy_options` field the strategy reads (its
      select's, and `mc_samples` for MC strategies), each declared once with
      its default and check (`options.Option`); `config_lib.base_config`
      builds `strategy_options` from these declarations.
  """

  name: str
  select: Callable[..., Any]
  needs: frozenset = frozenset()
  kind: str = 'baseline'
  min_members: int = 1
  options: tuple[options_lib.Option, ...] = ()

  def check_options(self, options) -> None:
    """Reads and checks every declared option of `options` (ConfigDict or None).

    Raises the one-line ValueError the strategy's select (or the loop, for
    `mc_samples`) would, with no compute: `config_lib.validate` calls it, so
    a bad option fails before round 0 trains.
    """
    for option in self.options:
      option.read(options, self.name)

  @property
  def needs_dropout(self) -> bool:
    """Whether the model must have dropout: MC passes of a model without are all equal."""
    return MC_LOGITS in self.needs


def needs_of(strategies) -> frozenset:
  """Union of what the given strategies need."""
  out = frozenset()
  for s in strategies:
    out |= s.needs
  return out
