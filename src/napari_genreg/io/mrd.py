"""Reader for ISMRMRD / MRD raw data (``.mrd``, or ``.h5`` through the HDF5 dispatcher).

An ISMRMRD file is an HDF5 file with a group (``dataset``) holding an XML header ``xml`` and
the acquisitions ``data``: one readout line each, ``(coils, samples)`` complex64, with a header
of encoding counters and flags. :func:`read_mrd` reads them in blocks (see its Notes), with
the flag definitions of the ``ismrmrd`` package, and assembles 2-D Cartesian k-space.

Orientation
-----------
The k-space is ``(slices, coils, readout, phase)``: the **readout** (frequency-encoding,
encoded ``x``) direction on the second-to-last axis and the **phase-encoding** lines
(``kspace_encode_step_1``, encoded ``y``) on the **last** axis. This is the layout of fastMRI
files (``kspace (coils, 640 readout, 368 phase)``, mask over the last axis), so a 1-D
retrospective mask from :mod:`napari_genreg.physics.masks`, which samples whole lines of the
last axis, and the file's own undersampling both select phase-encoding lines. (The record's
attribute names ``(ky, kx)`` are then just (rows, columns): rows are readout samples, columns
phase-encoding lines.) ``meta.extra["axes"]`` spells this out.

Assembly
--------
* Line ``kspace_encode_step_1 = e`` goes to column ``e + (Ny // 2 - center)`` where ``Ny`` is
  the encoded ``y`` size and ``center`` the header's ``encodingLimits/kspace_encoding_step_1/
  center`` (fastMRI's ``padding_left``; 0 without limits), so DC sits at ``Ny // 2`` as
  :func:`~napari_genreg.physics.fft.fft2c` expects. Columns outside the encoding limits
  (asymmetric/partial Fourier, phase padding) stay zero; ``meta.extra["kspace_padding"]``
  gives them as fastMRI's ``[padding_left, padding_right)``.
* Readouts of ``Nx`` samples fill the column; shorter ones (asymmetric echo) are placed by
  ``center_sample`` so that it lands on ``Nx // 2``. ``discard_pre``/``discard_post`` samples
  are dropped first; ``ACQ_IS_REVERSE`` lines are flipped.
* Repeated lines (``average``) are averaged; only the first contrast, phase, repetition and
  set (counter 0) and encoding space 0 are read, the rest skipped and counted in
  ``meta.extra["skipped_acquisitions"]`` with navigator, phase-correction, dummy-scan,
  feedback and phase-stabilisation acquisitions.
* Calibration-only lines (``ACQ_IS_PARALLEL_CALIBRATION`` without ``..._AND_IMAGING``, e.g.
  GRAPPA reference lines between the accelerated ones) fill lines no imaging acquisition
  measured: they are measured k-space of the same sequence.
* Readout oversampling: when ``Nx == 2 * recon x`` the readout is cropped to the centre in
  image space (centred orthonormal 1-D FFTs), so ``kspace.shape[-2] == recon x``; with the
  unitary transforms this keeps image intensities and the per-sample noise level.
  ``meta.extra["recon_size"]`` is the header's ``reconSpace`` ``[x, y]`` for a final crop
  downstream (the phase direction is not touched here).
* Undersampling: samples not acquired stay zero and make up ``mask`` (bool ``(readout,
  phase)``). ``meta.undersampled`` is True, and ``mask`` is set, when any sample within the
  encoding limits of ``kspace_encode_step_1`` is missing; lines outside the limits do not
  count (as for fully sampled fastMRI files, which are zero-padded there). All slices must
  share one sampling pattern. After oversampling removal a line counts as sampled over the
  whole readout.

Noise
-----
Noise-adjustment acquisitions (``ACQ_IS_NOISE_MEASUREMENT``) give the coil noise covariance
``C = N N^H / M`` (``N``: ``coils x M`` noise samples), scaled by the ratio of noise to imaging
dwell times when these differ (noise power per sample is proportional to the bandwidth) and
divided by the number of averages of the imaging lines (the smallest, when it varies). Then
``meta.noise_sigma = sqrt(trace(C) / coils)``, the record's ``E|n|^2 = sigma^2`` per complex
sample averaged over coils, and ``meta.extra["noise_covariance"]`` as nested lists in the
format of :func:`~.records.encode_covariance` (rebuild with :func:`~.records.decode_covariance`)
for prewhitening. Without noise acquisitions ``meta.noise_sigma`` is None. Receiver filter
corrections (a vendor's relative noise bandwidth) are not applied.

Refused (:class:`~napari_genreg.io.errors.ReadError`): non-Cartesian trajectories, 3-D
encoding (``encodedSpace z > 1``), counters outside the encoded matrix, coil counts that change
between lines, NaN/infinite samples, no imaging line at all.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._common import checked_path, record
from .errors import ReadError
from .hdf5 import MAX_BYTES, describe, get_dataset, mrd_group, open_h5, read_text
from .records import KSpaceData, Metadata, encode_covariance

if TYPE_CHECKING:
    import h5py

#: Longest XML header accepted (characters).
MAX_HEADER_CHARS = 16 * 2**20
#: Largest encoded matrix side accepted.
MAX_MATRIX_SIDE = 16384
#: ``meta.extra["axes"]``: the meaning of the four k-space axes.
AXES = ("slice", "coil", "readout", "phase")


@dataclass(frozen=True)
class EncodingLimit:
    """One ``encodingLimits`` entry of an ISMRMRD header."""

    minimum: int
    maximum: int
    center: int


@dataclass(frozen=True)
class MRDHeader:
    """What the readers use from an ISMRMRD XML header (its first ``<encoding>``).

    Attributes
    ----------
    encoded_size
        ``(x, y, z)`` of ``encodedSpace/matrixSize``: readout, phase encoding, partitions.
    recon_size
        ``(x, y, z)`` of ``reconSpace/matrixSize``.
    trajectory
        ``cartesian``, ``radial``, ...; ``"cartesian"`` when absent.
    limits
        ``encodingLimits`` entries by name (``kspace_encoding_step_1``, ``slice``, ...).
    encodings
        Number of ``<encoding>`` elements (only the first is read).
    summary
        A few informative fields (vendor, field strength, TR/TE, ...), JSON-safe.
    """

    encoded_size: tuple[int, int, int]
    recon_size: tuple[int, int, int]
    trajectory: str = "cartesian"
    limits: dict[str, EncodingLimit] = field(default_factory=dict)
    encodings: int = 1
    summary: dict[str, Any] = field(default_factory=dict)

    def phase_offset(self) -> int:
        """Column of encode step 0: ``Ny // 2 - center`` (fastMRI's ``padding_left``)."""
        limit = self.limits.get("kspace_encoding_step_1")
        return 0 if limit is None else self.encoded_size[1] // 2 - limit.center

    def phase_range(self) -> tuple[int, int]:
        """Columns ``[first, stop)`` inside the encoding limits of ``kspace_encode_step_1``."""
        limit = self.limits.get("kspace_encoding_step_1")
        if limit is None:
            return 0, self.encoded_size[1]
        offset = self.phase_offset()
        first = max(0, limit.minimum + offset)
        return first, max(first, min(self.encoded_size[1], limit.maximum + 1 + offset))


#: ``summary`` key -> path below the root (local names; the namespace is ignored).
_SUMMARY = {
    "vendor": ("acquisitionSystemInformation", "systemVendor"),
    "model": ("acquisitionSystemInformation", "systemModel"),
    "field_strength_T": ("acquisitionSystemInformation", "systemFieldStrength_T"),
    "receiver_channels": ("acquisitionSystemInformation", "receiverChannels"),
    "larmor_frequency_Hz": ("experimentalConditions", "H1resonanceFrequency_Hz"),
    "protocol": ("measurementInformation", "protocolName"),
    "TR_ms": ("sequenceParameters", "TR"),
    "TE_ms": ("sequenceParameters", "TE"),
    "TI_ms": ("sequenceParameters", "TI"),
    "flip_angle_deg": ("sequenceParameters", "flipAngle_deg"),
    "sequence_type": ("sequenceParameters", "sequence_type"),
}


def parse_header(xml: str | bytes, path: str | os.PathLike[str]) -> MRDHeader:
    """Parse an ISMRMRD XML header (as stored in MRD files and fastMRI's ``ismrmrd_header``).

    Elements are matched by local name, so the header may use the ISMRMRD namespace, another
    one or none. Only the standard library parses the XML (entities are not fetched).

    Parameters
    ----------
    xml
        The header document.
    path
        The file, for messages.

    Returns
    -------
    MRDHeader

    Raises
    ------
    ReadError
        When the XML is malformed or too long, is not an ``ismrmrdHeader``, or lacks
        ``encoding/encodedSpace/matrixSize`` and ``encoding/reconSpace/matrixSize`` with
        integer sizes in ``1..MAX_MATRIX_SIDE`` (``z``: ``0..MAX_MATRIX_SIDE``).
    """
    if len(xml) > MAX_HEADER_CHARS:
        raise ReadError(path, f"the ISMRMRD header is {len(xml)} characters long, over the limit")
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, ValueError) as exc:
        raise ReadError(path, f"the ISMRMRD header is not valid XML: {exc}") from exc
    if _local(root.tag) != "ismrmrdHeader":
        raise ReadError(path, f"the XML header is <{_local(root.tag)}>, not <ismrmrdHeader>")
    encodings = _children(root, "encoding")
    if not encodings:
        raise ReadError(path, "the ISMRMRD header has no <encoding>")
    encoding = encodings[0]

    def size(space: str) -> tuple[int, int, int]:
        sides = []
        for axis in "xyz":
            where = f"encoding/{space}/matrixSize/{axis}"
            value = _integer(_find(encoding, space, "matrixSize", axis), where, path)
            if value is None:
                raise ReadError(path, f"the ISMRMRD header has no {where}")
            lowest = 0 if axis == "z" else 1  # some 2-D headers give z = 0
            if not lowest <= value <= MAX_MATRIX_SIDE:
                raise ReadError(
                    path,
                    f"the ISMRMRD header's {where} is {value}, not in {lowest}..{MAX_MATRIX_SIDE}",
                )
            sides.append(value)
        return sides[0], sides[1], sides[2]

    limits: dict[str, EncodingLimit] = {}
    limits_element = _find(encoding, "encodingLimits")
    if limits_element is not None:
        for child in limits_element:
            name = _local(child.tag)
            where = f"encoding/encodingLimits/{name}"
            values = [_integer(_find(child, k), f"{where}/{k}", path) for k in _LIMIT_KEYS]
            if None in values:
                continue  # an incomplete entry says nothing
            minimum, maximum, center = (int(v) for v in values if v is not None)
            limits[name] = EncodingLimit(minimum, maximum, center)

    trajectory_element = _find(encoding, "trajectory")
    trajectory = (trajectory_element.text or "").strip() if trajectory_element is not None else ""
    summary: dict[str, Any] = {}
    for key, names in _SUMMARY.items():
        element = _find(root, *names)
        if element is not None and element.text and element.text.strip():
            summary[key] = _number_or_text(element.text.strip())
    for space, key in (("encodedSpace", "fov_mm"), ("reconSpace", "recon_fov_mm")):
        fov = [_find(encoding, space, "fieldOfView_mm", axis) for axis in "xyz"]
        values = [_number_or_text((e.text or "").strip()) for e in fov if e is not None]
        if len(values) == 3 and all(isinstance(v, float) for v in values):
            summary[key] = values
    return MRDHeader(
        encoded_size=size("encodedSpace"),
        recon_size=size("reconSpace"),
        trajectory=trajectory.lower() or "cartesian",
        limits=limits,
        encodings=len(encodings),
        summary=summary,
    )


_LIMIT_KEYS = ("minimum", "maximum", "center")


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _find(element: ET.Element, *names: str) -> ET.Element | None:
    for name in names:
        found = _children(element, name)
        if not found:
            return None
        element = found[0]
    return element


def _integer(element: ET.Element | None, where: str, path: str | os.PathLike[str]) -> int | None:
    if element is None:
        return None
    text = (element.text or "").strip()
    try:
        return int(text)
    except ValueError:
        raise ReadError(path, f"the ISMRMRD header's {where} is not an integer: {text!r}") from None


def _number_or_text(text: str) -> float | str:
    try:
        value = float(text)
    except ValueError:
        return text[:200]
    return value if math.isfinite(value) else text[:200]


# --------------------------------------------------------------------------------------------
# the reader


def read_mrd(
    path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
) -> KSpaceData:
    """Read 2-D Cartesian k-space from an ISMRMRD (MRD) HDF5 file.

    See the module docstring for the orientation ``(slices, coils, readout, phase)``, how lines
    are placed, readout oversampling, undersampling and the noise estimate.

    Parameters
    ----------
    path
        The ISMRMRD file (HDF5; the group ``dataset``, or the only group holding ``xml`` and
        ``data``).
    noise_sigma, seed
        Accepted for the common reader signature and checked; measured k-space is returned as
        stored (no noise is added).

    Returns
    -------
    KSpaceData
        ``kspace`` complex64 ``(slices, coils, readout, phase)``; ``reference=None``; ``mask``
        bool ``(readout, phase)`` when undersampled; ``meta.noise_sigma`` from the noise
        acquisitions (or None); ``meta.extra`` with ``format="ismrmrd"``, ``axes``,
        ``encoded_size``, ``recon_size``, ``readout_oversampling_removed``, ``kspace_padding``,
        ``slice_indices``, ``averages``, ``calibration_lines``, ``skipped_acquisitions``,
        ``header`` (a summary) and, with noise data, ``noise_covariance``, ``noise_samples``.

    Raises
    ------
    ReadError
        When the file is missing, not HDF5, truncated or corrupt, has no ISMRMRD group, header
        or acquisitions, or holds data this reader does not assemble (see the module
        docstring).

    Notes
    -----
    The acquisition table (``ismrmrd.hdf5.acquisition_dtype``: ``head``, ``traj``, ``data``)
    is read with h5py, read-only, in blocks of :data:`ACQUISITIONS_PER_BLOCK` rows; the flag
    bits come from the ``ismrmrd`` package. ``ismrmrd.Dataset.read_acquisition`` reads one row
    at a time, twice (about 7 ms a row: over a minute for a 10 000-line scan), and
    ``ismrmrd.Dataset`` before version 1.15 can only open an existing file for writing.
    """
    path = checked_path(path, noise_sigma, seed)
    with open_h5(path, "not a readable ISMRMRD file") as f:
        group = mrd_group(f)
        if group is None:
            raise ReadError(
                path,
                f"no ISMRMRD group among {describe(f)}: expected a group 'dataset' holding "
                "'xml' and 'data'",
            )
        xml = read_text(
            get_dataset(f[group], "xml", path),
            path,
            what="the ISMRMRD header",
            max_bytes=MAX_HEADER_CHARS,
        )
        header = parse_header(xml, path)
        if header.trajectory != "cartesian":
            raise ReadError(
                path, f"the {header.trajectory} trajectory is not supported (Cartesian only)"
            )
        if header.encoded_size[2] > 1:
            raise ReadError(
                path,
                f"3-D encoding (encodedSpace z = {header.encoded_size[2]}) is not supported; "
                "2-D multi-slice only",
            )
        table = get_dataset(f[group], "data", path)
        flags = _check_table(table, f"{group}/data", path)
        assembler = _Assembler(header, path, flags)
        for start in range(0, table.shape[0], ACQUISITIONS_PER_BLOCK):
            rows = table[start : start + ACQUISITIONS_PER_BLOCK]
            for offset, row in enumerate(rows):
                assembler.add(row["head"], row["data"], start + offset)
        return assembler.result()


#: Rows of the acquisition table read at a time.
ACQUISITIONS_PER_BLOCK = 256
#: Acquisition header fields the reader uses (``idx`` holds the encoding counters).
_HEAD_FIELDS = (
    "flags",
    "number_of_samples",
    "active_channels",
    "discard_pre",
    "discard_post",
    "center_sample",
    "encoding_space_ref",
    "sample_time_us",
    "idx",
)
_IDX_FIELDS = (
    "kspace_encode_step_1",
    "kspace_encode_step_2",
    "average",
    "slice",
    "contrast",
    "phase",
    "repetition",
    "set",
)


def _check_table(table: h5py.Dataset, where: str, path: Path) -> _Flags:
    """Check that ``table`` is an ISMRMRD acquisition table; return the flag bits to use."""
    try:
        import ismrmrd
    except ImportError as exc:
        raise ReadError(
            path, "reading ISMRMRD files needs the 'ismrmrd' package (pip install ismrmrd)"
        ) from exc
    fields = table.dtype.fields or {}
    head = fields.get("head", (None,))[0]
    data = fields.get("data", (None,))[0]
    idx = head.fields.get("idx", (None,))[0] if head is not None and head.fields else None
    if (
        head is None
        or data is None
        or idx is None
        or not set(_HEAD_FIELDS) <= set(head.names or ())
        or not set(_IDX_FIELDS) <= set(idx.names or ())
    ):
        raise ReadError(path, f"{where} is not an ISMRMRD acquisition table (dtype {table.dtype})")
    if table.ndim != 1 or table.shape[0] == 0:
        raise ReadError(path, f"{where} holds no acquisitions (shape {table.shape})")
    return _Flags(
        noise=ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
        calibration=ismrmrd.ACQ_IS_PARALLEL_CALIBRATION,
        calibration_and_imaging=ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING,
        reverse=ismrmrd.ACQ_IS_REVERSE,
        skipped={
            ismrmrd.ACQ_IS_NAVIGATION_DATA: "navigator",
            ismrmrd.ACQ_IS_PHASECORR_DATA: "phase correction",
            ismrmrd.ACQ_IS_HPFEEDBACK_DATA: "feedback",
            ismrmrd.ACQ_IS_DUMMYSCAN_DATA: "dummy scan",
            ismrmrd.ACQ_IS_RTFEEDBACK_DATA: "feedback",
            ismrmrd.ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA: "surface coil correction",
            ismrmrd.ACQ_IS_PHASE_STABILIZATION_REFERENCE: "phase stabilisation",
            ismrmrd.ACQ_IS_PHASE_STABILIZATION: "phase stabilisation",
        },
    )


@dataclass(frozen=True)
class _Flags:
    """Bit numbers (1-based, as in ``ismrmrd.constants``) of the flags the reader acts on."""

    noise: int
    calibration: int
    calibration_and_imaging: int
    reverse: int
    skipped: dict[int, str]


class _Assembler:
    """Collects acquisitions line by line into per-slice sums, then builds the record."""

    def __init__(self, header: MRDHeader, path: Path, flags: _Flags) -> None:
        self.header = header
        self.path = path
        self.flags = flags
        self.nx, self.ny = header.encoded_size[:2]
        self.offset = header.phase_offset()
        self.coils: int | None = None
        self.dwell_us: float | None = None
        # slice -> [sum (coils, nx, ny) complex64, count (nx, ny) int32], imaging and calibration
        self.imaging: dict[int, list[np.ndarray]] = {}
        self.calibration: dict[int, list[np.ndarray]] = {}
        self.noise: list[np.ndarray] = []
        self.noise_dwell_us: list[float] = []
        self.skipped: Counter[str] = Counter()

    def add(self, head: np.void, values: np.ndarray, index: int) -> None:
        """Add one acquisition: its header (``acquisition_header_dtype``) and its float32
        samples (``coils x samples`` complex values, interleaved)."""
        where = f"acquisition {index}"
        bits = int(head["flags"])

        def flag(bit: int) -> bool:
            return bool(bits & (1 << (bit - 1)))

        data = self._samples(head, values, where)
        if flag(self.flags.noise):
            if data.size:
                self.noise.append(data.astype(np.complex128))
                self.noise_dwell_us.append(float(head["sample_time_us"]))
            return
        for bit, reason in self.flags.skipped.items():
            if flag(bit):
                self.skipped[reason] += 1
                return
        idx = head["idx"]
        if int(head["encoding_space_ref"]) != 0:
            self.skipped["other encoding space"] += 1
            return
        for counter in ("contrast", "phase", "repetition", "set"):
            if int(idx[counter]) != 0:
                self.skipped[f"{counter} > 0"] += 1
                return
        if data.size == 0:
            raise ReadError(self.path, f"{where} holds no samples (shape {data.shape})")
        if int(idx["kspace_encode_step_2"]) != 0:
            raise ReadError(self.path, f"{where} has kspace_encode_step_2 > 0 in a 2-D encoding")
        coils = data.shape[0]
        if self.coils is None:
            self.coils = coils
            self.dwell_us = float(head["sample_time_us"])
        elif coils != self.coils:
            raise ReadError(
                self.path, f"{where} has {coils} coils, the earlier acquisitions {self.coils}"
            )
        pre, post = int(head["discard_pre"]), int(head["discard_post"])
        line = self._readout(data, pre, post, where)
        if flag(self.flags.reverse):
            line = line[:, ::-1]
        start = self._readout_start(line.shape[1], int(head["center_sample"]) - pre, where)
        step = int(idx["kspace_encode_step_1"])
        column = step + self.offset
        if not 0 <= column < self.ny:
            raise ReadError(
                self.path,
                f"{where}: kspace_encode_step_1 = {step} falls outside the encoded matrix "
                f"(phase size {self.ny}, offset {self.offset})",
            )
        calibration_only = flag(self.flags.calibration) and not flag(
            self.flags.calibration_and_imaging
        )
        store = self.calibration if calibration_only else self.imaging
        total, count = self._slice(store, int(idx["slice"]), coils)
        rows = slice(start, start + line.shape[1])
        total[:, rows, column] += line
        count[rows, column] += 1

    def _samples(self, head: np.void, values: np.ndarray, where: str) -> np.ndarray:
        """The samples as complex64 ``(coils, samples)``, checked against the header."""
        coils, samples = int(head["active_channels"]), int(head["number_of_samples"])
        values = np.asarray(values)
        if values.dtype != np.float32 or values.ndim != 1:
            raise ReadError(
                self.path, f"{where} stores {values.dtype} {values.shape}, not float32 samples"
            )
        if values.size != 2 * coils * samples:
            raise ReadError(
                self.path,
                f"{where} holds {values.size} numbers; its header says {coils} coils x "
                f"{samples} complex samples",
            )
        return values.view(np.complex64).reshape(coils, samples)

    def _readout(self, data: np.ndarray, pre: int, post: int, where: str) -> np.ndarray:
        """The samples of a line without the ``discard_pre``/``discard_post`` ones."""
        n = data.shape[1]
        if pre or post:
            if pre + post >= n:
                raise ReadError(self.path, f"{where} discards {pre} + {post} of its {n} samples")
            data = data[:, pre : n - post]
        return data

    def _readout_start(self, n: int, centre: int, where: str) -> int:
        """Row of a line's first sample: 0 for a full readout, else so that sample ``centre``
        (``center_sample`` less the discarded ones) lands on ``nx // 2``."""
        if n == self.nx:
            return 0
        start = self.nx // 2 - centre
        if n > self.nx or start < 0 or start + n > self.nx:
            raise ReadError(
                self.path,
                f"{where} has {n} samples centred at {centre}, which do not fit the encoded "
                f"readout of {self.nx}",
            )
        return start

    def _slice(
        self, store: dict[int, list[np.ndarray]], index: int, coils: int
    ) -> list[np.ndarray]:
        if index not in store:
            slices = len(set(self.imaging) | set(self.calibration) | {index})
            needed = slices * coils * self.nx * self.ny * np.dtype(np.complex64).itemsize
            if needed > MAX_BYTES:
                raise ReadError(
                    self.path,
                    f"{slices} slices of {coils} x {self.nx} x {self.ny} k-space exceed the "
                    f"{MAX_BYTES >> 30} GiB limit",
                )
            store[index] = [
                np.zeros((coils, self.nx, self.ny), np.complex64),
                np.zeros((self.nx, self.ny), np.int32),
            ]
        return store[index]

    def result(self) -> KSpaceData:
        path, header = self.path, self.header
        if not self.imaging and not self.calibration:
            skipped = dict(self.skipped) or "none"
            raise ReadError(
                path, f"no imaging acquisitions (noise: {len(self.noise)}, skipped: {skipped})"
            )
        slice_indices = sorted(set(self.imaging) | set(self.calibration))
        assert self.coils is not None
        stacks, counts = [], []
        calibration_columns = np.zeros(self.ny, bool)
        for s in slice_indices:
            total, count = self._slice(self.imaging, s, self.coils)
            if s in self.calibration:
                calibration_total, calibration_count = self.calibration[s]
                fill = (count == 0) & (calibration_count > 0)
                total[:, fill] = calibration_total[:, fill]
                count[fill] = calibration_count[fill]
                calibration_columns |= fill.any(axis=0)
            stacks.append(total / np.maximum(count, 1))
            counts.append(count)
        count = np.stack(counts)  # (slices, nx, ny)
        sampled = count > 0
        if not np.all(sampled == sampled[:1]):
            raise ReadError(
                path, "the slices were sampled on different lines; one mask per file is supported"
            )
        sampled_2d = sampled[0]
        with np.errstate(over="ignore", invalid="ignore"):
            kspace = np.stack(stacks).astype(np.complex64)
        if not np.all(np.isfinite(kspace)):
            raise ReadError(path, "the k-space contains NaN or infinite values")
        if not np.any(kspace):
            raise ReadError(path, "the k-space is all zero")

        recon_x = header.recon_size[0]
        oversampled = self.nx == 2 * recon_x
        if oversampled:
            kspace = _crop_readout(kspace, recon_x)
            sampled_2d = np.broadcast_to(sampled_2d.any(axis=0), (recon_x, self.ny))
        first, stop = header.phase_range()
        undersampled = not bool(sampled_2d[:, first:stop].all())
        mask = np.ascontiguousarray(sampled_2d) if undersampled else None

        averages = count[sampled]
        min_averages, max_averages = int(averages.min()), int(averages.max())
        extra: dict[str, Any] = {
            "format": "ismrmrd",
            "axes": list(AXES),
            "encoded_size": [self.nx, self.ny],
            "recon_size": [recon_x, header.recon_size[1]],
            "readout_oversampling_removed": oversampled,
            "kspace_padding": [first, stop],
            "slice_indices": slice_indices,
            "averages": [min_averages, max_averages],
            "calibration_lines": int(calibration_columns.sum()),
            "skipped_acquisitions": dict(sorted(self.skipped.items())),
            "header": dict(header.summary),
        }
        if header.encodings > 1:
            extra["encodings"] = header.encodings
        sigma = self._noise(extra, min_averages)
        meta = Metadata(
            source=str(path),
            matrix_size=(kspace.shape[-2], kspace.shape[-1]),
            noise_sigma=sigma,
            simulated=False,
            undersampled=undersampled,
            extra=extra,
        )
        return record(path, kspace=kspace, reference=None, mask=mask, meta=meta)

    def _noise(self, extra: dict[str, Any], averages: int) -> float | None:
        """Noise covariance and sigma from the noise acquisitions (see the module docstring)."""
        if not self.noise:
            return None
        coils = {block.shape[0] for block in self.noise}
        if coils != {self.coils}:
            extra["noise_note"] = (
                f"noise acquisitions ignored: {sorted(coils)} coils, imaging data {self.coils}"
            )
            return None
        scaled = []
        for block, dwell in zip(self.noise, self.noise_dwell_us, strict=True):
            if dwell > 0 and self.dwell_us and self.dwell_us > 0:
                block = block * math.sqrt(dwell / self.dwell_us)
            scaled.append(block)
        samples = np.concatenate(scaled, axis=1)  # (coils, M)
        if not np.all(np.isfinite(samples)):
            raise ReadError(self.path, "the noise acquisitions contain NaN or infinite values")
        covariance = samples @ samples.conj().T / samples.shape[1] / averages
        sigma = math.sqrt(max(float(np.trace(covariance).real) / covariance.shape[0], 0.0))
        if not math.isfinite(sigma):
            raise ReadError(self.path, "the noise acquisitions overflow")
        extra["noise_covariance"] = encode_covariance(covariance)
        extra["noise_samples"] = int(samples.shape[1])
        extra["noise_dwell_time_us"] = sorted(set(self.noise_dwell_us))
        return sigma


def _crop_readout(kspace: np.ndarray, size: int) -> np.ndarray:
    """Keep the central ``size`` rows of the image along the readout axis (-2), in k-space.

    ``k -> fftc(crop(ifftc(k)))`` with centred orthonormal 1-D FFTs, so image intensities and
    the per-sample noise level are kept.
    """
    axis = -2
    image = np.fft.fftshift(
        np.fft.ifft(np.fft.ifftshift(kspace, axes=axis), axis=axis, norm="ortho"), axes=axis
    )
    start = kspace.shape[axis] // 2 - size // 2
    image = image[..., start : start + size, :]
    cropped = np.fft.fftshift(
        np.fft.fft(np.fft.ifftshift(image, axes=axis), axis=axis, norm="ortho"), axes=axis
    )
    return cropped.astype(np.complex64)
