"""k-means diversity sampling: the unlabeled point nearest each k-means centre.

A standard diversity baseline of deep active learning (e.g. Zhdanov 2019,
"Diverse mini-batch active learning"; the KMeans baseline of Ash et al.,
BADGE, ICLR 2020): cluster the unlabeled pool's embeddings into k clusters
and label one representative per cluster. Unlike Coreset's k-Center it
ignores the labeled points and favours dense regions over outliers.
"""

import functools

import jax
import jax.numpy as jnp

from jal import kernels
from jal.strategies import base
from jal.strategies import options as options_lib


@functools.partial(jax.jit, static_argnames=('k', 'iters'))
def _kmeans_select(embeddings, labeled, key, k, iters):
  x = jnp.asarray(embeddings, jnp.float32)
  unlabeled = ~labeled
  centers, assign = kernels.kmeans(x, k, key, iters, mask=unlabeled)
  sizes = jax.ops.segment_sum(unlabeled.astype(jnp.int32), assign, num_segments=k)
  order = jnp.argsort(-sizes, stable=True)  # largest cluster first, then lowest id
  sq = jnp.sum(x * x, axis=-1)

  def body(i, carry):
    available, picks = carry
    d = kernels.sq_dists_to(x, sq, centers[order[i]][None, :])[:, 0]
    j = jnp.argmin(jnp.where(available, d, jnp.inf)).astype(jnp.int32)
    return available.at[j].set(False), picks.at[i].set(j)

  return jax.lax.fori_loop(0, k, body, (unlabeled, jnp.zeros((k,), jnp.int32)))[1]


# Also typiclust's and probcover's k-means: one declaration, one default.
ITERS = options_lib.positive_int('kmeans_iters', 20, 'Lloyd iterations after k-means++ seeding')


def iters_of(options, strategy: str = 'kmeans') -> int:
  """`options.kmeans_iters` (`ITERS`: default 20), checked to be an int >= 1."""
  return ITERS.read(options, strategy)


def select(inputs: base.Inputs, k: int, key, options=None):
  """The unlabeled point nearest each of k k-means centres of the unlabeled pool.

  k-means++ seeding on the unlabeled embeddings (drawn with `key`), then
  `kmeans_iters` Lloyd iterations. Clusters are visited from the largest to
  the smallest; each takes its nearest unlabeled point not yet picked (so
  picks are distinct even if two centres coincide). Time
  O((k + iters) * n * k * d), memory O(n * d + k * d + 1024 * k) (no n x k
  matrix; see `kernels.kmeans`).

  Args:
    inputs: `labeled: bool[n]` and `embeddings: f32[n, d]`.
    k: number of picks (= number of clusters).
    key: PRNG key of the k-means++ seeding.
    options: `kmeans_iters` (int >= 1, default 20).

  Returns:
    i32[k], one pick per cluster, largest cluster first.
  """
  iters = iters_of(options)
  return _kmeans_select(inputs.embeddings, jnp.asarray(inputs.labeled, bool), key, k=k, iters=iters)


STRATEGY = base.Strategy(
    'kmeans', select, frozenset({base.EMBEDDINGS}), kind='diversity', options=(ITERS,)
)
