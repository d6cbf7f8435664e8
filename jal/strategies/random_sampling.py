"""Random sampling: the passive-learning baseline every strategy must beat."""

import functools

import jax
import jax.numpy as jnp

from jal.strategies import base


@functools.partial(jax.jit, static_argnames=('k',))
def _random(labeled, key, k):
  priority = jnp.where(labeled, -1.0, jax.random.uniform(key, labeled.shape))
  return jax.lax.top_k(priority, k)[1].astype(jnp.int32)


def select(inputs: base.Inputs, k: int, key, options=None):
  """k unlabeled points uniformly at random, without replacement.

  Time O(n log k), memory O(n).

  Args:
    inputs: only `labeled: bool[n]` is used.
    k: number of picks.
    key: PRNG key.
    options: unused.

  Returns:
    i32[k].
  """
  del options
  return _random(jnp.asarray(inputs.labeled), key, k)


STRATEGY = base.Strategy('random', select, frozenset(), kind='baseline')
