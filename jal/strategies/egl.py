"""Expected gradient length (Settles, Craven & Ray, NIPS 2008), last layer.

EGL scores a point by how much labeling it would change the model: the norm
of the training-loss gradient it would add, in expectation over the label
under the model's own predictive distribution. Here, as is usual for deep
networks, the gradient is that of member 0's classification head only.

For a head `logits = W h + b` (W: f32[c, d]) and cross-entropy loss under
label y, the gradient with respect to (W, b) is the outer product
`(p - e_y) ⊗ [h, 1]`, where p = softmax(logits). The norm of an outer product
is the product of the norms, so

    EGL(x) = sqrt(||h||^2 + 1) * sum_y p_y ||p - e_y||,
    ||p - e_y||^2 = ||p||^2 - 2 p_y + 1,

in closed form from the logits and embeddings the loop already computes: no
per-sample backward pass. Every model in `jal.models` ends in exactly such a
Dense head on its embedding.
"""

import jax
import jax.numpy as jnp

from jal import kernels
from jal.strategies import base


@jax.jit
def expected_gradient_length(logits, embeddings):
  """Expected norm of the head's cross-entropy gradient, y ~ softmax(logits).

  Time O(n * (c + d)), memory O(n * (c + d)).

  Args:
    logits: f32[n, c] of one model.
    embeddings: f32[n, d], the same model's head inputs h.

  Returns:
    f32[n], >= 0; 0 exactly where p is one-hot.
  """
  p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  h = embeddings.astype(jnp.float32)
  sq_dist = jnp.sum(p * p, axis=-1, keepdims=True) - 2.0 * p + 1.0  # ||p - e_y||^2, [n, c]
  expected = jnp.sum(p * jnp.sqrt(jnp.maximum(sq_dist, 0.0)), axis=-1)
  return expected * jnp.sqrt(jnp.sum(h * h, axis=-1) + 1.0)


def select(inputs: base.Inputs, k: int, key, options=None):
  """The k unlabeled points with the largest expected head-gradient norm.

  Scores member 0 (`logits[0]` with member 0's embeddings); ties are broken
  by a random order drawn from `key`. Time O(n * (c + d) + n log n), memory
  O(n * (c + d)), on top of the loop's one forward pass over the pool.

  Args:
    inputs: `labeled: bool[n]`, `logits: f32[m, n, c]`, `embeddings: f32[n, d]`.
    k: number of picks.
    key: PRNG key for tie-breaking.
    options: unused.

  Returns:
    i32[k], largest expected gradient length first.
  """
  del options
  scores = expected_gradient_length(inputs.logits[0], inputs.embeddings)
  return kernels.top_k_with_random_ties(scores, ~jnp.asarray(inputs.labeled, bool), key, k=k)


STRATEGY = base.Strategy(
    'egl', select, frozenset({base.LOGITS, base.EMBEDDINGS}), kind='uncertainty'
)
