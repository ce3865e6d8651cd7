"""Total variation of complex images.

``TV(x) = sum_ij sqrt(|(D x)_0ij|^2 + |(D x)_1ij|^2)`` (isotropic) or
``sum_ij |(D x)_0ij| + |(D x)_1ij|`` (anisotropic, sigpy's ``TotalVariationRecon``), with ``D``
the periodic forward differences of :class:`~napari_genreg.physics.transforms.FiniteDifference`.
"""

from __future__ import annotations

import torch

from napari_genreg.physics.transforms import FiniteDifference
from napari_genreg.regularizers.functionals import GroupL1

GRADIENT = FiniteDifference()
#: ``||D||^2`` for periodic forward differences in 2-D.
GRADIENT_NORM_SQUARED = 8.0


def tv_norm(weight: float, *, isotropic: bool = True) -> GroupL1:
    """``weight * ||.||`` on gradients: the function composed with :data:`GRADIENT` in TV."""
    return GroupL1(weight, group_dim=-3 if isotropic else None)


def total_variation(x: torch.Tensor, *, isotropic: bool = True) -> torch.Tensor:
    """``TV(x)`` for ``x`` of shape ``(..., H, W)``, summed over everything (a 0-d tensor)."""
    return tv_norm(1.0, isotropic=isotropic).value(GRADIENT(x))
