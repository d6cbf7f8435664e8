"""Jitted acquisition kernels, usable without the active learning loop.

    from jal import k_center_greedy, variation_ratio
    picks = k_center_greedy(embeddings, labeled, k=100)   # i32[100], pick order
    scores = variation_ratio(member_logits)                # f32[n]

Both are pure functions of arrays; nothing here knows about configs or pools.
"""

import functools

import jax
import jax.numpy as jnp

# Labeled centres are folded into the initial distances this many at a time:
# the working set is f32[n, _CENTER_CHUNK] rather than f32[n, n_labeled].
_CENTER_CHUNK = 256


def _sq_dists_to(embeddings, sq_norms, centers):
  """Squared Euclidean distances from every point to each centre.

  Args:
    embeddings: f32[n, d].
    sq_norms: f32[n], the squared norms of `embeddings`.
    centers: f32[c, d].

  Returns:
    f32[n, c], clamped at 0 (the expansion |x|^2 + |y|^2 - 2xy can round
    slightly below zero).
  """
  c_sq = jnp.sum(centers * centers, axis=-1)
  cross = jnp.dot(embeddings, centers.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(sq_norms[:, None] + c_sq[None, :] - 2.0 * cross, 0.0)


def _initial_min_dists(embeddings, sq_norms, labeled):
  """Squared distance from every point to its nearest labeled point.

  Walks the labeled points in chunks of `_CENTER_CHUNK` inside a while loop
  whose trip count depends on how many are labeled, so memory is
  O(n * chunk) and work O(n * n_labeled * d).

  Args:
    embeddings: f32[n, d].
    sq_norms: f32[n].
    labeled: bool[n].

  Returns:
    f32[n]; +inf everywhere if nothing is labeled.
  """
  n = embeddings.shape[0]
  chunk = min(_CENTER_CHUNK, n)
  num_labeled = jnp.sum(labeled, dtype=jnp.int32)
  # Labeled indices first (in index order), padded with index 0.
  (idx,) = jnp.nonzero(labeled, size=n + chunk, fill_value=0)
  num_chunks = (num_labeled + chunk - 1) // chunk

  def body(i, min_d):
    start = i * chunk
    centre_idx = jax.lax.dynamic_slice(idx, (start,), (chunk,))
    valid = start + jnp.arange(chunk) < num_labeled
    d = _sq_dists_to(embeddings, sq_norms, embeddings[centre_idx])
    d = jnp.where(valid[None, :], d, jnp.inf)
    return jnp.minimum(min_d, jnp.min(d, axis=1))

  init = jnp.full((n,), jnp.inf, embeddings.dtype)
  return jax.lax.fori_loop(0, num_chunks, body, init)


@functools.partial(jax.jit, static_argnames=('k',))
def k_center_greedy(embeddings, labeled, k):
  """Greedy k-Center (Sener & Savarese 2018, greedy variant).

  Repeatedly picks the unlabeled point farthest (Euclidean) from its nearest
  labeled-or-already-picked point. Each pick costs one matrix-vector product
  fused with the running-minimum update, inside one `lax.fori_loop`; squared
  norms are computed once. Memory is O(n * d): no n x n matrix is formed.
  Time is O(n * d * (n_labeled + k)).

  Ties are broken towards the lowest index. With nothing labeled, the first
  pick is index 0 (every distance is +inf).

  Args:
    embeddings: f32[n, d] points (e.g. last-layer embeddings).
    labeled: bool[n], the points already labeled (the initial centres).
    k: number of points to pick (static); at most the number unlabeled.

  Returns:
    i32[k], the picked indices in pick order.
  """
  embeddings = jnp.asarray(embeddings, jnp.float32)
  labeled = jnp.asarray(labeled, bool)
  sq_norms = jnp.sum(embeddings * embeddings, axis=-1)
  min_d = _initial_min_dists(embeddings, sq_norms, labeled)
  # Chosen points are masked out with -inf so they can never win argmax, even
  # if rounding leaves their distance to themselves slightly above zero.
  min_d = jnp.where(labeled, -jnp.inf, min_d)

  def body(i, carry):
    min_d, picks = carry
    j = jnp.argmax(min_d).astype(jnp.int32)
    d_j = _sq_dists_to(embeddings, sq_norms, embeddings[j][None, :])[:, 0]
    min_d = jnp.minimum(min_d, d_j).at[j].set(-jnp.inf)
    return min_d, picks.at[i].set(j)

  picks = jnp.zeros((k,), jnp.int32)
  _, picks = jax.lax.fori_loop(0, k, body, (min_d, picks))
  return picks


@jax.jit
def variation_ratio(member_logits):
  """Variation ratio of an ensemble's votes (Beluch et al. 2018).

  `1 - f_m / m`, where f_m is the number of members voting for the modal
  class. 0 means all members agree; the maximum is 1 - 1/min(m, c).

  Args:
    member_logits: f32[m, n, c], logits (or probabilities) of m members.

  Returns:
    f32[n].
  """
  m, _, c = member_logits.shape
  votes = jnp.argmax(member_logits, axis=-1)  # i32[m, n]
  counts = jnp.sum(jax.nn.one_hot(votes, c, dtype=jnp.int32), axis=0)  # [n, c]
  return 1.0 - jnp.max(counts, axis=-1).astype(jnp.float32) / m


@functools.partial(jax.jit, static_argnames=('k',))
def top_k_with_random_ties(scores, eligible, key, k):
  """Indices of the k highest scores among eligible points.

  Equal scores are ordered by a random permutation drawn from `key`, not by
  index, so that discrete scores (such as variation ratios, which take only
  m + 1 values) do not bias picks towards the start of the pool.

  Args:
    scores: f32[n].
    eligible: bool[n], points that may be picked.
    key: PRNG key for the tie-breaking order.
    k: number of picks (static); at most the number eligible.

  Returns:
    i32[k], highest score first.
  """
  n = scores.shape[0]
  tiebreak = jax.random.permutation(key, n)
  neg = jnp.where(eligible, -scores.astype(jnp.float32), jnp.inf)
  order = jnp.lexsort((tiebreak, neg))  # last key is the primary one
  return order[:k].astype(jnp.int32)
