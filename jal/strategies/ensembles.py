"""Ensembles with variation ratio (Beluch et al., CVPR 2018).

The k unlabeled points whose members disagree most. Ties, common since the
ratio takes only m + 1 values, are broken by a random order drawn from the
key, not by index. Time O(m * n * c + n log n), memory O(m * n * c).
"""

from jal import kernels
from jal.strategies import base
from jal.strategies import uncertainty

select = uncertainty.make_select(kernels.variation_ratio, False, 'variation ratio')

STRATEGY = base.Strategy(
    'ensembles', select, frozenset({base.LOGITS}), kind='uncertainty', min_members=2
)
