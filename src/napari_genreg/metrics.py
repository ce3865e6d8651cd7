"""Image quality metrics on magnitudes, against a reference.

fastMRI's convention: the data range of PSNR and SSIM is the reference's maximum (not the
dtype's range), and NMSE is ``||ref - rec||^2 / ||ref||^2``. PSNR and SSIM come from
scikit-image.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Metrics(NamedTuple):
    """PSNR (dB), SSIM and NMSE of one image against its reference."""

    psnr: float
    ssim: float
    nmse: float


def _check(reference: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    img = np.asarray(image, dtype=np.float64)
    if ref.shape != img.shape or ref.ndim != 2:
        raise ValueError(
            f"metrics need two 2-D images of the same shape, got {ref.shape} and {img.shape}"
        )
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(img))):
        raise ValueError("metrics need finite images (found NaN or infinity)")
    if ref.max() <= 0:
        raise ValueError("the reference is zero everywhere: PSNR/SSIM are undefined")
    return ref, img


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB with ``data_range = reference.max()``."""
    from skimage.metrics import peak_signal_noise_ratio

    ref, img = _check(reference, image)
    with np.errstate(divide="ignore"):  # identical images: inf, without numpy's warning
        return float(peak_signal_noise_ratio(ref, img, data_range=ref.max()))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    """Structural similarity (scikit-image, 7x7 window) with ``data_range = reference.max()``."""
    from skimage.metrics import structural_similarity

    ref, img = _check(reference, image)
    return float(structural_similarity(ref, img, data_range=ref.max()))


def nmse(reference: np.ndarray, image: np.ndarray) -> float:
    """Normalised mean squared error ``||ref - img||^2 / ||ref||^2``."""
    ref, img = _check(reference, image)
    return float(np.sum((ref - img) ** 2) / np.sum(ref**2))


def evaluate(reference: np.ndarray, image: np.ndarray) -> Metrics:
    """All three metrics of ``image`` (magnitude, ``(H, W)``) against ``reference``."""
    return Metrics(psnr(reference, image), ssim(reference, image), nmse(reference, image))
