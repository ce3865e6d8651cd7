"""Coil sensitivities: smooth synthetic maps for simulation, a low-resolution estimate from the
calibration region, and root-sum-of-squares combination.

(ESPIRiT, from the real-scanner-data work, will sit beside :func:`lowres_maps`.)
"""

from __future__ import annotations

import math

import torch

from napari_genreg.physics.fft import fft2c
from napari_genreg.physics.phase import lowres_image


def rss(coil_images: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares coil combination: ``sqrt(sum_c |x_c|^2)`` over ``dim``."""
    return coil_images.abs().square().sum(dim=dim).sqrt()


def synthetic_maps(
    coils: int,
    shape: tuple[int, int],
    *,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Smooth synthetic coil sensitivities for simulation, normalised to ``sum_c |s_c|^2 = 1``.

    Coils sit evenly on a circle around the field of view (radius 1.5 in units of the half
    field of view); each map is a Gaussian fall-off of the distance to its coil times a smooth
    linear phase, so the maps are deterministic, smooth and distinct.

    Returns
    -------
    complex tensor, shape ``(coils, H, W)``.
    """
    if coils < 1:
        raise ValueError(f"need at least one coil, got {coils}")
    h, w = shape
    yy = torch.linspace(-1.0, 1.0, h, dtype=torch.float64).view(h, 1)
    xx = torch.linspace(-1.0, 1.0, w, dtype=torch.float64).view(1, w)
    maps = []
    for c in range(coils):
        angle = 2 * math.pi * c / coils
        cy, cx = 1.5 * math.sin(angle), 1.5 * math.cos(angle)
        distance2 = (yy - cy) ** 2 + (xx - cx) ** 2
        magnitude = torch.exp(-distance2 / 2.0)
        phase = 0.5 * math.pi * (math.cos(angle) * yy - math.sin(angle) * xx) + angle
        maps.append(torch.polar(magnitude, phase))
    stacked = torch.stack(maps)
    stacked = stacked / rss(stacked, dim=0)
    return stacked.to(dtype=dtype, device=device)


def lowres_maps(
    kspace: torch.Tensor,
    calibration: tuple[int, int] = (24, 24),
    *,
    eps: float = 1e-3,
) -> torch.Tensor:
    """Coil sensitivities from the fully sampled centre of k-space (a simple estimate).

    The central ``calibration`` block of each coil's k-space, apodised with a Hann window, is
    transformed to the image domain and divided by its root-sum-of-squares, so
    ``sum_c |s_c|^2 = 1`` wherever the low-resolution signal exceeds ``eps`` times its maximum
    (the maps are zero elsewhere).

    Parameters
    ----------
    kspace
        complex tensor, shape ``(C, ky, kx)``, centred.
    calibration
        ``(ny, nx)``: size of the central block used.

    Returns
    -------
    complex tensor, shape ``(C, ky, kx)``.
    """
    low = lowres_image(kspace, calibration)
    norm = rss(low, dim=0)
    support = norm > eps * norm.max()
    return torch.where(support, low / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0)


def simulate_multicoil(image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Fully sampled multi-coil k-space ``F S x``: ``(..., H, W) -> (..., C, H, W)``."""
    return fft2c(image.unsqueeze(-3) * maps)
