"""Wavelet sparsity: ``R(x) = sum_i |(W x)_i|`` over the detail coefficients of an orthonormal
wavelet transform (the coarsest approximation band is not penalised).

Because ``W`` is unitary the proximal map is exact:
``prox_{s w R}(v) = W^H shrink(W v, s w)`` with complex soft-thresholding on the details.

A decimated transform is not translation invariant: its thresholding leaves blocky artefacts
aligned with its grid. :func:`cycle_spinning` applies the proximal map at a random circular
shift of the image each time, as BART's ``pics`` does by default for its wavelet term (its
``-n`` option turns it off).
"""

from __future__ import annotations

from collections.abc import Callable
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


def cycle_spinning(
    prox: Callable[[torch.Tensor, float], torch.Tensor],
    period: int,
    generator: torch.Generator,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """``prox`` applied at a random circular shift: ``S^-1 prox(S v)`` with ``S`` a shift by
    ``(dy, dx)`` drawn uniformly from ``[0, period)^2`` by ``generator`` at every call.

    With ``period = 2**level`` every alignment of the wavelet grid is reached. An algorithm
    that calls it minimises no fixed objective (each call regularises at another alignment);
    over the iterations it acts like the translation-invariant (undecimated) l1 norm at the
    cost of the decimated transform.
    """

    def shifted(v: torch.Tensor, step: float) -> torch.Tensor:
        dy, dx = (int(k) for k in torch.randint(0, period, (2,), generator=generator))
        out = prox(torch.roll(v, (dy, dx), dims=(-2, -1)), step)
        return torch.roll(out, (-dy, -dx), dims=(-2, -1))

    return shifted
