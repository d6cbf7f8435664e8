"""Monte Carlo dropout uncertainty (Gal, Islam & Ghahramani, ICML 2017).

One trained network with dropout; the T stochastic passes of `mc_logits`
(dropout on at test time, one sampled network per pass, see `jal.models`)
stand in for posterior samples, as ensemble members do in `ensembles` and
`ensemble_bald`. Two of the paper's acquisition functions:

  mc_dropout       variation ratio of the T passes' votes.
  mc_dropout_bald  BALD mutual information between the prediction and the
                   dropout mask.

Both need `config.model.dropout > 0` (checked by `config_lib.validate`).
The number of passes T is `strategy_options.mc_samples` (`mc_samples_of`),
read by the loop (`experiment.Experiment.score`), not by select.
Picks are the k highest unlabeled scores, ties broken by a random order drawn
from the key.
"""

import functools


from jal import kernels
from jal.strategies import base
from jal.strategies import options as options_lib
from jal.strategies import uncertainty

MC_SAMPLES = 25  # dropout passes per round (Beluch et al. 2018)


def mc_samples_of(options, strategy: str = 'mc_dropout') -> int:
  """`options.mc_samples` (default 25): the MC dropout passes T, checked to be an int >= 1.

  Args:
    options: ConfigDict or None.
    strategy: the strategy reading it, named in the error.
  """
  return options_lib.positive_int(options, strategy, 'mc_samples', MC_SAMPLES)


def _make_select(score_fn, description: str):
  """A select function picking the top-k unlabeled `score_fn(mc_logits)`."""
  return uncertainty.make_select(score_fn, False, description, field=base.MC_LOGITS)


_NEEDS = frozenset({base.MC_LOGITS})

MC_DROPOUT = base.Strategy(
    'mc_dropout', _make_select(kernels.variation_ratio, 'variation ratio of the MC passes'),
    _NEEDS, kind='uncertainty',
    check_options=functools.partial(mc_samples_of, strategy='mc_dropout'))
MC_DROPOUT_BALD = base.Strategy(
    'mc_dropout_bald', _make_select(uncertainty.bald, 'BALD mutual information of the MC passes'),
    _NEEDS, kind='uncertainty',
    check_options=functools.partial(mc_samples_of, strategy='mc_dropout_bald'))
