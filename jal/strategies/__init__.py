"""Acquisition strategies, chosen by name from `STRATEGIES`.

Every strategy has the same signature:

    select(inputs: Inputs, k: int, key: PRNGKey, options: ConfigDict) -> i32[k]

returning k distinct indices of unlabeled pool points, in pick order. A
strategy declares which inputs it needs (`needs`); the loop computes only
those, once per round, over the whole pool.

Adding a strategy: one file in this package defining its select function and
a `Strategy`, plus one line in `STRATEGIES` below. A strategy that reads
`options` also sets `check_options` (usually the reader its select calls), so
that `config_lib.validate` rejects a bad value before any compute.
"""

from jal.strategies.base import Classifier, Inputs, Strategy, needs_of
from jal.strategies import balanced_uncertainty, coreset, coreset_ensembles, ensembles
from jal.strategies import random_sampling, uncertainty
from jal.strategies import dfal, egl, vaal
from jal.strategies import batch_bald, mc_dropout
from jal.strategies import badge, dal, information_density, kmeans, probcover, typiclust

STRATEGIES: dict[str, Strategy] = {
    'random': random_sampling.STRATEGY,
    'coreset': coreset.STRATEGY,
    'ensembles': ensembles.STRATEGY,
    'least_confidence': uncertainty.LEAST_CONFIDENCE,
    'margin': uncertainty.MARGIN,
    'entropy': uncertainty.ENTROPY,
    'ensemble_entropy': uncertainty.ENSEMBLE_ENTROPY,
    'ensemble_bald': uncertainty.ENSEMBLE_BALD,
    'coreset_ensembles': coreset_ensembles.STRATEGY,
    'balanced_uncertainty': balanced_uncertainty.STRATEGY,
    'vaal': vaal.STRATEGY,
    'dfal': dfal.STRATEGY,
    'egl': egl.STRATEGY,
    'mc_dropout': mc_dropout.MC_DROPOUT,
    'mc_dropout_bald': mc_dropout.MC_DROPOUT_BALD,
    'batch_bald': batch_bald.STRATEGY,
    'kmeans': kmeans.STRATEGY,
    'badge': badge.STRATEGY,
    'dal': dal.STRATEGY,
    'information_density': information_density.STRATEGY,
    'typiclust': typiclust.STRATEGY,
    'probcover': probcover.STRATEGY,
}


def get_strategy(name: str) -> Strategy:
  """The strategy registered as `name`; a one-line error lists valid names."""
  if name not in STRATEGIES:
    raise ValueError(f"unknown strategy '{name}'; valid: {', '.join(sorted(STRATEGIES))}")
  return STRATEGIES[name]


__all__ = ['Classifier', 'Inputs', 'Strategy', 'STRATEGIES', 'get_strategy', 'needs_of']
