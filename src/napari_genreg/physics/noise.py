"""Complex Gaussian measurement noise."""

from __future__ import annotations

import math

import torch


def complex_gaussian(
    shape: tuple[int, ...],
    sigma: float,
    *,
    generator: torch.Generator,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Circularly-symmetric complex Gaussian noise with ``E|n|^2 = sigma^2`` per sample.

    The real and imaginary parts are independent with standard deviation ``sigma / sqrt(2)``.
    With the orthonormal FFT (:func:`~napari_genreg.physics.fft.fft2c`) the same sigma is the
    noise level of the zero-filled image of a fully sampled acquisition.

    Parameters
    ----------
    shape
        Shape of the noise tensor.
    sigma
        Standard deviation of each complex sample (non-negative).
    generator
        Source of randomness (explicit: the global RNG is never used). It must live on the
        CPU; the noise is drawn there and then moved, so a seed gives the same noise on
        every device.
    """
    if not sigma >= 0 or not math.isfinite(sigma):
        raise ValueError(f"noise sigma must be a finite non-negative number, got {sigma}")
    real_dtype = torch.empty((), dtype=dtype).real.dtype
    parts = torch.randn((*shape, 2), generator=generator, dtype=real_dtype)
    noise = torch.view_as_complex(parts) * (sigma / math.sqrt(2.0))
    return noise.to(device=device)


def add_noise(kspace: torch.Tensor, sigma: float, *, generator: torch.Generator) -> torch.Tensor:
    """``kspace + n`` with ``n`` from :func:`complex_gaussian` (a new tensor)."""
    if sigma == 0:
        return kspace.clone()
    n = complex_gaussian(
        tuple(kspace.shape),
        sigma,
        generator=generator,
        dtype=kspace.dtype,
        device=kspace.device,
    )
    return kspace + n


def estimate_noise_sigma(kspace: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Estimate the k-space noise level ``sigma`` (``E|n|^2 = sigma^2``) from the periphery.

    Far from the centre of k-space an MR image has almost no signal, so the samples there are
    close to pure noise. For circular complex Gaussian noise ``|n|`` is Rayleigh distributed with
    median ``sigma * sqrt(ln 2)``. The estimate is the median magnitude of the sampled entries in
    the four corners of k-space (the outer 1/8 of both axes, the highest spatial frequencies),
    divided by ``sqrt(ln 2)``; when no corner entry is sampled (1-D or radial masks), the outer
    1/8 band of either axis is used instead. A median ignores a few strong samples of residual
    signal; what signal remains biases the estimate upwards, which errs on the side of more
    regularisation.

    Parameters
    ----------
    kspace
        complex tensor, shape ``(..., ky, kx)``, centred.
    mask
        boolean ``(ky, kx)``: which entries were sampled (default: the non-zero ones).
    """
    h, w = kspace.shape[-2:]
    by, bx = max(1, h // 8), max(1, w // 8)
    outer_y = torch.zeros(h, dtype=torch.bool, device=kspace.device)
    outer_y[:by] = outer_y[h - by :] = True
    outer_x = torch.zeros(w, dtype=torch.bool, device=kspace.device)
    outer_x[:bx] = outer_x[w - bx :] = True
    corners = outer_y[:, None] & outer_x[None, :]
    band = outer_y[:, None] | outer_x[None, :]
    sampled = (kspace != 0).any(dim=tuple(range(kspace.ndim - 2))) if mask is None else mask
    sampled = sampled.to(kspace.device)
    select = corners & sampled
    if int(select.sum()) < 16:
        select = band & sampled
    if not bool(select.any()):
        select = sampled
    values = kspace[..., select].abs().flatten()
    if values.numel() == 0:
        raise ValueError("cannot estimate the noise level: no sampled k-space entries")
    return float(values.median()) / math.sqrt(math.log(2.0))


def whitening_matrix(noise_covariance: torch.Tensor) -> torch.Tensor:
    """A coil-whitening matrix ``W`` that keeps the average noise level.

    With the coil noise covariance ``Psi = E[n n^H]`` (``C x C``, Hermitian positive definite)
    and its Cholesky factor ``Psi = L L^H``, ``W = sigma_bar L^-1`` with
    ``sigma_bar^2 = trace(Psi) / C``: the whitened noise ``W n`` has covariance
    ``sigma_bar^2 I`` (independent coils, equal variance), and the image keeps roughly its
    intensity scale. Apply it across the coil axis of k-space (``W @ k``) and of the coil maps.

    Raises
    ------
    ValueError
        When ``Psi`` is not square, not finite or not positive definite.
    """
    psi = noise_covariance
    if psi.ndim != 2 or psi.shape[0] != psi.shape[1]:
        raise ValueError(f"a noise covariance must be square, got shape {tuple(psi.shape)}")
    if not bool(torch.isfinite(torch.view_as_real(psi) if psi.is_complex() else psi).all()):
        raise ValueError("the noise covariance contains NaN or infinite values")
    chol, info = torch.linalg.cholesky_ex(psi)
    if int(info) != 0:
        raise ValueError("the noise covariance is not positive definite")
    sigma_bar = torch.sqrt(torch.diagonal(psi).real.mean())
    eye = torch.eye(psi.shape[0], dtype=psi.dtype, device=psi.device)
    return sigma_bar * torch.linalg.solve_triangular(chol, eye, upper=False)
