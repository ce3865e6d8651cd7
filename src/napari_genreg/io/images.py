"""Readers for image files: NIfTI, DICOM, PNG and TIFF.

All of them read magnitude images and simulate single-coil k-space from them with
:func:`~napari_genreg.io.simulate.simulate_kspace` (``meta.simulated=True``). The heavy
libraries (nibabel, pydicom, Pillow, tifffile) are imported inside the functions.

Display convention
------------------
The returned slices ``(N, H, W)`` are meant to be shown as they are, row 0 at the top:

* NIfTI volumes are reoriented to the closest canonical RAS+ orientation
  (:func:`nibabel.as_closest_canonical`) and cut into axial slices along the last (S) axis,
  slice 0 the most inferior. Each slice is rotated so that **anterior is up** and the subject's
  **left is on the left** of the screen (neurological convention; no left-right flip):
  ``slices[k, r, c] = ras[c, Y - 1 - r, k]``. A single-slice sagittal or coronal file (one
  spatial axis of length 1 other than S) is shown in its own plane, superior up, with anterior
  on the left (sagittal) or the subject's left on the left (coronal). ``meta.extra`` records
  the plane, the source orientation codes and the pixel spacing ``[row, column]`` in mm.
* DICOM, PNG and TIFF pixels are kept as stored (row 0 = top row), which is how DICOM viewers
  and image viewers show them.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._common import (
    LUMA_NOTE,
    check_dtype,
    checked_path,
    image_stack,
    json_safe,
    luminance,
    parse_boundary,
)
from .errors import ReadError
from .records import KSpaceData
from .simulate import simulate_kspace

_NIFTI_ORIENTATION_NOTE = (
    "RAS canonical; slices[k, r, c] = ras[c, Y-1-r, k]: axial slices inferior to superior, "
    "rows anterior to posterior (anterior up), columns subject left to right (neurological)"
)
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


# --------------------------------------------------------------------------------------------
# NIfTI


def read_nifti(
    path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
) -> KSpaceData:
    """Read a NIfTI-1 or NIfTI-2 file (``.nii`` or ``.nii.gz``) and simulate k-space.

    2-D and 3-D images are read whole; for 4-D and higher only the first volume is read
    (index 0 on every axis after the third), which ``meta.extra["volume_index"]`` records.
    The scaling in the header (``scl_slope``, ``scl_inter``) is applied. See the module
    docstring for the orientation of the slices.

    Parameters
    ----------
    path
        The ``.nii`` or ``.nii.gz`` file (a gzip stream is recognised whatever the extension).
    noise_sigma, seed
        Relative noise level and seed; see :func:`~napari_genreg.io.simulate.simulate_kspace`.

    Returns
    -------
    KSpaceData
        Slices ``(N, H, W)`` as described in the module docstring.

    Raises
    ------
    ReadError
        When the file is missing, not NIfTI, truncated (including a truncated gzip stream),
        of an unsupported data type (e.g. RGB), or holds NaN, infinite or only zero values.
    """
    import nibabel as nib

    path = checked_path(path, noise_sigma, seed)
    with parse_boundary(path, "not a valid NIfTI file"):
        image = load_nifti_image(path)
        image_class = type(image)
        proxy = image.dataobj
        shape = tuple(int(n) for n in proxy.shape)
        check_dtype(proxy.dtype, path, "iufc", "the NIfTI data")
        if len(shape) < 2 or 0 in shape:
            raise ReadError(path, f"the NIfTI image has an unusable shape {shape}")

        extra: dict[str, Any] = {
            "format": "nifti",
            "original_shape": list(shape),
            "original_orientation": "".join(str(c) for c in nib.aff2axcodes(image.affine)),
        }
        index = (slice(None),) * min(len(shape), 3) + (0,) * (len(shape) - 3)
        if len(shape) > 3:
            extra["volume_index"] = [0] * (len(shape) - 3)
        data = np.asanyarray(proxy[index])
        if data.ndim == 2:
            data = data[:, :, np.newaxis]
        canonical = nib.as_closest_canonical(image_class(data, image.affine))
        ras = np.asanyarray(canonical.dataobj)
        zooms = [float(z) for z in canonical.header.get_zooms()[:3]]
        slices, plane, spacing = _display_slices(ras, zooms)
        extra.update(
            plane=plane,
            orientation=_NIFTI_ORIENTATION_NOTE,
            pixel_spacing=spacing,
            voxel_size_ras=zooms,
        )
        images = image_stack(slices, path, allow_complex=True)
        return simulate_kspace(
            images, noise_sigma=noise_sigma, seed=seed, source=str(path), extra=extra
        )


def load_nifti_image(path: Path) -> Any:
    """Parse a NIfTI file into memory; the data stays a proxy on the decompressed bytes.

    A gzip stream is decompressed whole (which checks its CRC and length, so a truncated
    ``.nii.gz`` is caught even when the image data happens to be complete), and the header's
    data size is checked against the bytes present before any data is read.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    image = _nifti_class(raw, path).from_bytes(raw)
    proxy = image.dataobj
    shape = tuple(int(n) for n in proxy.shape)
    needed = int(proxy.offset) + int(np.prod(shape, dtype=object)) * proxy.dtype.itemsize
    if len(raw) < needed:
        raise ReadError(
            path, f"truncated NIfTI file: the header needs {needed} bytes, it has {len(raw)}"
        )
    return image


def _nifti_class(raw: bytes, path: Path) -> type:
    """NIfTI-1 or NIfTI-2 image class, from ``sizeof_hdr`` (348 or 540, either byte order)."""
    import nibabel as nib

    if len(raw) < 4:
        raise ReadError(path, f"not a NIfTI file: only {len(raw)} bytes")
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 348 in sizes:
        return nib.Nifti1Image
    if 540 in sizes:
        return nib.Nifti2Image
    raise ReadError(path, "not a NIfTI file (the header size is neither 348 nor 540)")


def _display_slices(ras: np.ndarray, zooms: list[float]) -> tuple[np.ndarray, str, list[float]]:
    """Cut a RAS volume ``(X, Y, Z)`` into display slices ``(N, H, W)`` (see module docstring).

    Returns the slices, the plane name and the pixel spacing ``[row, column]``.
    """
    nx, ny, nz = ras.shape
    zx, zy, zz = zooms
    if nz == 1 or (nx > 1 and ny > 1):
        # axial: slices[k, r, c] = ras[c, Y-1-r, k]
        return ras.transpose(2, 1, 0)[:, ::-1, :], "axial", [zy, zx]
    if ny == 1:
        # coronal: slices[j, r, c] = ras[c, j, Z-1-r]  (superior up, subject's left on the left)
        return ras.transpose(1, 2, 0)[:, ::-1, :], "coronal", [zz, zx]
    # sagittal (nx == 1): slices[i, r, c] = ras[i, Y-1-c, Z-1-r]  (superior up, anterior left)
    return ras.transpose(0, 2, 1)[:, ::-1, ::-1], "sagittal", [zz, zy]


# --------------------------------------------------------------------------------------------
# DICOM


def read_dicom(
    path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
) -> KSpaceData:
    """Read a DICOM file or a folder holding one DICOM series, and simulate k-space.

    The modality LUT is applied: ``value = stored * RescaleSlope + RescaleIntercept``. A
    multi-frame file gives one slice per frame. In a folder, every regular file that is not
    hidden is tried; files that are not DICOM, and DICOM files without pixel data (such as
    ``DICOMDIR``), are skipped and listed in ``meta.extra["skipped_files"]``. The slices are
    sorted by their position along the slice normal (``ImagePositionPatient`` projected on
    the cross product of the ``ImageOrientationPatient`` direction cosines) when every file
    has both, else by ``InstanceNumber``, else by file name; ``meta.extra["sorted_by"]`` says
    which. Colour images are converted to luminance.

    Parameters
    ----------
    path
        A DICOM file, or a folder of DICOM files of one series.
    noise_sigma, seed
        Relative noise level and seed; see :func:`~napari_genreg.io.simulate.simulate_kspace`.

    Returns
    -------
    KSpaceData

    Raises
    ------
    ReadError
        When the file is missing, not DICOM, truncated, has no pixel data or compressed pixel
        data that cannot be decoded; when a folder holds no DICOM images, several series or
        images of different sizes.
    """
    path = checked_path(path, noise_sigma, seed)
    with parse_boundary(path, "not a valid DICOM file"):
        if path.is_dir():
            images, extra = _read_dicom_folder(path)
        else:
            dataset = _dcmread(path)
            if dataset is None:
                raise ReadError(path, "the DICOM file holds no pixel data")
            images, extra = _dicom_pixels(dataset, path)
            extra.update(_dicom_info(dataset), files=1)
        stack = image_stack(images, path)
        return simulate_kspace(
            stack, noise_sigma=noise_sigma, seed=seed, source=str(path), extra=extra
        )


def _dcmread(path: Path) -> Any:
    """Read one DICOM file; ``None`` when it has no pixel data. Raises :class:`ReadError`."""
    import pydicom

    with parse_boundary(path, "not a valid DICOM file"):
        dataset = pydicom.dcmread(path)
        if not any(k in dataset for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            return None
        return dataset


def _dicom_pixels(dataset: Any, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Rescaled pixels of one dataset as ``(frames, rows, columns)`` float64, and notes."""
    with parse_boundary(path, "the DICOM pixel data cannot be decoded"):
        pixels = np.asarray(dataset.pixel_array)
        extra: dict[str, Any] = {}
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        if samples > 1:
            if pixels.shape[-1] not in (3, 4):
                raise ReadError(path, f"unsupported DICOM pixels: {samples} samples per pixel")
            pixels = luminance(pixels)
            extra["color_conversion"] = LUMA_NOTE
        if pixels.dtype == np.bool_:
            pixels = pixels.astype(np.uint8)
        check_dtype(pixels, path, "iuf", "the DICOM pixels")
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames == 1 and pixels.ndim == 2:
            pixels = pixels[np.newaxis]
        if pixels.ndim != 3:
            raise ReadError(path, f"unexpected DICOM pixel array shape {pixels.shape}")
        slope = _dicom_number(dataset, "RescaleSlope", 1.0)
        intercept = _dicom_number(dataset, "RescaleIntercept", 0.0)
        extra["rescale"] = {"slope": slope, "intercept": intercept}
        return pixels.astype(np.float64) * slope + intercept, extra


def _dicom_number(dataset: Any, keyword: str, default: float) -> float:
    """A numeric header field, or ``default`` when absent or empty (0 is a value)."""
    value = dataset.get(keyword)
    return default if value is None or value == "" else float(value)


def _dicom_info(dataset: Any) -> dict[str, Any]:
    """A few header fields worth keeping (JSON-serialisable)."""
    info: dict[str, Any] = {"format": "dicom"}
    for key, name in (
        ("PixelSpacing", "pixel_spacing"),
        ("SliceThickness", "slice_thickness"),
        ("Modality", "modality"),
        ("PhotometricInterpretation", "photometric_interpretation"),
        ("SeriesDescription", "series_description"),
    ):
        value = dataset.get(key)
        if value is None or value == "":
            continue
        if key == "PixelSpacing":
            info[name] = [float(v) for v in value]
        elif key == "SliceThickness":
            info[name] = float(value)
        else:
            info[name] = str(value)
    return info


def _read_dicom_folder(folder: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM series from a folder: slices ``(N, H, W)`` and notes."""
    from pydicom.errors import InvalidDicomError

    found: list[tuple[Path, Any]] = []
    skipped: list[str] = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            dataset = _dcmread(file)
        except ReadError as exc:
            if isinstance(exc.__cause__, InvalidDicomError):
                skipped.append(file.name)
                continue
            raise
        if dataset is None:
            skipped.append(file.name)
        else:
            found.append((file, dataset))
    if not found:
        raise ReadError(folder, "the folder holds no DICOM images")

    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in found}
    if len(series) > 1:
        raise ReadError(
            folder, f"the folder holds {len(series)} DICOM series; point to a folder with one"
        )
    found, sorted_by = _sort_dicom(found)
    stacks = []
    extra: dict[str, Any] = {}
    for file, dataset in found:
        pixels, extra = _dicom_pixels(dataset, file)
        if stacks and pixels.shape[1:] != stacks[0].shape[1:]:
            raise ReadError(
                file,
                f"image size {pixels.shape[1:]} differs from the series' {stacks[0].shape[1:]}",
            )
        stacks.append(pixels)
    extra.pop("rescale", None)  # may differ per file; it has been applied
    extra.update(
        _dicom_info(found[0][1]),
        files=len(found),
        sorted_by=sorted_by,
        skipped_files=skipped,
    )
    return np.concatenate(stacks), json_safe(extra)


def _sort_dicom(found: list[tuple[Path, Any]]) -> tuple[list[tuple[Path, Any]], str]:
    """Sort datasets by slice position, else instance number, else file name."""

    def position(ds: Any) -> float:
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        return float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))

    if len(found) == 1:
        return found, "single file"
    try:
        if all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in found):
            return sorted(found, key=lambda item: position(item[1])), "ImagePositionPatient"
    except (ValueError, TypeError, IndexError):
        pass  # malformed geometry: fall back to the instance numbers
    try:
        if all(ds.get("InstanceNumber") not in (None, "") for _, ds in found):
            return sorted(found, key=lambda item: int(item[1].InstanceNumber)), "InstanceNumber"
    except (ValueError, TypeError):
        pass
    return found, "file name"


# --------------------------------------------------------------------------------------------
# PNG and TIFF


def read_png(
    path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
) -> KSpaceData:
    """Read a PNG image (8- or 16-bit grayscale, or colour) and simulate k-space.

    Grayscale values are kept as stored (16-bit stays 16-bit); colour and palette images are
    converted to luminance (noted in ``meta.extra["color_conversion"]``), alpha is ignored.
    Only the first frame of an animated PNG is read.

    Parameters
    ----------
    path
        The ``.png`` file.
    noise_sigma, seed
        Relative noise level and seed; see :func:`~napari_genreg.io.simulate.simulate_kspace`.

    Returns
    -------
    KSpaceData
        One slice ``(1, H, W)``.

    Raises
    ------
    ReadError
        When the file is missing, not a PNG (whatever else Pillow could open), truncated
        (including a missing ``IEND`` chunk), too large (Pillow's decompression-bomb limit) or
        all zero.
    """
    from PIL import Image, UnidentifiedImageError

    path = checked_path(path, noise_sigma, seed)
    with parse_boundary(path, "not a valid PNG file"):
        try:  # only Pillow's PNG decoder ever sees the bytes
            im = Image.open(path, formats=["PNG"])
        except UnidentifiedImageError as exc:
            raise ReadError(path, "not a PNG file (no PNG signature)") from exc
        with im:
            im.load()
            extra: dict[str, Any] = {"format": "png", "mode": im.mode}
            if getattr(im, "n_frames", 1) > 1:
                extra["frames_ignored"] = int(im.n_frames) - 1
            pixels = _pillow_gray(im, extra)
        with path.open("rb") as f:
            f.seek(max(path.stat().st_size - len(_PNG_END), 0))
            if f.read() != _PNG_END:
                raise ReadError(path, "truncated PNG file: it does not end with an IEND chunk")
        images = image_stack(pixels, path)
        return simulate_kspace(
            images, noise_sigma=noise_sigma, seed=seed, source=str(path), extra=extra
        )


def _pillow_gray(im: Any, extra: dict[str, Any]) -> np.ndarray:
    """Pixels of a Pillow image as a 2-D grayscale array; colour goes to luminance."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if mode in ("L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(im)
    if mode in ("LA", "La"):
        extra["alpha_ignored"] = True
        return np.asarray(im)[..., 0]
    if mode not in ("RGB", "RGBA", "RGBa"):
        im = im.convert("RGBA" if "A" in mode or "transparency" in im.info else "RGB")
    if im.mode != "RGB":
        extra["alpha_ignored"] = True
    extra["color_conversion"] = LUMA_NOTE
    return luminance(np.asarray(im))


#: Largest decoded size of a compressed TIFF series (a guard against lying headers).
MAX_TIFF_DECODED_BYTES = 4 * 2**30


def _check_tiff_extents(series: Any, file_size: int, path: Path) -> None:
    """Refuse TIFF data that cannot be in the file, before tifffile allocates the output.

    Every strip or tile must end inside the file (else: truncated). For uncompressed data
    the strips must hold the whole image its header declares; compressed data may not decode
    to more than :data:`MAX_TIFF_DECODED_BYTES`.
    """
    stored = 0
    compressed = False
    for page in series.pages:
        if page is None:
            continue
        compressed |= int(page.compression) != 1
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
            if offset + count > file_size:
                raise ReadError(path, "truncated TIFF file: image data extends past the end")
            stored += int(count)
    declared = int(np.prod(series.shape, dtype=object)) * np.dtype(series.dtype).itemsize
    if compressed and declared > MAX_TIFF_DECODED_BYTES:
        raise ReadError(
            path,
            f"the TIFF declares {declared} bytes of pixels, more than the limit"
            f" {MAX_TIFF_DECODED_BYTES}",
        )
    bits = {int(page.bitspersample) for page in series.pages if page is not None}
    if not compressed and all(b % 8 == 0 for b in bits) and stored < declared:
        raise ReadError(
            path,
            f"corrupt TIFF file: the header declares {declared} bytes of pixels, the "
            f"strips hold {stored}",
        )


def read_tiff(
    path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
) -> KSpaceData:
    """Read a TIFF image or stack (first series) and simulate k-space.

    Grayscale values are kept as stored (8-, 16-, 32-bit integers, floats, complex); samples
    ``S`` of 3 or 4 (RGB, RGBA) are converted to luminance with a note in ``meta.extra``;
    every axis before ``(Y, X)`` (pages, Z, time, ...) is flattened into slices.

    Parameters
    ----------
    path
        The ``.tif`` or ``.tiff`` file.
    noise_sigma, seed
        Relative noise level and seed; see :func:`~napari_genreg.io.simulate.simulate_kspace`.

    Returns
    -------
    KSpaceData

    Raises
    ------
    ReadError
        When the file is missing, not TIFF, truncated (image data beyond the end of the
        file), of an unsupported sample layout, or holds NaN, infinite or only zero values.
    """
    import tifffile

    path = checked_path(path, noise_sigma, seed)
    with parse_boundary(path, "not a valid TIFF file"):
        size = path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ReadError(path, "the TIFF file holds no images")
            series = tif.series[0]
            _check_tiff_extents(series, size, path)
            axes = str(series.axes)
            pixels = np.asarray(series.asarray())
        extra: dict[str, Any] = {"format": "tiff", "axes": axes}
        if pixels.dtype == np.bool_:
            pixels = pixels.astype(np.uint8)
        if "S" in axes and len(axes) == pixels.ndim:
            pixels = np.moveaxis(pixels, axes.index("S"), -1)
            samples = pixels.shape[-1]
            if samples in (3, 4):
                check_dtype(pixels, path, "iuf", "the TIFF colour samples")
                pixels = luminance(pixels)
                extra["color_conversion"] = LUMA_NOTE
                if samples == 4:
                    extra["alpha_ignored"] = True
            elif samples in (1, 2):
                pixels = pixels[..., 0]
                if samples == 2:
                    extra["alpha_ignored"] = True
            else:
                raise ReadError(path, f"unsupported TIFF layout: {samples} samples per pixel")
        if pixels.ndim > 3:
            extra["flattened_axes"] = axes
            pixels = pixels.reshape((-1, *pixels.shape[-2:]))
        images = image_stack(pixels, path, allow_complex=True)
        return simulate_kspace(
            images, noise_sigma=noise_sigma, seed=seed, source=str(path), extra=extra
        )
