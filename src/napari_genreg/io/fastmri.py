"""Reader for fastMRI HDF5 files (``.h5``), raw k-space or reconstructions only.

A fastMRI file holds

``kspace``
    complex64, ``(slices, readout, phase)`` (single-coil) or ``(slices, coils, readout,
    phase)`` (multi-coil), e.g. ``(35, 15, 640, 368)`` for a knee;
``reconstruction_rss`` / ``reconstruction_esc``
    float32 ``(slices, H, W)``, typically 320 x 320: the reference of the multi-coil (root sum
    of squares) or single-coil (emulated single coil) track; absent from test/challenge files;
``ismrmrd_header``
    the ISMRMRD XML header: ``encoding/encodedSpace/matrixSize`` (``x`` readout = 640 with
    2x oversampling, ``y`` phase = 368) and ``encoding/reconSpace/matrixSize`` (320 x 320);
``mask`` (test/challenge files only)
    the sampled phase-encoding lines, a 1-D column mask over the last axis (bool or 0/1);
attributes
    ``acquisition``, ``max``, ``norm``, ``patient_id``, and on undersampled files
    ``acceleration`` and ``num_low_frequency``.

Conventions
-----------
fastMRI's k-space is centred for its ``fastmri.fft2c``,
``fftshift(fftn(ifftshift(x), dim=(-2, -1), norm="ortho"))`` over the last two axes, which is
exactly :func:`~napari_genreg.physics.fft.fft2c` here, so the file's k-space is used as stored
and ``ifft2c(kspace)`` is the image on the scale of the references. The orientation is kept:
the second-to-last axis is the readout (``x``), the **last** axis the phase encoding (``y``);
fastMRI's masks, and our 1-D masks, select lines of the last axis. ISMRMRD files are read into
the same layout (:mod:`napari_genreg.io.mrd`). ``meta.extra["axes"]`` records it.

fastMRI reconstructs the full encoded matrix and then crops the image centre to the recon
size; this reader does not crop, it records ``meta.extra["recon_size"] = [H, W]`` (the
header's ``reconSpace`` ``[x, y]``, else the reference's shape) for the consumer to crop. Note
that the phase size of some files is smaller than 320; fastMRI then crops to the smaller size.
The header's encoded ``x, y`` must match the k-space's last two axes; its slice count is not
checked (the public brain files keep a subset of the acquired slices).
``meta.extra["kspace_padding"]`` gives fastMRI's ``[padding_left, padding_right)``: the phase
columns inside the encoding limits (outside them the file holds zeros).

``meta.noise_sigma`` is None (estimated later); ``meta.undersampled`` is True exactly when the
file carries a ``mask``, which becomes ``mask`` bool ``(readout, phase)``.

Files without ``kspace`` but with a reconstruction (``reconstruction_rss``,
``reconstruction_esc``, or ``reconstruction`` as our own ``.h5`` writer stores it) are read as
images: single-coil k-space is simulated from them with
:func:`~napari_genreg.io.simulate.simulate_kspace` and the given ``noise_sigma`` and ``seed``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import checked_path, image_stack, record
from .arrays import _mask as acquisition_mask
from .errors import ReadError
from .hdf5 import (
    IMAGE_KEYS,
    KSPACE_KEY,
    attributes,
    describe,
    get_dataset,
    open_h5,
    read_array,
    read_text,
)
from .mrd import AXES, MAX_HEADER_CHARS, parse_header
from .records import KSpaceData, Metadata
from .simulate import simulate_kspace

if TYPE_CHECKING:
    import h5py

#: The dataset holding the ISMRMRD XML header.
HEADER_KEY = "ismrmrd_header"
#: The dataset holding the acquisition mask of undersampled files.
MASK_KEY = "mask"


def read_fastmri(
    path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
) -> KSpaceData:
    """Read a fastMRI ``.h5`` file: measured k-space, or its reconstructions as images.

    Parameters
    ----------
    path
        The fastMRI file.
    noise_sigma, seed
        Relative noise level and seed of the simulated k-space of image-only files (see
        :func:`~napari_genreg.io.simulate.simulate_kspace`); measured k-space is returned as
        stored.

    Returns
    -------
    KSpaceData
        For raw data: ``kspace`` complex64 ``(slices, coils, readout, phase)`` (one coil for
        single-coil files), ``reference`` the file's reconstruction (float32 ``(slices, H, W)``,
        smaller than the k-space matrix) or None, ``mask`` bool ``(readout, phase)`` for
        undersampled files, ``meta.noise_sigma=None``, ``meta.extra`` with
        ``format="fastmri"``, ``axes``, ``recon_size``, ``encoded_size``, ``kspace_padding``,
        ``reference_key``, the header summary and the file's attributes.

    Raises
    ------
    ReadError
        When the file is missing, not HDF5, truncated or corrupt, has neither ``kspace`` nor a
        reconstruction, or holds arrays of the wrong dtype or shape, NaN or infinite values,
        a header that disagrees with the k-space, or a mask of the wrong length.
    """
    path = checked_path(path, noise_sigma, seed)
    with open_h5(path, "not a readable fastMRI file") as f:
        if KSPACE_KEY in f:
            return _read_kspace(f, path)
        for key in IMAGE_KEYS:
            if key in f:
                images = read_array(
                    get_dataset(f, key, path), path, what=f"{key!r}", kinds="iuf", ranks=(2, 3)
                )
                extra = {
                    **attributes(f),
                    "format": "h5" if key == "reconstruction" else "fastmri",
                    "key": key,
                }
                return simulate_kspace(
                    image_stack(images, path),
                    noise_sigma=noise_sigma,
                    seed=seed,
                    source=str(path),
                    extra=extra,
                )
        raise ReadError(
            path,
            f"no {KSPACE_KEY!r} or reconstruction among {describe(f)}: expected "
            f"{KSPACE_KEY!r} (k-space) or one of {', '.join(repr(k) for k in IMAGE_KEYS)}",
        )


def _read_kspace(f: h5py.File, path: Path) -> KSpaceData:
    raw = read_array(
        get_dataset(f, KSPACE_KEY, path), path, what="the k-space", kinds="c", ranks=(3, 4)
    )
    if not np.all(np.isfinite(raw)):
        raise ReadError(path, "the k-space contains NaN or infinite values")
    with np.errstate(over="ignore", invalid="ignore"):
        kspace = raw.astype(np.complex64, copy=False)
    if not np.all(np.isfinite(kspace)):
        raise ReadError(path, "the k-space values exceed the complex64 range")
    if not np.any(kspace):
        raise ReadError(path, "the k-space is all zero")
    single_coil = kspace.ndim == 3
    if single_coil:
        kspace = kspace[:, np.newaxis]
    n_slices, _, nx, ny = kspace.shape

    extra: dict[str, Any] = attributes(f)
    extra.update(format="fastmri", axes=list(AXES), single_coil=single_coil)

    if HEADER_KEY in f:
        xml = read_text(
            get_dataset(f, HEADER_KEY, path),
            path,
            what=f"{HEADER_KEY!r}",
            max_bytes=MAX_HEADER_CHARS,
        )
        header = parse_header(xml, path)
        encoded = header.encoded_size[:2]
        if encoded != (nx, ny):
            hint = "; the k-space looks transposed (phase, readout)" if encoded == (ny, nx) else ""
            raise ReadError(
                path,
                f"the header's encoded matrix {encoded[0]} x {encoded[1]} does not match the "
                f"k-space {nx} x {ny} (readout x phase){hint}",
            )
        extra["encoded_size"] = [nx, ny]
        extra["recon_size"] = list(header.recon_size[:2])
        extra["kspace_padding"] = list(header.phase_range())
        extra["header"] = dict(header.summary)

    reference, reference_key = _reference(f, path, n_slices, single_coil)
    if reference is not None:
        extra["reference_key"] = reference_key
        extra.setdefault("recon_size", list(reference.shape[-2:]))

    mask = None
    if MASK_KEY in f:
        array = read_array(
            get_dataset(f, MASK_KEY, path), path, what="the mask", kinds="biuf", ranks=(1, 2)
        )
        mask = acquisition_mask(array, path, (nx, ny))

    meta = Metadata(
        source=str(path),
        matrix_size=(nx, ny),
        noise_sigma=None,
        simulated=False,
        undersampled=mask is not None,
        extra=extra,
    )
    return record(path, kspace=kspace, reference=reference, mask=mask, meta=meta)


def _reference(
    f: h5py.File, path: Path, n_slices: int, single_coil: bool
) -> tuple[np.ndarray | None, str | None]:
    """The file's reconstruction, float32 ``(slices, H, W)``, and its key (or ``None``s).

    The key of the file's track comes first (``reconstruction_esc`` for single-coil,
    ``reconstruction_rss`` for multi-coil), then the others of :data:`IMAGE_KEYS`.
    """
    preferred = ("reconstruction_esc",) if single_coil else ("reconstruction_rss",)
    for key in dict.fromkeys(preferred + IMAGE_KEYS):
        if key not in f:
            continue
        array = read_array(
            get_dataset(f, key, path), path, what=f"the reference {key!r}", kinds="iuf", ranks=(3,)
        )
        if array.shape[0] != n_slices:
            raise ReadError(
                path, f"the reference {key!r} has {array.shape[0]} slices, the k-space {n_slices}"
            )
        if not np.all(np.isfinite(array)):
            raise ReadError(path, f"the reference {key!r} contains NaN or infinite values")
        with np.errstate(over="ignore", invalid="ignore"):
            reference = np.abs(array).astype(np.float32)
        if not np.all(np.isfinite(reference)):
            raise ReadError(path, f"the reference {key!r} exceeds the float32 range")
        return reference, key
    return None, None
