"""DeepFool Active Learning, DFAL (Ducoffe & Precioso, arXiv:1802.09841, 2018).

A point's distance to the decision boundary is estimated by the norm of its
DeepFool adversarial perturbation (Moosavi-Dezfooli et al., CVPR 2016), and
the points closest to the boundary are queried. DeepFool linearises the
classifier at the current point and steps to the nearest linearised boundary
between the original class k0 and another class k (of the `dfal_classes`
highest-scoring at the start, as in DeepFool's code):

    l = argmin_{k != k0} |f_k - f_k0| / ||grad f_k - grad f_k0||,
    r += (|f_l - f_k0| + 1e-4) / ||w_l||^2 * w_l,   w_l = grad f_l - grad f_k0,

evaluating the next linearisation at x0 + (1 + overshoot) r, until the
prediction there changes or `dfal_max_iter` steps are spent. The reported
norm is ||(1 + overshoot) r||; a point that never crosses, or that sits where
every gradient difference vanishes, gets +inf and is ranked last. For a
linear binary classifier one step is exact: the norm is
(1 + overshoot) (|w.x + b| + 1e-4) / ||w||.

This runs on member 0 (via `inputs.classifier`) in its normalised input space
(`train.prepare_inputs`), on a random subset of `dfal_candidates` unlabeled
points drawn from the key, so a round costs at most that many attacks
whatever the pool size. DFAL also adds each query's adversarial example with
the queried label to the training set; jal's loop trains on pool points only,
so only the query rule is reproduced here.
"""

import functools

import jax
import jax.numpy as jnp

from jal import kernels
from jal import train
from jal.strategies import base
from jal.strategies import options as options_lib

_STEP_EPS = 1e-4  # DeepFool's step slack, added to |f_l - f_k0|


# DeepFool's steps, overshoot and target classes as in Moosavi-Dezfooli et al.
CANDIDATES = options_lib.positive_int(
    'dfal_candidates', 2000, 'unlabeled points attacked per round'
)
MAX_ITER = options_lib.positive_int('dfal_max_iter', 50, 'DeepFool steps at most')
OVERSHOOT = options_lib.finite('dfal_overshoot', 0.02, 'DeepFool overshoot', at_least=0)
CLASSES = options_lib.number(
    'dfal_classes',
    10,
    lambda v: v.is_integer() and v >= 2,
    'an integer >= 2',
    'target classes, the highest-scoring at x0',
)
BATCH_SIZE = options_lib.positive_int(
    'dfal_batch_size', None, 'points attacked at once (unset: eval_batch_size)'
)


def settings_of(options):
  """DFAL's options, checked: (candidates, max_iter, overshoot, classes, batch size or None)."""
  read = lambda option: option.read(options, 'dfal')
  return (read(CANDIDATES), read(MAX_ITER), read(OVERSHOOT), int(read(CLASSES)), read(BATCH_SIZE))


def deepfool_norms(logits_fn, x0, max_iter: int, overshoot: float, num_classes: int):
  """DeepFool perturbation norms of a batch of points, all attacked at once.

  As in DeepFool's reference code, the target classes are the `num_classes`
  highest-scoring classes at x0 (k0 among them); the prediction is checked
  over all classes. Each iteration runs one forward pass and `num_classes`
  backward passes (`vmap` over the cotangents of one `jax.vjp`) on the whole
  batch; points already done are frozen, and the loop stops once every point
  is done or after `max_iter` steps. Time O(b * T * (F + C * B')) for T <=
  max_iter + 1 iterations, C = num_classes, F and B' the per-point forward
  and backward costs; memory O(b * C * D) for the Jacobian plus C backward
  passes' activations for b points.

  Args:
    logits_fn: `f32[b, D] -> f32[b, c]`, applied to points independently
      (e.g. an eval-mode network on flattened inputs).
    x0: f32[b, D], the points to attack.
    max_iter: most DeepFool steps per point (static).
    overshoot: the step is scaled by 1 + overshoot (static).
    num_classes: target classes per point, 2 <= num_classes; capped at c.

  Returns:
    f32[b]: ||(1 + overshoot) r|| of the first perturbation that changes the
    prediction, or +inf if none does within `max_iter` steps.
  """
  b = x0.shape[0]
  logits0 = logits_fn(x0)
  c = logits0.shape[-1]
  rows = jnp.arange(b)
  k0 = jnp.argmax(logits0, axis=-1)
  # Column 0 is k0 (even under ties), then the next highest classes.
  targets = jax.lax.top_k(logits0.at[rows, k0].set(jnp.inf), min(num_classes, c))[1]
  cotangents = jnp.moveaxis(jax.nn.one_hot(targets, c, dtype=logits0.dtype), 1, 0)  # [C, b, c]

  def cond(state):
    it, _, done, _ = state
    return (it <= max_iter) & ~jnp.all(done)

  def body(state):
    it, r_tot, done, norm = state
    pert = (1.0 + overshoot) * r_tot
    logits, vjp = jax.vjp(logits_fn, x0 + pert)
    crossed = ~done & (jnp.argmax(logits, axis=-1) != k0)
    norm = jnp.where(crossed, jnp.linalg.norm(pert, axis=-1), norm)
    done = done | crossed
    grads = jnp.moveaxis(jax.vmap(lambda ct: vjp(ct)[0])(cotangents), 0, 1)  # [b, C, D]
    f_t = jnp.take_along_axis(logits, targets, axis=-1)
    f = f_t - f_t[:, :1]  # [b, C]; column 0 is k0
    w = grads - grads[:, :1]  # [b, C, D]
    w_norm = jnp.linalg.norm(w, axis=-1)  # [b, C]
    usable = (jnp.arange(targets.shape[1]) > 0)[None, :] & (w_norm > 0)
    dist = jnp.where(usable, jnp.abs(f) / jnp.where(usable, w_norm, 1.0), jnp.inf)
    l = jnp.argmin(dist, axis=-1)
    done = done | ~jnp.isfinite(dist[rows, l])  # no usable direction: stays +inf
    scale = (jnp.abs(f[rows, l]) + _STEP_EPS) / jnp.maximum(w_norm[rows, l], 1e-30) ** 2
    r_tot = jnp.where(done[:, None], r_tot, r_tot + scale[:, None] * w[rows, l])
    return it + 1, r_tot, done, norm

  init = (jnp.int32(0), jnp.zeros_like(x0), jnp.zeros((b,), bool), jnp.full((b,), jnp.inf))
  return jax.lax.while_loop(cond, body, init)[3]


@functools.partial(jax.jit, static_argnames=('num',))
def draw_candidates(labeled, key, num):
  """`num` pool points drawn uniformly without replacement, unlabeled first.

  Args:
    labeled: bool[n].
    key: PRNG key.
    num: how many to draw (static), at most n.

  Returns:
    (i32[num] indices, bool[num] unlabeled); only when fewer than `num`
    points are unlabeled do labeled ones fill the tail.
  """
  priority = jnp.where(labeled, -1.0, jax.random.uniform(key, labeled.shape))
  idx = jax.lax.top_k(priority, num)[1].astype(jnp.int32)
  return idx, ~labeled[idx]


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6, 7))
def _dfal(model, spec, num, batch, max_iter, overshoot, num_classes, k, variables, x, labeled, key):
  n = labeled.shape[0]
  cand, valid = draw_candidates(labeled, jax.random.fold_in(key, 0), num)
  num_batches = -(-num // batch)
  slots = jnp.minimum(jnp.arange(num_batches * batch), num - 1).reshape(num_batches, batch)

  def batch_norms(slot):
    x0 = train.prepare_inputs(x[cand[slot]], spec)
    shape = x0.shape

    def logits_fn(flat):
      return model.apply(variables, flat.reshape(shape), train=False)[0].astype(jnp.float32)

    return deepfool_norms(
        logits_fn, x0.reshape(batch, -1).astype(jnp.float32), max_iter, overshoot, num_classes
    )

  norms = jax.lax.map(batch_norms, slots).reshape(-1)[:num]
  # +inf (never crossed) ranks after every finite norm but stays eligible.
  score = -jnp.where(jnp.isfinite(norms), norms, jnp.finfo(jnp.float32).max)
  scores = jnp.zeros((n,), jnp.float32).at[cand].set(score)
  eligible = jnp.zeros((n,), bool).at[cand].set(valid)
  return kernels.top_k_with_random_ties(scores, eligible, jax.random.fold_in(key, 1), k=k)


def select(inputs: base.Inputs, k: int, key, options=None):
  """The k candidates with the smallest DeepFool perturbation norms.

  Candidates are max(dfal_candidates, k) unlabeled points (or all, if fewer)
  drawn uniformly with `fold_in(key, 0)`; ties, such as several +inf norms,
  are broken by a random order from `fold_in(key, 1)`. Deterministic given
  (inputs, key, options); one compilation serves every round of a run.

  Time O(M * T * (F + C * B')) for M = min(max(dfal_candidates, k), n)
  candidates, T <= dfal_max_iter + 1 iterations per batch (the slowest point
  of a batch sets it; DeepFool typically needs 2-4), C = min(dfal_classes, c)
  target classes, and F, B' member 0's per-point forward and backward costs:
  about C + 1 network passes per candidate and iteration. Memory O(b * C * D)
  for a batch's Jacobian (b = dfal_batch_size, D the input size) plus C
  backward passes' activations for b points, and O(n) for the ranking.

  Args:
    inputs: `labeled: bool[n]` and `classifier` (member 0's network and the
      stored pool).
    k: number of picks.
    key: PRNG key (candidate draw and tie-breaking).
    options: `dfal_candidates` (int, default 2000), `dfal_max_iter` (int,
      default 50), `dfal_overshoot` (float >= 0, default 0.02),
      `dfal_classes` (int >= 2, default 10 as in DeepFool's code: target
      classes per point), `dfal_batch_size` (int, default
      `classifier.chunk_size`: points attacked at once).

  Returns:
    i32[k], smallest perturbation norm first.
  """
  clf = inputs.classifier
  labeled = jnp.asarray(inputs.labeled, bool)
  n = labeled.shape[0]
  candidates, max_iter, overshoot, classes, batch = settings_of(options)
  num = min(max(candidates, k), n)
  batch = min(batch or int(clf.chunk_size), num)
  return _dfal(
      clf.model,
      clf.spec,
      num,
      batch,
      max_iter,
      overshoot,
      classes,
      k,
      clf.variables,
      jnp.asarray(clf.x),
      labeled,
      key,
  )


STRATEGY = base.Strategy(
    'dfal',
    select,
    frozenset({base.CLASSIFIER}),
    kind='uncertainty',
    options=(CANDIDATES, MAX_ITER, OVERSHOOT, CLASSES, BATCH_SIZE),
)
