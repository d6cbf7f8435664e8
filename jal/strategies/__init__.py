"""Acquisition strategies, chosen by name from `STRATEGIES`.

Every strategy has the same signature:

    select(inputs: Inputs, k: int, key: PRNGKey, options: ConfigDict) -> i32[k]

returning k distinct indices of unlabeled pool points, in pick order. A
strategy declares which inputs it needs (`needs`); the loop computes only
those, once per round, over the whole pool.

Adding a strategy: one file in this package defining its select function and
a `Strategy`, plus one line in `STRATEGIES` below. A strategy that reads
`options` declares each field once as an `options.Option` (default and
check) and lists them in `Strategy.options`: `config_lib.base_config` takes
`strategy_options` from them (`OPTIONS`), and `config_lib.validate` rejects a
bad value before any compute.
"""

from jal.strategies.base import Classifier, Inputs, Strategy, needs_of
from jal.strategies.options import Option
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


def _declared_options(registry: dict[str, Strategy]) -> dict[str, Option]:
  """Every option the strategies declare, by field name, in registry order.

  A field shared by several strategies (`mc_samples`, `kmeans_iters`) is one
  declaration; two different declarations of one field would give it two
  defaults, and are refused.
  """
  out = {}
  for strategy in registry.values():
    for option in strategy.options:
      if out.setdefault(option.name, option) is not option:
        raise ValueError(
            f'strategy_options.{option.name} is declared twice (by '
            f"'{strategy.name}' and another strategy); declare it once and share it"
        )
  return out


# Every `config.strategy_options` field a strategy reads (not the loop's `embeddings`).
OPTIONS: dict[str, Option] = _declared_options(STRATEGIES)


def get_strategy(name: str) -> Strategy:
  """The strategy registered as `name`; a one-line error lists valid names."""
  if name not in STRATEGIES:
    raise ValueError(f"unknown strategy '{name}'; valid: {', '.join(sorted(STRATEGIES))}")
  return STRATEGIES[name]


__all__ = [
    'Classifier',
    'Inputs',
    'OPTIONS',
    'Option',
    'Strategy',
    'STRATEGIES',
    'get_strategy',
    'needs_of',
]
