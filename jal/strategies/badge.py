"""BADGE: Batch Active learning by Diverse Gradient Embeddings (Ash et al., ICLR 2020).

Each point is represented by the gradient of the cross-entropy loss with
respect to the last layer's weights, taking the model's own prediction as
the label: g_i = (p_i - onehot(y_hat_i)) (x) h_i, the outer product of the
softmax residual a_i = p_i - onehot(y_hat_i), f32[c], and the penultimate
embedding h_i, f32[d]. Its norm grows with the model's uncertainty (a
confident prediction has a ~ 0) and its direction encodes what the point
would teach the last layer; k-means++ seeding in this space then picks
points that are both uncertain and diverse.

g is never formed (it would be n x c*d): for outer products,
||g_i - g_j||^2 = |a_i|^2 |h_i|^2 + |a_j|^2 |h_j|^2 - 2 (a_i . a_j)(h_i . h_j),
so each seeding step costs O(n * (c + d)).
"""

import functools

import jax
import jax.numpy as jnp

from jal import kernels
from jal.strategies import base


def gradient_factors(logits):
  """The softmax residual `a = p - onehot(argmax p)` of BADGE's gradient embedding.

  Args:
    logits: f32[n, c] of one model.

  Returns:
    f32[n, c]; the gradient embedding of point i is `outer(a_i, h_i)`.
  """
  p = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return p - jax.nn.one_hot(jnp.argmax(p, axis=-1), p.shape[-1], dtype=p.dtype)


def gradient_sq_dists_to(a, h, j):
  """Squared distances ||g_i - g_j||^2 from every gradient embedding to point j's.

  Exact for g_i = outer(a_i, h_i), without forming g. Time O(n * (c + d)).

  Args:
    a: f32[n, c] softmax residuals (`gradient_factors`).
    h: f32[n, d] embeddings.
    j: i32[], the reference point.

  Returns:
    f32[n], clamped at 0 against rounding.
  """
  hp = jax.lax.Precision.HIGHEST
  norms = jnp.sum(a * a, axis=-1) * jnp.sum(h * h, axis=-1)
  cross = jnp.dot(a, a[j], precision=hp) * jnp.dot(h, h[j], precision=hp)
  return jnp.maximum(norms + norms[j] - 2.0 * cross, 0.0)


@functools.partial(jax.jit, static_argnames=('k',))
def badge(logits, embeddings, labeled, key, k):
  """BADGE's picks: k-means++ seeding over the unlabeled gradient embeddings.

  As the authors' code, the first seed is the unlabeled point with the
  largest gradient norm; the rest are D^2-sampled (`kernels.d2_seeding`).
  Labeled points play no part. Time O(n * k * (c + d)), memory O(n * (c + d)).

  Args:
    logits: f32[n, c] of one model (member 0).
    embeddings: f32[n, d] of the same model.
    labeled: bool[n].
    key: PRNG key of the D^2 draws.
    k: number of picks (static).

  Returns:
    i32[k] in seeding order.
  """
  a = gradient_factors(logits)
  h = jnp.asarray(embeddings, jnp.float32)
  unlabeled = ~jnp.asarray(labeled, bool)
  norms = jnp.sum(a * a, axis=-1) * jnp.sum(h * h, axis=-1)
  first = jnp.argmax(jnp.where(unlabeled, norms, -jnp.inf)).astype(jnp.int32)
  return kernels.d2_seeding(lambda j: gradient_sq_dists_to(a, h, j), unlabeled, key, k, first)


def select(inputs: base.Inputs, k: int, key, options=None):
  """BADGE on member 0's logits and embeddings.

  Time O(n * k * (c + d)), memory O(n * (c + d)); see `badge`.

  Args:
    inputs: `labeled: bool[n]`, `logits: f32[m, n, c]` (member 0's are
      used) and `embeddings: f32[n, d]`.
    k: number of picks.
    key: PRNG key of the k-means++ draws.
    options: unused.

  Returns:
    i32[k] in seeding order.
  """
  del options
  return badge(inputs.logits[0], inputs.embeddings, jnp.asarray(inputs.labeled, bool), key, k=k)


STRATEGY = base.Strategy('badge', select, frozenset({base.LOGITS, base.EMBEDDINGS}), kind='hybrid')
