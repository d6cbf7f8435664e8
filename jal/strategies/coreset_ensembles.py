"""Coreset-Ensembles: k-Center among the most uncertain points (hybrid).

The study's future-work combination of Ensembles with variation ratio
(Beluch et al., CVPR 2018) and Coreset's greedy k-Center (Sener & Savarese,
ICLR 2018), in the spirit of two-stage hybrids such as Ash et al. (BADGE,
ICLR 2020) and Zhdanov (2019, "Diverse mini-batch active learning").

Uncertainty alone picks near the decision boundary, but its top k are often
near-duplicates (variation ratio takes only m + 1 values, so many points tie
and a batch can pile up in one region of the boundary). k-Center alone
spreads picks over the whole pool and favours outliers far from every
labeled point, whatever the model's confidence there. Here uncertainty first
keeps the ceil(beta * k) most uncertain unlabeled points, then greedy
k-Center picks k of them, with the labeled points still acting as centres:
the picks stay near the boundary but are spread along it.

beta = 1 keeps exactly the k points Ensembles would pick (same key, same
tie-breaking), so the two strategies label the same set; beta -> infinity
approaches plain Coreset.
"""

import functools
import math

import jax
import jax.numpy as jnp

from jal import kernels
from jal.strategies import base
from jal.strategies import options as options_lib


@functools.partial(jax.jit, static_argnames=('k', 'num_candidates', 'mesh'))
def _coreset_ensembles(member_logits, embeddings, labeled, key, k, num_candidates, mesh):
  unlabeled = ~labeled
  scores = kernels.variation_ratio(member_logits)
  top = kernels.top_k_with_random_ties(scores, unlabeled, key, k=num_candidates)
  # If fewer than num_candidates are unlabeled, the tail of `top` is labeled.
  # Past the first k, a candidate must have some disagreement: points all
  # members agree on carry no uncertainty, and letting them in would let
  # k-Center pick outliers among them, the failure this hybrid avoids.
  rank = jnp.arange(num_candidates)
  keep = (rank < k) | (scores[top] > 0)
  candidates = jnp.zeros_like(labeled).at[top].set(keep) & unlabeled
  return kernels.k_center_greedy(embeddings, labeled, k=k, mesh=mesh, candidates=candidates)


BETA = options_lib.finite('beta', 10.0, 'ceil(beta * k) candidates by variation ratio', at_least=1)


def beta_of(options) -> float:
  """`options.beta` (`BETA`: default 10.0), checked to be a finite number >= 1."""
  return BETA.read(options, 'coreset_ensembles')


def select(inputs: base.Inputs, k: int, key, options=None):
  """Greedy k-Center among the ceil(beta * k) highest-variation-ratio points.

  Candidates beyond the top k must have a positive variation ratio, so a
  large beta never admits points the ensemble agrees on.

  Candidates are the top ceil(beta * k) unlabeled points by variation ratio
  (ties broken by a random order from `key`, exactly as `ensembles`), or all
  unlabeled points if there are fewer. k-Center is `kernels.k_center_greedy`
  with these candidates, every labeled point a centre, split over the devices
  of `inputs.mesh` when there is one. Time O(m * n * c + n log n + n * d *
  (n_labeled + k)), memory O(m * n * c + n * d).

  Args:
    inputs: `labeled: bool[n]`, `logits: f32[m, n, c]`, `embeddings: f32[n, d]`;
      `mesh` optional.
    k: number of picks.
    key: PRNG key for tie-breaking among equally uncertain points.
    options: `beta` (float >= 1, default 10): candidate pool size over k.

  Returns:
    i32[k] in k-Center pick order.
  """
  beta = beta_of(options)
  labeled = jnp.asarray(inputs.labeled, bool)
  num_candidates = min(math.ceil(beta * k), labeled.shape[0])
  return _coreset_ensembles(
      inputs.logits,
      inputs.embeddings,
      labeled,
      key,
      k=k,
      num_candidates=num_candidates,
      mesh=inputs.mesh,
  )


STRATEGY = base.Strategy(
    'coreset_ensembles',
    select,
    frozenset({base.LOGITS, base.EMBEDDINGS}),
    kind='hybrid',
    min_members=2,
    options=(BETA,),
)
