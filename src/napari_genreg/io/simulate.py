"""Simulated single-coil k-space from images.

torch is imported inside :func:`simulate_kspace`, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ._common import check_dtype, check_read_args, json_safe, record
from .errors import ReadError
from .records import KSpaceData, Metadata


def simulate_kspace(
    images: np.ndarray,
    *,
    noise_sigma: float = 0.0,
    seed: int = 0,
    source: str,
    extra: Mapping[str, Any] | None = None,
) -> KSpaceData:
    """Fully sampled single-coil k-space of images, with optional complex Gaussian noise.

    .. math::

        y = F x + n, \\qquad n \\sim \\mathcal{CN}(0, \\sigma_{abs}^2), \\qquad
        \\sigma_{abs} = \\sigma_{rel} \\cdot \\max_i |x_i|

    with ``F`` the centred orthonormal 2-D FFT (:func:`~napari_genreg.physics.fft.fft2c`), so
    ``E|n|^2 = sigma_abs^2`` per k-space sample and, the FFT being unitary, the same per pixel
    of the zero-filled image. ``noise_sigma`` is therefore the noise level *relative to the
    image scaled to [0, 1]* (the scale the priors know), while ``meta.noise_sigma`` holds the
    absolute level in the units of ``kspace``. The FFT is computed on the CPU in complex64.

    Parameters
    ----------
    images
        Real or complex array, shape ``(N, H, W)`` (or ``(H, W)`` for one slice). Integer
        dtypes are accepted; bool, object, string and structured dtypes are not.
    noise_sigma
        Relative noise level ``sigma_rel >= 0`` (0: noiseless).
    seed
        Seed of a fresh ``torch.Generator`` on the CPU; the global RNG is never touched, and
        the same seed gives the same noise.
    source
        Where the images came from (a path or a sample name), used in messages and metadata.
    extra
        Format-specific details merged into ``meta.extra`` (JSON-serialisable).

    Returns
    -------
    KSpaceData
        ``kspace`` complex64 ``(N, 1, H, W)``; ``reference = |images|`` float32 ``(N, H, W)``;
        ``mask=None``; ``meta.simulated=True``, ``meta.noise_sigma = sigma_abs``,
        ``meta.extra["image_scale"] = max |images|`` and
        ``meta.extra["noise_sigma_relative"] = noise_sigma``.

    Raises
    ------
    ReadError
        (a :class:`ValueError`) naming ``source`` when the images are empty, of another rank
        or dtype, contain NaN or infinite values, are all zero, or overflow complex64.
    ValueError
        On a negative or non-finite ``noise_sigma`` or a bad ``seed``.

    Examples
    --------
    >>> import numpy as np
    >>> data = simulate_kspace(np.ones((1, 4, 4)), source="ones")
    >>> data.kspace.shape, float(abs(data.kspace[0, 0, 2, 2]))
    ((1, 1, 4, 4), 4.0)
    """
    import torch

    from ..physics.fft import fft2c
    from ..physics.noise import add_noise

    check_read_args(noise_sigma, seed)
    array = np.asarray(images)
    check_dtype(array, source, "iufc", "the images")
    if array.ndim not in (2, 3):
        raise ReadError(
            source, f"images must have shape (H, W) or (N, H, W), got {array.ndim}-D {array.shape}"
        )
    if array.size == 0:
        raise ReadError(source, f"the images are empty, shape {array.shape}")
    if array.ndim == 2:
        array = array[np.newaxis]
    if not np.all(np.isfinite(array)):
        raise ReadError(source, "the images contain NaN or infinite values")

    with np.errstate(over="ignore", invalid="ignore"):
        image = array.astype(np.complex64)
        reference = np.abs(image).astype(np.float32)
    if not np.all(np.isfinite(reference)):
        raise ReadError(source, "the image values exceed the float32 range")
    scale = float(reference.max())
    if scale == 0.0:
        raise ReadError(source, "the images are all zero")

    sigma_abs = float(noise_sigma) * scale
    generator = torch.Generator().manual_seed(int(seed))
    kspace = fft2c(torch.from_numpy(image))[:, None]  # (N, 1, H, W)
    kspace = add_noise(kspace, sigma_abs, generator=generator).numpy()
    if not np.all(np.isfinite(kspace)):
        raise ReadError(source, "the k-space overflows complex64; rescale the images")

    h, w = reference.shape[-2:]
    meta = Metadata(
        source=source,
        matrix_size=(h, w),
        noise_sigma=sigma_abs,
        simulated=True,
        undersampled=False,
        extra={
            **json_safe(dict(extra or {})),
            "image_scale": scale,
            "noise_sigma_relative": float(noise_sigma),
        },
    )
    return record(source, kspace=kspace, reference=reference, mask=None, meta=meta)
