"""Readers for NumPy ``.npy`` and ``.npz`` files.

What an array means is decided by its dtype:

* complex: measured k-space, centred and scaled for the orthonormal FFT. Shapes ``(ky, kx)``
  (one slice, one coil), ``(coils, ky, kx)`` (one slice; a 3-D complex array is always read as
  coils) or ``(slices, coils, ky, kx)``. ``meta.noise_sigma`` is ``None`` (unknown) and
  ``meta.simulated`` False; ``noise_sigma`` and ``seed`` do not apply (no noise is added).
* real (integer or floating): images ``(H, W)`` or ``(N, H, W)``, from which k-space is
  simulated with :func:`~napari_genreg.io.simulate.simulate_kspace`.
* anything else (bool, object, strings, structured, dates): rejected.

Files are untrusted: they are never unpickled (``allow_pickle=False``), and each array header
is checked against the bytes actually present before any data is allocated, so a truncated or
lying header is a :class:`~napari_genreg.io.errors.ReadError`, not a huge allocation.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from ._common import check_dtype, check_file_size, checked_path, image_stack, parse_boundary, record
from .errors import ReadError
from .records import KSpaceData, Metadata
from .simulate import simulate_kspace

#: ``.npz`` keys, in order of preference, that hold images (real, or complex images).
IMAGE_KEYS = ("image", "images", "reference")


def read_npy(
    path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
) -> KSpaceData:
    """Read a ``.npy`` file: complex k-space, or real images to simulate k-space from.

    Parameters
    ----------
    path
        The ``.npy`` file.
    noise_sigma, seed
        Relative noise level and seed for simulated k-space (real arrays only); see
        :func:`~napari_genreg.io.simulate.simulate_kspace`.

    Returns
    -------
    KSpaceData

    Raises
    ------
    ReadError
        When the file is missing, not a ``.npy`` array, truncated, or holds an array of an
        unsupported dtype or shape, or NaN/infinite values.
    """
    path = checked_path(path, noise_sigma, seed)
    array = load_npy(path)
    with parse_boundary(path, "not a valid .npy file"):
        return _from_array(array, path, noise_sigma=noise_sigma, seed=seed, extra={"format": "npy"})


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """The array of an untrusted ``.npy`` file (a mask, a latent, k-space), read safely: the
    magic string and the header are checked, object arrays refused before any byte of data is
    read, the declared size compared with the file's.

    Raises
    ------
    ReadError
        Naming the file: not a ``.npy`` file, an unsupported dtype (objects among them), a
        file shorter than its header declares, or corrupt data.
    """
    path = Path(path)
    with parse_boundary(path, "not a valid .npy file"):
        with path.open("rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ReadError(path, "not a .npy file (no NumPy magic string)")
            f.seek(0)
            dtype, shape, data_offset = _read_header(f, path, "")
            check_file_size(path, data_offset + _nbytes(dtype, shape), ".npy file")
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)


def read_npz(
    path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
) -> KSpaceData:
    """Read a ``.npz`` archive.

    Keys are looked up in this order:

    1. ``kspace`` (complex, shapes as for ``.npy``), with optional ``reference`` (real or
       complex magnitudes ``(H, W)`` or ``(slices, H, W)``) and ``mask`` (the acquisition mask,
       ``(ky, kx)`` or ``(kx,)`` for a column mask, bool or 0/1 numbers; its presence sets
       ``meta.undersampled=True``);
    2. the first of ``image``, ``images``, ``reference``: images (real or complex) to
       simulate k-space from;
    3. the only array of a one-array archive, read as a ``.npy`` file would be.

    Parameters
    ----------
    path
        The ``.npz`` file.
    noise_sigma, seed
        Relative noise level and seed for simulated k-space (images only).

    Returns
    -------
    KSpaceData

    Raises
    ------
    ReadError
        When the file is missing, not a zip of ``.npy`` members, truncated or corrupt, when no
        key fits (the message lists the keys), or when an array is unsupported.
    """
    path = checked_path(path, noise_sigma, seed)
    with parse_boundary(path, "not a valid .npz file"):
        with zipfile.ZipFile(path) as archive:
            members = {
                info.filename.removesuffix(".npy"): info
                for info in archive.infolist()
                if info.filename.endswith(".npy")
            }
            keys = sorted(members)
            if not members:
                raise ReadError(path, "the archive holds no .npy arrays")

            def load(key: str) -> np.ndarray:
                return _load_member(archive, members[key], path)

            if "kspace" in members:
                kspace = load("kspace")
                reference = load("reference") if "reference" in members else None
                mask = load("mask") if "mask" in members else None
                extra = {"format": "npz", "key": "kspace"}
                return _from_kspace(kspace, path, reference=reference, mask=mask, extra=extra)
            for key in IMAGE_KEYS:
                if key in members:
                    images = image_stack(load(key), path, allow_complex=True)
                    extra = {"format": "npz", "key": key}
                    return simulate_kspace(
                        images, noise_sigma=noise_sigma, seed=seed, source=str(path), extra=extra
                    )
            if len(members) == 1:
                (key,) = keys
                return _from_array(
                    load(key),
                    path,
                    noise_sigma=noise_sigma,
                    seed=seed,
                    extra={"format": "npz", "key": key},
                )
            raise ReadError(
                path,
                f"no array to read among keys {keys}: expected 'kspace' (complex k-space), one of "
                f"{list(IMAGE_KEYS)} (images), or a single array",
            )


def _from_array(
    array: np.ndarray, path: Path, *, noise_sigma: float, seed: int, extra: dict[str, object]
) -> KSpaceData:
    """Complex -> measured k-space; real -> simulated k-space from images."""
    check_dtype(array, path, "iufc", "the array")
    if np.iscomplexobj(array):
        return _from_kspace(array, path, reference=None, mask=None, extra=extra)
    images = image_stack(array, path)
    return simulate_kspace(
        images, noise_sigma=noise_sigma, seed=seed, source=str(path), extra=extra
    )


def _from_kspace(
    kspace: np.ndarray,
    path: Path,
    *,
    reference: np.ndarray | None,
    mask: np.ndarray | None,
    extra: dict[str, object],
) -> KSpaceData:
    """Measured k-space (with optional reference and mask) as a :class:`KSpaceData`."""
    check_dtype(kspace, path, "c", "k-space")
    if kspace.ndim not in (2, 3, 4):
        raise ReadError(
            path,
            "complex k-space must have shape (ky, kx), (coils, ky, kx) or (slices, coils, ky, kx), "
            f"got {kspace.ndim}-D {kspace.shape}",
        )
    if kspace.size == 0:
        raise ReadError(path, f"the k-space is empty, shape {kspace.shape}")
    if not np.all(np.isfinite(kspace)):
        raise ReadError(path, "the k-space contains NaN or infinite values")
    with np.errstate(over="ignore", invalid="ignore"):
        k = kspace.astype(np.complex64).reshape((1,) * (4 - kspace.ndim) + kspace.shape)
    if not np.all(np.isfinite(k)):
        raise ReadError(path, "the k-space values exceed the complex64 range")
    if not np.any(k):
        raise ReadError(path, "the k-space is all zero")
    n_slices, _, ky, kx = k.shape

    ref = None
    if reference is not None:
        ref = image_stack(reference, path, allow_complex=True)
        if not np.all(np.isfinite(ref)):
            raise ReadError(path, "the reference contains NaN or infinite values")
        with np.errstate(over="ignore", invalid="ignore"):
            ref = np.abs(ref).astype(np.float32)
        if ref.shape[0] != n_slices:
            raise ReadError(
                path, f"the reference has {ref.shape[0]} slices, the k-space {n_slices}"
            )

    acq = None if mask is None else _mask(mask, path, (ky, kx))
    meta = Metadata(
        source=str(path),
        matrix_size=(ky, kx),
        noise_sigma=None,
        simulated=False,
        undersampled=acq is not None,
        extra=extra,
    )
    return record(path, kspace=k, reference=ref, mask=acq, meta=meta)


def _mask(mask: np.ndarray, path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An acquisition mask as bool ``(ky, kx)``; a ``(kx,)`` column mask is broadcast."""
    if mask.dtype != np.bool_:
        check_dtype(mask, path, "iuf", "the mask")
        if not np.all((mask == 0) | (mask == 1)):
            raise ReadError(path, "the mask must hold only 0 and 1 (or be boolean)")
        mask = mask != 0
    if mask.shape == shape[-1:]:
        mask = np.broadcast_to(mask, shape)
    if mask.shape != shape:
        raise ReadError(path, f"the mask must have shape {shape} or {shape[-1:]}, got {mask.shape}")
    if not mask.any():
        raise ReadError(path, "the mask samples nothing")
    return np.ascontiguousarray(mask)


def _nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=object)) * dtype.itemsize


def _read_header(f: IO[bytes], path: Path, key: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse a ``.npy`` header; return ``(dtype, shape, data offset)``.

    The dtype is checked here, before any data is read, so object arrays are refused without
    touching pickle.
    """
    what = f"array {key!r}" if key else "the array"
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ReadError(path, f"unsupported .npy format version {version} for {what}")
    if dtype.hasobject:
        raise ReadError(path, f"{what} holds Python objects ({dtype}); refusing to unpickle")
    check_dtype(dtype, path, "biufc", what)
    return dtype, shape, f.tell()


def _load_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """Load one ``.npz`` member after checking its header against its stored size."""
    key = info.filename.removesuffix(".npy")
    with archive.open(info) as f:
        dtype, shape, data_offset = _read_header(f, path, key)
    needed = data_offset + _nbytes(dtype, shape)
    if info.file_size < needed:
        raise ReadError(
            path,
            f"truncated array {key!r}: its header needs {needed} bytes, the member has "
            f"{info.file_size}",
        )
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)
