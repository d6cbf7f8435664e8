"""Coreset (Sener & Savarese, ICLR 2018), greedy k-Center variant."""

import jax.numpy as jnp

from jal import kernels
from jal.strategies import base


def select(inputs: base.Inputs, k: int, key, options=None):
  """Greedy k-Center on member 0's last-layer embeddings.

  Deterministic given the embeddings (the key is unused). Time
  O(n * d * (n_labeled + k)), memory O(n * d); see `kernels.k_center_greedy`.

  Args:
    inputs: `labeled: bool[n]` and `embeddings: f32[n, d]`.
    k: number of picks.
    key: unused.
    options: unused.

  Returns:
    i32[k] in pick order.
  """
  del key, options
  return kernels.k_center_greedy(
      inputs.embeddings, jnp.asarray(inputs.labeled), k=k, mesh=inputs.mesh
  )


STRATEGY = base.Strategy('coreset', select, frozenset({base.EMBEDDINGS}), kind='diversity')
