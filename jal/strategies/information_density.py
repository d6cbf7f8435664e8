"""Information density (Settles & Craven, EMNLP 2008).

Uncertainty sampling picks outliers as readily as typical points; weighting
each point's uncertainty by how similar it is to the rest of the unlabeled
pool favours uncertain points in dense regions:

    score(x) = H[mean_m p_m(y | x)] * (mean_{u in U} cos(h_x, h_u))^beta

with the entropy of the ensemble's mean prediction as the uncertainty
(`uncertainty.ensemble_entropy`, which for one member is its own entropy)
and U the unlabeled pool. The mean cosine similarity is exact in O(n * d):
mean_u cos(h_x, h_u) = h_x/|h_x| . mean_u h_u/|h_u|, no n x n matrix.

Settles & Craven's features are non-negative (so cosines lie in [0, 1]), as
are the ReLU embeddings of every jal model; for embeddings that can point
anywhere (e.g. SimCLR features from `strategy_options.embeddings`), a
negative mean similarity is clamped to 0, so density stays a weight.
"""

import jax
import jax.numpy as jnp

from jal import kernels
from jal.strategies import base
from jal.strategies import options as options_lib
from jal.strategies import uncertainty


@jax.jit
def mean_cosine_similarity(embeddings, pool):
  """Each point's mean cosine similarity to the points of `pool`, exactly.

  Zero vectors have similarity 0 to everything. Time O(n * d), memory
  O(n * d).

  Args:
    embeddings: f32[n, d].
    pool: bool[n], the points averaged over (at least one).

  Returns:
    f32[n] in [-1, 1].
  """
  h = jnp.asarray(embeddings, jnp.float32)
  unit = h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
  w = jnp.asarray(pool, jnp.float32)
  centre = jnp.sum(unit * w[:, None], axis=0) / jnp.maximum(jnp.sum(w), 1.0)
  return jnp.dot(unit, centre, precision=jax.lax.Precision.HIGHEST)


@jax.jit
def information_density(member_logits, embeddings, labeled, beta):
  """Ensemble entropy times clamped mean cosine similarity to the unlabeled pool, ^beta.

  Time O(m * n * c + n * d), memory O(m * n * c + n * d).

  Args:
    member_logits: f32[m, n, c].
    embeddings: f32[n, d].
    labeled: bool[n]; the density averages over the other points.
    beta: f32[] >= 0, the density's weight (0: plain entropy).

  Returns:
    f32[n] >= 0.
  """
  density = jnp.maximum(mean_cosine_similarity(embeddings, ~jnp.asarray(labeled, bool)), 0.0)
  return uncertainty.ensemble_entropy(member_logits) * jnp.power(density, beta)


DENSITY_BETA = options_lib.finite('density_beta', 1.0, 'the density exponent', at_least=0)


def beta_of(options) -> float:
  """`options.density_beta` (`DENSITY_BETA`: default 1.0), checked to be a finite number >= 0."""
  return DENSITY_BETA.read(options, 'information_density')


def select(inputs: base.Inputs, k: int, key, options=None):
  """The k unlabeled points with the highest information density.

  Ties are broken by a random order drawn from `key`. Time
  O(m * n * c + n * d + n log n), memory O(m * n * c + n * d).

  Args:
    inputs: `labeled: bool[n]`, `logits: f32[m, n, c]`, `embeddings: f32[n, d]`.
    k: number of picks.
    key: PRNG key for tie-breaking.
    options: `density_beta` (float >= 0, default 1).

  Returns:
    i32[k], highest score first.
  """
  beta = beta_of(options)
  labeled = jnp.asarray(inputs.labeled, bool)
  scores = information_density(inputs.logits, inputs.embeddings, labeled, jnp.float32(beta))
  return kernels.top_k_with_random_ties(scores, ~labeled, key, k=k)


STRATEGY = base.Strategy(
    'information_density',
    select,
    frozenset({base.LOGITS, base.EMBEDDINGS}),
    kind='hybrid',
    options=(DENSITY_BETA,),
)
