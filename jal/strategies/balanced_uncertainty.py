"""Balanced uncertainty: per-predicted-class quotas for imbalanced pools.

Plain uncertainty sampling on an imbalanced pool keeps querying the majority
side of the boundary, since most uncertain points are predicted majority.
Here the k queries are first split between the classes the ensemble predicts,
in inverse proportion to each class's predicted frequency among the unlabeled
points (the strategy sees no labels, so the ensemble's predicted class
distribution over the pool estimates the class frequencies), then each class
gets its most uncertain points by variation ratio (Beluch et al., CVPR 2018).
This is in the spirit of class-balanced acquisition for imbalanced data (e.g.
Aggarwal et al., "Active Learning for Imbalanced Datasets", WACV 2020).
"""

import functools

import jax
import jax.numpy as jnp

from jal import kernels
from jal.strategies import base


def _largest_remainder(shares, active, total):
  """Integer split of `total` along `shares` (summing to total) by largest remainder.

  Ties between remainders go to the lower class index; inactive classes get
  nothing extra.
  """
  floors = jnp.floor(shares).astype(jnp.int32)
  extra = total - jnp.sum(floors)
  remainder = jnp.where(active, shares - floors, -1.0)
  order = jnp.argsort(-remainder, stable=True)
  rank = jnp.zeros_like(floors).at[order].set(jnp.arange(floors.shape[0], dtype=jnp.int32))
  return floors + ((rank < extra) & active).astype(jnp.int32)


@jax.jit
def class_quota(freq, k, available):
  """How many of k queries each class gets: inverse-frequency, largest remainder.

  Class i's ideal share is `k * (1 / freq_i) / sum_j (1 / freq_j)` over the
  classes with `freq > 0` and `available > 0`. A class whose ideal share
  exceeds its `available` count is capped there, and the remaining budget is
  split afresh, in the same proportions, among the other classes (repeated
  until no share exceeds its class's count: water-filling). The uncapped
  shares are then rounded by largest remainder (ties to the lower class
  index), so the quotas sum to k. Classes with `freq == 0` but candidates get
  a share only once every positive-frequency class is capped, then uniformly.

  At most c rounds of O(c) work, plus one O(c log c) rounding: time O(c^2),
  memory O(c).

  Args:
    freq: f32[c], estimated class frequencies (need not sum to 1).
    k: the number of queries (int).
    available: i32[c], how many candidates each class has.

  Returns:
    i32[c], summing to min(k, sum(available)), each at most `available`.
  """
  freq = jnp.asarray(freq, jnp.float32)
  available = jnp.asarray(available, jnp.int32)
  k = jnp.asarray(k, jnp.int32)
  weight = jnp.where(freq > 0, 1.0 / jnp.where(freq > 0, freq, 1.0), 0.0)

  def split(capped):
    """(active, budget, shares) with the `capped` classes fixed at `available`."""
    active = ~capped & (available > 0)
    budget = k - jnp.sum(jnp.where(capped, available, 0))
    w = jnp.where(active, weight, 0.0)
    w = jnp.where(jnp.any(w > 0), w, active.astype(jnp.float32))
    shares = budget * w / jnp.maximum(jnp.sum(w), 1e-30)
    return active, budget, shares

  def body(_, capped):
    active, _, shares = split(capped)
    return capped | (active & (shares > available))

  capped = jax.lax.fori_loop(0, freq.shape[0], body, jnp.zeros(freq.shape, bool))
  active, budget, shares = split(capped)
  rounded = _largest_remainder(shares, active, jnp.maximum(budget, 0))
  return jnp.where(capped, available, jnp.minimum(rounded, available)).astype(jnp.int32)


@jax.jit
def predicted_classes(member_logits, labeled):
  """The ensemble's predicted class of every point, and of the unlabeled ones per class.

  Time O(m * n * c), memory O(m * n * c).

  Args:
    member_logits: f32[m, n, c].
    labeled: bool[n].

  Returns:
    (pred: i32[n], the argmax of the mean softmax over members;
     available: i32[c], unlabeled points predicted as each class).
  """
  c = member_logits.shape[-1]
  probs = jnp.mean(jax.nn.softmax(member_logits.astype(jnp.float32), axis=-1), axis=0)
  pred = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  available = jnp.zeros((c,), jnp.int32).at[pred].add((~labeled).astype(jnp.int32))
  return pred, available


@functools.partial(jax.jit, static_argnames=('k',))
def _balanced(member_logits, labeled, key, k):
  c = member_logits.shape[-1]
  n = labeled.shape[0]
  pred, available = predicted_classes(member_logits, labeled)
  freq = available.astype(jnp.float32) / jnp.maximum(jnp.sum(available), 1)
  quota = class_quota(freq, k, available)
  scores = kernels.variation_ratio(member_logits)
  # Sort by (class, score descending, random tie order); labeled points last.
  cls = jnp.where(labeled, c, pred)
  tiebreak = jax.random.permutation(key, n)
  order = jnp.lexsort((tiebreak, -scores, cls))
  sorted_cls = cls[order]
  counts = jnp.zeros((c + 1,), jnp.int32).at[cls].add(1)
  start = jnp.cumsum(counts) - counts
  rank = jnp.arange(n, dtype=jnp.int32) - start[sorted_cls]
  take = rank < jnp.append(quota, 0)[sorted_cls]
  chosen = jnp.zeros((n,), bool).at[order].set(take)
  # Same key, same permutation: the chosen k in the same tie order, most uncertain first.
  return kernels.top_k_with_random_ties(scores, chosen, key, k=k)


def select(inputs: base.Inputs, k: int, key, options=None):
  """Per-class top variation ratio, with k split by `class_quota`.

  Classes are the ensemble's predictions (argmax of the mean softmax); class
  frequencies are estimated from them over the unlabeled points, and class i
  gets `class_quota(freq, k, available)[i]` of its most uncertain unlabeled
  points (ties broken by a random order from `key`). Time O(m * n * c + n log
  n), memory O(m * n * c).

  Args:
    inputs: `labeled: bool[n]` and `logits: f32[m, n, c]`.
    k: number of picks; at most the number unlabeled.
    key: PRNG key for tie-breaking.
    options: unused.

  Returns:
    i32[k], most uncertain first.
  """
  del options
  return _balanced(inputs.logits, jnp.asarray(inputs.labeled, bool), key, k=k)


STRATEGY = base.Strategy(
    'balanced_uncertainty', select, frozenset({base.LOGITS}), kind='hybrid', min_members=2
)
