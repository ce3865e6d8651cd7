"""Builders of small test files for every supported format.

Exposed through the session fixture ``build`` (plain functions, so hypothesis tests can use
them without function-scoped fixtures).
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


def write_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray | None = None, *, slope: float | None = None
) -> Path:
    import nibabel as nib

    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, path)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    slope: float | str | None = 2.0,
    intercept: float | str | None = -10.0,
    instance: int | None = 1,
    position: tuple[float, float, float] | None = (0.0, 0.0, 0.0),
    series: str = "1.2.826.0.1.3680043.8.498.1",
    signed: bool = False,
) -> Path:
    """A minimal uncompressed MR image (16-bit, explicit VR little endian)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if instance is not None:
        ds.InstanceNumber = instance
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.75]
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG")
    return path


def write_tiff(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    import tifffile

    tifffile.imwrite(path, array, **kwargs)
    return path


def make_image(h: int = 12, w: int = 10, n: int = 1) -> np.ndarray:
    """A non-negative, asymmetric float test image stack ``(n, h, w)``."""
    y, x = np.mgrid[:h, :w]
    return np.stack([(1.0 + y + 2.0 * x + 5.0 * k) for k in range(n)]).astype(np.float32)


def valid_file_bytes() -> dict[str, bytes]:
    """One small valid file per readable extension, as bytes."""
    import tempfile

    files: dict[str, bytes] = {}
    image = (make_image(6, 5)[0] * 10).astype(np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        buf = io.BytesIO()
        np.save(buf, image.astype(np.float32))
        files[".npy"] = buf.getvalue()
        buf = io.BytesIO()
        kspace = (image + 1j * image[::-1]).astype(np.complex64)
        np.savez(buf, kspace=kspace, mask=np.ones(5, dtype=bool))
        files[".npz"] = buf.getvalue()
        for ext in (".nii", ".nii.gz"):
            files[ext] = write_nifti(
                folder / f"a{ext}", image[:, :, None].astype(np.int16)
            ).read_bytes()
        files[".dcm"] = write_dicom(folder / "a.dcm", image).read_bytes()
        files[".png"] = write_png(folder / "a.png", image).read_bytes()
        files[".tif"] = write_tiff(folder / "a.tif", image).read_bytes()
    return files


@pytest.fixture(scope="session")
def build() -> SimpleNamespace:
    """The file builders of this module."""
    return SimpleNamespace(
        nifti=write_nifti,
        dicom=write_dicom,
        png=write_png,
        tiff=write_tiff,
        image=make_image,
    )


@pytest.fixture(scope="session")
def valid_files() -> dict[str, bytes]:
    """``extension -> bytes`` of one small valid file per format."""
    return valid_file_bytes()
