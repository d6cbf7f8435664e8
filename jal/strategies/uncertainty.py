"""Uncertainty sampling from softmax outputs: single-model and ensemble scores.

Single-model scores read member 0's logits (Lewis & Gale, SIGIR 1994;
Scheffer et al., IDA 2001; Shannon entropy as in Settles, Active Learning
Literature Survey, 2009). Ensemble scores read every member's logits:
the entropy of the mean prediction, and BALD's mutual information between the
prediction and the model (Houlsby et al. 2011; Gal et al., ICML 2017), with
ensemble members standing in for posterior samples (Beluch et al., CVPR 2018).

Every score is higher for more uncertain points; picks are the k highest
unlabeled scores, ties broken by a random order drawn from the key.
"""

import jax
import jax.numpy as jnp

from jal import kernels
from jal.strategies import base


@jax.jit
def least_confidence(logits):
  """Least confidence: `1 - max_c p(c | x)`.

  Time O(n * c), memory O(n * c).

  Args:
    logits: f32[n, c] of one model.

  Returns:
    f32[n] in [0, 1 - 1/c].
  """
  return 1.0 - jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


@jax.jit
def margin(logits):
  """Negative margin `-(p1 - p2)` between the two most probable classes.

  The smallest margin scores highest. Time O(n * c), memory O(n * c).

  Args:
    logits: f32[n, c] of one model, c >= 2.

  Returns:
    f32[n] in [-1, 0].
  """
  top2 = jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), 2)[0]
  return top2[:, 1] - top2[:, 0]


def _entropy_from_logits(logits):
  """Entropy in nats of softmax(logits) over the last axis, stable for large logits."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  p = jnp.exp(logp)
  return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


@jax.jit
def entropy(logits):
  """Predictive entropy `-sum_c p log p` in nats.

  Time O(n * c), memory O(n * c).

  Args:
    logits: f32[n, c] of one model.

  Returns:
    f32[n] in [0, log c].
  """
  return _entropy_from_logits(logits)


def _mean_probs(member_logits):
  """f32[m, n, c] logits -> f32[n, c], the ensemble's mean softmax."""
  return jnp.mean(jax.nn.softmax(member_logits.astype(jnp.float32), axis=-1), axis=0)


@jax.jit
def ensemble_entropy(member_logits):
  """Entropy of the ensemble's mean prediction, `H[mean_m p_m]`, in nats.

  Counts both disagreement between members and each member's own ambiguity.
  Time O(m * n * c), memory O(m * n * c).

  Args:
    member_logits: f32[m, n, c].

  Returns:
    f32[n] in [0, log c].
  """
  return jnp.sum(jax.scipy.special.entr(_mean_probs(member_logits)), axis=-1)


@jax.jit
def bald(member_logits):
  """BALD mutual information `H[mean_m p_m] - mean_m H[p_m]`, in nats.

  High only where members are individually confident but disagree; members
  that agree (however unsure) score 0. Clamped at 0 against rounding (the
  value is non-negative by concavity of H). Time O(m * n * c), memory
  O(m * n * c).

  Args:
    member_logits: f32[m, n, c].

  Returns:
    f32[n] in [0, log min(m, c)].
  """
  expected = jnp.mean(_entropy_from_logits(member_logits), axis=0)
  return jnp.maximum(ensemble_entropy(member_logits) - expected, 0.0)


def make_select(score_fn, single_model: bool, description: str, field: str = base.LOGITS):
  """A select function picking the top-k unlabeled `score_fn` scores.

  Shared by every score-then-rank strategy (here, `ensembles`, `mc_dropout`).

  Args:
    score_fn: `f32[s, n, c] -> f32[n]` (or `f32[n, c] -> f32[n]` if
      single_model), higher for more uncertain points.
    single_model: score sample 0 only (member 0).
    description: what the score is, for the docstring.
    field: the `Inputs` field holding the samples: 'logits' (members) or
      'mc_logits' (MC dropout passes).
  """
  samples = {base.LOGITS: ('logits', 'm'), base.MC_LOGITS: ('mc_logits', 'T')}[field]

  def select(inputs: base.Inputs, k: int, key, options=None):
    del options
    logits = getattr(inputs, field)
    scores = score_fn(logits[0] if single_model else logits)
    return kernels.top_k_with_random_ties(scores, ~jnp.asarray(inputs.labeled), key, k=k)

  select.__doc__ = f"""The k unlabeled points with the highest {description}.

  Ties are broken by a random order drawn from `key`. Time O({samples[1]} * n * c + n log
  n), memory O({samples[1]} * n * c).

  Args:
    inputs: `labeled: bool[n]` and `{samples[0]}: f32[{samples[1]}, n, c]`{
        " (member 0's are used)" if single_model else ""}.
    k: number of picks.
    key: PRNG key for tie-breaking.
    options: unused.

  Returns:
    i32[k], most uncertain first.
  """
  return select


_LOGITS = frozenset({base.LOGITS})

LEAST_CONFIDENCE = base.Strategy(
    'least_confidence',
    make_select(least_confidence, True, 'least confidence of member 0'),
    _LOGITS,
    kind='uncertainty',
)
MARGIN = base.Strategy(
    'margin',
    make_select(margin, True, 'negative top-2 margin of member 0'),
    _LOGITS,
    kind='uncertainty',
)
ENTROPY = base.Strategy(
    'entropy',
    make_select(entropy, True, 'predictive entropy of member 0'),
    _LOGITS,
    kind='uncertainty',
)
ENSEMBLE_ENTROPY = base.Strategy(
    'ensemble_entropy',
    make_select(ensemble_entropy, False, 'entropy of the mean prediction'),
    _LOGITS,
    kind='uncertainty',
    min_members=2,
)
ENSEMBLE_BALD = base.Strategy(
    'ensemble_bald',
    make_select(bald, False, 'BALD mutual information'),
    _LOGITS,
    kind='uncertainty',
    min_members=2,
)
