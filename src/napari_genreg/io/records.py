"""Typed records for loaded data.

Every reader returns a :class:`KSpaceData`; every consumer (the CLI, the reconstruction
application, the napari reader) takes one. The arrays are NumPy so that I/O never depends on
the device a reconstruction later runs on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Metadata:
    """What is known about where the data came from.

    Attributes
    ----------
    source
        The file (or sample name) the data was read from.
    matrix_size
        ``(ky, kx)``: the k-space matrix.
    noise_sigma
        Standard deviation of the complex k-space noise, ``E|n|^2 = noise_sigma^2``, in the
        units of ``kspace``; ``None`` when unknown.
    simulated
        True when the k-space was simulated from images (the reference is then exact).
    undersampled
        True when the file itself carries an acquisition mask (prospectively or already
        undersampled); False when the k-space is fully sampled and any mask is applied
        retrospectively by the user.
    extra
        Format-specific details (header fields, orientation, ...), JSON-serialisable.
    """

    source: str
    matrix_size: tuple[int, int]
    noise_sigma: float | None = None
    simulated: bool = False
    undersampled: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class KSpaceData:
    """K-space for one or more slices, with an optional reference image and mask.

    Attributes
    ----------
    kspace
        complex64, shape ``(slices, coils, ky, kx)``; centred (DC at ``(ky//2, kx//2)``) and
        scaled for the orthonormal FFT, so ``ifft2c(kspace)`` is the image on the input's
        intensity scale.
    reference
        float32 magnitudes, shape ``(slices, H, W)``, or ``None``.
    mask
        bool, shape ``(ky, kx)``: the acquisition mask of an undersampled file, or ``None``
        for fully sampled data.
    meta
        :class:`Metadata`.
    """

    kspace: np.ndarray
    reference: np.ndarray | None
    mask: np.ndarray | None
    meta: Metadata

    def __post_init__(self) -> None:
        k = self.kspace
        if not isinstance(k, np.ndarray) or k.ndim != 4 or not np.iscomplexobj(k):
            raise ValueError(
                f"{self.meta.source}: k-space must be a complex array of shape "
                f"(slices, coils, ky, kx), got {getattr(k, 'dtype', type(k))} "
                f"{getattr(k, 'shape', '')}"
            )
        if 0 in k.shape:
            raise ValueError(f"{self.meta.source}: k-space is empty, shape {k.shape}")
        if not np.all(np.isfinite(k)):
            raise ValueError(f"{self.meta.source}: k-space contains NaN or infinite values")
        if self.reference is not None:
            r = self.reference
            if r.ndim != 3 or r.shape[0] != k.shape[0]:
                raise ValueError(
                    f"{self.meta.source}: reference must have shape (slices, H, W) with "
                    f"{k.shape[0]} slices, got {r.shape}"
                )
            if not np.all(np.isfinite(r)):
                raise ValueError(f"{self.meta.source}: reference contains NaN or infinite values")
        if self.mask is not None:
            m = self.mask
            if m.dtype != np.bool_ or m.shape != k.shape[-2:]:
                raise ValueError(
                    f"{self.meta.source}: mask must be boolean of shape {k.shape[-2:]}, "
                    f"got {m.dtype} {m.shape}"
                )
            if not m.any():
                raise ValueError(f"{self.meta.source}: mask samples nothing")

    @property
    def n_slices(self) -> int:
        return self.kspace.shape[0]

    @property
    def n_coils(self) -> int:
        return self.kspace.shape[1]

    def slice(self, index: int) -> KSpaceData:
        """The record restricted to one slice (kept 4-D: ``(1, coils, ky, kx)``)."""
        if not -self.n_slices <= index < self.n_slices:
            raise IndexError(
                f"{self.meta.source}: slice {index} out of range (0..{self.n_slices - 1})"
            )
        sl = slice(index, index + 1) if index != -1 else slice(index, None)
        ref = None if self.reference is None else self.reference[sl]
        return replace(self, kspace=self.kspace[sl], reference=ref)


def encode_covariance(matrix: np.ndarray) -> list:
    """A complex ``(C, C)`` matrix as JSON-safe nested lists ``[[[re, im], ...], ...]``.

    This is the one format of ``Metadata.extra["noise_covariance"]`` (the coil noise covariance
    ``Psi = E[n n^H]``, in k-space units squared).
    """
    m = np.asarray(matrix, dtype=np.complex128)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a covariance matrix must be square, got shape {m.shape}")
    return np.stack((m.real, m.imag), axis=-1).tolist()


def decode_covariance(value: Any, coils: int) -> np.ndarray:
    """The complex ``(coils, coils)`` matrix stored by :func:`encode_covariance`.

    Raises
    ------
    ValueError
        For anything but a finite ``(coils, coils, 2)`` nested list.
    """
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the noise covariance is not numeric: {exc}") from exc
    if array.shape != (coils, coils, 2):
        raise ValueError(
            f"the noise covariance has shape {array.shape}; expected ({coils}, {coils}, 2) "
            "for the data's coils"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("the noise covariance contains NaN or infinite values")
    return array[..., 0] + 1j * array[..., 1]
