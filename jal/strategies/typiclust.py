"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, "Active Learning on a Budget").

With few labels, the most useful points are typical ones, not uncertain
ones: TypiClust clusters the whole pool into as many clusters as there will
be labels (|labeled| + k, capped at 500 as in the paper), then repeatedly
takes the largest cluster holding the fewest labeled points (so uncovered
clusters first) and labels its most typical unlabeled point, where

    typicality(x) = 1 / mean_{x' in KNN(x)} ||x - x'||

over x's K = min(20, |cluster| - 1) nearest neighbours inside its cluster.
As in the authors' code, clusters of at most 5 points (outliers) are used
only once every larger cluster has run out of unlabeled points.

Typicality is computed only for the clusters that are picked, tile by tile
within the cluster, so no n x n (nor |cluster| x |cluster|) matrix is held.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jal import kernels
from jal.strategies import base
from jal.strategies import kmeans
from jal.strategies import options as options_lib

# Clusters of at most this many points are taken last (the authors' code
# drops them).
MIN_CLUSTER_SIZE = 5
# Members of a cluster are compared this many at a time: f32[_TILE, _TILE].
_TILE = 512


def cluster_typicality(x, members, k_nn):
  """Typicality of every point of one cluster, among that cluster only.

  typicality(x) = 1 / (mean Euclidean distance to its K = min(k_nn, size - 1)
  nearest other members); +inf for a singleton or a point with K duplicates.
  Members are walked in tiles of `_TILE` x `_TILE` with a running k_nn
  smallest, for a trip count set by the cluster's size. Traceable. Time
  O(size^2 * d), memory O(n + _TILE * (_TILE + k_nn)).

  Args:
    x: f32[n, d].
    members: bool[n], the cluster (at least one point).
    k_nn: neighbours K (static).

  Returns:
    f32[n]: the typicality of members, -inf elsewhere.
  """
  x = jnp.asarray(x, jnp.float32)
  n = x.shape[0]
  tile = min(_TILE, n)
  sq = jnp.sum(x * x, axis=-1)
  size = jnp.sum(members, dtype=jnp.int32)
  k_eff = jnp.minimum(k_nn, size - 1)
  (idx,) = jnp.nonzero(members, size=n + tile, fill_value=0)  # members first
  num_tiles = (size + tile - 1) // tile

  def rows(r, out):
    ri = jax.lax.dynamic_slice(idx, (r * tile,), (tile,))

    def cols(c, best):
      ci = jax.lax.dynamic_slice(idx, (c * tile,), (tile,))
      valid = (c * tile + jnp.arange(tile) < size)[None, :] & (ri[:, None] != ci[None, :])
      d = jnp.where(valid, kernels.sq_dists_to(x[ri], sq[ri], x[ci]), jnp.inf)
      return -jax.lax.top_k(-jnp.concatenate([best, d], axis=1), k_nn)[0]

    best = jax.lax.fori_loop(0, num_tiles, cols, jnp.full((tile, k_nn), jnp.inf))
    use = jnp.arange(k_nn) < k_eff
    mean = jnp.sum(jnp.where(use, jnp.sqrt(best), 0.0), axis=1) / jnp.maximum(k_eff, 1)
    return jax.lax.dynamic_update_slice(out, 1.0 / mean, (r * tile,))

  typ = jax.lax.fori_loop(0, num_tiles, rows, jnp.zeros((n + tile,), jnp.float32))
  valid = jnp.arange(n + tile) < size
  return jnp.full((n,), -jnp.inf).at[jnp.where(valid, idx, n)].set(typ, mode='drop')


@functools.partial(jax.jit, static_argnames=('k', 'num_clusters', 'iters', 'k_nn'))
def typiclust(embeddings, labeled, key, k, num_clusters, iters, k_nn=20):
  """TypiClust's picks. See the module docstring.

  Time O((num_clusters + iters) * n * num_clusters * d) for k-means plus
  O(sum over picked clusters of size^2 * d) for typicality; memory
  O(n * d + num_clusters * d + 1024 * num_clusters).

  Args:
    embeddings: f32[n, d].
    labeled: bool[n].
    key: PRNG key of the k-means++ seeding.
    k: number of picks (static).
    num_clusters: k-means clusters over the whole pool (static).
    iters: Lloyd iterations (static).
    k_nn: neighbours of the typicality (static).

  Returns:
    i32[k] in pick order.
  """
  x = jnp.asarray(embeddings, jnp.float32)
  labeled = jnp.asarray(labeled, bool)
  _, assign = kernels.kmeans(x, num_clusters, key, iters)
  ids = jnp.arange(num_clusters)
  sizes = jax.ops.segment_sum(jnp.ones_like(assign), assign, num_segments=num_clusters)
  small = sizes <= MIN_CLUSTER_SIZE

  def body(i, carry):
    covered, available, picks = carry
    left = jax.ops.segment_sum(available.astype(jnp.int32), assign, num_segments=num_clusters)
    # Clusters with unlabeled points left; then not small; fewest labeled; largest; lowest id.
    c = jnp.lexsort((ids, -sizes, covered, small, left == 0))[0]
    members = assign == c
    typ = jnp.where(available & members, cluster_typicality(x, members, k_nn), -jnp.inf)
    j = jnp.argmax(typ).astype(jnp.int32)
    return covered.at[c].add(1), available.at[j].set(False), picks.at[i].set(j)

  covered = jax.ops.segment_sum(labeled.astype(jnp.int32), assign, num_segments=num_clusters)
  init = (covered, ~labeled, jnp.zeros((k,), jnp.int32))
  return jax.lax.fori_loop(0, k, body, init)[2]


MAX_CLUSTERS = options_lib.positive_int(
    'typiclust_max_clusters', 500, 'clusters at most (the paper caps |labeled| + k)'
)


def settings_of(options) -> tuple[int, int]:
  """(max clusters, Lloyd iterations): `typiclust_max_clusters` (500), `kmeans_iters` (20)."""
  return MAX_CLUSTERS.read(options, 'typiclust'), kmeans.iters_of(options, 'typiclust')


def select(inputs: base.Inputs, k: int, key, options=None):
  """TypiClust on `inputs.embeddings` (the model's, or fixed ones; see config).

  Time O((K + iters) * n * K * d + sum of picked cluster sizes^2 * d) with
  K = min(|labeled| + k, max_clusters) clusters; memory
  O(n * d + K * d + 1024 * K), no n x n matrix.

  Args:
    inputs: `labeled: bool[n]` and `embeddings: f32[n, d]`.
    k: number of picks.
    key: PRNG key of the k-means++ seeding.
    options: `typiclust_max_clusters` (int >= 1, default 500),
      `kmeans_iters` (int >= 1, default 20).

  Returns:
    i32[k] in pick order: one per cluster, uncovered and larger clusters first.
  """
  max_clusters, iters = settings_of(options)
  labeled = np.asarray(inputs.labeled, bool)
  num_clusters = min(int(labeled.sum()) + k, max_clusters, labeled.shape[0])
  return typiclust(inputs.embeddings, labeled, key, k=k, num_clusters=num_clusters, iters=iters)


STRATEGY = base.Strategy(
    'typiclust',
    select,
    frozenset({base.EMBEDDINGS}),
    kind='low_budget',
    options=(MAX_CLUSTERS, kmeans.ITERS),
)
