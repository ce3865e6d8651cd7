r"""Covariance representations of a VAE decoder: identity, diagonal and structured.

A decoder that outputs a mean image :math:`G(z)` also outputs a covariance :math:`\Sigma(z)` of the
image around that mean. The three variants of the family are immutable values built from decoder
outputs; every method is plain torch arithmetic, differentiable through autograd, and runs on the
device of the parameters (CPU or CUDA). Images are real, shape ``(B, H, W)`` (a batch of ``B``
images of ``H x W`` pixels, ``N = H W``), flattened in raster order: pixel ``(row, col)`` has
index ``i = row * W + col``.

* :class:`IdentityCovariance`: :math:`\Sigma = s^2 I` with :math:`s = \exp(\text{log\_scale})`.
* :class:`DiagonalCovariance`: :math:`\Sigma = \operatorname{diag}(\exp(\text{log\_variance}))`.
* :class:`StructuredCovariance`: the precision is :math:`\Sigma^{-1} = L L^T` with :math:`L`
  sparse lower-triangular in raster order (Dorta et al., "Structured Uncertainty Prediction
  Networks", CVPR 2018): :math:`L_{ii} = \exp(\text{log\_diagonal}_i)` and one weight to each of
  the ``M = (k*k - 1) / 2`` neighbours of a ``k x k`` stencil that come before ``i`` in raster
  order (:func:`stencil_offsets`).

All three satisfy the :class:`Covariance` protocol. Each has a *factor* :math:`L` with
:math:`\Sigma^{-1} = L L^T` (lower-triangular for the structured variant, :math:`\Sigma^{-1/2}`
for the other two), so that

.. math::

    \log\det\Sigma = -2 \sum_i \log L_{ii}, \qquad
    r^T \Sigma^{-1} r = \|L^T r\|^2, \qquad
    x = L^{-T} \varepsilon,\ \varepsilon \sim \mathcal N(0, I)
    \Rightarrow x \sim \mathcal N(0, \Sigma).

The log-determinant and the Mahalanobis norm of the structured variant are local shift-and-multiply
operations (no solve). Its triangular solves (:meth:`StructuredCovariance.solve_factor`,
:meth:`~StructuredCovariance.solve_factor_t`), used by :meth:`~StructuredCovariance.column`
(:math:`\Sigma e_p = L^{-T} L^{-1} e_p`) and :meth:`~StructuredCovariance.sample`, run image row by
image row: the rows already solved enter through shifted multiplies and each row is then a small
banded ``W x W`` triangular system (``torch.linalg.solve_triangular``). The exact variance map
:math:`\operatorname{diag}\Sigma` uses a row recursion of the same shape
(:meth:`StructuredCovariance.variance`).

Examples
--------
>>> import torch
>>> gen = torch.Generator().manual_seed(0)
>>> cov = StructuredCovariance(
...     log_diagonal=torch.zeros(1, 8, 8),
...     off_diagonal=0.1 * torch.randn(1, 12, 8, 8, generator=gen),
...     stencil=5,
... )
>>> cov.logdet().shape, cov.column((4, 4)).shape, cov.sample(3, gen).shape
(torch.Size([1]), torch.Size([1, 8, 8]), torch.Size([3, 1, 8, 8]))
>>> positive, negative = split_signs(cov.column((4, 4)))
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MAX_DENSE_PIXELS",
    "Covariance",
    "DiagonalCovariance",
    "IdentityCovariance",
    "StructuredCovariance",
    "UnstableFactorError",
    "split_signs",
    "stencil_offsets",
]

#: Largest number of pixels ``N = H W`` for which :meth:`Covariance.dense` builds ``(B, N, N)``.
MAX_DENSE_PIXELS = 4096
#: Largest growth of a triangular solve with the structured factor before it counts as unstable
#: (a diagonally dominant factor with the default bound 0.9 grows by at most 10).
SOLVE_GROWTH_LIMIT = 1e4


class UnstableFactorError(FloatingPointError, ValueError):
    """A structured factor whose triangular solves explode at this latent (a model trained
    with an off-diagonal bound above 1: its stability is checked, not guaranteed)."""


def _unstable(what: str) -> None:
    raise UnstableFactorError(
        f"{what} (more than {SOLVE_GROWTH_LIMIT:g}): the structured covariance factor is "
        "unstable at this latent; its off-diagonal weights exceed diagonal dominance (a model "
        "trained with off_diagonal_bound above 1)"
    )


# Upper bound on the elements of one chunk of dense within-row matrices ``(B, h, W, W)``.
_ROW_CHUNK_ELEMENTS = 1 << 18


# --------------------------------------------------------------------------------------------
# Module functions
# --------------------------------------------------------------------------------------------


def stencil_offsets(k: int) -> list[tuple[int, int]]:
    """The neighbour offsets of the structured factor for a ``k x k`` stencil, in parameter order.

    The offsets ``(dy, dx)`` are the stencil positions that come *before* the centre in raster
    order (``dy < 0``, or ``dy == 0`` and ``dx < 0``), listed in raster order of the stencil:
    ``dy`` from ``-(k-1)/2`` up to ``0`` and, within each ``dy``, ``dx`` from ``-(k-1)/2`` up to
    ``(k-1)/2``. Channel ``m`` of ``StructuredCovariance.off_diagonal`` is the weight
    :math:`L_{i, j}` from pixel ``i = (row, col)`` to its neighbour
    ``j = (row + dy_m, col + dx_m)``.

    Parameters
    ----------
    k
        the stencil width: odd and at least 3.

    Returns
    -------
    list of ``M = (k*k - 1) / 2`` pairs ``(dy, dx)``: 4 for ``k = 3``, 12 for 5, 24 for 7.

    Examples
    --------
    >>> stencil_offsets(3)
    [(-1, -1), (-1, 0), (-1, 1), (0, -1)]
    """
    _check_stencil(k)
    r = (k - 1) // 2
    return [
        (dy, dx) for dy in range(-r, 1) for dx in range(-r, r + 1) if dy < 0 or (dy == 0 and dx < 0)
    ]


def split_signs(c: Tensor) -> tuple[Tensor, Tensor]:
    """Split a covariance (or correlation) map into its positive and negative parts.

    ``c = positive - negative`` with ``positive = max(c, 0)`` and ``negative = max(-c, 0)``, both
    non-negative: the two layers of the poster's "visualisation of learned positive and negative
    covariance".

    Parameters
    ----------
    c
        real tensor of any shape, typically ``(B, H, W)`` from :meth:`Covariance.column`.

    Returns
    -------
    ``(positive, negative)``, each of the shape of ``c``.
    """
    if c.is_complex():
        raise ValueError("split_signs expects a real tensor")
    return c.clamp(min=0), (-c).clamp(min=0)


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


@runtime_checkable
class Covariance(Protocol):
    r"""The interface of the covariance family: a batch of ``B`` covariances of ``H x W`` images.

    Every variant has a factor :math:`L` with :math:`\Sigma^{-1} = L L^T`. Linear maps
    (``precision``, ``factor``, ``factor_t``, ``solve_factor``, ``solve_factor_t``) take
    ``(..., B, H, W)`` (any leading dimensions) and real or complex input: :math:`\Sigma^{-1}`
    and :math:`L` are real matrices, so a complex input is mapped part by part.
    """

    @property
    def shape(self) -> tuple[int, int]:
        """The image shape ``(H, W)``."""
        ...

    @property
    def batch_size(self) -> int:
        """The number ``B`` of covariances in the batch."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The real floating dtype of the parameters."""
        ...

    @property
    def device(self) -> torch.device:
        """The device of the parameters."""
        ...

    def logdet(self) -> Tensor:
        r""":math:`\log\det\Sigma`, shape ``(B,)``."""
        ...

    def mahalanobis(self, r: Tensor) -> Tensor:
        r""":math:`r^H \Sigma^{-1} r = \|L^T r\|^2`: ``(..., B, H, W) -> (..., B)``."""
        ...

    def precision(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1} v = L L^T v`: ``(..., B, H, W) -> (..., B, H, W)``."""
        ...

    def factor(self, v: Tensor) -> Tensor:
        r""":math:`L v`: ``(..., B, H, W) -> (..., B, H, W)``."""
        ...

    def factor_t(self, v: Tensor) -> Tensor:
        r""":math:`L^T v`: ``(..., B, H, W) -> (..., B, H, W)``."""
        ...

    def solve_factor(self, e: Tensor) -> Tensor:
        r""":math:`L^{-1} e`: ``(..., B, H, W) -> (..., B, H, W)``."""
        ...

    def solve_factor_t(self, e: Tensor) -> Tensor:
        r""":math:`L^{-T} e`: ``(..., B, H, W) -> (..., B, H, W)``."""
        ...

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        r"""``n`` zero-mean samples :math:`L^{-T}\varepsilon`, shape ``(n, B, H, W)``."""
        ...

    def column(self, pixel: tuple[int, int]) -> Tensor:
        r""":math:`\Sigma e_p` for ``p = (row, col)``, shape ``(B, H, W)``."""
        ...

    def correlation(self, pixel: tuple[int, int], variance: Tensor | None = None) -> Tensor:
        r"""Correlation of every pixel with ``pixel``, shape ``(B, H, W)``."""
        ...

    def variance(
        self, samples: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        r""":math:`\operatorname{diag}\Sigma`, shape ``(B, H, W)``."""
        ...

    def dense(self) -> Tensor:
        r"""The full :math:`\Sigma`, shape ``(B, N, N)``, ``N = H W <= 4096``."""
        ...


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check_stencil(k: object) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 3 or k % 2 == 0:
        raise ValueError(f"the stencil must be an odd integer >= 3, got {k!r}")


def _check_parameter(t: object, name: str, ndim: int, layout: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a real floating tensor, got dtype {t.dtype}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t


def _shift(x: Tensor, dy: int, dx: int) -> Tensor:
    """``out[..., y, c] = x[..., y + dy, c + dx]``, zero where that falls outside the image."""
    h, w = x.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return torch.zeros_like(x)
    if dy == 0 and dx == 0:
        return x
    return F.pad(x, (-dx, dx, -dy, dy))


def _part_by_part(fn: Callable[[Tensor], Tensor], v: Tensor) -> Tensor:
    """Apply a real linear map to a complex tensor part by part (``fn(re) + i fn(im)``).

    The two parts go through ``fn`` together, stacked on a new leading axis (``fn`` maps
    ``(..., B, H, W)`` with any leading dimensions), which halves the number of operations.
    """
    if v.is_complex():
        both = fn(torch.stack((v.real, v.imag)))
        return torch.complex(both[0], both[1])
    return fn(v)


def _tracked(*tensors: Tensor) -> bool:
    """Whether autograd records operations on any of ``tensors`` now."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _overlap(n: int, d: int) -> tuple[slice, slice]:
    """``(target, source)`` slices of an axis of length ``n`` with ``source = target + d``
    (the indices whose shifted partner lies inside the axis)."""
    lo = min(n, max(0, -d))
    hi = max(lo, n - max(0, d))
    return slice(lo, hi), slice(lo + d, hi + d)


def _check_pixel(pixel: object, shape: tuple[int, int]) -> tuple[int, int]:
    ok = (
        isinstance(pixel, tuple | list)
        and len(pixel) == 2
        and all(isinstance(p, int) and not isinstance(p, bool) for p in pixel)
    )
    if not ok:
        raise ValueError(f"pixel must be a pair of ints (row, col), got {pixel!r}")
    row, col = pixel  # type: ignore[misc]
    if not (0 <= row < shape[0] and 0 <= col < shape[1]):
        raise ValueError(f"pixel {tuple(pixel)} lies outside the {shape[0]} x {shape[1]} image")  # type: ignore[arg-type]
    return row, col


class _CovarianceBase(ABC):
    """The methods every variant shares, written in terms of the factor and its solves."""

    # A field of IdentityCovariance, a property of the others.
    shape: tuple[int, int]

    @property
    @abstractmethod
    def _batched(self) -> Tensor:
        """The parameter whose first axis is the batch; the others share its dtype and
        device."""

    @property
    def batch_size(self) -> int:
        """The number ``B`` of covariances in the batch."""
        return self._batched.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters."""
        return self._batched.dtype

    @property
    def device(self) -> torch.device:
        """The device of the parameters."""
        return self._batched.device

    @abstractmethod
    def factor(self, v: Tensor) -> Tensor: ...

    @abstractmethod
    def factor_t(self, v: Tensor) -> Tensor: ...

    @abstractmethod
    def solve_factor_t(self, e: Tensor) -> Tensor: ...

    @abstractmethod
    def column(self, pixel: tuple[int, int]) -> Tensor: ...

    @abstractmethod
    def variance(
        self, samples: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor: ...

    # -- input checks ------------------------------------------------------------------------

    def _check_image(self, v: object, name: str = "v") -> Tensor:
        """Check that ``v`` is ``(..., B, H, W)`` of the parameters' dtype (or its complex)."""
        if not isinstance(v, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        expected = (self.batch_size, *self.shape)
        if v.ndim < 3 or tuple(v.shape[-3:]) != expected:
            raise ValueError(
                f"{name} must have shape (..., B, H, W) = (..., {expected[0]}, {expected[1]}, "
                f"{expected[2]}), got {tuple(v.shape)}"
            )
        real = v.real.dtype if v.is_complex() else v.dtype
        if real != self.dtype:
            raise ValueError(
                f"{name} has dtype {v.dtype}; the covariance is {self.dtype} (or its complex "
                "counterpart): convert one of them"
            )
        return v

    def _noise(self, n: int, generator: torch.Generator) -> Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"the number of samples must be a positive int, got {n!r}")
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                "an explicit torch.Generator is required (the global RNG is never used), got "
                f"{type(generator).__name__}"
            )
        if generator.device.type != self.device.type:
            raise ValueError(
                f"the generator lives on {generator.device}, the covariance on {self.device}"
            )
        shape = (n, self.batch_size, *self.shape)
        return torch.randn(shape, generator=generator, dtype=self.dtype, device=self.device)

    # -- shared methods ----------------------------------------------------------------------

    def mahalanobis(self, r: Tensor) -> Tensor:
        r"""The squared Mahalanobis norm :math:`r^H \Sigma^{-1} r = \|L^T r\|^2`.

        Parameters
        ----------
        r
            residual, real or complex, shape ``(..., B, H, W)``.

        Returns
        -------
        real tensor, shape ``(..., B)``.
        """
        r = self._check_image(r, "r")
        if r.is_complex():
            return self.mahalanobis(r.real) + self.mahalanobis(r.imag)
        return self.factor_t(r).square().sum(dim=(-2, -1))

    def precision(self, v: Tensor) -> Tensor:
        r"""The precision applied to ``v``: :math:`\Sigma^{-1} v = L L^T v`.

        Parameters
        ----------
        v
            real or complex, shape ``(..., B, H, W)``; a complex ``v`` is mapped part by part.

        Returns
        -------
        tensor of the shape and dtype of ``v``.
        """
        v = self._check_image(v)
        return self.factor(self.factor_t(v))

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        r"""Zero-mean Gaussian samples with covariance :math:`\Sigma`.

        :math:`x = L^{-T}\varepsilon` with :math:`\varepsilon \sim \mathcal N(0, I)`, so
        :math:`\mathbb E[x x^T] = L^{-T} L^{-1} = \Sigma`. Add the decoder mean for samples of
        the image model.

        Parameters
        ----------
        n
            number of samples per batch element.
        generator
            the random generator, on the device of the parameters (the global RNG is never
            used).

        Returns
        -------
        real tensor, shape ``(n, B, H, W)``.
        """
        return self.solve_factor_t(self._noise(n, generator))

    def correlation(self, pixel: tuple[int, int], variance: Tensor | None = None) -> Tensor:
        r"""The correlation of every pixel ``i`` with ``pixel`` ``p``.

        .. math:: \rho_i = \Sigma_{ip} / \sqrt{\Sigma_{pp} \Sigma_{ii}}

        :math:`\Sigma_{\cdot p}` is the exact :meth:`column` and :math:`\Sigma_{pp}` its value at
        ``p``; :math:`\Sigma_{ii}` comes from ``variance`` (so :math:`\rho_p = 1` exactly).

        Parameters
        ----------
        pixel
            ``(row, col)``.
        variance
            the variance map ``(B, H, W)`` if already computed (for example an estimate from
            :meth:`variance` with ``samples``); by default the exact :meth:`variance`.

        Returns
        -------
        real tensor, shape ``(B, H, W)``, values in ``[-1, 1]`` up to the accuracy of
        ``variance``.
        """
        row, col = _check_pixel(pixel, self.shape)
        if variance is None:
            variance = self.variance()
        elif tuple(variance.shape) != (self.batch_size, *self.shape):
            raise ValueError(
                f"variance must have shape (B, H, W) = {(self.batch_size, *self.shape)}, "
                f"got {tuple(variance.shape)}"
            )
        c = self.column((row, col))
        at_p = c[:, row, col]
        mask = torch.zeros(self.shape, dtype=torch.bool, device=c.device)
        mask[row, col] = True
        variance = torch.where(mask, at_p[:, None, None], variance)
        return c / torch.sqrt(at_p[:, None, None] * variance)

    def _check_dense_size(self) -> int:
        n = self.shape[0] * self.shape[1]
        if n > MAX_DENSE_PIXELS:
            raise ValueError(
                f"dense() builds a (B, N, N) matrix and is meant for small images: N = "
                f"{self.shape[0]} x {self.shape[1]} = {n} > {MAX_DENSE_PIXELS}; use column(), "
                "variance() or sample() instead"
            )
        return n


# --------------------------------------------------------------------------------------------
# Identity: Sigma = s^2 I
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class IdentityCovariance(_CovarianceBase):
    r"""A constant diagonal covariance :math:`\Sigma = s^2 I` ("only the mean is modelled").

    :math:`s = \exp(\text{log\_scale})` per batch element. The factor is
    :math:`L = \Sigma^{-1/2} = s^{-1} I`, so

    .. math::

        \log\det\Sigma = 2 N \log s, \qquad r^T\Sigma^{-1} r = \|r\|^2 / s^2, \qquad
        \Sigma e_p = s^2 e_p.

    Parameters
    ----------
    log_scale
        :math:`\log s`, real, shape ``(B,)``.
    shape
        the image shape ``(H, W)``.
    """

    log_scale: Tensor
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        _check_parameter(self.log_scale, "log_scale", 1, "(B,)")
        shape = self.shape
        ok = (
            isinstance(shape, tuple | list)
            and len(shape) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        )
        if not ok:
            raise ValueError(f"shape must be a pair of positive ints (H, W), got {shape!r}")
        object.__setattr__(self, "shape", (int(shape[0]), int(shape[1])))

    @property
    def _batched(self) -> Tensor:
        return self.log_scale

    def _scale(self, power: float) -> Tensor:
        """:math:`s^{power}` shaped ``(B, 1, 1)`` to broadcast over ``(..., B, H, W)``."""
        return torch.exp(power * self.log_scale)[:, None, None]

    def logdet(self) -> Tensor:
        r""":math:`\log\det\Sigma = 2 H W \log s`, shape ``(B,)``."""
        return 2.0 * self.shape[0] * self.shape[1] * self.log_scale

    def factor(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1/2} v = v / s`: ``(..., B, H, W)``, real or complex."""
        return self._check_image(v) * self._scale(-1.0)

    def factor_t(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1/2} v = v / s` (the factor is symmetric)."""
        return self.factor(v)

    def solve_factor(self, e: Tensor) -> Tensor:
        r""":math:`\Sigma^{1/2} e = s e`: ``(..., B, H, W)``, real or complex."""
        return self._check_image(e, "e") * self._scale(1.0)

    def solve_factor_t(self, e: Tensor) -> Tensor:
        r""":math:`\Sigma^{1/2} e = s e` (the factor is symmetric)."""
        return self.solve_factor(e)

    def precision(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1} v = v / s^2`: ``(..., B, H, W)``, real or complex."""
        return self._check_image(v) * self._scale(-2.0)

    def column(self, pixel: tuple[int, int]) -> Tensor:
        r""":math:`\Sigma e_p = s^2 e_p`, shape ``(B, H, W)``."""
        row, col = _check_pixel(pixel, self.shape)
        out = torch.zeros((self.batch_size, *self.shape), dtype=self.dtype, device=self.device)
        mask = torch.zeros_like(out, dtype=torch.bool)
        mask[:, row, col] = True
        return torch.where(mask, self._scale(2.0), out)

    def variance(
        self, samples: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""The exact variance map :math:`s^2`, shape ``(B, H, W)``.

        ``samples`` and ``generator`` are accepted for the common interface and ignored.
        """
        return self._scale(2.0).expand(self.batch_size, *self.shape).contiguous()

    def dense(self) -> Tensor:
        r"""The full :math:`\Sigma = s^2 I`, shape ``(B, N, N)``; refuses ``N > 4096``."""
        n = self._check_dense_size()
        eye = torch.eye(n, dtype=self.dtype, device=self.device)
        return self._scale(2.0) * eye


# --------------------------------------------------------------------------------------------
# Diagonal: Sigma = diag(v)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DiagonalCovariance(_CovarianceBase):
    r"""A per-pixel variance map :math:`\Sigma = \operatorname{diag}(v)`, :math:`v = \exp(\ell)`.

    The factor is :math:`L = \Sigma^{-1/2} = \operatorname{diag}(v^{-1/2})`, so

    .. math::

        \log\det\Sigma = \sum_i \ell_i, \qquad r^T\Sigma^{-1} r = \sum_i r_i^2 / v_i, \qquad
        \Sigma e_p = v_p e_p.

    Parameters
    ----------
    log_variance
        :math:`\ell = \log v`, real, shape ``(B, H, W)``.
    """

    log_variance: Tensor

    def __post_init__(self) -> None:
        _check_parameter(self.log_variance, "log_variance", 3, "(B, H, W)")

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        """The image shape ``(H, W)``."""
        return (self.log_variance.shape[1], self.log_variance.shape[2])

    @property
    def _batched(self) -> Tensor:
        return self.log_variance

    def logdet(self) -> Tensor:
        r""":math:`\log\det\Sigma = \sum_i \ell_i`, shape ``(B,)``."""
        return self.log_variance.sum(dim=(-2, -1))

    def factor(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1/2} v = v / \sqrt{\text{variance}}`: ``(..., B, H, W)``."""
        return self._check_image(v) * torch.exp(-0.5 * self.log_variance)

    def factor_t(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1/2} v` (the factor is symmetric)."""
        return self.factor(v)

    def solve_factor(self, e: Tensor) -> Tensor:
        r""":math:`\Sigma^{1/2} e = \sqrt{\text{variance}}\, e`: ``(..., B, H, W)``."""
        return self._check_image(e, "e") * torch.exp(0.5 * self.log_variance)

    def solve_factor_t(self, e: Tensor) -> Tensor:
        r""":math:`\Sigma^{1/2} e` (the factor is symmetric)."""
        return self.solve_factor(e)

    def precision(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1} v = v / \text{variance}`: ``(..., B, H, W)``, real or complex."""
        return self._check_image(v) * torch.exp(-self.log_variance)

    def column(self, pixel: tuple[int, int]) -> Tensor:
        r""":math:`\Sigma e_p = v_p e_p`, shape ``(B, H, W)``."""
        row, col = _check_pixel(pixel, self.shape)
        mask = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        mask[row, col] = True
        return torch.where(mask, torch.exp(self.log_variance), 0.0)

    def variance(
        self, samples: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""The exact variance map :math:`\exp(\ell)`, shape ``(B, H, W)``.

        ``samples`` and ``generator`` are accepted for the common interface and ignored.
        """
        return torch.exp(self.log_variance)

    def dense(self) -> Tensor:
        r"""The full :math:`\Sigma = \operatorname{diag}(v)`, shape ``(B, N, N)``; ``N <= 4096``."""
        self._check_dense_size()
        return torch.diag_embed(torch.exp(self.log_variance).flatten(-2))


# --------------------------------------------------------------------------------------------
# Structured: Sigma^-1 = L L^T, L sparse lower-triangular (Dorta et al. 2018)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _offset_table(k: int) -> dict[tuple[int, int], int]:
    return {offset: m for m, offset in enumerate(stencil_offsets(k))}


@lru_cache(maxsize=32)
def _band_positions(width: int, radius: int) -> tuple[tuple[int, int], ...]:
    """``(t, count)`` for the diagonals ``c - t`` of a within-row matrix that fit in ``width``."""
    return tuple((t, width - t) for t in range(radius + 1) if t < width)


def _banded_t_product(blocks: Tensor, g: Tensor) -> Tensor:
    """``sum_q C_q^T blocks[:, q]`` for the banded row-coupling blocks ``C_q`` of the factor.

    ``blocks`` is ``(B, R, P, W, V)`` and ``g`` the coupling weights ``(B, R, W, 2R + 1)`` of one
    row (:meth:`StructuredCovariance._coupling` with ``transpose=True``); the product
    ``(C_q^T X)[c] = sum_t g[q, c, t] X[c + t - R]`` runs over the second-to-last axis of each
    block. Returns ``(B, P, W, V)``.
    """
    r = g.shape[1]
    w = g.shape[2]
    padded = F.pad(blocks, (0, 0, r, r))
    out = torch.zeros_like(blocks[:, 0])
    for q in range(r):
        for t in range(2 * r + 1):
            weight = g[:, q, :, t][:, None, :, None]  # (B, 1, W, 1)
            out = torch.addcmul(out, weight, padded[:, q, :, t : t + w])
    return out


@dataclass(frozen=True, eq=False)
class StructuredCovariance(_CovarianceBase):
    r"""Structured covariance with a sparse Cholesky factor of the precision (Dorta et al. 2018).

    .. math::

        \Sigma^{-1} = L L^T, \qquad L_{ii} = \exp(\text{log\_diagonal}_i), \qquad
        L_{i, i + o_m} = \text{off\_diagonal}_{m, i}

    where pixel ``i = (row, col)`` in raster order, ``o_m = (dy_m, dx_m)`` is the ``m``-th of the
    ``M = (k*k - 1) / 2`` offsets of :func:`stencil_offsets` (the ``k x k`` stencil positions
    before the centre) and ``i + o_m = (row + dy_m, col + dx_m)``. A neighbour outside the image
    contributes nothing (zero padding), so the matching entries of ``off_diagonal`` are ignored.
    Since :math:`L` is lower-triangular with a positive diagonal, :math:`\Sigma` is symmetric
    positive definite for any parameters, and

    .. math::

        \log\det\Sigma = -2 \sum_i \text{log\_diagonal}_i, \qquad
        r^T\Sigma^{-1} r = \|L^T r\|^2, \qquad \Sigma e_p = L^{-T} (L^{-1} e_p).

    These two, :meth:`factor` and :meth:`factor_t` are ``M + 1`` shifted multiplies each;
    :meth:`solve_factor` and :meth:`solve_factor_t` are row-by-row triangular solves (see
    :meth:`solve_factor_t`): a :meth:`column` takes about 8 ms at 128 x 128 and 18 ms at
    256 x 256 on one CPU core (``benchmarks/results/covariance_column.md``). Every substitution
    and the exact variance check their growth (:class:`UnstableFactorError`).

    Parameters
    ----------
    log_diagonal
        :math:`\log L_{ii}`, real, shape ``(B, H, W)``.
    off_diagonal
        the off-diagonal weights, shape ``(B, M, H, W)`` with ``M = (k*k - 1) / 2``, same dtype
        and device as ``log_diagonal``.
    stencil
        ``k``, odd and at least 3 (3, 5 and 7 give ``M`` = 4, 12 and 24).
    """

    log_diagonal: Tensor
    off_diagonal: Tensor
    stencil: int

    def __post_init__(self) -> None:
        _check_stencil(self.stencil)
        _check_parameter(self.log_diagonal, "log_diagonal", 3, "(B, H, W)")
        m = (self.stencil * self.stencil - 1) // 2
        _check_parameter(self.off_diagonal, "off_diagonal", 4, f"(B, M={m}, H, W)")
        b, h, w = self.log_diagonal.shape
        if tuple(self.off_diagonal.shape) != (b, m, h, w):
            raise ValueError(
                f"off_diagonal must have shape (B, M, H, W) = ({b}, {m}, {h}, {w}) for a "
                f"{self.stencil} x {self.stencil} stencil and log_diagonal of shape "
                f"{tuple(self.log_diagonal.shape)}; got {tuple(self.off_diagonal.shape)}"
            )
        if self.off_diagonal.dtype != self.log_diagonal.dtype:
            raise ValueError(
                f"off_diagonal ({self.off_diagonal.dtype}) and log_diagonal "
                f"({self.log_diagonal.dtype}) must have the same dtype"
            )
        if self.off_diagonal.device != self.log_diagonal.device:
            raise ValueError(
                f"off_diagonal ({self.off_diagonal.device}) and log_diagonal "
                f"({self.log_diagonal.device}) must be on the same device"
            )

    # -- properties --------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:  # type: ignore[override]
        """The image shape ``(H, W)``."""
        return (self.log_diagonal.shape[1], self.log_diagonal.shape[2])

    @property
    def _batched(self) -> Tensor:
        return self.log_diagonal

    @property
    def radius(self) -> int:
        """``(k - 1) / 2``: how many rows (and columns) back the factor reaches."""
        return (self.stencil - 1) // 2

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """:func:`stencil_offsets` of the stencil: the order of ``off_diagonal``'s channels."""
        return stencil_offsets(self.stencil)

    # -- local operations --------------------------------------------------------------------

    def logdet(self) -> Tensor:
        r""":math:`\log\det\Sigma = -2 \sum_i \text{log\_diagonal}_i`, shape ``(B,)``."""
        return -2.0 * self.log_diagonal.sum(dim=(-2, -1))

    def factor(self, v: Tensor) -> Tensor:
        r""":math:`L v`: :math:`(Lv)_i = L_{ii} v_i + \sum_m \text{off}_{m,i}\, v_{i + o_m}`.

        Parameters
        ----------
        v
            real or complex, shape ``(..., B, H, W)``.

        Returns
        -------
        tensor of the shape and dtype of ``v``.
        """
        return _part_by_part(self._factor, self._check_image(v))

    def factor_t(self, v: Tensor) -> Tensor:
        r""":math:`L^T v`: :math:`(L^Tv)_j = L_{jj} v_j + \sum_m \text{off}_{m,j-o_m} v_{j-o_m}`.

        Parameters
        ----------
        v
            real or complex, shape ``(..., B, H, W)``.

        Returns
        -------
        tensor of the shape and dtype of ``v``.
        """
        return _part_by_part(self._factor_t, self._check_image(v))

    def precision(self, v: Tensor) -> Tensor:
        r"""The precision applied to ``v``: :math:`\Sigma^{-1} v = L L^T v`.

        Parameters
        ----------
        v
            real or complex, shape ``(..., B, H, W)``; a complex ``v`` is mapped part by part.

        Returns
        -------
        tensor of the shape and dtype of ``v``.
        """
        v = self._check_image(v)
        return _part_by_part(lambda u: self._factor(self._factor_t(u)), v)

    def _plan(self, transpose: bool) -> tuple[Tensor, tuple]:
        """``exp(log_diagonal)`` and ``(target, weights, source)`` per offset for the in-place
        products: ``out[target] += weights * v[source]``. Kept on the instance when the
        parameters need no gradient (an x-step applies the same factor many times)."""
        key = "_factor_t_plan" if transpose else "_factor_plan"
        plan = self.__dict__.get(key)
        if plan is not None:
            return plan
        h, w = self.shape
        steps = []
        for m, (dy, dx) in enumerate(self.offsets):
            sign = -1 if transpose else 1
            (ty, sy), (tx, sx) = _overlap(h, sign * dy), _overlap(w, sign * dx)
            rows, cols = (sy, sx) if transpose else (ty, tx)
            steps.append(((..., ty, tx), self.off_diagonal[:, m, rows, cols], (..., sy, sx)))
        plan = (torch.exp(self.log_diagonal), tuple(steps))
        if not (self.log_diagonal.requires_grad or self.off_diagonal.requires_grad):
            self.__dict__[key] = plan  # a frozen value: its parameters never change
        return plan

    def _factor(self, v: Tensor) -> Tensor:
        if not _tracked(v, self.log_diagonal, self.off_diagonal):
            # the same sums, accumulated in place on the overlapping blocks (no temporaries)
            diagonal, steps = self._plan(transpose=False)
            out = diagonal * v
            for target, weights, source in steps:
                out[target].addcmul_(weights, v[source])
            return out
        out = torch.exp(self.log_diagonal) * v
        for m, (dy, dx) in enumerate(self.offsets):
            out = out + self.off_diagonal[:, m] * _shift(v, dy, dx)
        return out

    def _factor_t(self, v: Tensor) -> Tensor:
        if not _tracked(v, self.log_diagonal, self.off_diagonal):
            diagonal, steps = self._plan(transpose=True)
            out = diagonal * v
            for target, weights, source in steps:
                out[target].addcmul_(weights, v[source])
            return out
        out = torch.exp(self.log_diagonal) * v
        for m, (dy, dx) in enumerate(self.offsets):
            out = out + _shift(self.off_diagonal[:, m] * v, -dy, -dx)
        return out

    # -- triangular solves -------------------------------------------------------------------

    def solve_factor(self, e: Tensor) -> Tensor:
        r""":math:`L^{-1} e` by forward substitution, image row by image row from the top.

        Row ``y`` of the solution solves
        :math:`T_y x_y = e_y - \sum_{q=1}^{R} \sum_{|dx| \le R} \text{off}_{(-q, dx)}[y]\,
        x_{y-q}[\cdot + dx]` with ``R = (k - 1) / 2``, where :math:`T_y` is the lower-triangular
        ``W x W`` band of :math:`L` within row ``y`` (diagonal and the ``dy = 0`` offsets).

        Parameters
        ----------
        e
            real or complex, shape ``(..., B, H, W)``.

        Returns
        -------
        tensor of the shape and dtype of ``e``.
        """
        e = self._check_image(e, "e")
        return _part_by_part(lambda x: self._solve(x, transpose=False), e)

    def solve_factor_t(self, e: Tensor) -> Tensor:
        r""":math:`L^{-T} e` by back substitution, image row by image row from the bottom.

        :math:`L^T` couples pixel ``j`` to the pixels after it in its row (within ``R`` columns,
        ``R = (k - 1) / 2``) and to the ``R`` rows below. Row ``y`` of the solution solves
        :math:`T_y^T x_y = e_y - \sum_{q=1}^{R} \sum_{|dx| \le R} \text{off}_{(-q, dx)}
        [y + q, \cdot - dx]\, x_{y+q}[\cdot - dx]` (the rows below are already solved), a
        ``W x W`` banded upper-triangular system solved by ``torch.linalg.solve_triangular``.
        Cost: ``H`` sequential steps of ``O(W (W + k^2))`` work per right-hand side, all batch
        elements and right-hand sides (leading dimensions) at once.

        Parameters
        ----------
        e
            real or complex, shape ``(..., B, H, W)``.

        Returns
        -------
        tensor of the shape and dtype of ``e``.
        """
        e = self._check_image(e, "e")
        return _part_by_part(lambda x: self._solve(x, transpose=True), e)

    def _solve(self, e: Tensor, transpose: bool, first_row: int = 0) -> Tensor:
        """Solve with ``L`` (or ``L^T``) for real ``e`` of shape ``(..., B, H, W)``."""
        lead = e.shape[:-3]
        b, h, w = e.shape[-3:]
        rhs = e.reshape(-1, b, h, w).movedim(0, 1)  # (B, K, H, W)
        x = self._substitute(rhs, transpose, first_row)
        return x.movedim(1, 0).reshape(*lead, b, h, w)

    def growth(self, e: Tensor, x: Tensor) -> Tensor:
        r"""How much a triangular solve amplified: ``x = L^{-1} e`` or ``L^{-T} e``, both
        ``(..., B, H, W)``; returns :math:`\max|x| \min L_{ii} / \max|e|` per right-hand side,
        ``(..., B)`` (the maxima over each image, :math:`\min L_{ii}` over its batch element's).

        With every row's off-diagonal magnitudes below ``alpha < 1`` times its diagonal, the
        forward solve gives :math:`\max|x| \le \max|e| / ((1 - \alpha) \min L_{ii})`: a
        growth of at most 10 for ``alpha = 0.9`` (the back substitution is bounded alike when
        neighbouring rows have similar weights). A factor trained with a bound above 1 has no
        guarantee: the solves check it against :data:`SOLVE_GROWTH_LIMIT`, and the largest
        growth of the shipped one on validation slices is in
        ``benchmarks/results/covariance_signs.md``.
        """
        e, x = e.detach(), x.detach()
        top = e.abs().amax(dim=(-2, -1))
        smallest = torch.exp(self.log_diagonal.detach().amin(dim=(-2, -1)))  # (B,)
        return x.abs().amax(dim=(-2, -1)) * smallest / torch.where(top > 0, top, 1.0)

    def _check_growth(self, e: Tensor, x: Tensor) -> None:
        """Raise when a solve of :meth:`_substitute` (``(B, K, H, W)``) grew beyond
        :data:`SOLVE_GROWTH_LIMIT` (:meth:`growth`)."""
        if not torch.isfinite(e).all():
            raise ValueError("the right-hand side of a triangular solve has non-finite values")
        growth = self.growth(e.movedim(1, 0), x.movedim(1, 0))  # (K, B)
        worst = float(growth.max()) if growth.numel() else 0.0
        if not math.isfinite(worst) or worst > SOLVE_GROWTH_LIMIT:
            _unstable(f"the triangular solve grew by {worst:.3g}")

    def _coupling(self, transpose: bool) -> Tensor:
        """Weights of the solved rows in a row's right-hand side, ``(B, H, R, W, 2R + 1)``.

        Entry ``[b, y, q - 1, c, t]`` multiplies ``x_pad[y -/+ q][c + t]``, the solution of row
        ``y - q`` (``L``) or ``y + q`` (``L^T``) padded by ``R`` zeros on each side, i.e.
        ``x[y -/+ q, c + t - R]``.
        """
        r = self.radius
        table = _offset_table(self.stencil)
        maps = []
        for q in range(1, r + 1):
            for t in range(2 * r + 1):
                if not transpose:  # L[(y, c), (y - q, c + t - R)] = off_{(-q, t - R)}[y, c]
                    maps.append(self.off_diagonal[:, table[(-q, t - r)]])
                else:  # L[(y + q, c + t - R), (y, c)] = off_{(-q, R - t)}[y + q, c + t - R]
                    maps.append(_shift(self.off_diagonal[:, table[(-q, r - t)]], q, t - r))
        coupling = torch.stack(maps, dim=1).unflatten(1, (r, 2 * r + 1))  # (B, R, 2R+1, H, W)
        return coupling.permute(0, 3, 1, 4, 2).contiguous()

    def _row_matrices(self, y0: int, y1: int) -> Tensor:
        """The within-row blocks :math:`T_y` of :math:`L` for rows ``y0 <= y < y1``.

        ``T_y[c, c] = exp(log_diagonal[y, c])`` and ``T_y[c, c - t] = off_{(0, -t)}[y, c]``;
        shape ``(B, y1 - y0, W, W)``, lower-triangular with bandwidth ``R``.
        """
        b, _, w = self.log_diagonal.shape
        table = _offset_table(self.stencil)
        index, values = [], []
        for t, count in _band_positions(w, self.radius):
            cols = torch.arange(count, device=self.device)
            index.append((cols + t) * w + cols)
            if t == 0:
                values.append(torch.exp(self.log_diagonal[:, y0:y1]))
            else:
                values.append(self.off_diagonal[:, table[(0, -t)], y0:y1, t:])
        flat_index = torch.cat(index).expand(b, y1 - y0, -1)
        flat = self.log_diagonal.new_zeros(b, y1 - y0, w * w)
        flat.scatter_(-1, flat_index, torch.cat(values, dim=-1))
        return flat.unflatten(-1, (w, w))

    def _row_chunks(self, rows: range) -> list[tuple[int, int]]:
        """Split ``rows`` (ascending or descending) into chunks of row matrices that fit."""
        b, _, w = self.log_diagonal.shape
        size = max(1, _ROW_CHUNK_ELEMENTS // max(1, b * w * w))
        ys = list(rows)
        return [(min(ys[i : i + size]), max(ys[i : i + size]) + 1) for i in range(0, len(ys), size)]

    def _substitute(self, rhs: Tensor, transpose: bool, first_row: int = 0) -> Tensor:
        """Row-by-row substitution for ``rhs`` of shape ``(B, K, H, W)``.

        ``transpose=False`` solves :math:`L x = e` from row ``first_row`` down (rows above
        ``first_row`` of ``rhs`` must be zero; their solution is zero). ``transpose=True``
        solves :math:`L^T x = e` from the bottom row up. Raises ``FloatingPointError`` when the
        solution grew beyond :data:`SOLVE_GROWTH_LIMIT` (:meth:`_check_growth`).
        """
        b, k, h, w = rhs.shape
        r = self.radius
        coupling = self._coupling(transpose)  # (B, H, R, W, 2R+1)
        rows = range(h - 1, -1, -1) if transpose else range(first_row, h)
        zero_row = rhs.new_zeros(b, k, w + 2 * r)
        margin = rhs.new_zeros(b, k, r)
        window = [zero_row] * r  # padded solutions of rows y -/+ 1, ..., y -/+ R
        solved: list[Tensor | None] = [None] * h
        for y0, y1 in self._row_chunks(rows):
            matrices = self._row_matrices(y0, y1)  # (B, y1 - y0, W, W)
            chunk = range(y1 - 1, y0 - 1, -1) if transpose else range(y0, y1)
            for y in chunk:
                neighbours = torch.stack(window, dim=2).unfold(-1, 2 * r + 1, 1)
                known = (neighbours * coupling[:, y, None]).sum(dim=(-1, -3))  # (B, K, W)
                # Row vectors on the right: x T^T = b^T for T x = b (and x T = b^T for T^T x = b),
                # which lets LAPACK use the row-major T without copying it.
                t_y = matrices[:, y - y0]
                x = torch.linalg.solve_triangular(
                    t_y if transpose else t_y.mT,
                    rhs[:, :, y] - known,
                    upper=not transpose,
                    left=False,
                )  # (B, K, W)
                solved[y] = x
                window = [torch.cat([margin, x, margin], dim=-1), *window[:-1]]
        zeros = rhs.new_zeros(b, k, w)
        x = torch.stack([zeros if s is None else s for s in solved], dim=2)
        self._check_growth(rhs, x)
        return x

    # -- derived quantities ------------------------------------------------------------------

    def column(self, pixel: tuple[int, int]) -> Tensor:
        r"""The covariance of every pixel with ``pixel``: :math:`\Sigma e_p = L^{-T} L^{-1} e_p`.

        Two row-by-row triangular solves; the forward one starts at the row of ``p`` (the
        solution is zero above it).

        Parameters
        ----------
        pixel
            ``p = (row, col)``.

        Returns
        -------
        real tensor, shape ``(B, H, W)``: :math:`\Sigma_{ip}` at pixel ``i``.
        """
        row, col = _check_pixel(pixel, self.shape)
        b, h, w = self.log_diagonal.shape
        e = self.log_diagonal.new_zeros(b, 1, h, w)
        e[:, :, row, col] = 1.0
        half = self._substitute(e, transpose=False, first_row=row)
        return self._substitute(half, transpose=True)[:, 0]

    def variance(
        self, samples: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""The variance map :math:`\operatorname{diag}\Sigma`, exact or Monte-Carlo.

        Exact (``samples=None``, the default): a row recursion over the block form of
        :math:`\Sigma = L^{-T} L^{-1}` that never forms :math:`\Sigma`. With :math:`T_y` the
        within-row block of :math:`L` and :math:`C_{y,q}` its block from row ``y`` to row
        ``y - q`` (``q = 1..R``), the identity :math:`L^T \Sigma = L^{-1}` gives, from the bottom
        row up,

        .. math::

            Z_l = \sum_{q=1}^{R} C_{y+q,q}^T \Sigma_{y+q, l}, \qquad
            \Sigma_{y, l} = -T_y^{-T} Z_l \ (l = y+1..y+R-1),

            \Sigma_{y, y} = T_y^{-T} \Big(I + \sum_{q=1}^{R} C_{y+q,q}^T Z_{y+q}^T\Big) T_y^{-1},

        which keeps only the ``R x R`` blocks of :math:`\Sigma` between the last ``R`` rows (a
        sum of positive semi-definite terms, so no cancellation). Cost per row: ``R + 1``
        triangular solves with ``W x W`` right-hand sides, ``O((R + 1) W^3)``; ``O(H W^3)``
        in all, memory ``O(R^2 W^2)``: about 0.1 s at 128 x 128 and 0.9 s at 256 x 256 on one
        CPU core for a 5 x 5 stencil (``benchmarks/results/covariance_column.md``); compute it once
        and pass it to :meth:`correlation`.

        Monte-Carlo (``samples=n``): :math:`\frac1n \sum_s x_s^2` over ``n`` samples
        :math:`x_s = L^{-T}\varepsilon_s` (unbiased; the mean is known to be zero). Each pixel's
        estimate is :math:`\Sigma_{ii}\chi^2_n / n`, with relative standard error
        :math:`\sqrt{2/n}` (18 % for ``n = 64``, 4.4 % for ``n = 1024``). Needs ``generator``.

        Parameters
        ----------
        samples
            ``None`` for the exact map, or the number of Monte-Carlo samples.
        generator
            the random generator for the Monte-Carlo estimate.

        Returns
        -------
        real tensor, shape ``(B, H, W)``.
        """
        if samples is None:
            return self._exact_variance()
        if generator is None:
            raise ValueError("a Monte-Carlo variance (samples given) needs an explicit generator")
        return self.sample(samples, generator).square().mean(dim=0)

    def _check_variance(self, variance: Tensor, y: int) -> None:
        r"""The exact variance of row ``y``, ``(B, W)``, against what a stable factor gives:
        :math:`\Sigma_{ii} \min L^2 \le` :data:`SOLVE_GROWTH_LIMIT` squared."""
        smallest = torch.exp(2 * self.log_diagonal.detach()[:, y].amin(dim=-1))  # (B,)
        worst = float((variance.detach().amax(dim=-1) * smallest).max())
        if not math.isfinite(worst) or worst > SOLVE_GROWTH_LIMIT**2:
            _unstable(f"a variance grew to {worst:.3g} times the smallest conditional one")

    def _exact_variance(self) -> Tensor:
        b, h, w = self.log_diagonal.shape
        r = self.radius
        coupling = self._coupling(transpose=True)  # (B, H, R, W, 2R+1)
        eye = torch.eye(w, dtype=self.dtype, device=self.device)
        # window[:, a, c] = Sigma_{y+1+a, y+1+c}, the blocks between the R rows below row y.
        window = self.log_diagonal.new_zeros(b, r, r, w, w)
        out: list[Tensor] = [self.log_diagonal.new_zeros(b, w)] * h
        for y0, y1 in self._row_chunks(range(h - 1, -1, -1)):
            matrices = self._row_matrices(y0, y1)
            for y in range(y1 - 1, y0 - 1, -1):
                g = coupling[:, y]  # (B, R, W, 2R+1): g[q-1, c, t] weights row y+q at c + t - R
                # Z[:, l-1] = sum_q C_{y+q,q}^T Sigma_{y+q, y+l}, a shift-multiply along the rows
                # of each block; then inner = I + sum_q C_{y+q,q}^T Z[:, q-1]^T likewise.
                z = _banded_t_product(window, g)  # (B, R, W, W)
                inner = eye + _banded_t_product(z.mT[:, :, None], g)[:, 0]  # (B, W, W)
                inner = 0.5 * (inner + inner.mT)
                t_y = matrices[:, y - y0]
                right = torch.cat([inner, *(-z[:, : r - 1]).unbind(1)], dim=-1)
                solved = torch.linalg.solve_triangular(t_y.mT, right, upper=True)
                diag_block = torch.linalg.solve_triangular(
                    t_y, solved[..., :w], upper=False, left=False
                )
                diag_block = 0.5 * (diag_block + diag_block.mT)
                out[y] = diag_block.diagonal(dim1=-2, dim2=-1)
                self._check_variance(out[y], y)
                off_blocks = [solved[..., j * w : (j + 1) * w] for j in range(1, r)]
                top = torch.stack([diag_block, *off_blocks], dim=1)
                lower = torch.cat([top[:, 1:, None].mT, window[:, : r - 1, : r - 1]], dim=2)
                window = torch.cat([top[:, None], lower], dim=1)
        return torch.stack(out, dim=1)

    def dense_factor(self) -> Tensor:
        r"""The dense lower-triangular factor :math:`L`, shape ``(B, N, N)``; ``N <= 4096``."""
        n = self._check_dense_size()
        b, _, w = self.log_diagonal.shape
        pixels = torch.arange(n, device=self.device)
        rows, cols = pixels // w, pixels % w
        index, values = [pixels * n + pixels], [torch.exp(self.log_diagonal).reshape(b, n)]
        for m, (dy, dx) in enumerate(self.offsets):
            inside = (rows + dy >= 0) & (cols + dx >= 0) & (cols + dx < w)
            i = pixels[inside]
            index.append(i * n + i + dy * w + dx)
            values.append(self.off_diagonal[:, m].reshape(b, n)[:, inside])
        flat = self.log_diagonal.new_zeros(b, n * n)
        flat = flat.scatter(-1, torch.cat(index).expand(b, -1), torch.cat(values, dim=-1))
        return flat.unflatten(-1, (n, n))

    def dense(self) -> Tensor:
        r"""The full :math:`\Sigma = L^{-T} L^{-1}`, shape ``(B, N, N)``; refuses ``N > 4096``."""
        factor = self.dense_factor()
        eye = torch.eye(factor.shape[-1], dtype=self.dtype, device=self.device)
        inverse = torch.linalg.solve_triangular(factor, eye, upper=False)
        sigma = inverse.mT @ inverse
        return 0.5 * (sigma + sigma.mT)
