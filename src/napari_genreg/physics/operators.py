"""Linear operators: immutable values with a forward map, a hand-written adjoint and a normal map.

An MRI forward model is a composition of small operators, written with ``@``::

    A = Diagonal(mask) @ FFT2c()                      # single coil:  A = M F
    A = Diagonal(mask) @ FFT2c() @ CoilExpand(maps)   # SENSE:        A = M F S

:func:`masked_fourier` and :func:`sense` build exactly these. Operators never change after
construction (a new mask is a new operator) and act on native complex tensors, broadcasting over
leading batch axes. Every operator is listed in :mod:`napari_genreg.physics.registry`, whose
examples all operator tests are parametrised over (adjoint, linearity, normal).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from napari_genreg.physics.fft import fft2c, ifft2c


class LinearOperator(ABC):
    """A linear map ``A`` with its adjoint ``A^H``.

    Subclasses implement :meth:`forward` and :meth:`adjoint`; :meth:`normal` defaults to
    ``A^H A`` and may be overridden with a cheaper equivalent. ``A(x)`` is ``A.forward(x)``,
    ``A @ B`` is the composition ``x -> A(B(x))`` and ``A.H`` the adjoint operator.
    """

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``A^H y``."""

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(x))

    def to(self, device: torch.device | str) -> LinearOperator:
        """The same operator with its tensors on ``device`` (a new value)."""
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def __matmul__(self, other: LinearOperator) -> Compose:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        left = self.ops if isinstance(self, Compose) else (self,)
        right = other.ops if isinstance(other, Compose) else (other,)
        return Compose(left + right)

    @property
    def H(self) -> LinearOperator:
        """The adjoint as an operator."""
        return Adjoint(self)


@dataclass(frozen=True, eq=False)
class Identity(LinearOperator):
    """``I x = x``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True, eq=False)
class FFT2c(LinearOperator):
    """Centred orthonormal 2-D FFT on the last two axes: ``(..., H, W) -> (..., H, W)``.

    Unitary: ``F^H F = I``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fft2c(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return ifft2c(y)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True, eq=False)
class Diagonal(LinearOperator):
    """Pointwise multiplication ``D x = w * x``, broadcasting ``w`` against ``x``.

    With ``w`` a 0/1 sampling mask over ``(ky, kx)`` this is the sampling operator ``M``, which
    keeps the full grid and zeroes the unsampled locations (fastMRI's convention).

    Parameters
    ----------
    weights
        real or complex tensor broadcastable to the input; a boolean mask is stored as float32.
    """

    weights: torch.Tensor

    def __post_init__(self) -> None:
        w = self.weights
        if w.dtype == torch.bool:
            w = w.to(torch.float32)
        w = w.detach().clone()
        object.__setattr__(self, "weights", w)
        # |w|^2 once, and the real weights in complex dtypes on first use: a complex-by-complex
        # multiply is faster than complex-by-real (a copy of the weights, not of the data)
        object.__setattr__(self, "_square", w.abs().square() if w.is_complex() else w.square())
        object.__setattr__(self, "_as_complex", {})

    def _weights_for(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``w`` (real) in ``x``'s complex dtype when ``x`` is complex, cached."""
        if w.is_complex() or not x.is_complex() or w.device != x.device:
            return w
        key = (id(w), x.dtype)
        cached = self._as_complex.get(key)
        if cached is None:
            cached = w.to(x.dtype)
            self._as_complex[key] = cached
        return cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._weights_for(self.weights, x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        w = self.weights
        return y * (w.conj() if w.is_complex() else self._weights_for(w, y))

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._weights_for(self._square, x)

    def to(self, device: torch.device | str) -> Diagonal:
        return Diagonal(self.weights.to(device))


@dataclass(frozen=True, eq=False)
class CoilExpand(LinearOperator):
    """Coil sensitivities ``S``: ``(..., H, W) -> (..., C, H, W)``, ``(S x)_c = s_c * x``.

    The adjoint combines coils: ``S^H y = sum_c conj(s_c) * y_c``. With maps normalised so that
    ``sum_c |s_c|^2 = 1`` where there is signal, ``S^H S`` is the identity there.

    Parameters
    ----------
    maps
        complex tensor, shape ``(C, H, W)``.
    """

    maps: torch.Tensor
    _maps_conj: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.maps.ndim != 3 or not self.maps.is_complex():
            raise ValueError(
                f"coil maps must be a complex tensor of shape (coils, H, W), got "
                f"{self.maps.dtype} {tuple(self.maps.shape)}"
            )
        maps = self.maps.detach().clone()
        object.__setattr__(self, "maps", maps)
        # conj() of a complex tensor is a lazy view that every multiply resolves again
        object.__setattr__(self, "_maps_conj", maps.conj().resolve_conj())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-3) * self.maps

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y * self._maps_conj).sum(dim=-3)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.maps.abs().square().sum(dim=0)

    def to(self, device: torch.device | str) -> CoilExpand:
        return CoilExpand(self.maps.to(device))


@dataclass(frozen=True, eq=False)
class Compose(LinearOperator):
    """``ops[0] @ ops[1] @ ... @ ops[-1]``: the last operator is applied first."""

    ops: tuple[LinearOperator, ...]

    def __post_init__(self) -> None:
        if not self.ops:
            raise ValueError("Compose needs at least one operator")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in reversed(self.ops):
            x = op.forward(x)
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            y = op.adjoint(y)
        return y

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        # The outermost operator's own normal map is usually cheaper than adjoint(forward()).
        inner = self.ops[1:]
        for op in reversed(inner):
            x = op.forward(x)
        x = self.ops[0].normal(x)
        for op in inner:
            x = op.adjoint(x)
        return x

    def to(self, device: torch.device | str) -> Compose:
        return Compose(tuple(op.to(device) for op in self.ops))


@dataclass(frozen=True, eq=False)
class Adjoint(LinearOperator):
    """The adjoint ``A^H`` of an operator, as an operator."""

    op: LinearOperator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op.adjoint(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.op.forward(y)

    def to(self, device: torch.device | str) -> Adjoint:
        return Adjoint(self.op.to(device))

    @property
    def H(self) -> LinearOperator:
        return self.op


@dataclass(frozen=True, eq=False)
class Crop(LinearOperator):
    """Centred crop of the last two axes, ``(..., H, W) -> (..., h, w)``; the adjoint zero-pads.

    The crop keeps rows ``H//2 - h//2 .. H//2 - h//2 + h`` (and likewise columns), so the centre
    pixel ``(H//2, W//2)`` maps to ``(h//2, w//2)``, the convention of the centred FFT.
    """

    in_shape: tuple[int, int]
    out_shape: tuple[int, int]

    def __post_init__(self) -> None:
        if any(o > i or o < 1 for i, o in zip(self.in_shape, self.out_shape, strict=True)):
            raise ValueError(f"cannot crop {self.in_shape} to {self.out_shape}")

    def _slices(self) -> tuple[slice, slice]:
        return tuple(  # type: ignore[return-value]
            slice(i // 2 - o // 2, i // 2 - o // 2 + o)
            for i, o in zip(self.in_shape, self.out_shape, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sy, sx = self._slices()
        return x[..., sy, sx]

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        out = y.new_zeros((*y.shape[:-2], *self.in_shape))
        sy, sx = self._slices()
        out[..., sy, sx] = y
        return out

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.forward(x))


def masked_fourier(mask: Any) -> Compose:
    """Single-coil Cartesian MRI: ``A = M F``, ``(..., H, W) -> (..., H, W)``.

    Parameters
    ----------
    mask
        boolean (or 0/1) tensor or array of shape ``(ky, kx)``.
    """
    return Diagonal(_as_mask(mask)) @ FFT2c()


def sense(maps: torch.Tensor, mask: Any) -> Compose:
    """Multi-coil Cartesian MRI (SENSE): ``A = M F S``, ``(..., H, W) -> (..., C, H, W)``.

    Parameters
    ----------
    maps
        complex tensor, shape ``(C, H, W)``: coil sensitivities.
    mask
        boolean (or 0/1) tensor or array of shape ``(ky, kx)``, shared by all coils.
    """
    mask_t = _as_mask(mask).to(maps.device)
    if tuple(mask_t.shape) != tuple(maps.shape[-2:]):
        raise ValueError(
            f"mask shape {tuple(mask_t.shape)} does not match the coil maps' image shape "
            f"{tuple(maps.shape[-2:])}"
        )
    return Diagonal(mask_t) @ FFT2c() @ CoilExpand(maps)


def _as_mask(mask: Any) -> torch.Tensor:
    m = torch.as_tensor(mask)
    if m.ndim != 2:
        raise ValueError(f"a sampling mask must be 2-D (ky, kx), got shape {tuple(m.shape)}")
    if m.dtype != torch.bool:
        if m.is_complex() or not torch.all((m == 0) | (m == 1)):
            raise ValueError("a sampling mask must be boolean or contain only 0 and 1")
        m = m != 0
    if not bool(m.any()):
        raise ValueError("the sampling mask samples nothing (all False)")
    return m.to(torch.float32)


def operator_norm(
    op: LinearOperator,
    x0: torch.Tensor,
    *,
    iterations: int = 30,
    generator: torch.Generator | None = None,
) -> float:
    """Estimate ``||A||`` (the largest singular value) by power iteration on ``A^H A``.

    Parameters
    ----------
    op
        The operator.
    x0
        A tensor of the input's shape, dtype and device (its values are not used unless
        ``generator`` is None, in which case it is the start vector).
    """
    if generator is not None:
        real = torch.randn((*x0.shape, 2), generator=generator, dtype=x0.real.dtype).to(x0.device)
        x = torch.view_as_complex(real) if x0.is_complex() else real[..., 0]
    else:
        x = x0.clone()
    x = x / x.norm()
    value = 0.0
    for _ in range(iterations):
        y = op.normal(x)
        value = float(y.norm())
        if value == 0.0:
            return 0.0
        x = y / value
    return value**0.5
