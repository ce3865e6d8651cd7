"""Image phase: a smooth low-resolution estimate from the centre of k-space, and its removal
and restoration.

MR images are complex: the magnitude carries the anatomy, the phase comes from B0 inhomogeneity,
coil and receiver chains and is smooth. Priors trained on real magnitudes need the phase taken
out before they see the image and put back afterwards:

    phase = lowres_phase(zero_filled_kspace)          # unit-modulus (H, W)
    x_real = remove_phase(x, phase)                   # ~ real and non-negative
    x = restore_phase(x_real, phase)
"""

from __future__ import annotations

import torch

from napari_genreg.physics.fft import ifft2c


def hann_lowpass(
    shape: tuple[int, int], size: tuple[int, int], *, like: torch.Tensor
) -> torch.Tensor:
    """A centred separable Hann window of ``size`` on a ``shape`` grid (zero outside).

    Returns a real tensor of ``like``'s real dtype and device, shape ``shape``.
    """
    h, w = shape
    ny, nx = min(size[0], h), min(size[1], w)
    dtype = like.real.dtype if like.is_complex() else like.dtype
    window = torch.zeros((h, w), dtype=dtype, device=like.device)
    hy = torch.hann_window(ny + 2, periodic=False, dtype=dtype, device=like.device)[1:-1]
    hx = torch.hann_window(nx + 2, periodic=False, dtype=dtype, device=like.device)[1:-1]
    y0, x0 = h // 2 - ny // 2, w // 2 - nx // 2
    window[y0 : y0 + ny, x0 : x0 + nx] = hy.view(-1, 1) * hx.view(1, -1)
    return window


def lowres_image(kspace: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The image of the central ``size`` block of k-space, Hann-apodised: ``(..., H, W)``."""
    return ifft2c(kspace * hann_lowpass(tuple(kspace.shape[-2:]), size, like=kspace))


def lowres_phase(
    kspace: torch.Tensor,
    size: tuple[int, int] = (24, 24),
    *,
    combine: torch.Tensor | None = None,
) -> torch.Tensor:
    """A smooth phase estimate ``exp(i phi)`` from the centre of k-space.

    Parameters
    ----------
    kspace
        complex, centred; ``(H, W)`` for one coil, ``(C, H, W)`` for several.
    size
        ``(ny, nx)``: the central block used (the fully sampled calibration region).
    combine
        complex ``(C, H, W)`` coil sensitivities: for several coils the low-resolution coil
        images are combined as ``sum_c conj(s_c) x_c`` (the SENSE combination, whose phase is the
        phase of the image SENSE reconstructs). Required when ``kspace`` has a coil axis.

    Returns
    -------
    complex ``(H, W)`` of modulus 1 (1 where the low-resolution image is exactly zero).
    """
    low = lowres_image(kspace, size)
    if kspace.ndim == 3:
        if combine is None:
            raise ValueError("several coils need their sensitivities to combine the phase")
        low = (low * combine.conj()).sum(dim=0)
    magnitude = low.abs()
    return torch.where(
        magnitude > 0, low / magnitude.clamp_min(torch.finfo(magnitude.dtype).tiny), 1
    )


def remove_phase(x: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``x * conj(phase)``: the image with the estimated phase taken out."""
    return x * phase.conj()


def restore_phase(x: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``x * phase``: the inverse of :func:`remove_phase` for unit-modulus ``phase``."""
    return x * phase
