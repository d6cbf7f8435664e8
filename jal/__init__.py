"""jal: deep active learning for image classification in JAX.

Public kernels, usable without the loop:

    from jal import k_center_greedy, variation_ratio, Trainer, resolve_plan, fit
"""

from jal.kernels import k_center_greedy, top_k_with_random_ties, variation_ratio
from jal.train import Trainer, fit, resolve_plan

__all__ = [
    'k_center_greedy',
    'variation_ratio',
    'top_k_with_random_ties',
    'Trainer',
    'resolve_plan',
    'fit',
]
