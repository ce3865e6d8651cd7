"""Wavelet sparsity: ``R(x) = sum_i |(W x)_i|`` over the detail coefficients of an orthonormal
wavelet transform (the coarsest approximation band is not penalised).

Because ``W`` is unitary the proximal map is exact:
``prox_{s w R}(v) = W^H shrink(W v, s w)`` with complex soft-thresholding on the details.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from napari_genreg.physics.transforms import Wavelet
from napari_genreg.regularizers.functionals import GroupL1


@dataclass(frozen=True, eq=False)
class WaveletL1:
    """``g(x) = weight * ||detail(W x)||_1`` on images of ``shape`` (sides divisible by 2**level).

    Parameters
    ----------
    shape
        ``(H, W)``.
    weight
        Non-negative weight.
    wavelet
        Orthogonal wavelet name (default ``"db4"``).
    """

    shape: tuple[int, int]
    weight: float
    wavelet: str = "db4"
    transform: Wavelet = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transform", Wavelet(self.shape, self.wavelet))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        coeffs = self.transform(x)
        return GroupL1(self.weight).value(coeffs[..., self.transform.approx_size :])

    def prox(self, v: torch.Tensor, step: float) -> torch.Tensor:
        coeffs = self.transform(v)
        n = self.transform.approx_size
        details = GroupL1(self.weight).prox(coeffs[..., n:], step)
        return self.transform.adjoint(torch.cat((coeffs[..., :n], details), dim=-1))
