"""One registry of every linear operator, with a small example of each.

The shared operator tests (adjoint, linearity, normal map) are parametrised over
:data:`OPERATOR_EXAMPLES`, so a new operator is one entry here and is tested at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from napari_genreg.physics import operators as ops
from napari_genreg.physics.transforms import FiniteDifference, Wavelet


class OperatorExample(NamedTuple):
    """An operator and the shape of the inputs it takes."""

    op: ops.LinearOperator
    ishape: tuple[int, ...]


def _random_mask(shape: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(shape, generator=gen) < 0.4
    mask[shape[0] // 2, shape[1] // 2] = True
    return mask


def _random_maps(coils: int, shape: tuple[int, int], gen: torch.Generator, dtype) -> torch.Tensor:
    real = torch.randn((coils, *shape, 2), generator=gen, dtype=torch.float64)
    return torch.view_as_complex(real).to(dtype)


def _fft(dtype: torch.dtype, gen: torch.Generator) -> OperatorExample:
    return OperatorExample(ops.FFT2c(), (2, 12, 10))


def _diagonal(dtype: torch.dtype, gen: torch.Generator) -> OperatorExample:
    w = _random_maps(1, (9, 7), gen, dtype)[0]
    return OperatorExample(ops.Diagonal(w), (3, 9, 7))


def _coil_expand(dtype: torch.dtype, gen: torch.Generator) -> OperatorExample:
    return OperatorExample(ops.CoilExpand(_random_maps(4, (8, 6), gen, dtype)), (8, 6))


def _masked_fourier(dtype: torch.dtype, gen: torch.Generator) -> OperatorExample:
    return OperatorExample(ops.masked_fourier(_random_mask((16, 12), gen)), (16, 12))


def _sense(dtype: torch.dtype, gen: torch.Generator) -> OperatorExample:
    maps = _random_maps(3, (10, 14), gen, dtype)
    return OperatorExample(ops.sense(maps, _random_mask((10, 14), gen)), (2, 10, 14))


def _crop(dtype: torch.dtype, gen: torch.Generator) -> OperatorExample:
    return OperatorExample(ops.Crop((12, 9), (7, 8)), (2, 12, 9))


def _finite_difference(dtype: torch.dtype, gen: torch.Generator) -> OperatorExample:
    return OperatorExample(FiniteDifference(), (2, 11, 9))


def _wavelet(dtype: torch.dtype, gen: torch.Generator) -> OperatorExample:
    return OperatorExample(Wavelet((32, 48), level=2), (2, 32, 48))


OPERATOR_EXAMPLES: dict[str, Callable[[torch.dtype, torch.Generator], OperatorExample]] = {
    "fft2c": _fft,
    "diagonal": _diagonal,
    "coil-expand": _coil_expand,
    "masked-fourier": _masked_fourier,
    "sense": _sense,
    "crop": _crop,
    "finite-difference": _finite_difference,
    "wavelet": _wavelet,
}
