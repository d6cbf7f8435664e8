"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022).

"Active Learning Through a Covering Lens".

In the low-budget regime, ProbCover picks points whose delta-balls (on
L2-normalised embeddings) cover as much of the pool as possible: greedy max
coverage on the graph with an edge x -> x' whenever ||x - x'|| < delta.
Points inside a labeled point's ball start covered; each pick is the point
whose ball holds the most uncovered points (lowest index on ties); once
nothing more can be covered, the remaining picks are random unlabeled points.

delta is chosen by the paper's purity heuristic: cluster the pool into c
clusters (c = the number of classes) by k-means; a ball is pure if every
point in it shares its centre's cluster; take the largest delta whose
purity (fraction of pure balls) is at least alpha = 0.95. The ball around x
is pure exactly when delta <= d_out(x), the distance from x to the nearest
point of another cluster, so purity(delta) = fraction of x with
d_out(x) >= delta, and the largest admissible delta is an order statistic of
d_out: the paper's grid search with an infinitely fine grid.

Memory: the graph is a sparse edge list of E edges (self-loops included),
two i32[E] arrays built in row blocks, so the state is O(E) (plus
O(n * d + 512 * n) working sets). A pure delta keeps most balls within one
of the c clusters, so E is at most about n^2 / c for balanced clusters:
sparse for many classes, dense for two (the gaussian smoke's 500 points gave
32k-58k edges). Time: O(n^2 * d) for delta and for the graph, then O(E) per
pick.
"""

import functools
import math

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jal import kernels
from jal.strategies import base
from jal.strategies import kmeans
from jal.strategies import options as options_lib

# Rows of the pool compared against all n points at a time: f32[_ROWS, n].
_ROWS = 512


def normalise(embeddings):
  """Rows scaled to unit L2 norm (zero rows stay zero): f32[n, d]."""
  x = jnp.asarray(embeddings, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _dists_from(xb, x):
  """Euclidean distances f32[b, n] from the rows xb: f32[b, d] to every row of x."""
  return jnp.sqrt(kernels.sq_dists_to(xb, jnp.sum(xb * xb, axis=-1), x))


@jax.jit
def other_cluster_distance(x, assign):
  """d_out: each point's distance to the nearest point of another cluster.

  +inf if every point shares its cluster. Time O(n^2 * d), memory
  O(n * d + 512 * n).

  Args:
    x: f32[n, d].
    assign: i32[n] cluster ids.

  Returns:
    f32[n].
  """

  def block(rows):
    xb, ab = rows
    return jnp.min(jnp.where(ab[:, None] != assign[None, :], _dists_from(xb, x), jnp.inf), axis=1)

  return kernels.map_row_chunks(block, (x, assign), _ROWS)


def purity(d_out, delta):
  """Fraction of delta-balls holding only their centre's cluster: mean(d_out >= delta)."""
  return jnp.mean(jnp.asarray(d_out) >= delta)


@functools.partial(jax.jit, static_argnames=('num_clusters', 'iters', 'num_pure'))
def purity_delta(x, key, num_clusters, iters, num_pure):
  """The largest delta with at least `num_pure` pure balls (the purity heuristic).

  Time O((num_clusters + iters) * n * num_clusters * d + n^2 * d), memory
  O(n * d + 512 * n).

  Args:
    x: f32[n, d], L2-normalised.
    key: PRNG key of the k-means seeding.
    num_clusters: k-means clusters, the number of classes (static).
    iters: Lloyd iterations (static).
    num_pure: ceil(alpha * n), in [1, n] (static).

  Returns:
    f32[] delta, at most 2 (the unit sphere's diameter: with one cluster
    every ball is pure).
  """
  _, assign = kernels.kmeans(x, num_clusters, key, iters)
  d_out = other_cluster_distance(x, assign)
  return jnp.minimum(jnp.sort(d_out)[x.shape[0] - num_pure], 2.0)


def _ball_masks(x, delta, i, b):
  """Rows [i * b, (i + 1) * b) of the adjacency ||x_r - x_j|| < delta: bool[b, n].

  Rows past n (padding of the last block) are all False.
  """
  n = x.shape[0]
  rows = i * b + jnp.arange(b)
  xb = jnp.take(x, jnp.minimum(rows, n - 1), axis=0)
  return (_dists_from(xb, x) < delta) & (rows < n)[:, None]


@functools.partial(jax.jit, static_argnames=('b',))
def _block_edge_counts(x, delta, b):
  """Edges in each row block: i32[ceil(n / b)]. Time O(n^2 * d)."""
  num = -(-x.shape[0] // b)
  return jax.lax.map(
      lambda i: jnp.sum(_ball_masks(x, delta, i, b), dtype=jnp.int32), jnp.arange(num)
  )


@functools.partial(jax.jit, static_argnames=('b', 'capacity', 'cap'))
def _fill_edges(x, delta, b, capacity, cap):
  """The edge list, row block by row block, into buffers of `capacity` + `cap`.

  Returns (src i32[capacity], dst i32[capacity], total edges, largest block):
  edges sorted by src; unused slots have src = n (a sentinel) and dst = 0.
  If total > capacity or largest > cap the list is incomplete (the caller
  retries with more room).
  """
  n = x.shape[0]
  num = -(-n // b)

  def body(i, carry):
    src, dst, offset, largest = carry
    mask = _ball_masks(x, delta, i, b)
    count = jnp.sum(mask, dtype=jnp.int32)
    r, c = jnp.nonzero(mask, size=cap, fill_value=0)
    valid = jnp.arange(cap) < count
    start = jnp.minimum(offset, capacity)
    src = jax.lax.dynamic_update_slice(
        src, jnp.where(valid, i * b + r, n).astype(jnp.int32), (start,)
    )
    dst = jax.lax.dynamic_update_slice(dst, jnp.where(valid, c, 0).astype(jnp.int32), (start,))
    return src, dst, offset + count, jnp.maximum(largest, count)

  init = (
      jnp.full((capacity + cap,), n, jnp.int32),
      jnp.zeros((capacity + cap,), jnp.int32),
      jnp.int32(0),
      jnp.int32(0),
  )
  src, dst, total, largest = jax.lax.fori_loop(0, num, body, init)
  return src[:capacity], dst[:capacity], total, largest


def ball_graph(x, delta):
  """The delta-ball graph as an edge list (edge r -> j iff ||x_r - x_j|| < delta).

  Two passes over row blocks: the first counts each block's edges, the
  second writes them. Time O(n^2 * d), memory O(E + n * d + 512 * n).

  Args:
    x: f32[n, d].
    delta: f32[] > 0.

  Returns:
    (src i32[E'], dst i32[E']), sorted by src, with E' >= E; slots past the
    E edges have src = n.
  """
  b = min(_ROWS, x.shape[0])
  counts = np.asarray(_block_edge_counts(x, delta, b)).astype(np.int64)
  capacity, cap = int(counts.sum()), int(counts.max())
  if capacity + 2 * cap >= 2**31:
    raise ValueError(
        f'probcover: the delta-ball graph has {capacity} edges '
        f'(delta={float(delta):.4g}), more than i32 indices hold; set a smaller '
        'strategy_options.probcover_delta'
    )
  while True:
    src, dst, total, largest = _fill_edges(x, delta, b, capacity, cap)
    total, largest = int(total), int(largest)
    if total <= capacity and largest <= cap:
      return src, dst
    # The second pass rounded a distance differently from the first: make room.
    capacity, cap = max(capacity, total), max(cap, largest)


@functools.partial(jax.jit, static_argnames=('k',))
def max_coverage(src, dst, labeled, key, k):
  """Greedy max coverage of the graph's balls, the labeled balls covered first.

  Each pick is the unlabeled point whose ball holds the most uncovered
  points (lowest index on ties); when no ball holds any, the unlabeled point
  with the highest uniform priority drawn from `key`. Time O(k * E), memory
  O(E + n).

  Args:
    src: i32[E] edge sources, sorted; entries equal to n are padding.
    dst: i32[E] edge targets (x_dst lies in the ball of x_src).
    labeled: bool[n].
    key: PRNG key of the fallback order.
    k: number of picks (static).

  Returns:
    i32[k] in pick order.
  """
  labeled = jnp.asarray(labeled, bool)
  n = labeled.shape[0]

  def ball_of(centres):  # bool[n]: points in the ball of any centre (centres: bool[n + 1])
    return jax.ops.segment_max(centres[src].astype(jnp.int32), dst, num_segments=n) > 0

  covered = ball_of(jnp.append(labeled, False))
  priority = jax.random.uniform(key, (n,))

  def body(i, carry):
    covered, taken, picks = carry
    gain = jax.ops.segment_sum(
        (~covered[dst]).astype(jnp.int32), src, num_segments=n + 1, indices_are_sorted=True
    )[:n]
    gain = jnp.where(taken, -1, gain)
    best = jnp.argmax(gain)
    j = jnp.where(gain[best] > 0, best, jnp.argmax(jnp.where(taken, -1.0, priority)))
    j = j.astype(jnp.int32)
    covered = covered | ball_of(jnp.arange(n + 1) == j)
    return covered, taken.at[j].set(True), picks.at[i].set(j)

  return jax.lax.fori_loop(0, k, body, (covered, labeled, jnp.zeros((k,), jnp.int32)))[2]


ALPHA = options_lib.number(
    'probcover_alpha',
    0.95,
    lambda v: 0 < v <= 1,
    'a number in (0, 1]',
    'purity of the chosen delta',
)
DELTA = options_lib.finite(
    'probcover_delta', None, 'a fixed delta (unset: the purity heuristic)', above=0
)
CLUSTERS = options_lib.positive_int(
    'probcover_clusters', None, 'k-means clusters when there are no logits (unset: classes)'
)


def settings_of(options) -> dict:
  """ProbCover's options, checked: delta and clusters (None when unset), alpha, iters.

  Every field is checked, even those a fixed `probcover_delta` leaves unused.
  """
  read = lambda option: option.read(options, 'probcover')
  return dict(
      delta=read(DELTA), alpha=read(ALPHA), iters=read(kmeans.ITERS), clusters=read(CLUSTERS)
  )


def delta_of(inputs: base.Inputs, x, key, options) -> float:
  """`probcover_delta` if set, else the purity heuristic's delta on `x`."""
  settings = settings_of(options)
  if settings['delta'] is not None:
    return settings['delta']
  if inputs.logits is not None:
    clusters = int(inputs.logits.shape[-1])
  elif settings['clusters'] is not None:
    clusters = settings['clusters']
  else:
    raise ValueError(
        'probcover: needs logits (for the number of classes) or '
        'strategy_options.probcover_clusters'
    )
  n = x.shape[0]
  num_pure = min(max(math.ceil(settings['alpha'] * n - 1e-9), 1), n)
  return float(
      purity_delta(
          x, key, num_clusters=min(clusters, n), iters=settings['iters'], num_pure=num_pure
      )
  )


def select(inputs: base.Inputs, k: int, key, options=None):
  """ProbCover on L2-normalised `inputs.embeddings` (the model's, or fixed ones).

  Time O((c + iters) * n * c * d + n^2 * d + k * E) for c classes and E
  edges; memory O(E + n * d + 512 * n), no n x n matrix.

  Args:
    inputs: `labeled: bool[n]`, `embeddings: f32[n, d]`, and `logits:
      f32[m, n, c]` (only its class count c is read).
    k: number of picks.
    key: PRNG key of the k-means seeding and the random fallback.
    options: `probcover_alpha` (purity, in (0, 1], default 0.95),
      `probcover_delta` (a fixed delta > 0; overrides the heuristic),
      `probcover_clusters` (k-means clusters when no logits are given),
      `kmeans_iters` (int >= 1, default 20).

  Returns:
    i32[k] in pick order.
  """
  x = normalise(inputs.embeddings)
  delta_key, pick_key = jax.random.split(key)
  delta = delta_of(inputs, x, delta_key, options)
  src, dst = ball_graph(x, jnp.float32(delta))
  logging.info(
      'probcover: delta=%.4f, %d edges over %d points',
      delta,
      int(jnp.sum(src < x.shape[0])),
      x.shape[0],
  )
  return max_coverage(src, dst, jnp.asarray(inputs.labeled, bool), pick_key, k=k)


STRATEGY = base.Strategy(
    'probcover',
    select,
    frozenset({base.LOGITS, base.EMBEDDINGS}),
    kind='low_budget',
    options=(ALPHA, DELTA, CLUSTERS, kmeans.ITERS),
)
