"""Regularisers and the convex functions the solvers combine.

Classical: total variation (:mod:`.tv`) and wavelet l1 (:mod:`.wavelet`), built from the terms in
:mod:`.functionals`; generative: the learned prior with covariance (:mod:`.generative`).
"""
