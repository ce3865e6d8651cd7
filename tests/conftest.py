"""Builders of small test files for every supported format.

Exposed through the session fixture ``build`` (plain functions, so hypothesis tests can use
them without function-scoped fixtures).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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


# ------------------------------------------------------------------------ raw MRI data (HDF5)

#: Sizes of the synthetic raw data: slices, coils, encoded (readout, phase), recon size.
MRI_SLICES, MRI_COILS, MRI_ENCODED, MRI_RECON = 3, 4, (64, 48), (32, 32)


def make_phantom(h: int, w: int, slices: int = 1) -> np.ndarray:
    """A smooth-edged ellipse phantom stack ``(slices, h, w)``, float32, inside the central
    half of the rows and columns (so a centre crop to half the size keeps all of it)."""
    y = np.linspace(-2.0, 2.0, h, endpoint=False)[:, None] + 2.0 / h
    x = np.linspace(-2.0, 2.0, w, endpoint=False)[None, :] + 2.0 / w

    def blob(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        r2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        return 1.0 / (1.0 + np.exp(np.clip((r2 - 1.0) * 25.0, -50.0, 50.0)))

    stack = []
    for s in range(slices):
        image = blob(0.0, 0.0, 0.9, 0.8) + 0.5 * blob(0.3, -0.2, 0.25, 0.4)
        stack.append(image - (0.3 + 0.1 * s) * blob(-0.3, 0.25, 0.2, 0.3))
    return np.stack(stack).astype(np.float32)


def ismrmrd_header(
    encoded: tuple[int, int, int],
    recon: tuple[int, int, int],
    *,
    phase_limits: tuple[int, int, int] | None = None,
    slices: int = 1,
    trajectory: str = "cartesian",
    namespace: bool = True,
) -> str:
    """A minimal ISMRMRD XML header (valid against the schema)."""
    ex, ey, ez = encoded
    rx, ry, rz = recon
    lo, hi, centre = phase_limits if phase_limits is not None else (0, ey - 1, ey // 2)

    def limit(name: str, minimum: int, maximum: int, center: int) -> str:
        return (
            f"<{name}><minimum>{minimum}</minimum><maximum>{maximum}</maximum>"
            f"<center>{center}</center></{name}>"
        )

    ns = ' xmlns="http://www.ismrm.org/ISMRMRD"' if namespace else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<ismrmrdHeader{ns}>'
        "<acquisitionSystemInformation><systemVendor>SYNTHETIC</systemVendor>"
        "<systemFieldStrength_T>3.0</systemFieldStrength_T>"
        "<receiverChannels>4</receiverChannels></acquisitionSystemInformation>"
        "<experimentalConditions><H1resonanceFrequency_Hz>123200000</H1resonanceFrequency_Hz>"
        "</experimentalConditions><encoding>"
        f"<encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>{ez}</z></matrixSize>"
        f"<fieldOfView_mm><x>{2 * ex}.0</x><y>{2 * ey}.0</y><z>5.0</z></fieldOfView_mm>"
        "</encodedSpace>"
        f"<reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>{rz}</z></matrixSize>"
        f"<fieldOfView_mm><x>{2 * rx}.0</x><y>{2 * ry}.0</y><z>5.0</z></fieldOfView_mm>"
        "</reconSpace><encodingLimits>"
        + limit("kspace_encoding_step_1", lo, hi, centre)
        + limit("kspace_encoding_step_2", 0, 0, 0)
        + limit("slice", 0, slices - 1, slices // 2)
        + f"</encodingLimits><trajectory>{trajectory}</trajectory></encoding>"
        "<sequenceParameters><TR>2000.0</TR><TE>30.0</TE></sequenceParameters>"
        "</ismrmrdHeader>"
    )


def fft2c_np(x: np.ndarray) -> np.ndarray:
    """Our centred orthonormal FFT (through torch), on NumPy arrays."""
    import torch

    from napari_genreg.physics.fft import fft2c

    return fft2c(torch.from_numpy(np.ascontiguousarray(x, dtype=np.complex64))).numpy()


def ifft2c_np(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`fft2c_np`."""
    import torch

    from napari_genreg.physics.fft import ifft2c

    return ifft2c(torch.from_numpy(np.ascontiguousarray(k, dtype=np.complex64))).numpy()


def center_crop(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The central ``shape`` of the last two axes (fastMRI's ``center_crop``)."""
    h, w = shape
    top, left = x.shape[-2] // 2 - h // 2, x.shape[-1] // 2 - w // 2
    return x[..., top : top + h, left : left + w]


def multicoil_kspace(
    slices: int = MRI_SLICES, coils: int = MRI_COILS, shape: tuple[int, int] = MRI_ENCODED
) -> tuple[np.ndarray, np.ndarray]:
    """``(kspace (slices, coils, *shape) complex64, phantom (slices, *shape))``: the phantom
    through smooth synthetic coil maps and our ``fft2c``."""
    from napari_genreg.physics.coils import synthetic_maps

    phantom = make_phantom(*shape, slices)
    maps = synthetic_maps(coils, shape).numpy()
    return fft2c_np(phantom[:, None] * maps[None]), phantom


def write_fastmri(
    path: Path,
    *,
    single_coil: bool = False,
    mask: np.ndarray | None = None,
    header: str | None = "default",
    reference: bool = True,
    kspace: np.ndarray | None = None,
    attrs: dict[str, object] | None = None,
) -> dict[str, np.ndarray]:
    """A fastMRI-style file; returns the truth (``kspace`` as written, ``phantom``,
    ``reference``)."""
    import h5py

    if kspace is None:
        kspace, phantom = multicoil_kspace(coils=1 if single_coil else MRI_COILS)
    else:
        phantom = np.abs(ifft2c_np(kspace)).max(axis=1)
    if mask is not None:
        kspace = kspace * mask.astype(bool)
    rss = np.sqrt((np.abs(ifft2c_np(kspace)) ** 2).sum(axis=1))
    ref = center_crop(rss, MRI_RECON).astype(np.float32)
    stored = kspace[:, 0] if single_coil else kspace
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=stored.astype(np.complex64))
        if reference:
            f.create_dataset(
                "reconstruction_esc" if single_coil else "reconstruction_rss", data=ref
            )
        if header == "default":
            header = ismrmrd_header((*kspace.shape[-2:], 1), (*MRI_RECON, 1), slices=len(kspace))
        if header is not None:
            f.create_dataset("ismrmrd_header", data=header.encode())
        if mask is not None:
            f.create_dataset("mask", data=mask)
        f.attrs.update(
            attrs
            if attrs is not None
            else {
                "acquisition": "CORPD_FBK",
                "max": float(ref.max()),
                "norm": float(np.linalg.norm(ref)),
                "patient_id": "synthetic-0001",
            }
        )
    return {"kspace": kspace.astype(np.complex64), "phantom": phantom, "reference": ref}


def write_mrd(
    path: Path,
    kspace: np.ndarray,
    *,
    recon: tuple[int, int],
    noise: np.ndarray | None = None,
    missing: tuple[int, ...] = (),
    reverse: tuple[int, ...] = (),
    calibration_only: tuple[int, ...] = (),
    navigators: int = 0,
    averages: int = 1,
    phase_limits: tuple[int, int, int] | None = None,
    header: str | None = None,
    dwell_us: float = 2.0,
    noise_dwell_us: float = 2.0,
    tweak: Callable[[Any, int], None] | None = None,
) -> Path:
    """An ISMRMRD file written with the ``ismrmrd`` package.

    ``kspace`` is ``(slices, coils, readout, phase)``; each phase column ``y`` not in
    ``missing`` becomes one acquisition with ``kspace_encode_step_1 = y``. ``noise``
    ``(blocks, coils, samples)`` is written first as noise acquisitions. Lines in ``reverse``
    are stored reversed with ``ACQ_IS_REVERSE``; lines in ``calibration_only`` are flagged
    ``ACQ_IS_PARALLEL_CALIBRATION`` (only); ``navigators`` junk navigator lines are added.
    With ``phase_limits = (minimum, maximum, center)`` column ``y`` is encode step
    ``y - (ny // 2 - center)`` and only steps within the limits are written. ``tweak(acq, i)``
    may alter the ``i``-th imaging acquisition before it is written.
    """
    import ismrmrd

    slices, coils, nx, ny = kspace.shape
    lo, hi, centre = phase_limits if phase_limits is not None else (0, ny - 1, ny // 2)
    shift = ny // 2 - centre
    if header is None:
        header = ismrmrd_header((nx, ny, 1), (*recon, 1), phase_limits=phase_limits, slices=slices)
    path.unlink(missing_ok=True)  # ismrmrd.Dataset appends to an existing file
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as dataset:
        dataset.write_xml_header(header.encode())
        for block in noise if noise is not None else ():
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(block, np.complex64))
            acq.set_flag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
            acq.sample_time_us = noise_dwell_us
            dataset.append_acquisition(acq)
        for _ in range(navigators):
            acq = ismrmrd.Acquisition.from_array(np.full((coils, nx), 1e3, np.complex64))
            acq.set_flag(ismrmrd.ACQ_IS_NAVIGATION_DATA)
            dataset.append_acquisition(acq)
        count = 0
        for s in range(slices):
            for y in range(ny):
                if y in missing or not lo <= y - shift <= hi:
                    continue
                for average in range(averages):
                    line = np.ascontiguousarray(kspace[s, :, :, y], np.complex64)
                    if y in reverse:
                        line = np.ascontiguousarray(line[:, ::-1])
                    acq = ismrmrd.Acquisition.from_array(line)
                    acq.center_sample = nx // 2
                    acq.sample_time_us = dwell_us
                    acq.idx.kspace_encode_step_1 = y - shift
                    acq.idx.slice = s
                    acq.idx.average = average
                    if y in reverse:
                        acq.set_flag(ismrmrd.ACQ_IS_REVERSE)
                    if y in calibration_only:
                        acq.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
                    if tweak is not None:
                        tweak(acq, count)
                    count += 1
                    dataset.append_acquisition(acq)
    return path


@pytest.fixture(scope="session")
def mri() -> SimpleNamespace:
    """The raw-data builders of this module (fastMRI and ISMRMRD files)."""
    return SimpleNamespace(
        phantom=make_phantom,
        header=ismrmrd_header,
        fft2c=fft2c_np,
        ifft2c=ifft2c_np,
        crop=center_crop,
        multicoil=multicoil_kspace,
        fastmri=write_fastmri,
        mrd=write_mrd,
        slices=MRI_SLICES,
        coils=MRI_COILS,
        encoded=MRI_ENCODED,
        recon=MRI_RECON,
    )
