"""From loaded data to a reconstruction problem: mask, operator, measurements, scale, noise."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from napari_genreg.io.records import KSpaceData, decode_covariance, encode_covariance
from napari_genreg.physics.coils import rss
from napari_genreg.physics.compression import compress_coils
from napari_genreg.physics.espirit import (
    MIN_CALIBRATION,
    centred_fully_sampled_box,
    sensitivity_maps,
)
from napari_genreg.physics.fft import ifft2c
from napari_genreg.physics.noise import estimate_noise_sigma, whitening_matrix
from napari_genreg.physics.operators import LinearOperator, masked_fourier, sense
from napari_genreg.physics.phase import lowres_phase

#: The smallest noise level assumed, relative to the image scale: it keeps the objective's
#: ``1 / sigma^2`` finite on noiseless (simulated) data and the automatic weights away from 0.
NOISE_FLOOR = 0.005
#: The smallest image side reconstructed (SSIM's window is 7 x 7; the priors downsample by 8).
MIN_SIDE = 8


@dataclass(frozen=True, eq=False)
class Problem:
    """One slice to reconstruct: ``y = A x + n``.

    Attributes
    ----------
    op
        ``A``: :func:`~napari_genreg.physics.operators.masked_fourier` for one coil,
        :func:`~napari_genreg.physics.operators.sense` for several.
    y
        Measured k-space with zeros where not sampled, shape ``(ky, kx)`` or ``(C, ky, kx)``.
    mask
        bool ``(ky, kx)``: the sampling pattern used.
    noise_sigma
        ``sigma`` of the objective ``1/(2 sigma^2) ||A x - y||^2 + lam R(x)``, in k-space
        units: the known or estimated noise level, at least ``NOISE_FLOOR * scale``.
    scale
        The image's intensity scale: the 99th percentile of the zero-filled magnitude.
    reference
        float32 ``(H, W)`` magnitude reference, or ``None``.
    maps
        complex ``(C, H, W)`` coil sensitivities, or ``None`` for single-coil data.
    retrospective
        True when ``mask`` was applied to fully sampled data here; False when the data came
        undersampled with its own mask.
    calibration
        ``(rows, columns)`` of the centred fully sampled region of ``mask``.
    recon_size
        ``(H, W)`` of the output: the centre of the reconstructed matrix is cropped to it
        (fastMRI's convention for readout-oversampled data); equals ``mask.shape`` otherwise.
    whitened
        True when the k-space was coil-whitened with the file's noise covariance.
    coil_method
        How the coil sensitivities were estimated: ``"espirit"``, ``"lowres"`` (the fallback
        for calibration regions too small for ESPIRiT's kernels) or ``"single coil"``.
    """

    op: LinearOperator
    y: torch.Tensor
    mask: np.ndarray
    noise_sigma: float
    scale: float
    reference: np.ndarray | None
    maps: torch.Tensor | None
    retrospective: bool
    calibration: tuple[int, int]
    recon_size: tuple[int, int]
    whitened: bool = False
    coil_method: str = "single coil"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def noise_relative(self) -> float:
        """``noise_sigma / scale``: the noise level on images scaled to about [0, 1]."""
        return self.noise_sigma / self.scale

    def zero_filled(self) -> torch.Tensor:
        """``A^H y``: the zero-filled (coil-combined) complex image, ``(H, W)``."""
        return self.op.adjoint(self.y)

    def magnitude(self, x: torch.Tensor) -> np.ndarray:
        """float32 ``|x|`` cropped to :attr:`recon_size`: what is written and compared."""
        return center_crop(x.abs().float().cpu().numpy(), self.recon_size)

    def phase(self) -> torch.Tensor:
        """A smooth phase estimate ``exp(i phi)`` of the image from the calibration region
        (see :func:`~napari_genreg.physics.phase.lowres_phase`), complex ``(H, W)``."""
        size = (max(self.calibration[0], 2), max(self.calibration[1], 2))
        return lowres_phase(self.y, size, combine=self.maps)


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centred ``size`` block of the last two axes (the centre pixel ``n // 2`` stays the
    centre pixel ``m // 2``, as with the centred FFT)."""
    h, w = image.shape[-2:]
    ch, cw = min(size[0], h), min(size[1], w)
    y0, x0 = h // 2 - ch // 2, w // 2 - cw // 2
    return image[..., y0 : y0 + ch, x0 : x0 + cw]


def build_problem(
    data: KSpaceData,
    mask: np.ndarray | None,
    *,
    slice_index: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.complex64,
    coil_maps: str = "espirit",
) -> Problem:
    """The reconstruction problem of one slice of ``data``.

    Data that came undersampled keeps its own mask (``mask`` is then ignored); fully sampled
    data is undersampled retrospectively with ``mask``, and its fully sampled image (the
    magnitude for one coil, the root-sum-of-squares for several, cropped to the recon size)
    becomes the reference when the data has none. Several coils get sensitivities from the
    calibration region (:func:`~napari_genreg.physics.espirit.sensitivity_maps`: ESPIRiT, or
    ``coil_maps="lowres"``, also the fallback for small regions); when the file has a
    coil noise covariance, data and maps are then whitened alike
    (:func:`~napari_genreg.physics.noise.whitening_matrix`), which keeps the image's scale.
    The noise level is the data's own when known, otherwise estimated from the k-space
    periphery.

    Raises
    ------
    ValueError
        For a mask of the wrong shape or one that samples nothing, or a fully sampled input with
        no mask.
    """
    part = data.slice(slice_index)
    source = data.meta.source
    kspace = torch.from_numpy(np.ascontiguousarray(part.kspace[0])).to(device=device, dtype=dtype)
    coils, h, w = kspace.shape
    sigma = data.meta.noise_sigma
    white = None
    covariance = data.meta.extra.get("noise_covariance")
    if coils > 1 and covariance is not None:
        try:
            psi = torch.from_numpy(decode_covariance(covariance, coils)).to(device)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc
        white = whitening_matrix(psi).to(dtype)
        sigma = float(torch.sqrt(torch.diagonal(psi).real.mean()))
    if data.mask is not None:
        used = data.mask
        retrospective = False
    else:
        if mask is None:
            raise ValueError(f"{source}: fully sampled data needs a sampling mask")
        used = np.asarray(mask)
        retrospective = True
    if used.shape != (h, w):
        raise ValueError(f"{source}: mask shape {used.shape} does not match k-space {(h, w)}")
    if used.dtype != np.bool_:
        raise ValueError(f"{source}: the sampling mask must be boolean, got {used.dtype}")
    if not used.any():
        raise ValueError(f"{source}: the sampling mask samples nothing")

    mask_t = torch.from_numpy(used).to(device)
    y = kspace * mask_t
    recon_size = tuple(data.meta.extra.get("recon_size", (h, w)))
    if len(recon_size) != 2 or not all(0 < int(n) for n in recon_size):
        raise ValueError(f"{source}: bad recon size {recon_size}")
    recon_size = (min(int(recon_size[0]), h), min(int(recon_size[1]), w))
    if min(recon_size) < MIN_SIDE:  # (SSIM's 7 x 7 window failed only after the run)
        raise ValueError(
            f"{source}: the image is {recon_size[0]} x {recon_size[1]} pixels; reconstruction "
            f"needs at least {MIN_SIDE} x {MIN_SIDE}"
        )
    reference = None if part.reference is None else part.reference[0].astype(np.float32)
    if reference is None and retrospective:
        full = ifft2c(kspace)
        full_image = full[0].abs() if coils == 1 else rss(full, dim=0)
        reference = center_crop(full_image.cpu().numpy(), recon_size)
    if reference is not None and reference.shape != recon_size:
        reference = center_crop(reference, recon_size)
        if reference.shape != recon_size:
            raise ValueError(
                f"{source}: the reference ({part.reference.shape[-2:]}) is smaller than the "
                f"output size {recon_size}"
            )

    box = centred_fully_sampled_box(used)
    coil_method = "single coil"
    if coils == 1:
        maps = None
        op = masked_fourier(mask_t)
        y = y[0]
    else:
        if min(box) < MIN_CALIBRATION:
            raise ValueError(
                f"{source}: multi-coil data needs a fully sampled centre of at least "
                f"{MIN_CALIBRATION}x{MIN_CALIBRATION} k-space samples to estimate coil "
                f"sensitivities (found {box[0]}x{box[1]})"
            )
        maps, coil_method = sensitivity_maps(y, mask_t, coil_maps)
        if white is not None:
            # Whiten data and maps alike: y_w = W y = M F (W S) x + W n. The maps were
            # estimated before whitening, so x keeps the unwhitened image's intensity scale.
            y = torch.einsum("dc,chw->dhw", white, y)
            maps = torch.einsum("dc,chw->dhw", white, maps)
        op = sense(maps, mask_t)

    zero_filled = op.adjoint(y).abs()
    scale = float(torch.quantile(zero_filled.flatten().float(), 0.99))
    if not scale > 0:
        raise ValueError(f"{source}: the measured k-space is zero: nothing to reconstruct")
    if sigma is None:
        sigma = estimate_noise_sigma(y, mask_t)
    sigma = max(float(sigma), NOISE_FLOOR * scale)
    whitened = white is not None and coils > 1
    return Problem(
        op,
        y,
        used,
        sigma,
        scale,
        reference,
        maps,
        retrospective,
        box,
        recon_size,
        whitened,
        coil_method,
    )


def compress(data: KSpaceData, virtual_coils: int) -> KSpaceData:
    """The record with its coils compressed to ``virtual_coils`` by SVD coil compression
    (:func:`~napari_genreg.physics.compression.compress_coils`, one matrix for all slices).

    A unitary projection keeps white noise white; a coil noise covariance ``Psi`` in the
    metadata becomes ``C Psi C^H``.
    """
    if data.n_coils == 1:
        raise ValueError(f"{data.meta.source}: coil compression needs several coils, found 1")
    if not 1 <= virtual_coils <= data.n_coils:
        raise ValueError(
            f"{data.meta.source}: cannot compress {data.n_coils} coils to {virtual_coils}"
        )
    kspace = torch.from_numpy(np.ascontiguousarray(data.kspace))
    compressed, matrix = compress_coils(kspace, virtual_coils)
    extra = dict(data.meta.extra)
    covariance = extra.get("noise_covariance")
    if covariance is not None:
        psi = torch.from_numpy(decode_covariance(covariance, data.n_coils))
        m = matrix.to(torch.complex128)
        extra["noise_covariance"] = encode_covariance((m @ psi @ m.conj().T).numpy())
    extra["coil_compression"] = {"from": data.n_coils, "to": virtual_coils}
    meta = replace(data.meta, extra=extra)
    return replace(data, kspace=compressed.numpy().astype(np.complex64), meta=meta)
