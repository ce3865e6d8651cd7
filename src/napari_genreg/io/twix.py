"""Reader for Siemens TWIX raw data (``.dat``, VB and VD/VE) through ``twixtools``.

The file is parsed by `twixtools <https://github.com/pehses/twixtools>`_ (``pip install
'napari-genreg[twix]'``); this module checks the file's block structure first, picks the
imaging lines and assembles Cartesian 2-D k-space.

What is read
------------
* **The last measurement.** A VD/VE "multi-raid" file holds several measurements (adjustment
  scans such as AdjCoilSens first, the imaging scan last); only the last one is read, and
  ``meta.extra["measurement"]`` / ``["n_measurements"]`` say which of how many. VB files hold
  one measurement.
* **Imaging lines** only (``Mdb.is_image_scan``: no noise, phase-correction, navigator,
  feedback or separate GRAPPA reference lines; integrated reference lines
  ``PATREFANDIMASCAN`` count as imaging lines).
* **The first contrast**: lines whose repetition, echo, cardiac phase and set counters
  (``Rep``, ``Eco``, ``Phs``, ``Set``) are not the smallest present are dropped
  (``meta.extra["dropped"]`` counts them). Lines that land on the same k-space position
  (averages ``Ave``, segments ``Seg``, ``Ida``..``Ide``) are **averaged**.
* **Readout oversampling removed.** Siemens samples the readout twice as densely as the
  image needs; the band is cut to its central half (image-domain crop, as
  ``twixtools.recon_helpers.remove_oversampling``), which halves the readout length and keeps
  the amplitude of every k-space sample (the per-sample noise variance halves).
* **3-D data** (several partitions ``Par``): the partition axis must be fully sampled; it is
  inverse Fourier transformed (centred, orthonormal) and every partition becomes one slice,
  ordered slice-major (``index = slice * n_partitions + partition``). Undersampled or
  partial-Fourier partitions are refused.
* **Refused**: non-Cartesian trajectories (radial, spiral, PROPELLER), and echo-planar or
  ramp-sampled readouts (``REFLECT`` lines or ramp regridding), which need ghost correction
  and regridding this reader does not do.

Conventions
-----------
``kspace`` is complex64 of shape ``(slices, coils, readout, phase)``: **the phase-encoding
direction (``Lin``) is the last axis** and the readout the second-to-last, because the 1-D
masks of :mod:`napari_genreg.physics` sample lines on the last axis (fastMRI's convention).
Each axis is centred on the k-space centre recorded in the line headers (``CenterLin``,
``CenterCol``, ``CenterPar``): that sample sits at index ``n // 2``, the convention of
:func:`napari_genreg.physics.fft.ifft2c`, so ``ifft2c(kspace)`` is the coil images with the
object in the middle of the field of view. Values are the raw ADC values (arbitrary units).

Lines that were not acquired (parallel imaging, partial Fourier, a partial echo on the
readout) stay zero and define ``mask`` (bool ``(readout, phase)``, the union over slices) with
``meta.undersampled=True``; a fully sampled file has ``mask=None``.

Noise
-----
When the measurement holds noise-adjust lines (``NOISEADJSCAN``), their readout oversampling
is removed the same way and ``meta.noise_sigma = sqrt(mean |n|^2)`` over samples and coils
(``E|n|^2 = sigma^2`` per complex sample, in the units of ``kspace``; this assumes the noise
scan shares the imaging readout's dwell time). The coil noise covariance
``Psi = n n^H / N`` goes to ``meta.extra["noise_covariance"]`` as nested lists
``[[[re, im], ...], ...]`` (coil by coil). Without a noise scan ``noise_sigma`` is ``None``.

Untrusted input
---------------
``twixtools`` trusts the file: a zero block length loops forever, a lying measurement length
reads past the end of the file without stopping, and corrupt line counters can ask for huge
arrays. Before ``twixtools`` sees the file, :func:`_scan_structure` walks the raid header and
every block header of the last measurement with the same rules, and refuses a file whose
blocks do not lie inside it, do not advance, or do not end with an ``ACQEND`` block. The
assembled k-space may hold at most :data:`MAX_ZERO_FILL` times as many samples as were read.
Anything ``twixtools`` raises becomes a :class:`~napari_genreg.io.errors.ReadError` naming the
file; what it prints is captured into ``meta.extra["twixtools_messages"]``.

Importing this module loads NumPy only; ``twixtools`` (which imports SciPy and Matplotlib) is
imported by :func:`read_twix`.

Examples
--------
>>> from napari_genreg.io.twix import read_twix
>>> data = read_twix("meas_MID00042_FID12345_gre.dat")  # doctest: +SKIP
>>> data.kspace.shape  # (slices, coils, readout, phase)  # doctest: +SKIP
(1, 2, 160, 160)
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._common import checked_path, json_safe, parse_boundary, record
from .errors import ReadError
from .records import KSpaceData, Metadata, encode_covariance

#: The assembled k-space may hold at most this many times as many samples as were read
#: (zero filling of undersampled lines and partial echoes); more means corrupt counters.
MAX_ZERO_FILL = 64
#: Readout oversampling factor of Siemens raw data.
READOUT_OVERSAMPLING = 2

INSTALL_HINT = "install the twix extra: pip install 'napari-genreg[twix]'"

# Format facts (Siemens IDEA), checked against twixtools' definitions in the tests.
_RAID_HEADER_BYTES = 9736  # MrParcRaidFileHeader (8) + 64 x MrParcRaidFileEntry (152)
_RAID_ENTRY_BYTES = 152
_MAX_RAID_ENTRIES = 64
_VE_SCAN_HEADER_BYTES = 192  # one scan header per line ...
_VE_CHANNEL_HEADER_BYTES = 32  # ... and one channel header per coil
_VB_HEADER_BYTES = 128  # VB: one full header in front of every coil's samples
_VE_EVAL_INFO_OFFSET = 40
_VB_EVAL_INFO_OFFSET = 20
_FLAG_ACQEND = 1 << 0
_FLAG_SYNCDATA = 1 << 5
_DMA_LENGTH_MODULUS = 2**25

# sKSpace.ucTrajectory: 1 Cartesian, 2 radial, 4 spiral, 8 PROPELLER.
_CARTESIAN = 1
_TRAJECTORIES = {2: "radial", 4: "spiral", 8: "PROPELLER"}
_CONTRAST_COUNTERS = ("Rep", "Eco", "Phs", "Set")
_CHUNK = 256  # lines per oversampling-removal batch


@dataclass(frozen=True)
class _Structure:
    """What :func:`_scan_structure` learned about the file."""

    version: str  # "VB" or "VD/VE"
    n_measurements: int


def read_twix(
    path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
) -> KSpaceData:
    """Read the imaging k-space of a Siemens TWIX ``.dat`` file.

    See the module documentation for what is read (last measurement, first contrast,
    averages averaged, readout oversampling removed, 3-D partitions as slices) and for the
    conventions: ``kspace`` has shape ``(slices, coils, readout, phase)``, with the
    phase-encoding direction last and DC at ``n // 2`` on every axis.

    Parameters
    ----------
    path
        The ``.dat`` file (its name must have an extension: ``twixtools`` appends ``.dat``
        to names without one).
    noise_sigma, seed
        Checked for the common reader signature; they do not apply to measured k-space
        (no noise is added).

    Returns
    -------
    KSpaceData
        complex64 k-space ``(slices, coils, readout, phase)``, no reference, the acquisition
        mask ``(readout, phase)`` when lines are missing (else ``None``), and metadata with
        the noise level of the noise-adjust scan (``None`` without one) and header facts in
        ``meta.extra``.

    Raises
    ------
    ReadError
        When ``twixtools`` is not installed, the file is missing, not a TWIX file, truncated
        or corrupt, holds no imaging lines, or holds data this reader does not support
        (non-Cartesian, echo-planar, undersampled 3-D partitions).
    ValueError
        On a bad ``noise_sigma`` or ``seed``.
    """
    path = checked_path(path, noise_sigma, seed)
    if not os.path.splitext(os.fspath(path))[1]:
        raise ReadError(path, "the file name needs an extension (e.g. '.dat') for twixtools")
    try:
        import twixtools
    except ImportError as exc:
        raise ReadError(
            path, f"reading Siemens TWIX files needs twixtools; {INSTALL_HINT}"
        ) from exc

    with parse_boundary(path, "not a valid Siemens TWIX file"):
        structure = _scan_structure(path)
        messages = io.StringIO()
        # twixtools prints its warnings; keep them in meta.extra instead (note: the
        # redirection is process-wide for the fraction of a second the parse takes).
        with contextlib.redirect_stdout(messages):
            scans = twixtools.read_twix(
                os.fspath(path),
                include_scans=[-1],
                parse_pmu=False,
                parse_geometry=False,
                verbose=False,
            )
        if len(scans) != 1 or not isinstance(scans[-1], dict):
            raise ReadError(path, "twixtools found no measurement")
        scan = scans[-1]
        header = scan.get("hdr")
        header = header if isinstance(header, dict) else {}
        mdbs = scan.get("mdb") or []
        kspace, mask, facts = _assemble(path, mdbs, header)
        sigma, covariance, noise_facts = _noise(path, mdbs)

        extra: dict[str, Any] = {
            "format": "twix",
            "version": structure.version,
            "measurement": structure.n_measurements - 1,
            "n_measurements": structure.n_measurements,
            "axes": ["slice", "coil", "readout", "phase"],
            **_header_facts(header),
            **facts,
        }
        if noise_facts:
            extra["noise_scan"] = noise_facts
            extra["noise_covariance"] = covariance
        printed = [line for line in messages.getvalue().splitlines() if line.strip()]
        if printed:
            extra["twixtools_messages"] = printed[:20]
        meta = Metadata(
            source=str(path),
            matrix_size=(kspace.shape[-2], kspace.shape[-1]),
            noise_sigma=sigma,
            simulated=False,
            undersampled=mask is not None,
            extra=json_safe(extra),
        )
        return record(path, kspace=kspace, reference=None, mask=mask, meta=meta)


# --------------------------------------------------------------------------------------------
# Structure check (before twixtools sees the file)


def _scan_structure(path: Path) -> _Structure:
    """Walk the raid header and the block headers of the last measurement.

    Mirrors ``twixtools.read_twix``: the version test (first two uint32 < 10000 and <= 64
    means VD/VE), the measurement offset and length from the raid header, the header length
    at the start of the measurement, and the length of each block (from the flags field for
    ``ACQEND``/``SYNCDATA`` blocks, from the channel and sample counts otherwise). Every
    block up to the ``ACQEND`` block is checked, so the loop of ``twixtools`` (which stops at
    ``ACQEND`` or 128 bytes before the end) only visits checked blocks.

    Raises
    ------
    ReadError
        When a header or block lies (partly) outside the file or the measurement, a block
        would not advance the reader, or no ``ACQEND`` block ends the measurement.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ReadError(path, f"too short for a TWIX file ({size} bytes)")
        first, second = struct.unpack("<II", head)
        is_ve = first < 10000 and second <= _MAX_RAID_ENTRIES
        if is_ve:
            if size < _RAID_HEADER_BYTES:
                raise ReadError(
                    path,
                    f"truncated VD/VE raid header: it needs {_RAID_HEADER_BYTES} bytes, "
                    f"the file has {size}",
                )
            n_measurements = second
            if n_measurements < 1:
                raise ReadError(path, "the raid header lists no measurement")
            f.seek(8 + (n_measurements - 1) * _RAID_ENTRY_BYTES + 8)
            offset, length = struct.unpack("<QQ", f.read(16))
            if length == 0 and n_measurements == 1:  # twixtools: length from the file size
                length = max(size - offset, 0)
            start, end = offset, offset + length
            if start < _RAID_HEADER_BYTES or length == 0:
                raise ReadError(
                    path,
                    f"measurement {n_measurements - 1} has an impossible offset {offset} "
                    f"or length {length}",
                )
            if end > size:
                raise ReadError(
                    path,
                    f"truncated: measurement {n_measurements - 1} ends at byte {end}, "
                    f"the file has {size}",
                )
            header_bytes, eval_offset = _VE_SCAN_HEADER_BYTES, _VE_EVAL_INFO_OFFSET
        else:
            n_measurements, start, end = 1, 0, size
            header_bytes, eval_offset = _VB_HEADER_BYTES, _VB_EVAL_INFO_OFFSET

        f.seek(start)
        init = f.read(4)
        if len(init) < 4:
            raise ReadError(path, f"truncated measurement header at byte {start}")
        (protocol_bytes,) = struct.unpack("<I", init)
        if protocol_bytes < 8 or start + protocol_bytes > end:
            raise ReadError(
                path,
                f"truncated or corrupt: the protocol header claims {protocol_bytes} bytes, "
                f"the measurement has {end - start}",
            )
        pos = start + protocol_bytes
        while pos + header_bytes <= end:
            f.seek(pos)
            mdh = f.read(header_bytes)
            (flags_and_length,) = struct.unpack_from("<I", mdh, 0)
            (eval_info,) = struct.unpack_from("<Q", mdh, eval_offset)
            if eval_info & _FLAG_ACQEND:
                return _Structure("VD/VE" if is_ve else "VB", n_measurements)
            if eval_info & _FLAG_SYNCDATA:
                block = flags_and_length % _DMA_LENGTH_MODULUS
            else:
                samples, channels = struct.unpack_from("<HH", mdh, eval_offset + 8)
                if is_ve:
                    block = header_bytes + channels * (8 * samples + _VE_CHANNEL_HEADER_BYTES)
                else:
                    block = channels * (8 * samples + _VB_HEADER_BYTES)
            if block < header_bytes:
                raise ReadError(path, f"corrupt block header at byte {pos}: length {block}")
            if pos + block > end:
                raise ReadError(
                    path,
                    f"truncated: the block at byte {pos} needs {block} bytes, {end - pos} are left",
                )
            pos += block
    raise ReadError(path, "truncated: no end-of-acquisition (ACQEND) block")


# --------------------------------------------------------------------------------------------
# K-space assembly


def _assemble(
    path: Path, mdbs: list[Any], header: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Imaging lines -> k-space ``(slices, coils, readout, phase)``, mask, facts."""
    _check_supported(path, mdbs, header)
    lines = [m for m in mdbs if not _is_special(m) and m.is_image_scan()]
    if not lines:
        raise ReadError(path, "the last measurement holds no imaging lines")

    shapes = {(int(m.mdh.UsedChannels), int(m.mdh.SamplesInScan)) for m in lines}
    if len(shapes) != 1:
        raise ReadError(path, f"imaging lines differ in (coils, samples): {sorted(shapes)}")
    ((coils, samples),) = shapes
    if coils < 1 or samples < READOUT_OVERSAMPLING:
        raise ReadError(path, f"imaging lines with {coils} coils and {samples} samples")

    counters = {
        name: np.array([getattr(m.mdh.Counter, name) for m in lines], dtype=np.int64)
        for name in ("Lin", "Sli", "Par", *_CONTRAST_COUNTERS)
    }
    keep = np.ones(len(lines), dtype=bool)
    dropped: dict[str, int] = {}
    for name in _CONTRAST_COUNTERS:
        values = counters[name]
        if values.min() != values.max():
            dropped[name] = int(np.count_nonzero(values != values.min()))
            keep &= values == values.min()
    index = np.flatnonzero(keep)
    lin, sli, par = (counters[n][index] for n in ("Lin", "Sli", "Par"))
    averages = len({int(lines[i].mdh.Counter.Ave) for i in index})

    centre_col = _mode([int(lines[i].mdh.CenterCol) for i in index])
    centre_lin = _mode([int(lines[i].mdh.CenterLin) for i in index])
    centre_par = _mode([int(lines[i].mdh.CenterPar) for i in index])
    if not 0 <= centre_col < samples:
        raise ReadError(path, f"k-space centre column {centre_col} outside {samples} samples")

    # Phase encoding: centre line at n_phase // 2; the header's line count as a floor.
    n_phase = 2 * max(centre_lin - int(lin.min()), int(lin.max()) + 1 - centre_lin, 1)
    hint = _integer(_lookup(header, "MeasYaps", "sKSpace", "lPhaseEncodingLines"))
    if hint is not None and n_phase < hint <= MAX_ZERO_FILL * n_phase:
        n_phase = hint
    ky = lin - centre_lin + n_phase // 2

    # Partitions (3-D): centre partition at n_par // 2.
    three_d = par.min() != par.max()
    if three_d:
        n_par = 2 * max(centre_par - int(par.min()), int(par.max()) + 1 - centre_par, 1)
        kz = par - centre_par + n_par // 2
    else:
        n_par, kz = 1, np.zeros_like(par)
    slice_counters, ks = np.unique(sli, return_inverse=True)
    n_slices = len(slice_counters)

    # Readout: centre column at n_read_os // 2 (a partial echo is zero-filled).
    n_read_os = 2 * max(centre_col, samples - centre_col)
    first_col = n_read_os // 2 - centre_col
    n_read = n_read_os // READOUT_OVERSAMPLING

    cells = n_slices * n_par * n_phase * n_read_os
    if cells > MAX_ZERO_FILL * len(index) * samples:
        raise ReadError(
            path,
            f"implausible line counters: a k-space of {n_slices} slices x {n_par} partitions "
            f"x {n_phase} lines x {n_read_os} samples from {len(index)} lines of {samples}",
        )

    # Accumulate (slices, partitions, lines, coils, readout); averages are averaged.
    total = np.zeros((n_slices, n_par, n_phase, coils, n_read), dtype=np.complex64)
    count = np.zeros((n_slices, n_par, n_phase), dtype=np.int64)
    for begin in range(0, len(index), _CHUNK):
        chunk = slice(begin, begin + _CHUNK)
        raw = np.zeros((len(index[chunk]), coils, n_read_os), dtype=np.complex128)
        for j, i in enumerate(index[chunk]):
            data = np.asarray(lines[i].data)
            if data.shape != (coils, samples):
                raise ReadError(path, f"imaging line {i} holds data of shape {data.shape}")
            raw[j, :, first_col : first_col + samples] = data
        where = (ks[chunk], kz[chunk], ky[chunk])
        np.add.at(total, where, remove_readout_oversampling(raw).astype(np.complex64))
        np.add.at(count, where, 1)
    acquired = count > 0
    total /= np.maximum(count, 1)[..., None, None]
    total = np.moveaxis(total, 2, -1)  # -> (slices, partitions, coils, readout, phase)

    # Readout samples inside the acquired window (after decimation by 2).
    source_col = n_read_os // 2 + READOUT_OVERSAMPLING * (np.arange(n_read) - n_read // 2)
    read_mask = (source_col >= first_col) & (source_col < first_col + samples)
    total[:, :, :, ~read_mask, :] = 0

    if three_d:
        if not np.all(acquired == acquired.any(axis=1, keepdims=True)):
            raise ReadError(
                path,
                "3-D data whose partitions are undersampled or partial-Fourier is not "
                f"supported (every line must be acquired in all {n_par} partitions)",
            )
        total = np.fft.fftshift(
            np.fft.ifft(np.fft.ifftshift(total, axes=1), axis=1, norm="ortho"), axes=1
        )
    kspace = total.reshape(n_slices * n_par, coils, n_read, n_phase)
    with np.errstate(over="ignore", invalid="ignore"):
        kspace = kspace.astype(np.complex64)
    if not np.any(kspace):
        raise ReadError(path, "the k-space is all zero")

    lines_acquired = acquired.any(axis=(0, 1))
    mask = None
    if not (lines_acquired.all() and read_mask.all()):
        mask = np.ascontiguousarray(read_mask[:, None] & lines_acquired[None, :])

    facts: dict[str, Any] = {
        "readout_oversampling_removed": READOUT_OVERSAMPLING,
        "kspace_centre": {"line": centre_lin, "column": centre_col, "partition": centre_par},
        "lines_acquired": int(lines_acquired.sum()),
        "averages": averages,
        "slice_counters": slice_counters.tolist(),
        "three_d": bool(three_d),
    }
    if three_d:
        facts["partitions"] = n_par
        facts["slice_order"] = "slice-major: index = slice * partitions + partition"
    if dropped:
        facts["dropped"] = {
            "lines": dropped,
            "note": "only the first repetition/echo/phase/set is read",
        }
    return kspace, mask, facts


def remove_readout_oversampling(lines: np.ndarray) -> np.ndarray:
    """Remove twofold readout oversampling: keep the central half of the readout band.

    ``k[..., n] -> F_{n/2} crop F_n^{-1} k``: inverse FFT along the last axis, keep image
    samples ``n//4 .. 3n//4``, FFT back (all centred, DC at ``n // 2``). The amplitude of every
    k-space sample is kept (as ``twixtools.recon_helpers.remove_oversampling``), so white noise
    of variance ``sigma^2`` per sample leaves with ``sigma^2 / 2``.

    Parameters
    ----------
    lines
        complex, shape ``(..., n)``, readout on the last axis.

    Returns
    -------
    complex128, shape ``(..., n // 2)`` (``3n//4 - n//4`` samples).
    """
    n = lines.shape[-1]
    image = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(lines, axes=-1), axis=-1), axes=-1)
    image = image[..., n // 4 : 3 * n // 4]
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(image, axes=-1), axis=-1), axes=-1)


def _check_supported(path: Path, mdbs: list[Any], header: dict[str, Any]) -> None:
    """Refuse non-Cartesian and echo-planar / ramp-sampled data."""
    trajectory = _integer(_lookup(header, "MeasYaps", "sKSpace", "ucTrajectory"))
    if trajectory is not None and trajectory != _CARTESIAN:
        name = _TRAJECTORIES.get(trajectory, f"code {trajectory}")
        raise ReadError(path, f"non-Cartesian ({name}) trajectories are not supported")
    regrid = _lookup(header, "Meas", "alRegridMode")
    regrid = _integer(regrid[0] if isinstance(regrid, list) and regrid else regrid)
    reflected = any(
        not _is_special(m) and m.is_image_scan() and m.is_flag_set("REFLECT") for m in mdbs
    )
    if reflected or (regrid is not None and regrid >= 2):
        what = "reflected (echo-planar) lines" if reflected else "ramp-sampled readouts"
        raise ReadError(
            path,
            f"{what} need EPI ghost correction and regridding, which this reader does not do",
        )


def _is_special(mdb: Any) -> bool:
    return bool(mdb.is_flag_set("ACQEND") or mdb.is_flag_set("SYNCDATA"))


def _mode(values: list[int]) -> int:
    """The most common value (the smallest among ties)."""
    uniques, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    return int(uniques[np.argmax(counts)])


# --------------------------------------------------------------------------------------------
# Noise


def _noise(
    path: Path, mdbs: list[Any]
) -> tuple[float | None, list[list[list[float]]] | None, dict[str, Any]]:
    """``(sigma, covariance as [[[re, im], ...], ...], facts)`` of the noise-adjust lines."""
    lines = [m for m in mdbs if not _is_special(m) and m.is_flag_set("NOISEADJSCAN")]
    if not lines:
        return None, None, {}
    shapes = {(int(m.mdh.UsedChannels), int(m.mdh.SamplesInScan)) for m in lines}
    coils = {c for c, _ in shapes}
    if len(coils) != 1 or min(s for _, s in shapes) < READOUT_OVERSAMPLING:
        raise ReadError(path, f"noise lines differ in coils or are too short: {sorted(shapes)}")
    (n_coils,) = coils
    samples = []
    for m in lines:
        data = np.asarray(m.data)
        if data.shape[0] != n_coils:
            raise ReadError(path, f"a noise line holds data of shape {data.shape}")
        samples.append(remove_readout_oversampling(data.astype(np.complex128)))
    noise = np.concatenate(samples, axis=-1)
    if not np.all(np.isfinite(noise)):
        raise ReadError(path, "the noise scan contains NaN or infinite values")
    covariance = noise @ noise.conj().T / noise.shape[-1]
    sigma = math.sqrt(float(np.mean(np.abs(noise) ** 2)))
    facts = {
        "lines": len(lines),
        "samples_per_coil": int(noise.shape[-1]),
        "coils": n_coils,
        "oversampling_removed": READOUT_OVERSAMPLING,
    }
    as_lists = encode_covariance(covariance)
    return (sigma if math.isfinite(sigma) and sigma > 0 else None), as_lists, facts


# --------------------------------------------------------------------------------------------
# Header facts


def _header_facts(header: dict[str, Any]) -> dict[str, Any]:
    """Protocol facts for ``meta.extra`` (no patient or site information); missing -> absent."""
    yaps = ("MeasYaps",)
    tr = _first(_lookup(header, *yaps, "alTR"))
    te = _first(_lookup(header, *yaps, "alTE"))
    facts = {
        "protocol": _text(_lookup(header, *yaps, "tProtocolName")),
        "sequence": _text(_lookup(header, *yaps, "tSequenceFileName")),
        "scanner": _text(_lookup(header, "Dicom", "ManufacturersModelName")),
        "software": _text(_lookup(header, "Dicom", "SoftwareVersions")),
        "field_strength_t": _number(_lookup(header, "Dicom", "flMagneticFieldStrength")),
        "tr_ms": None if tr is None else tr / 1000.0,
        "te_ms": None if te is None else te / 1000.0,
        "flip_angle_deg": _first(_lookup(header, *yaps, "adFlipAngleDegree")),
        "readout_dwell_time_ns": _first(_lookup(header, *yaps, "sRXSPEC", "alDwellTime")),
        "base_resolution": _integer(_lookup(header, *yaps, "sKSpace", "lBaseResolution")),
        "phase_encoding_lines": _integer(_lookup(header, *yaps, "sKSpace", "lPhaseEncodingLines")),
        "fov_mm": _fov(_lookup(header, *yaps, "sSliceArray", "asSlice", 0)),
        "slice_thickness_mm": _number(
            _lookup(header, *yaps, "sSliceArray", "asSlice", 0, "dThickness")
        ),
        "n_slices_protocol": _integer(_lookup(header, *yaps, "sSliceArray", "lSize")),
    }
    return {key: value for key, value in facts.items() if value is not None}


def _lookup(tree: Any, *keys: str | int) -> Any:
    """``tree[k0][k1]...``, or ``None`` when a key is missing or a level has the wrong type."""
    for key in keys:
        if isinstance(tree, dict) and isinstance(key, str):
            tree = tree.get(key)
        elif isinstance(tree, list) and isinstance(key, int) and -len(tree) <= key < len(tree):
            tree = tree[key]
        else:
            return None
    return tree


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def _first(value: Any) -> float | None:
    return _number(value[0] if isinstance(value, list) and value else value)


def _text(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) and value else None


def _fov(slice_header: Any) -> list[float] | None:
    readout = _number(_lookup(slice_header, "dReadoutFOV"))
    phase = _number(_lookup(slice_header, "dPhaseFOV"))
    return None if readout is None or phase is None else [readout, phase]
