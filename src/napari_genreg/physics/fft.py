"""Centred, orthonormal 2-D Fourier transforms on the last two axes.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``: the zero frequency sits at index
``(n // 2)`` of each axis (fastMRI's convention), and the transform is unitary, so
``||fft2c(x)|| = ||x||`` and noise of standard deviation sigma in k-space is noise of standard
deviation sigma in the image.

For even ``H`` and ``W`` the two shifts are sign patterns instead of copies: on an axis of even
length ``N``, ``fftshift(fft(ifftshift(x)))[k] = (-1)^(k + N/2) fft((-1)^n x)[k]`` (and the same
for the inverse), so

.. math::

    \\operatorname{fft2c}(x) = (-1)^{(H + W)/2}\\, c \\odot \\operatorname{fft2}(c \\odot x),
    \\qquad c_{n_1 n_2} = (-1)^{n_1 + n_2},

two multiplies by a cached chequerboard of ones in place of four ``roll`` copies (equal up to
rounding; ``benchmarks/results/recon_performance.md``). Odd sizes use the shifts.
"""

from __future__ import annotations

from functools import lru_cache

import torch

_DIMS = (-2, -1)


@lru_cache(maxsize=16)
def _chequerboard(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The chequerboard ``c = (-1)^(row + col)`` of ``dtype``, shape ``(h, w)``."""
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None, :]
    return (1 - 2 * ((rows + cols) % 2)).to(dtype)


def _even(x: torch.Tensor) -> bool:
    return x.ndim >= 2 and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0


def _modulated(transform, x: torch.Tensor) -> torch.Tensor:
    """``(-1)^((H + W)/2) c * transform(c * x)`` for even ``H`` and ``W``."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    c = _chequerboard(h, w, x.dtype, x.device)
    out = transform(x * c, dim=_DIMS, norm="ortho")
    sign = -1 if ((h + w) // 2) % 2 else 1
    if torch.is_grad_enabled() and out.requires_grad:
        return out * (c if sign == 1 else -c)
    out.mul_(c)
    return out.neg_() if sign == -1 else out


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two axes.

    Parameters
    ----------
    x
        complex tensor, shape ``(..., H, W)``.

    Returns
    -------
    complex tensor, shape ``(..., H, W)``: k-space with DC at ``(H // 2, W // 2)``.
    """
    if x.is_complex() and _even(x):
        return _modulated(torch.fft.fft2, x)
    x = torch.fft.ifftshift(x, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(x, dim=_DIMS, norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (and its adjoint): ``(..., H, W) -> (..., H, W)``."""
    if k.is_complex() and _even(k):
        return _modulated(torch.fft.ifft2, k)
    k = torch.fft.ifftshift(k, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=_DIMS, norm="ortho"), dim=_DIMS)
