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

from jal import kernels
from jal.strategies import base
from jal.strategies import options as options_lib
from jal.strategies import uncertainty

# Also batch_bald's: every strategy on `mc_logits` reads this one declaration.
MC_SAMPLES = options_lib.positive_int(
    'mc_samples', 25, 'MC dropout passes T per round (Beluch et al. 2018), run by the loop'
)


def mc_samples_of(options, strategy: str = 'mc_dropout') -> int:
  """`options.mc_samples` (`MC_SAMPLES`): the MC dropout passes T, checked to be an int >= 1.

  Args:
    options: ConfigDict or None.
    strategy: the strategy reading it, named in the error.
  """
  return MC_SAMPLES.read(options, strategy)


def _make_select(score_fn, description: str):
  """A select function picking the top-k unlabeled `score_fn(mc_logits)`."""
  return uncertainty.make_select(score_fn, False, description, field=base.MC_LOGITS)


_NEEDS = frozenset({base.MC_LOGITS})

MC_DROPOUT = base.Strategy(
    'mc_dropout',
    _make_select(kernels.variation_ratio, 'variation ratio of the MC passes'),
    _NEEDS,
    kind='uncertainty',
    options=(MC_SAMPLES,),
)
MC_DROPOUT_BALD = base.Strategy(
    'mc_dropout_bald',
    _make_select(uncertainty.bald, 'BALD mutual information of the MC passes'),
    _NEEDS,
    kind='uncertainty',
    options=(MC_SAMPLES,),
)
