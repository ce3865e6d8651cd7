"""Centred, orthonormal 2-D Fourier transforms on the last two axes.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``: the zero frequency sits at index
``(n // 2)`` of each axis (fastMRI's convention), and the transform is unitary, so
``||fft2c(x)|| = ||x||`` and noise of standard deviation sigma in k-space is noise of standard
deviation sigma in the image.
"""

from __future__ import annotations

import torch

_DIMS = (-2, -1)


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
    x = torch.fft.ifftshift(x, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(x, dim=_DIMS, norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (and its adjoint): ``(..., H, W) -> (..., H, W)``."""
    k = torch.fft.ifftshift(k, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(k, dim=_DIMS, norm="ortho"), dim=_DIMS)
