"""Ensembles with variation ratio (Beluch et al., CVPR 2018)."""

import jax.numpy as jnp

from jal import kernels
from jal.strategies import base


def select(inputs: base.Inputs, k: int, key, options=None):
  """The k unlabeled points whose members disagree most (variation ratio).

  Ties, which are common since the ratio takes only m + 1 values, are broken
  by a random order drawn from `key`, not by index. Time O(m * n * c + n log
  n), memory O(m * n * c).

  Args:
    inputs: `labeled: bool[n]` and `logits: f32[m, n, c]`.
    k: number of picks.
    key: PRNG key for tie-breaking.
    options: unused.

  Returns:
    i32[k], most uncertain first.
  """
  del options
  scores = kernels.variation_ratio(inputs.logits)
  return kernels.top_k_with_random_ties(scores, ~jnp.asarray(inputs.labeled), key, k=k)


STRATEGY = base.Strategy('ensembles', select, frozenset({base.LOGITS}),
                         kind='uncertainty', min_members=2)
