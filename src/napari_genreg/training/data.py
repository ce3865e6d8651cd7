"""Training data for the generative priors: stored 2-D magnitude slices, and their augmentation.

Two halves, kept apart on purpose (the stored set is fixed; augmentation belongs to training):

* :func:`prepare_dataset` cuts source volumes (:class:`~napari_genreg.training.sources.Source`,
  or files and folders) into square slices in [0, 1] and stores them with a manifest that
  records every source, its licence and the split.
* :class:`SliceDataset` reads a prepared split (memory-mapped) and, for training, applies
  :class:`Augmentation`, a seeded random transform made of torch operations.

Slicing
-------
A 3-D volume is reoriented to the closest canonical RAS+ orientation and cut in the three
planes, with the display convention of :mod:`napari_genreg.io.images`:

=========  =====================================  ==========================================
plane      ``slices[k, r, c]``                    on screen
=========  =====================================  ==========================================
axial      ``ras[c, Y-1-r, k]``                   anterior up, subject's left on the left
coronal    ``ras[c, k, Z-1-r]``                   superior up, subject's left on the left
sagittal   ``ras[k, Y-1-c, Z-1-r]``               superior up, anterior on the left
=========  =====================================  ==========================================

For 4-D files the first volume is used. A plane is skipped when either of its in-plane axes has
fewer than :data:`MIN_IN_PLANE` voxels (a thin slab such as a 24-slice EPI gives axial slices
only). Stacks of 2-D images (fastMRI ``reconstruction_rss``, DICOM series) are used in their
stored orientation only (plane ``"stored"``).

Along the slice normal of a 3-D volume every ``step``-th slice is taken, ``step`` being the
largest integer with ``step * (slice spacing) <= (output pixel size)``, so that a 0.5 mm template
does not count three times as much as a 1.5 mm one with near-copies of the same slice (stacks of
2-D images are used whole). Each slice is then

1. kept only if its foreground fraction (pixels above :data:`FOREGROUND_FRACTION` = 10 % of the
   volume's 99th percentile, as a fraction of the square field of view of step 2) is at least
   ``min_foreground``;
2. zero-padded, centred, to a square field of view in millimetres (non-square pixels are
   accounted for);
3. resized to ``size x size`` (:func:`skimage.transform.resize`, bilinear, anti-aliasing);
4. divided by its own 99.5th percentile and clipped to [0, 1];
5. stored as ``float16`` (relative precision 2**-11, about 0.05 %).

Output folder
-------------
``train.npy`` and ``val.npy``, ``float16`` arrays ``(N, size, size)`` of intensities in [0, 1]
(any ``.npy`` reader gets the images as they are), and ``manifest.json`` (:class:`Manifest`).
The split is by source volume: every slice of a validation source goes to ``val.npy``, none to
``train.npy``. The slices of each source are stored contiguously, plane by plane; the manifest
gives their index ranges. The arrays are written to temporary files and renamed; the manifest
is written last, so a folder with a manifest is complete.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from napari_genreg import __version__

from .sources import Source, file_sha256, sources_from_path

__all__ = [
    "FOREGROUND_FRACTION",
    "MANIFEST_NAME",
    "MIN_IN_PLANE",
    "PLANES",
    "ArrayRecord",
    "Augmentation",
    "Manifest",
    "SliceDataset",
    "SourceRecord",
    "Volume",
    "item_seed",
    "load_volume",
    "prepare_dataset",
    "prepared_size",
    "verify_split",
]

#: Manifest file name in a prepared folder.
MANIFEST_NAME = "manifest.json"
#: Version of the folder layout and manifest.
FORMAT_VERSION = 1
#: A pixel is foreground above this fraction of the volume's 99th percentile.
FOREGROUND_FRACTION = 0.10
#: Percentile of the volume that :data:`FOREGROUND_FRACTION` refers to.
VOLUME_PERCENTILE = 99.0
#: Each stored slice is divided by this percentile of itself, then clipped to [0, 1].
SLICE_PERCENTILE = 99.5
#: Planes whose in-plane axes are shorter than this (in voxels) are skipped.
MIN_IN_PLANE = 32
#: The planes cut from a 3-D volume, in storage order.
PLANES = ("axial", "coronal", "sagittal")
#: dtype of the stored arrays.
STORED_DTYPE = np.dtype("<f2")
#: Image datasets read from fastMRI-style HDF5 files, in order of preference.
HDF5_IMAGE_KEYS = ("reconstruction_rss", "reconstruction_esc", "reconstruction")
#: Largest volume (in voxels) that is loaded: 2**31.
MAX_VOXELS = 2**31

Split = Literal["train", "val"]


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class ArrayRecord:
    """One stored array.

    Attributes
    ----------
    file
        File name inside the prepared folder.
    shape
        ``(N, size, size)``.
    dtype
        Always ``"float16"`` (intensities in [0, 1]).
    sha256
        SHA-256 of the ``.npy`` file as written (header included).
    """

    file: str
    shape: tuple[int, int, int]
    dtype: str
    sha256: str


@dataclass(frozen=True)
class SourceRecord:
    """What the manifest says about one source volume.

    Attributes
    ----------
    name, licence, licence_note, modality, subject, format, origin
        As in :class:`~napari_genreg.training.sources.Source`.
    file
        The file or folder read.
    sha256
        SHA-256 of the file (for a DICOM folder: of the sorted ``name sha256`` lines of its
        files).
    split
        ``"train"`` or ``"val"``.
    shape, voxel_mm
        Shape of the data read (after RAS reorientation for volumes; ``(N, H, W)`` for stacks)
        and its voxel size in millimetres.
    slices
        Plane -> number of slices stored.
    candidates
        Plane -> number of slices looked at (after the step along the normal), before the
        foreground filter; 0 for a skipped plane.
    step
        Plane -> step along the slice normal.
    ranges
        Plane -> ``[start, stop)`` of its slices in the split's array.
    """

    name: str
    file: str
    sha256: str
    licence: str
    licence_note: str
    modality: str
    subject: str
    format: str
    origin: str
    split: Split
    shape: tuple[int, ...]
    voxel_mm: tuple[float, ...]
    slices: dict[str, int]
    candidates: dict[str, int]
    step: dict[str, int]
    ranges: dict[str, tuple[int, int]]

    @property
    def n_slices(self) -> int:
        """Number of slices stored, all planes together."""
        return sum(self.slices.values())


@dataclass(frozen=True)
class Manifest:
    """The contents of ``manifest.json`` in a prepared folder.

    Attributes
    ----------
    root
        The prepared folder (not stored in the file).
    size
        Side of the square slices.
    sources
        One record per source volume, in storage order.
    arrays
        ``"train"`` and ``"val"`` -> :class:`ArrayRecord`.
    content_sha256
        SHA-256 of the text ``"train.npy <sha256>\\nval.npy <sha256>\\n"``: one hash of the
        stored data, for the model card.
    parameters
        The preparation settings (size, thresholds, percentiles, validation names, ...).
    software
        ``"napari-genreg <version>"``.
    """

    root: Path
    size: int
    sources: tuple[SourceRecord, ...]
    arrays: dict[str, ArrayRecord]
    content_sha256: str
    parameters: dict[str, Any] = field(default_factory=dict)
    software: str = f"napari-genreg {__version__}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (without ``root``)."""
        data = asdict(self)
        del data["root"]
        data["format"] = FORMAT_VERSION
        return data

    def counts(self) -> dict[str, int]:
        """Number of slices per split."""
        return {split: record.shape[0] for split, record in self.arrays.items()}

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Manifest:
        """Read ``root/manifest.json``.

        Raises
        ------
        FileNotFoundError
            When the folder has no manifest (not prepared, or preparation did not finish).
        ValueError
            When the manifest is not one this version can read.
        """
        root = Path(root)
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{root}: no {MANIFEST_NAME}; run prepare-data first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT_VERSION}")
            sources = tuple(
                SourceRecord(
                    **{
                        **s,
                        "shape": tuple(s["shape"]),
                        "voxel_mm": tuple(s["voxel_mm"]),
                        "ranges": {k: tuple(v) for k, v in s["ranges"].items()},
                    }
                )
                for s in data["sources"]
            )
            arrays = {
                k: ArrayRecord(**{**v, "shape": tuple(v["shape"])})
                for k, v in data["arrays"].items()
            }
            return cls(
                root=root,
                size=int(data["size"]),
                sources=sources,
                arrays=arrays,
                content_sha256=data["content_sha256"],
                parameters=data["parameters"],
                software=data["software"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable manifest ({exc})") from exc


# --------------------------------------------------------------------------------------------
# Loading volumes


@dataclass(frozen=True)
class Volume:
    """The data of one source, ready to slice.

    Attributes
    ----------
    data
        float32. ``kind == "volume"``: ``(X, Y, Z)`` in RAS+ orientation. ``kind == "stack"``:
        ``(N, H, W)``, 2-D images in their stored orientation.
    voxel_mm
        Voxel size in millimetres along the three axes of ``data`` (1 where unknown).
    kind
        ``"volume"`` or ``"stack"``.
    """

    data: np.ndarray
    voxel_mm: tuple[float, float, float]
    kind: Literal["volume", "stack"]


def load_volume(source: Source) -> Volume:
    """Read one source into a :class:`Volume` (magnitudes, float32).

    NIfTI files go through :func:`napari_genreg.io.images.load_nifti_image` (header scaling
    applied, first volume of 4-D files, closest canonical RAS+); DICOM folders through
    :func:`napari_genreg.io.read_dicom`; fastMRI files through h5py (``reconstruction_rss``,
    else ``reconstruction_esc`` or ``reconstruction``). Complex data become magnitudes.

    Raises
    ------
    ReadError
        When the file cannot be read (see :mod:`napari_genreg.io`).
    ValueError
        When the data hold NaN or infinite values, or are all zero; the message names the
        source.
    """
    reader = {"nifti": _load_nifti, "dicom": _load_dicom, "fastmri": _load_fastmri}
    if source.format not in reader:
        raise ValueError(f"source {source.name!r}: unknown format {source.format!r}")
    volume = reader[source.format](Path(source.path))
    if not np.isfinite(volume.data).all():
        raise ValueError(
            f"source {source.name!r} ({source.path}): the data hold NaN or infinite values"
        )
    if not (volume.data > 0).any():
        raise ValueError(f"source {source.name!r} ({source.path}): the data are all zero")
    return volume


def _magnitude(data: np.ndarray) -> np.ndarray:
    data = np.abs(data) if np.iscomplexobj(data) else data
    return np.asarray(data, dtype=np.float32)


def _check_kind(dtype: np.dtype, path: Path, what: str) -> None:
    from napari_genreg.io.errors import ReadError

    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in "iufc":
        raise ReadError(path, f"{what} has dtype {dtype}; expected real or complex numbers")


def _load_nifti(path: Path) -> Volume:
    import nibabel as nib

    from napari_genreg.io.errors import ReadError
    from napari_genreg.io.images import load_nifti_image

    try:
        image = load_nifti_image(path)
        proxy = image.dataobj
        shape = tuple(int(n) for n in proxy.shape)
        _check_kind(proxy.dtype, path, "the NIfTI data")
        if len(shape) < 2 or 0 in shape:
            raise ReadError(path, f"the NIfTI image has an unusable shape {shape}")
        if math.prod(shape[:3]) > MAX_VOXELS:
            raise ReadError(path, f"the NIfTI image is too large: {shape}")
        index = (slice(None),) * min(len(shape), 3) + (0,) * (len(shape) - 3)
        data = np.asanyarray(proxy[index])
        if data.ndim == 2:
            data = data[:, :, np.newaxis]
        canonical = nib.as_closest_canonical(type(image)(data, image.affine))
        ras = _magnitude(np.asanyarray(canonical.dataobj))
        zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(path, f"not a valid NIfTI file: {type(exc).__name__}: {exc}") from exc
    return Volume(ras, (zooms[0], zooms[1], zooms[2]), "volume")


def _load_dicom(path: Path) -> Volume:
    from napari_genreg.io import read_dicom

    data = read_dicom(path)
    spacing = data.meta.extra.get("pixel_spacing") or [1.0, 1.0]
    thickness = float(data.meta.extra.get("slice_thickness") or 1.0)
    stack = _magnitude(data.reference)
    return Volume(stack, (thickness, float(spacing[0]), float(spacing[1])), "stack")


def _load_fastmri(path: Path) -> Volume:
    import h5py

    from napari_genreg.io.errors import ReadError

    try:
        with h5py.File(path, "r") as f:
            key = next((k for k in HDF5_IMAGE_KEYS if k in f), None)
            if key is None:
                raise ReadError(
                    path, f"no {' / '.join(HDF5_IMAGE_KEYS)} dataset; found {sorted(f)}"
                )
            dataset = f[key]
            if not isinstance(dataset, h5py.Dataset) or dataset.ndim not in (2, 3):
                raise ReadError(path, f"{key} is not a 2-D or 3-D dataset")
            _check_kind(dataset.dtype, path, key)
            if dataset.size == 0 or dataset.size > MAX_VOXELS:
                raise ReadError(path, f"{key} has an unusable shape {dataset.shape}")
            stack = _magnitude(dataset[()])
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(path, f"not a readable HDF5 file: {type(exc).__name__}: {exc}") from exc
    if stack.ndim == 2:
        stack = stack[np.newaxis]
    return Volume(stack, (1.0, 1.0, 1.0), "stack")


def _source_sha256(path: Path) -> str:
    if path.is_file():
        return file_sha256(path)
    lines = "".join(
        f"{p.name} {file_sha256(p)}\n"
        for p in sorted(path.iterdir())
        if p.is_file() and not p.name.startswith(".")
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def prepared_size(folder: str | os.PathLike[str]) -> int:
    """The side of the slices prepared in ``folder`` (its manifest's): the image size that
    ``train`` and ``train-vn`` use when no ``--size`` is given."""
    return Manifest.load(folder).size


def verify_split(folder: Path, manifest: Manifest, split: str) -> None:
    """That the ``split`` array in ``folder`` is the one ``manifest`` describes (its SHA-256):
    a model records the manifest's hash, which names these arrays only if they are unchanged.

    Raises
    ------
    ValueError
        Naming the file, when it differs (about a second per GB to tell).
    """
    record = manifest.arrays[split]
    found = file_sha256(Path(folder) / record.file)
    if found != record.sha256:
        raise ValueError(
            f"{Path(folder) / record.file}: the {split} split is not the one prepare-data "
            f"wrote (sha256 {found[:12]}..., the manifest says {record.sha256[:12]}...): "
            "prepare the data again"
        )


# --------------------------------------------------------------------------------------------
# Slicing


def _planes(volume: Volume) -> dict[str, tuple[np.ndarray, tuple[float, float], float | None]]:
    """Plane -> (slices ``(N, H, W)`` as a view, pixel size ``(row, col)`` mm, spacing mm).

    The spacing is ``None`` for a stack of 2-D images: its slices are all used (they are
    usually thick and far apart, and their spacing is often unknown).
    """
    if volume.kind == "stack":
        _, r, c = volume.voxel_mm
        return {"stored": (volume.data, (r, c), None)}
    ras = volume.data
    zx, zy, zz = volume.voxel_mm
    return {
        "axial": (ras.transpose(2, 1, 0)[:, ::-1, :], (zy, zx), zz),
        "coronal": (ras.transpose(1, 2, 0)[:, ::-1, :], (zz, zx), zy),
        "sagittal": (ras.transpose(0, 2, 1)[:, ::-1, ::-1], (zz, zy), zx),
    }


def _pad_centred(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), dtype=np.float32)
    r0 = (rows - image.shape[0]) // 2
    c0 = (cols - image.shape[1]) // 2
    out[r0 : r0 + image.shape[0], c0 : c0 + image.shape[1]] = image
    return out


def _cut_plane(
    slices: np.ndarray,
    pixel_mm: tuple[float, float],
    spacing_mm: float | None,
    *,
    size: int,
    threshold: float,
    min_foreground: float,
) -> tuple[list[np.ndarray], int, int]:
    """Square ``float16`` slices of one plane; also the number looked at, and the step."""
    from skimage.transform import resize

    n, h, w = slices.shape
    row_mm, col_mm = pixel_mm
    side_mm = max(h * row_mm, w * col_mm)
    rows = max(h, round(side_mm / row_mm))
    cols = max(w, round(side_mm / col_mm))
    step = 1 if spacing_mm is None else max(1, math.floor(side_mm / size / spacing_mm + 1e-9))
    indices = range(((n - 1) % step) // 2, n, step)
    kept = []
    for k in indices:
        image = slices[k]
        if np.count_nonzero(image > threshold) < min_foreground * rows * cols:
            continue
        square = resize(
            _pad_centred(image, rows, cols),
            (size, size),
            order=1,
            anti_aliasing=True,
            preserve_range=True,
        )
        scale = float(np.percentile(square, SLICE_PERCENTILE))
        if not scale > 0:
            continue
        kept.append(np.clip(square / scale, 0.0, 1.0).astype(STORED_DTYPE))
    return kept, len(indices), step


# --------------------------------------------------------------------------------------------
# Preparing a dataset


def _expand(sources: Sequence[Source | str | os.PathLike[str]]) -> list[Source]:
    expanded: list[Source] = []
    for item in sources:
        if isinstance(item, Source):
            expanded.append(item)
        elif isinstance(item, (str, os.PathLike)):
            expanded.extend(sources_from_path(item))
        else:
            raise TypeError(f"a source must be a Source or a path, got {type(item).__name__}")
    names = [s.name for s in expanded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several sources are named {duplicates}; names must be unique")
    return expanded


def _validation_names(sources: list[Source], validation: Sequence[str]) -> set[str]:
    if isinstance(validation, str):
        raise TypeError("validation must be a sequence of names, not one string")
    names = [s.name for s in sources]
    chosen: set[str] = set()
    for pattern in validation:
        matched = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise ValueError(
                f"validation name {pattern!r} matches no source; sources: {', '.join(names)}"
            )
        chosen.update(matched)
    return chosen


class _SplitWriter:
    """Streams the slices of one split to a temporary file, then writes the ``.npy`` atomically.

    Memory use does not grow with the number of slices (fastMRI-sized sets fit).
    """

    def __init__(self, root: Path, split: str, size: int) -> None:
        self.name = f"{split}.npy"
        self.path = root / self.name
        self.size = size
        self.count = 0
        self._raw_path = root / f".{split}.raw.tmp-{os.getpid()}"
        self._tmp_path = root / f".{self.name}.tmp-{os.getpid()}"
        self._raw = self._raw_path.open("wb")

    def add(self, images: Sequence[np.ndarray]) -> None:
        for image in images:
            self._raw.write(np.ascontiguousarray(image, dtype=STORED_DTYPE).tobytes())
            self.count += 1

    def finish(self) -> ArrayRecord:
        """Write ``<split>.npy`` (header, then the streamed slices) and return its record."""
        import shutil

        self._raw.close()
        shape = (self.count, self.size, self.size)
        header = {
            "descr": np.lib.format.dtype_to_descr(STORED_DTYPE),
            "fortran_order": False,
            "shape": shape,
        }
        with self._tmp_path.open("wb") as f, self._raw_path.open("rb") as raw:
            np.lib.format.write_array_header_1_0(f, header)
            shutil.copyfileobj(raw, f, 1 << 20)
        digest = file_sha256(self._tmp_path)
        os.replace(self._tmp_path, self.path)
        return ArrayRecord(self.name, shape, str(STORED_DTYPE), digest)

    def discard(self) -> None:
        """Remove the temporary files (after :meth:`finish`, or on an error)."""
        self._raw.close()
        self._raw_path.unlink(missing_ok=True)
        self._tmp_path.unlink(missing_ok=True)


def _slice_source(
    source: Source,
    writers: dict[str, _SplitWriter],
    held_out: set[str],
    size: int,
    min_foreground: float,
    on_source: Callable[[SourceRecord], None] | None,
) -> SourceRecord:
    """Load one source, cut its slices into its split's writer, and describe it."""
    volume = load_volume(source)
    threshold = FOREGROUND_FRACTION * float(np.percentile(volume.data, VOLUME_PERCENTILE))
    split: Split = "val" if source.name in held_out else "train"
    writer = writers[split]
    slices, candidates, steps, ranges = {}, {}, {}, {}
    for plane, (images, pixel_mm, spacing_mm) in _planes(volume).items():
        start = writer.count
        if volume.kind == "volume" and min(images.shape[1:]) < MIN_IN_PLANE:
            kept, looked, step = [], 0, 0
        else:
            kept, looked, step = _cut_plane(
                images,
                pixel_mm,
                spacing_mm,
                size=size,
                threshold=threshold,
                min_foreground=min_foreground,
            )
        writer.add(kept)
        slices[plane], candidates[plane], steps[plane] = len(kept), looked, step
        ranges[plane] = (start, writer.count)
    record = SourceRecord(
        name=source.name,
        file=str(source.path),
        sha256=source.sha256 or _source_sha256(Path(source.path)),
        licence=source.licence,
        licence_note=source.licence_note,
        modality=source.modality,
        subject=source.subject,
        format=source.format,
        origin=source.origin,
        split=split,
        shape=tuple(int(n) for n in volume.data.shape),
        voxel_mm=tuple(round(float(z), 6) for z in volume.voxel_mm),
        slices=slices,
        candidates=candidates,
        step=steps,
        ranges=ranges,
    )
    if on_source is not None:
        on_source(record)
    return record


def prepare_dataset(
    sources: Sequence[Source | str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    size: int = 128,
    validation: Sequence[str] = ("colin27",),
    min_foreground: float = 0.15,
    on_source: Callable[[SourceRecord], None] | None = None,
) -> Manifest:
    """Cut source volumes into square magnitude slices in [0, 1] and store them with a manifest.

    See the module docstring for the slicing, the scaling and the files written.

    Parameters
    ----------
    sources
        :class:`~napari_genreg.training.sources.Source` records (e.g. from
        :func:`~napari_genreg.training.sources.find_builtin_sources`) and/or paths: a NIfTI or
        fastMRI ``.h5`` file, a DICOM series folder, or a folder holding any of these (see
        :func:`~napari_genreg.training.sources.sources_from_path` for the names given).
    out
        Output folder (created if needed). Existing ``train.npy``, ``val.npy`` and
        ``manifest.json`` there are replaced.
    size
        Side of the stored slices, at least 16.
    validation
        Names of the sources that form the validation split (shell-style wildcards allowed,
        e.g. ``"fastmri/file_brain_AXT2_20*"``). Each must match at least one source. The
        default is the Colin27 single-subject T1, which is also the shipped demo sample.
        An empty tuple gives an empty validation split.
    min_foreground
        Smallest foreground fraction of a slice that is kept, in [0, 1).
    on_source
        Called with each source's record once it has been sliced (progress reports).

    Returns
    -------
    Manifest

    Raises
    ------
    ValueError
        On bad arguments, duplicate source names, a validation name that matches no source, a
        source with NaN, infinite or only zero values (named in the message), or when the
        training or a requested validation split ends up without slices
        (:class:`~napari_genreg.io.ReadError`, a subclass, when a file cannot be read).
    FileNotFoundError
        When a path does not exist.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    if size % 8:
        raise ValueError(f"size must be a multiple of 8 (the priors halve it 3 times), got {size}")
    if not (isinstance(min_foreground, (int, float)) and 0.0 <= min_foreground < 1.0):
        raise ValueError(f"min_foreground must lie in [0, 1), got {min_foreground!r}")
    size = int(size)
    expanded = _expand(sources)
    if not expanded:
        raise ValueError("no sources given")
    held_out = _validation_names(expanded, validation)

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    writers = {split: _SplitWriter(root, split, size) for split in ("train", "val")}
    try:
        records = [
            _slice_source(source, writers, held_out, size, min_foreground, on_source)
            for source in expanded
        ]
        if writers["train"].count == 0:
            raise ValueError(
                "no training slices: every source is in the validation split or was filtered "
                f"out (min_foreground={min_foreground})"
            )
        if held_out and writers["val"].count == 0:
            raise ValueError(
                f"the validation sources {sorted(held_out)} gave no slices "
                f"(min_foreground={min_foreground})"
            )
        (root / MANIFEST_NAME).unlink(missing_ok=True)  # the folder is incomplete from here on
        arrays = {split: writer.finish() for split, writer in writers.items()}
    finally:
        for writer in writers.values():
            writer.discard()
    content = "".join(f"{a.file} {a.sha256}\n" for a in arrays.values())
    manifest = Manifest(
        root=root,
        size=size,
        sources=tuple(records),
        arrays=arrays,
        content_sha256=hashlib.sha256(content.encode()).hexdigest(),
        parameters={
            "size": size,
            "validation": list(validation),
            "min_foreground": float(min_foreground),
            "foreground": f"pixels above {FOREGROUND_FRACTION:g} x the volume's "
            f"{VOLUME_PERCENTILE:g}th percentile",
            "scaling": f"each slice divided by its {SLICE_PERCENTILE:g}th percentile, clipped "
            "to [0, 1], stored as float16",
            "resize": "zero-pad (centred) to a square field of view in mm, then "
            "skimage.transform.resize(order=1, anti_aliasing=True)",
            "min_in_plane": MIN_IN_PLANE,
            "planes": "axial, coronal, sagittal for 3-D volumes (RAS+), stored for 2-D stacks",
        },
    )
    tmp = root / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)
    return manifest


# --------------------------------------------------------------------------------------------
# Augmentation and the dataset


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one item, mixed from ``(seed, epoch, index)`` by NumPy's SeedSequence.

    Neighbouring triples give unrelated seeds; the global RNGs are not touched.
    """
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, np.uint64)
    return int(state[0])


def _uniform(
    generator: torch.Generator, n: int, low: float, high: float, *, log: bool = False
) -> torch.Tensor:
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if log:
        return torch.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return low + u * (high - low)


def _smooth_field(
    generator: torch.Generator, n: int, channels: int, grid: int, shape: tuple[int, int]
) -> torch.Tensor:
    """Smooth random field ``(n, channels, H, W)``: standard normal control points on a
    ``grid x grid`` lattice, interpolated bicubically over the image."""
    import torch.nn.functional as F

    coarse = torch.randn(n, channels, grid, grid, generator=generator, dtype=torch.float32)
    return F.interpolate(coarse, size=shape, mode="bicubic", align_corners=True)


@dataclass(frozen=True)
class Augmentation:
    """Random training augmentation of magnitude images in [0, 1] (torch operations).

    Applied in this order, with every random number drawn from the ``generator`` passed in
    (never the global RNG), independently for each image of a batch:

    1. geometry, one bilinear resampling (:func:`torch.nn.functional.grid_sample`, zeros
       outside) of the composition of

       * a left-right flip with probability ``flip_lr`` and an up-down flip with probability
         ``flip_ud`` (the stored set has one orientation convention per plane; other data may
         not);
       * a rotation by an angle ~ U(-``rotation_deg``, ``rotation_deg``) degrees;
       * an isotropic zoom by a factor ~ U(``scale``) (above 1 zooms in);
       * a shift ~ U(-``translation``, ``translation``) of the field of view along each axis
         (with the zoom, these are the random crops);
       * an elastic deformation: a smooth displacement field, standard normal on an
         ``elastic_grid x elastic_grid`` lattice interpolated bicubically, times a standard
         deviation ~ U(0, ``elastic``) in fractions of the field of view;

    2. a smooth multiplicative bias field ``exp(b)``, ``b`` a bicubic field from a
       ``bias_grid x bias_grid`` lattice of normal values with standard deviation
       ~ U(0, ``bias``), minus its mean over the object (pixels above 0.1), so that the field
       averages about 1 there;
    3. a gamma (contrast) change ``x ** g``, ``g`` log-uniform in ``gamma``;
    4. an intensity scaling by a factor ~ U(``intensity``);
    5. Rician noise, as in magnitude MRI: ``|x + n_1 + i n_2|``, ``n_k`` normal with standard
       deviation ~ U(0, ``noise``);
    6. clipping to [0, 1].

    The defaults are small on purpose: the images must stay plausible MRI. Every range
    contains the identity, so setting a bound to its neutral value disables that step.

    Parameters
    ----------
    flip_lr, flip_ud
        Probabilities of the flips, in [0, 1].
    rotation_deg
        Largest rotation angle, degrees.
    scale
        Range of the zoom factor.
    translation
        Largest shift, fraction of the field of view.
    elastic
        Largest standard deviation of the elastic displacements, fraction of the field of view.
    elastic_grid
        Control points per side of the elastic field (fewer: smoother).
    bias
        Largest standard deviation of the log bias field.
    bias_grid
        Control points per side of the bias field.
    gamma
        Range of the gamma exponent (log-uniform).
    intensity
        Range of the intensity factor.
    noise
        Largest noise standard deviation (images in [0, 1]).

    Examples
    --------
    >>> import torch
    >>> augment = Augmentation()
    >>> g = torch.Generator().manual_seed(0)
    >>> augment(torch.rand(4, 1, 64, 64), g).shape
    torch.Size([4, 1, 64, 64])
    """

    flip_lr: float = 0.5
    flip_ud: float = 0.5
    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translation: float = 0.05
    elastic: float = 0.01
    elastic_grid: int = 5
    bias: float = 0.15
    bias_grid: int = 3
    gamma: tuple[float, float] = (0.7, 1.5)
    intensity: tuple[float, float] = (0.8, 1.0)
    noise: float = 0.02

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch ``(B, 1, H, W)`` (any float dtype, any device).

        The random numbers are drawn on the CPU from ``generator``, so the result depends only
        on the generator's state, not on the device.
        """
        import torch.nn.functional as F

        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected images (B, 1, H, W), got {tuple(images.shape)}")
        b, _, h, w = images.shape
        device, dtype = images.device, images.dtype
        g = generator

        # 1. geometry: output pixel p samples the input at A p + t (+ elastic), in [-1, 1].
        flip_x = torch.where(torch.rand(b, generator=g) < self.flip_lr, -1.0, 1.0)
        flip_y = torch.where(torch.rand(b, generator=g) < self.flip_ud, -1.0, 1.0)
        angle = _uniform(g, b, -self.rotation_deg, self.rotation_deg) * (math.pi / 180)
        zoom = _uniform(g, b, *self.scale)
        shift = _uniform(g, 2 * b, -self.translation, self.translation).reshape(b, 2) * 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [
                torch.stack([cos * flip_x, -sin * flip_y, shift[:, 0]], dim=1),
                torch.stack([sin * flip_x, cos * flip_y, shift[:, 1]], dim=1),
            ],
            dim=1,
        ).to(torch.float32)
        grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
        amplitude = _uniform(g, b, 0.0, self.elastic).to(torch.float32) * 2
        displacement = _smooth_field(g, b, 2, self.elastic_grid, (h, w))
        grid = grid + (displacement * amplitude[:, None, None, None]).permute(0, 2, 3, 1)
        x = F.grid_sample(
            images.to(torch.float32),
            grid.to(device),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )

        # 2. bias field
        log_field = _smooth_field(g, b, 1, self.bias_grid, (h, w)).to(device)
        weight = (x > 0.1).to(torch.float32) + 1e-6  # centre the field on the object
        centre = (log_field * weight).sum(dim=(2, 3), keepdim=True) / weight.sum(
            dim=(2, 3), keepdim=True
        )
        strength = _uniform(g, b, 0.0, self.bias).to(torch.float32).to(device)
        x = x * torch.exp((log_field - centre) * strength[:, None, None, None])

        # 3. gamma, 4. intensity
        gamma = _uniform(g, b, *self.gamma, log=True).to(torch.float32)
        factor = _uniform(g, b, *self.intensity).to(torch.float32)
        x = x.clamp(min=0.0) ** gamma.to(device)[:, None, None, None]
        x = x * factor.to(device)[:, None, None, None]

        # 5. Rician noise, 6. clip
        sigma = _uniform(g, b, 0.0, self.noise).to(torch.float32)[:, None, None, None]
        n1 = torch.randn(b, 1, h, w, generator=g) * sigma
        n2 = torch.randn(b, 1, h, w, generator=g) * sigma
        x = torch.sqrt((x + n1.to(device)) ** 2 + n2.to(device) ** 2)
        return x.clamp(0.0, 1.0).to(dtype)


class SliceDataset(Dataset):
    """One split of a prepared folder, as ``(1, size, size)`` float32 tensors in [0, 1].

    The array is memory-mapped (opened lazily in each worker process). With augmentation,
    item ``index`` in epoch ``epoch`` is transformed with a generator seeded by
    :func:`item_seed` ``(seed, epoch, index)``, so a run is reproducible whatever the number
    of workers and the order of the items. Call :meth:`set_epoch` before each epoch (with a
    :class:`torch.utils.data.DataLoader`, workers that are not persistent pick it up at the
    start of the epoch; with ``persistent_workers=True`` they would not).

    Parameters
    ----------
    root
        A folder written by :func:`prepare_dataset`.
    split
        ``"train"`` or ``"val"``.
    augment
        ``True`` for the default :class:`Augmentation`, an :class:`Augmentation` for other
        ranges, ``False`` for none. Default: augment the training split only.
    seed
        Seed of the augmentation.

    Raises
    ------
    FileNotFoundError, ValueError
        When the folder is not a complete prepared dataset, or the array does not match its
        manifest.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Split = "train",
        *,
        augment: bool | Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        item_seed(seed, 0, 0)  # validates the seed
        self.manifest = Manifest.load(root)
        self.split = split
        self.seed = int(seed)
        self.epoch = 0
        if augment is None:
            augment = split == "train"
        self.augmentation: Augmentation | None = (
            Augmentation() if augment is True else (augment or None)
        )
        record = self.manifest.arrays[split]
        self._path = self.manifest.root / record.file
        self._shape = record.shape
        self._array: np.ndarray | None = None
        self._generator: torch.Generator | None = None
        self._open()  # check now; reopened lazily after pickling

    def _open(self) -> np.ndarray:
        if self._array is None:
            try:
                array = np.load(self._path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:  # missing, truncated, not .npy
                raise ValueError(f"{self._path}: not a readable prepared split ({exc})") from exc
            if array.shape != self._shape or array.dtype != STORED_DTYPE:
                raise ValueError(
                    f"{self._path}: {array.dtype} {array.shape} does not match the manifest "
                    f"(float16 {self._shape})"
                )
            self._array = array
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # never pickle the memory map (it would copy the data)
        state["_generator"] = None
        return state

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation of epoch ``epoch`` from now on (a non-negative integer)."""
        item_seed(self.seed, epoch, 0)
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} slices")
        index = int(index) % n
        raw = np.array(self._open()[index], dtype=np.float32)
        image = torch.from_numpy(raw)[None]
        if self.augmentation is None:
            return image
        if self._generator is None:
            self._generator = torch.Generator()
        self._generator.manual_seed(item_seed(self.seed, self.epoch, index))
        return self.augmentation(image[None], self._generator)[0]
