"""Reading and writing data: k-space, images and reconstructions.

Every reader returns a :class:`KSpaceData`. :func:`read` picks the reader from the file's
extension through one registry, :data:`READERS`, so a new format (fastMRI ``.h5``, ISMRMRD,
Siemens TWIX ``.dat``) is one more entry there. A folder is read as one DICOM series.

Images (NIfTI, DICOM, PNG, TIFF, real arrays) become simulated single-coil k-space with
:func:`simulate_kspace`; complex arrays are measured k-space. Any missing, unsupported,
corrupt or truncated file raises :class:`ReadError` naming the file and the problem.
:func:`read_isolated` reads in a child process that is stopped after a time limit, for HDF5
files (a corrupt one can hang the HDF5 library); the napari reader and the CLI use it.

Importing this package loads NumPy only; torch, nibabel, pydicom, Pillow, tifffile and h5py
are imported by the functions that need them.

Examples
--------
>>> from napari_genreg import io
>>> data = io.read("brain.nii.gz", noise_sigma=0.01, seed=0)  # doctest: +SKIP
>>> io.write("recon.nii.gz", magnitudes, settings={"method": "tv"})  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from ._common import Reader, check_read_args, match_extension
from .arrays import load_npy, read_npy, read_npz
from .errors import ReadError, WriteError
from .fastmri import read_fastmri
from .hdf5 import read_h5
from .images import read_dicom, read_nifti, read_png, read_tiff
from .isolated import is_hdf5_path, read_isolated
from .mrd import read_mrd
from .records import KSpaceData, Metadata
from .simulate import simulate_kspace
from .twix import read_twix
from .writers import (
    SUPPORTED_WRITE_EXTENSIONS,
    WRITERS,
    check_target,
    read_settings,
    stored_settings,
    write,
)

__all__ = [
    "READERS",
    "SUPPORTED_EXTENSIONS",
    "SUPPORTED_WRITE_EXTENSIONS",
    "WRITERS",
    "KSpaceData",
    "Metadata",
    "ReadError",
    "Reader",
    "WriteError",
    "check_target",
    "is_hdf5_path",
    "load_npy",
    "read",
    "read_dicom",
    "read_fastmri",
    "read_h5",
    "read_isolated",
    "read_mrd",
    "read_nifti",
    "read_npy",
    "read_npz",
    "read_png",
    "read_settings",
    "read_tiff",
    "read_twix",
    "simulate_kspace",
    "stored_settings",
    "write",
]

#: Lower-case extension (``.nii.gz`` included) -> reader. Add one entry for a new format.
READERS: dict[str, Reader] = {
    ".npy": read_npy,
    ".npz": read_npz,
    ".nii": read_nifti,
    ".nii.gz": read_nifti,
    ".dcm": read_dicom,
    ".dicom": read_dicom,
    ".png": read_png,
    ".tif": read_tiff,
    ".tiff": read_tiff,
    ".h5": read_h5,
    ".hdf5": read_h5,
    ".mrd": read_mrd,
    ".dat": read_twix,
}
#: The extensions :func:`read` accepts (a folder is read as a DICOM series).
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(READERS)


def read(path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0) -> KSpaceData:
    """Read k-space, or images to simulate k-space from, choosing the reader by extension.

    Parameters
    ----------
    path
        A file with one of :data:`SUPPORTED_EXTENSIONS` (case-insensitive), or a folder
        holding one DICOM series.
    noise_sigma
        Relative noise level for simulated k-space (images only): the standard deviation of
        the complex noise as a fraction of the image maximum; see :func:`simulate_kspace`.
        Measured (complex) k-space is returned as stored.
    seed
        Seed of the noise (a fresh generator; the global RNG is never used).

    Returns
    -------
    KSpaceData

    Raises
    ------
    ReadError
        When nothing exists at ``path``, its extension is not supported (the message lists
        the supported ones), or the reader finds the file unusable.
    ValueError
        On a negative or non-finite ``noise_sigma`` or a bad ``seed``.
    """
    check_read_args(noise_sigma, seed)
    path = Path(path)
    if not path.exists():
        raise ReadError(path, "no such file")
    if path.is_dir():
        return read_dicom(path, noise_sigma=noise_sigma, seed=seed)
    ext = match_extension(path, READERS)
    if ext is None:
        raise ReadError(
            path,
            f"unsupported file type {''.join(path.suffixes) or '(no extension)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)} or a DICOM folder",
        )
    return READERS[ext](path, noise_sigma=noise_sigma, seed=seed)
