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


def sq_dists_to(embeddings, sq_norms, centers):
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


def _initial_min_dists(embeddings, sq_norms, labeled, axis=None):
  """Squared distance from every point to its nearest labeled point.

  Walks the labeled points in chunks of `_CENTER_CHUNK` inside a while loop
  whose trip count depends on how many are labeled, so memory is
  O(n * chunk) and work O(n * n_labeled * d).

  Args:
    embeddings: f32[n, d].
    sq_norms: f32[n].
    labeled: bool[n].
    axis: inside `shard_map`, the mesh axis the points are split over: the
      arguments are this device's points, and every device's labeled chunks
      are gathered, so the result is the distance to the nearest labeled
      point of the whole pool.

  Returns:
    f32[n]; +inf everywhere if nothing is labeled.
  """
  n = embeddings.shape[0]
  chunk = min(_CENTER_CHUNK, n)
  num_labeled = jnp.sum(labeled, dtype=jnp.int32)
  # Labeled indices first (in index order), padded with index 0.
  (idx,) = jnp.nonzero(labeled, size=n + chunk, fill_value=0)
  num_chunks = (num_labeled + chunk - 1) // chunk
  if axis is not None:
    num_chunks = jax.lax.pmax(num_chunks, axis)

  def body(i, min_d):
    start = i * chunk
    centre_idx = jax.lax.dynamic_slice(idx, (start,), (chunk,))
    valid = start + jnp.arange(chunk) < num_labeled
    centres = embeddings[centre_idx]
    if axis is not None:
      centres = jax.lax.all_gather(centres, axis, tiled=True)
      valid = jax.lax.all_gather(valid, axis, tiled=True)
    d = sq_dists_to(embeddings, sq_norms, centres)
    d = jnp.where(valid[None, :], d, jnp.inf)
    return jnp.minimum(min_d, jnp.min(d, axis=1))

  init = jnp.full((n,), jnp.inf, embeddings.dtype)
  return jax.lax.fori_loop(0, num_chunks, body, init)


@functools.partial(jax.jit, static_argnames=('k', 'mesh'))
def k_center_greedy(embeddings, labeled, k, mesh=None, candidates=None):
  """Greedy k-Center (Sener & Savarese 2018, greedy variant).

  Repeatedly picks the unlabeled point farthest (Euclidean) from its nearest
  labeled-or-already-picked point. Each pick costs one matrix-vector product
  fused with the running-minimum update, inside one `lax.fori_loop`; squared
  norms are computed once. Memory is O(n * d): no n x n matrix is formed.
  Time is O(n * d * (n_labeled + k)).

  With `candidates`, only unlabeled candidates may be picked, while every
  labeled point stays a centre, candidate or not (Coreset-Ensembles runs
  k-Center among the most uncertain points this way). Points outside
  `candidates` are never picked and so never become centres; the pool is
  not copied or gathered.

  Ties are broken towards the lowest index. With nothing labeled, the first
  pick is the lowest-index candidate (index 0 without `candidates`): every
  distance is +inf.

  With a `mesh` of several devices the pool's points are split over its
  axis (see `jal.sharding`): each device keeps its points' running minima and
  each pick exchanges one candidate (distance, index, row) per device, so
  memory per device is O(n * d / devices) and the picks equal the unsharded
  ones.

  Args:
    embeddings: f32[n, d] points (e.g. last-layer embeddings).
    labeled: bool[n], the points already labeled (the initial centres).
    k: number of points to pick (static); at most the number of unlabeled
      candidates.
    mesh: optional 1-D `jax.sharding.Mesh` to split the points over.
    candidates: optional bool[n], the points that may be picked (default
      all).

  Returns:
    i32[k], the picked indices in pick order.
  """
  embeddings = jnp.asarray(embeddings, jnp.float32)
  labeled = jnp.asarray(labeled, bool)
  candidates = jnp.ones_like(labeled) if candidates is None else jnp.asarray(candidates, bool)
  if mesh is None or mesh.size == 1:
    return _k_center_picks(embeddings, labeled, candidates, k, None)
  axis = mesh.axis_names[0]
  split = jax.sharding.PartitionSpec(axis)
  n = embeddings.shape[0]
  pad = -(-n // mesh.size) * mesh.size - n
  # Padding rows are neither labeled (never centres) nor candidates (never picked).
  args = (
      jnp.pad(embeddings, ((0, pad), (0, 0))),
      jnp.pad(labeled, (0, pad)),
      jnp.pad(candidates, (0, pad)),
  )
  local = functools.partial(_k_center_picks, k=k, axis=axis)
  return jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(split,) * 3,
      out_specs=jax.sharding.PartitionSpec(),
      check_vma=False,
  )(*args)


def _k_center_picks(embeddings, labeled, candidates, k, axis):
  """The greedy loop of `k_center_greedy` on one device's points.

  Args:
    embeddings: f32[n, d], this device's points.
    labeled: bool[n], the initial centres.
    candidates: bool[n], the points that may be picked (False for padding
      rows too).
    k: picks.
    axis: None on one device; inside `shard_map`, the mesh axis the points
      are split over (device i holds rows [i * n, (i + 1) * n)). Each pick
      gathers one candidate (distance, row, index) per device; ties go to
      the lowest device, then the lowest row, i.e. the lowest global index,
      as on one device.

  Returns:
    i32[k] global indices, the same on every device.
  """
  n = embeddings.shape[0]
  offset = 0 if axis is None else jax.lax.axis_index(axis) * n
  rows = offset + jnp.arange(n, dtype=jnp.int32)
  sq_norms = jnp.sum(embeddings * embeddings, axis=-1)
  min_d = _initial_min_dists(embeddings, sq_norms, labeled, axis)
  # Chosen points and non-candidates are masked out with -inf so they can
  # never win argmax, even if rounding leaves a chosen point's distance to
  # itself slightly above zero.
  min_d = jnp.where(labeled | ~candidates, -jnp.inf, min_d)

  def body(i, carry):
    min_d, picks = carry
    j = jnp.argmax(min_d)
    row, g = embeddings[j], rows[j]
    if axis is not None:
      w = jnp.argmax(jax.lax.all_gather(min_d[j], axis))
      row = jax.lax.all_gather(row, axis)[w]
      g = jax.lax.all_gather(g, axis)[w]
    d_j = sq_dists_to(embeddings, sq_norms, row[None, :])[:, 0]
    min_d = jnp.where(rows == g, -jnp.inf, jnp.minimum(min_d, d_j))
    return min_d, picks.at[i].set(g)

  _, picks = jax.lax.fori_loop(0, k, body, (min_d, jnp.zeros((k,), jnp.int32)))
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


# Points are processed this many at a time against centres or neighbours:
# the working set is f32[_POINT_CHUNK, k] rather than f32[n, k].
_POINT_CHUNK = 1024


def map_row_chunks(fn, rows, chunk=_POINT_CHUNK):
  """`fn` over row blocks of the arrays `rows`, results concatenated back to n rows.

  The last block is padded with zero rows (their results are dropped), so
  one program of block shape serves every block. Peak memory is one block's
  working set, plus a padded copy of `rows`.

  Args:
    fn: `rows block (each leaf [b, ...]) -> pytree of [b, ...]`.
    rows: pytree of arrays sharing the leading size n.
    chunk: block size b (capped at n).

  Returns:
    The pytree of [n, ...] results.
  """
  n = jax.tree.leaves(rows)[0].shape[0]
  chunk = min(chunk, n)
  num = -(-n // chunk)

  def blocks(a):
    a = jnp.pad(a, [(0, num * chunk - n)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(num, chunk, *a.shape[1:])

  out = jax.lax.map(fn, jax.tree.map(blocks, rows))
  return jax.tree.map(lambda a: a.reshape(num * chunk, *a.shape[2:])[:n], out)


@jax.jit
def nearest_center(x, centers):
  """Each point's nearest centre (squared Euclidean), in row blocks.

  Time O(n * k * d), memory O(n * d + _POINT_CHUNK * k): the n x k distance
  matrix is never formed.

  Args:
    x: f32[n, d].
    centers: f32[k, d].

  Returns:
    (i32[n] index of the nearest centre, lowest index on ties;
     f32[n] squared distance to it).
  """
  x = jnp.asarray(x, jnp.float32)
  centers = jnp.asarray(centers, jnp.float32)

  def block(xb):
    d = sq_dists_to(xb, jnp.sum(xb * xb, axis=-1), centers)
    return jnp.argmin(d, axis=1).astype(jnp.int32), jnp.min(d, axis=1)

  return map_row_chunks(block, x)


def d2_seeding(sq_dists_to, eligible, key, k, first):
  """k-means++ seeding (Arthur & Vassilvitskii, SODA 2007) over any metric.

  After `first`, each seed is drawn among the eligible unchosen points with
  probability proportional to D^2, the squared distance to the nearest seed
  so far. If every such D^2 is 0 (duplicates), the draw is uniform over them.
  Traceable; call it inside `jax.jit`. Time O(k * cost of `sq_dists_to`),
  memory O(n) beyond it.

  Args:
    sq_dists_to: `i32[] j -> f32[n]`, squared distances from every point to
      point j (the metric may be implicit, as in BADGE's gradient space).
    eligible: bool[n], the points that may be seeds; at least k of them.
    key: PRNG key; draw i uses `fold_in(key, i)`.
    k: number of seeds (static).
    first: i32[], the first seed (eligible).

  Returns:
    i32[k] distinct seed indices, in draw order.
  """
  eligible = jnp.asarray(eligible, bool)
  first = jnp.asarray(first, jnp.int32)

  def body(i, carry):
    min_d, open_, seeds = carry
    w = jnp.where(open_, min_d, 0.0)
    logits = jnp.where(jnp.sum(w) > 0, jnp.log(w), jnp.where(open_, 0.0, -jnp.inf))
    j = jax.random.categorical(jax.random.fold_in(key, i), logits).astype(jnp.int32)
    return (jnp.minimum(min_d, sq_dists_to(j)), open_.at[j].set(False), seeds.at[i].set(j))

  init = (
      sq_dists_to(first),
      eligible.at[first].set(False),
      jnp.zeros((k,), jnp.int32).at[0].set(first),
  )
  return jax.lax.fori_loop(1, k, body, init)[2]


@functools.partial(jax.jit, static_argnames=('k', 'iters'))
def kmeans(x, k, key, iters, mask=None):
  """k-means: k-means++ seeding, then `iters` Lloyd iterations.

  Only points in `mask` are seeds or move centres; every point gets an
  assignment. A centre left with no masked point keeps its position. Time
  O((k + iters) * n * k * d) in the worst case (seeding is O(n * k * d),
  each Lloyd step the same), memory O(n * d + k * d + _POINT_CHUNK * k).

  Args:
    x: f32[n, d].
    k: number of centres (static); at most the number of masked points.
    key: PRNG key of the seeding.
    iters: Lloyd iterations (static).
    mask: optional bool[n], the points to cluster (default all).

  Returns:
    (f32[k, d] centres; i32[n] index of each point's nearest final centre).
  """
  x = jnp.asarray(x, jnp.float32)
  n = x.shape[0]
  mask = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
  sq = jnp.sum(x * x, axis=-1)
  first_key, seed_key = jax.random.split(key)
  first = jax.random.categorical(first_key, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)
  seeds = d2_seeding(lambda j: sq_dists_to(x, sq, x[j][None, :])[:, 0], mask, seed_key, k, first)
  w = mask.astype(jnp.float32)

  def lloyd(_, centers):
    assign, _ = nearest_center(x, centers)
    sums = jax.ops.segment_sum(x * w[:, None], assign, num_segments=k)
    counts = jax.ops.segment_sum(w, assign, num_segments=k)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centers)

  centers = jax.lax.fori_loop(0, iters, lloyd, x[seeds])
  return centers, nearest_center(x, centers)[0]
