"""The shared strategy interface."""

import dataclasses
from typing import Any, Callable, NamedTuple

# What a strategy may ask the loop to compute over the pool each round.
LOGITS = 'logits'          # f32[m, n, c], every ensemble member's logits
EMBEDDINGS = 'embeddings'  # f32[n, d], member 0's penultimate embeddings
ALL_NEEDS = frozenset({LOGITS, EMBEDDINGS})


class Inputs(NamedTuple):
  """Per-round inputs of a strategy, over the whole pool of n points.

  Attributes:
    labeled: bool[n], points already labeled (never to be picked).
    logits: f32[m, n, c] or None if not requested.
    embeddings: f32[n, d] or None if not requested.
  """
  labeled: Any
  logits: Any = None
  embeddings: Any = None


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A registered strategy.

  Attributes:
    name: registry name.
    select: `(inputs, k, key, options) -> i32[k]`.
    needs: subset of {'logits', 'embeddings'}.
    kind: 'baseline', 'uncertainty', 'diversity' or 'hybrid' (for reports).
    min_members: ensemble size the strategy needs to be meaningful.
  """
  name: str
  select: Callable[..., Any]
  needs: frozenset = frozenset()
  kind: str = 'baseline'
  min_members: int = 1


def needs_of(strategies) -> frozenset:
  """Union of what the given strategies need."""
  out = frozenset()
  for s in strategies:
    out |= s.needs
  return out
