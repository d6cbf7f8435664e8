"""BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019) on MC dropout passes.

Top-k BALD scores points one at a time, so it happily picks k near-copies of
one informative point. BatchBALD scores the batch jointly, by the mutual
information between the batch's labels and the model:

    a(x_1..x_b) = H(y_1..y_b) - sum_i E_w[H(y_i | w)],

and builds the batch greedily (a is submodular, so greedy is within 1 - 1/e
of the best batch). The T MC dropout passes `mc_logits: f32[T, n, c]` are the
posterior samples w_1..w_T; each pass is one sampled network applied to the
whole pool (`jal.models`), which is what makes the joint over points
meaningful.

By the chain rule, adding x to the picks y_1..y_j changes a by

    H(y_x | y_1..y_j) - E_w[H(y_x | w)],

so each greedy step needs one conditional entropy per candidate. It is
computed from M configurations yhat of the picks' labels, each held as
log p(yhat | w_t) for every t:

  exact    while c^(j+1) <= M: every configuration, weighted by p(yhat);
  sampled  afterwards: M configurations drawn from p(y_1..y_j) (configuration
           m from network w_(m mod T), so draws are stratified over w, as
           in the reference code `batchbald_redux`), weighted 1/M. This is
           the paper's Section 3.2 estimator (sampled labels of the earlier
           picks, the new point's label summed exactly) less its term
           -E[log p(yhat)], which is the same for every candidate; the
           running joint entropy takes its place by the chain rule.

Given yhat, the posterior p(w_t | yhat) is a softmax over t, and
H(y_x | y_1..y_j) = sum_m weight_m * H(sum_t p(w_t | yhat_m) p(y_x | w_t)).
Working from the normalised posterior keeps the products of many
probabilities from underflowing.

Candidates are the top `batch_bald_candidates` unlabeled points by
single-point BALD (all unlabeled points if fewer), as common implementations
do. Their number C = min(batch_bald_candidates, n) does not change as the
labeled set grows, so a run compiles the greedy loop once.

Options (`config.strategy_options`): `batch_bald_samples` (M, default 10,000,
rounded down to a multiple of T) and `batch_bald_candidates` (C, default
1,000).

Time O(T * n * c + n log n) to rank candidates, then O(k * C * M * T * c)
for the greedy steps (one [M, T] x [T, c] product per candidate and step);
memory O(T * n * c + T * M + chunk * M * c), candidates being scored
`chunk` at a time so that chunk * M * c stays near 4M floats.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jal import kernels
from jal.strategies import base
from jal.strategies import mc_dropout
from jal.strategies import options as options_lib
from jal.strategies import uncertainty

SAMPLES = options_lib.positive_int(
    'batch_bald_samples', 10_000, 'joint configurations M sampled (rounded down to T * (M // T))'
)
CANDIDATES = options_lib.positive_int(
    'batch_bald_candidates', 1_000, 'top unlabeled points by single-point BALD (at least k)'
)
# Posterior predictives held at once while scoring candidates, in floats.
_CHUNK_ELEMENTS = 1 << 22


class JointLabels(NamedTuple):
  """The picked points' labels as configurations, per posterior sample.

  Attributes:
    exact: f32[T, M], log p(yhat_m | w_t) for every configuration yhat_m of
      the picks' labels (c^j of them, in mixed radix c); -inf in unused slots.
    sampled: f32[T, M], the same for M configurations drawn from the joint.
  """

  exact: jax.Array
  sampled: jax.Array


def num_configurations(num_passes: int, num_samples: int) -> int:
  """M: `num_samples` rounded down to a multiple of T (at least T)."""
  return max(num_passes, num_samples // num_passes * num_passes)


def exact_steps(num_classes: int, num_configs: int, k: int) -> int:
  """How many of k greedy steps enumerate all c^(j+1) configurations (<= M)."""
  steps, size = 0, num_classes
  while steps < k and size <= num_configs:
    steps, size = steps + 1, size * num_classes
  return steps


def _init(num_passes: int, num_configs: int) -> JointLabels:
  """No picks yet: one (empty) configuration of probability 1."""
  exact = jnp.where(jnp.arange(num_configs) == 0, 0.0, -jnp.inf)
  return JointLabels(
      jnp.broadcast_to(exact, (num_passes, num_configs)),
      jnp.zeros((num_passes, num_configs), jnp.float32),
  )


def _view(joint: JointLabels, exact: bool):
  """(log p(yhat_m | w_t): f32[T, M], weights: f32[M]) of one representation.

  Exact weights are p(yhat_m) = mean_t p(yhat_m | w_t) (0 in unused slots);
  sampled ones are 1/M.
  """
  if exact:
    t = joint.exact.shape[0]
    return joint.exact, jnp.exp(jax.scipy.special.logsumexp(joint.exact, axis=0) - math.log(t))
  m = joint.sampled.shape[1]
  return joint.sampled, jnp.full((m,), 1.0 / m, jnp.float32)


def _add(joint: JointLabels, log_p, key, exact: bool) -> JointLabels:
  """Adds one point with log p(y | w_t) `log_p: f32[T, c]` to the picks.

  Exact: configuration s of the j + 1 picks is (s // c of the j picks, label
  s % c); slots beyond c^(j+1) stay -inf. Sampled: configuration m draws its
  new label from its network w_(m mod T).
  """
  t, m = joint.sampled.shape
  c = log_p.shape[-1]
  new_exact = joint.exact
  if exact:
    s = jnp.arange(m)
    new_exact = joint.exact[:, s // c] + log_p[:, s % c]
  labels = jax.random.categorical(key, log_p[jnp.arange(m) % t])  # i32[M]
  return JointLabels(new_exact, joint.sampled + log_p[:, labels])


def conditional_entropies(log_joint, weights, probs, chunk: int):
  """H(y_x | picks' labels) for each candidate x, in nats.

  Args:
    log_joint: f32[T, M], log p(yhat_m | w_t) of M configurations.
    weights: f32[M], their weights (summing to 1).
    probs: f32[C, T, c], p(y_x | w_t) of C candidates.
    chunk: candidates scored at once (static).

  Returns:
    f32[C], `sum_m weights_m * H(sum_t p(w_t | yhat_m) probs[x, t])`.
  """
  lse = jax.scipy.special.logsumexp(log_joint, axis=0)
  post = jnp.exp(log_joint - jnp.where(jnp.isfinite(lse), lse, 0.0))  # [T, M]; 0 if impossible
  n, t, c = probs.shape
  pad = -n % chunk
  chunks = jnp.pad(probs, ((0, pad), (0, 0), (0, 0))).reshape(-1, chunk, t, c)

  def score(p):
    q = jnp.einsum('tm,btc->bmc', post, p, precision=jax.lax.Precision.HIGHEST)
    h = jnp.sum(jax.scipy.special.entr(q), axis=-1)  # [chunk, M]
    return jnp.dot(h, weights, precision=jax.lax.Precision.HIGHEST)

  return jax.lax.map(score, chunks).reshape(-1)[:n]


def _expected_entropy(log_p):
  """E_w[H(y | w)]: f32[..., T, c] log-probabilities -> f32[...]."""
  return jnp.mean(-jnp.sum(jnp.exp(log_p) * log_p, axis=-1), axis=-1)


def _chunk(num_candidates: int, num_configs: int, num_classes: int) -> int:
  return max(1, min(num_candidates, _CHUNK_ELEMENTS // (num_configs * num_classes)))


@functools.partial(jax.jit, static_argnames=('num_samples',))
def joint_entropy(mc_logits, key, num_samples=SAMPLES.default):
  """H(y_1, ..., y_b) of b points, by the chain rule over them in order.

  Exact while c^j <= M, then estimated from M sampled configurations, exactly
  as `batch_bald` scores its picks. Time O(b * M * T * c), memory O(T * M).

  Args:
    mc_logits: f32[T, b, c], T posterior samples' logits on b points.
    key: PRNG key for the sampled configurations.
    num_samples: M before rounding (static).

  Returns:
    f32[], in nats.
  """
  t, b, c = mc_logits.shape
  m = num_configurations(t, num_samples)
  log_p = jax.nn.log_softmax(mc_logits.astype(jnp.float32), axis=-1).transpose(1, 0, 2)
  joint, total = _init(t, m), jnp.float32(0.0)
  for i in range(b):
    exact = c ** (i + 1) <= m
    total += conditional_entropies(*_view(joint, exact), jnp.exp(log_p[i : i + 1]), chunk=1)[0]
    joint = _add(joint, log_p[i], jax.random.fold_in(key, i), exact)
  return total


@functools.partial(jax.jit, static_argnames=('k', 'num_candidates', 'num_samples'))
def batch_bald(mc_logits, labeled, key, k, num_candidates, num_samples=SAMPLES.default):
  """Greedy BatchBALD batch of k points among the top-BALD candidates.

  See the module docstring for the method and its cost: time O(T * n * c +
  n log n + k * C * M * T * c), memory O(T * n * c + T * M + chunk * M * c).

  Args:
    mc_logits: f32[T, n, c], T MC dropout passes over the pool.
    labeled: bool[n], never picked.
    key: PRNG key: ties among candidates, and the sampled configurations.
    k: batch size (static).
    num_candidates: C (static), k <= C <= n. Candidates are the C highest
      BALD scores of unlabeled points, then (if fewer than C are unlabeled)
      labeled points, which are never picked.
    num_samples: M before rounding to a multiple of T (static).

  Returns:
    (picks i32[k] in greedy order, scores f32[k]): scores[i] is the
    (estimated) joint mutual information a(x_picks[0], ..., x_picks[i]), so
    scores[0] is the BALD score of the first pick.
  """
  t, _, c = mc_logits.shape
  m = num_configurations(t, num_samples)
  key_ties, key_samples = jax.random.split(key)
  mc_logits = mc_logits.astype(jnp.float32)
  cand = kernels.top_k_with_random_ties(
      uncertainty.bald(mc_logits), ~labeled, key_ties, k=num_candidates
  )
  log_p = jax.nn.log_softmax(mc_logits[:, cand], axis=-1).transpose(1, 0, 2)  # [C, T, c]
  probs = jnp.exp(log_p)
  expected = _expected_entropy(log_p)  # [C]
  chunk = _chunk(num_candidates, m, c)

  def step(exact, i, carry):
    joint, taken, picks, scores, joint_h, expected_sum = carry
    cond = conditional_entropies(*_view(joint, exact), probs, chunk)
    # Ties go to the lowest candidate rank: higher BALD, then the key's order.
    j = jnp.argmax(jnp.where(taken, -jnp.inf, cond - expected))
    joint_h, expected_sum = joint_h + cond[j], expected_sum + expected[j]
    joint = _add(joint, log_p[j], jax.random.fold_in(key_samples, i), exact)
    return (
        joint,
        taken.at[j].set(True),
        picks.at[i].set(j),
        scores.at[i].set(joint_h - expected_sum),
        joint_h,
        expected_sum,
    )

  carry = (
      _init(t, m),
      labeled[cand],
      jnp.zeros((k,), jnp.int32),
      jnp.zeros((k,), jnp.float32),
      jnp.float32(0.0),
      jnp.float32(0.0),
  )
  n_exact = exact_steps(c, m, k)
  carry = jax.lax.fori_loop(0, n_exact, functools.partial(step, True), carry)
  carry = jax.lax.fori_loop(n_exact, k, functools.partial(step, False), carry)
  _, _, picks, scores, _, _ = carry
  return cand[picks].astype(jnp.int32), scores


def settings_of(options) -> tuple[int, int]:
  """(M, C): `batch_bald_samples` (10,000) and `batch_bald_candidates` (1,000), checked."""
  return SAMPLES.read(options, 'batch_bald'), CANDIDATES.read(options, 'batch_bald')


def select(inputs: base.Inputs, k: int, key, options=None):
  """The greedy BatchBALD batch; see the module docstring.

  Time O(T * n * c + n log n + k * C * M * T * c), memory O(T * n * c + T * M
  + chunk * M * c), with C candidates and M joint configurations.

  Args:
    inputs: `labeled: bool[n]` and `mc_logits: f32[T, n, c]`.
    k: number of picks.
    key: PRNG key (candidate tie-breaking, sampled configurations).
    options: `batch_bald_samples` (M, default 10,000) and
      `batch_bald_candidates` (C, default 1,000; at least k).

  Returns:
    i32[k] in greedy pick order.
  """
  num_samples, num_candidates = settings_of(options)
  labeled = jnp.asarray(inputs.labeled, bool)
  num_candidates = min(max(num_candidates, k), labeled.shape[0])
  return batch_bald(
      jnp.asarray(inputs.mc_logits),
      labeled,
      key,
      k=k,
      num_candidates=num_candidates,
      num_samples=num_samples,
  )[0]


# mc_samples: the passes the loop runs for it.
STRATEGY = base.Strategy(
    'batch_bald',
    select,
    frozenset({base.MC_LOGITS}),
    kind='uncertainty',
    options=(mc_dropout.MC_SAMPLES, SAMPLES, CANDIDATES),
)
