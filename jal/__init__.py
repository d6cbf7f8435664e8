"""jal: deep active learning for image classification in JAX.

Public kernels, usable without the loop:

    from jal import k_center_greedy, variation_ratio, fit_ensemble
"""

from jal.kernels import k_center_greedy, top_k_with_random_ties, variation_ratio
from jal.train import fit_ensemble

__all__ = ['k_center_greedy', 'variation_ratio', 'top_k_with_random_ties', 'fit_ensemble']
