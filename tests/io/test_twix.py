"""Siemens TWIX reader: the real twixtools example (a 2-coil phantom), variants of it written
with twixtools (undersampled, noise scan, averages, slices, 3-D, EPI, partial echo, VB layout),
and fuzzing (random bytes, truncation, flipped header bytes): a record or a ReadError, never
another exception and never a hang."""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_genreg.io import KSpaceData, ReadError
from napari_genreg.io import twix as twix_module
from napari_genreg.io.twix import read_twix, remove_readout_oversampling

twixtools = pytest.importorskip("twixtools")

DATA = Path(__file__).parents[1] / "data" / "twix" / "gre.dat"
#: End of the measurement inside gre.dat (raid header offset + length); padding follows.
GRE_SCAN_END = 10240 + 1646624
#: Where the block headers (MDHs) of gre.dat start: measurement offset + protocol length.
GRE_FIRST_BLOCK = 10240 + 786112
GRE_BLOCK = 192 + 2 * (32 + 8 * 320)  # one line: scan header, 2 x (channel header + samples)

FUZZ = settings(
    max_examples=int(os.environ.get("GENREG_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
needs_data = pytest.mark.skipif(
    not DATA.exists(), reason=f"example data {DATA} missing (see tests/data/twix/PROVENANCE.md)"
)


# ------------------------------------------------------------------------------------ helpers


@contextmanager
def _deadline(seconds: int = 30) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging; a no-op where SIGALRM does not exist."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def _timeout(signum: int, frame: object) -> None:
        raise TimeoutError(f"the reader ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def _file(name: str, data: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        yield path


def _outcome(path: Path) -> KSpaceData | ReadError:
    """The record, or the ReadError (checked to name the file); anything else propagates."""
    try:
        with _deadline(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = read_twix(path)
    except ReadError as exc:
        assert str(exc).startswith(f"{path}: "), str(exc)
        return exc
    assert isinstance(result, KSpaceData)
    return result


@cache
def _gre_bytes() -> bytes:
    if not DATA.exists():
        pytest.skip(f"example data {DATA} missing")
    return DATA.read_bytes()


@cache
def _gre() -> KSpaceData:
    return read_twix(DATA)


def _rss(kspace: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares images ``(slices, readout, phase)`` (our ifft2c)."""
    import torch

    from napari_genreg.physics.fft import ifft2c

    images = ifft2c(torch.from_numpy(kspace)).numpy()
    return np.sqrt((np.abs(images) ** 2).sum(axis=1))


def _write_variant(folder: Path, edit: Callable[[list], list], name: str = "variant.dat") -> Path:
    """gre.dat with its line list (ACQEND excluded) replaced by ``edit(lines)``."""
    _gre_bytes()  # skips when the example is missing
    (scan,) = twixtools.read_twix(str(DATA), keep_acqend=True, verbose=False)
    *lines, acqend = scan["mdb"]
    assert acqend.is_flag_set("ACQEND")
    scan["mdb"] = [*edit(lines), acqend]
    path = folder / name
    twixtools.write_twix([scan], str(path))
    return path


def _copy(mdb, data: np.ndarray | None = None, **counters: int):
    """A local copy of a line with new counters (``Lin=...``), flags and/or data."""
    new = mdb.convert_to_local()
    for key, value in counters.items():
        if key in ("CenterCol", "CenterLin", "CenterPar"):
            setattr(new.mdh, key, value)
        else:
            setattr(new.mdh.Counter, key, value)
    if data is not None:
        new.data = data
    return new


# ------------------------------------------------------------------------- format constants


def test_block_layout_matches_twixtools() -> None:
    from twixtools import hdr_def, mdh_def

    ve, vb = mdh_def.Scan_header, mdh_def.VB17_header
    assert ctypes.sizeof(ve) == twix_module._VE_SCAN_HEADER_BYTES
    assert ctypes.sizeof(vb) == twix_module._VB_HEADER_BYTES
    assert ctypes.sizeof(mdh_def.Channel_header) == twix_module._VE_CHANNEL_HEADER_BYTES
    assert ve.EvalInfoMask.offset == twix_module._VE_EVAL_INFO_OFFSET
    assert vb.EvalInfoMask.offset == twix_module._VB_EVAL_INFO_OFFSET
    for header in (ve, vb):  # samples and channels follow the flags
        assert header.SamplesInScan.offset == header.EvalInfoMask.offset + 8
        assert header.UsedChannels.offset == header.EvalInfoMask.offset + 10
    assert hdr_def.MultiRaidFileHeader.itemsize == twix_module._RAID_HEADER_BYTES
    assert hdr_def.MrParcRaidFileEntry.itemsize == twix_module._RAID_ENTRY_BYTES
    assert 1 << mdh_def.mask_dict["ACQEND"] == twix_module._FLAG_ACQEND
    assert 1 << mdh_def.mask_dict["SYNCDATA"] == twix_module._FLAG_SYNCDATA


@pytest.mark.parametrize("n", [8, 9, 320, 321])
def test_oversampling_removal_matches_twixtools(n: int) -> None:
    from twixtools.recon_helpers import remove_oversampling

    rng = np.random.default_rng(n)
    lines = rng.standard_normal((3, 2, n)) + 1j * rng.standard_normal((3, 2, n))
    expected, _ = remove_oversampling(lines)
    np.testing.assert_allclose(remove_readout_oversampling(lines), expected, atol=1e-12)


def test_oversampling_removal_halves_white_noise_power() -> None:
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal((400, 256)) + 1j * rng.standard_normal((400, 256))) / np.sqrt(2)
    reduced = remove_readout_oversampling(noise)
    assert reduced.shape == (400, 128)
    assert np.mean(np.abs(reduced) ** 2) == pytest.approx(0.5, rel=0.03)


# ------------------------------------------------------------------------- the real example


@needs_data
def test_reads_the_phantom() -> None:
    data = _gre()
    assert data.kspace.shape == (1, 2, 160, 160)  # (slices, coils, readout, phase)
    assert data.kspace.dtype == np.complex64
    assert data.n_coils == 2
    assert data.mask is None and not data.meta.undersampled  # fully sampled
    assert data.reference is None and not data.meta.simulated
    assert data.meta.matrix_size == (160, 160)
    assert data.meta.noise_sigma is None  # gre.dat has no noise-adjust scan
    assert np.all(np.isfinite(data.kspace))
    extra = data.meta.extra
    assert extra["format"] == "twix" and extra["version"] == "VD/VE"
    assert extra["readout_oversampling_removed"] == 2
    assert extra["protocol"] == "gre"
    assert extra["field_strength_t"] == pytest.approx(2.89, abs=0.01)
    assert extra["tr_ms"] == 10.0 and extra["te_ms"] == 3.0
    assert extra["fov_mm"] == [200.0, 200.0]
    assert extra["axes"] == ["slice", "coil", "readout", "phase"]
    import json

    json.dumps(extra, allow_nan=False)


@needs_data
def test_kspace_is_centred_and_the_phantom_is_in_the_middle() -> None:
    kspace = _gre().kspace
    peak = np.unravel_index(np.abs(kspace[0, 0]).argmax(), kspace.shape[-2:])
    assert peak == (80, 80)  # DC at n // 2 on both axes
    rss = _rss(kspace)[0]
    assert np.all(np.isfinite(rss)) and rss.max() > 8 * np.median(rss[:8, :8])
    rows, cols = np.indices(rss.shape)
    weights = rss / rss.sum()
    centre = np.array([(weights * rows).sum(), (weights * cols).sum()])
    assert np.all(np.abs(centre - 80) < 8), centre  # not split at the FOV edges
    # The object covers the middle: the central pixel is bright, the corners dark.
    assert rss[80, 80] > 5 * rss[:10, :10].mean()


@needs_data
def test_phase_encoding_is_the_last_axis() -> None:
    """Column j of the k-space is line Lin = j (centre line 80 at index 80)."""
    (scan,) = twixtools.read_twix(str(DATA), verbose=False, parse_geometry=False)
    lines = [m for m in scan["mdb"] if m.is_image_scan()]
    line = next(m for m in lines if m.cLin == 37)
    expected = remove_readout_oversampling(np.asarray(line.data))
    np.testing.assert_allclose(_gre().kspace[0, :, :, 37], expected, rtol=1e-5, atol=1e-9)


def test_import_is_numpy_only() -> None:
    """Importing the reader loads no twixtools (nor its SciPy/Matplotlib) and no torch."""
    code = (
        "import sys, napari_genreg.io; before = set(sys.modules); "
        "import napari_genreg.io.twix; "
        "new = {m for m in set(sys.modules) - before if not m.startswith('napari_genreg')}; "
        "assert not new, sorted(new); "
        "assert not {'twixtools', 'scipy', 'matplotlib', 'torch'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_twixtools_is_a_read_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "twixtools", None)
    with _file("a.dat", b"\0" * 64) as path, pytest.raises(ReadError) as info:
        read_twix(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "pip install 'napari-genreg[twix]'" in str(info.value)


def test_missing_file_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="no such file"):
        read_twix(tmp_path / "absent.dat")
    with _file("a.dat", b"") as path:
        with pytest.raises(ValueError, match="noise_sigma"):
            read_twix(path, noise_sigma=-1.0)
        with pytest.raises(ReadError, match="too short"):
            read_twix(path)


# ------------------------------------------------------------------ variants written by twixtools


@needs_data
def test_undersampled_lines_define_the_mask(tmp_path: Path) -> None:
    def edit(lines: list) -> list:
        return [m for m in lines if m.cLin % 3 == 0 or abs(m.cLin - 80) < 8]

    data = read_twix(_write_variant(tmp_path, edit))
    full = _gre()
    assert data.kspace.shape == full.kspace.shape
    assert data.meta.undersampled and data.mask is not None
    assert data.mask.shape == (160, 160) and data.mask.dtype == np.bool_
    acquired = np.array([j % 3 == 0 or abs(j - 80) < 8 for j in range(160)])
    np.testing.assert_array_equal(data.mask, np.broadcast_to(acquired, (160, 160)))
    nonzero = np.abs(data.kspace).max(axis=(0, 1)) > 0
    np.testing.assert_array_equal(nonzero, data.mask)  # the mask matches the data's zeros
    np.testing.assert_allclose(data.kspace[..., acquired], full.kspace[..., acquired])


@needs_data
def test_noise_scan_gives_sigma_and_covariance(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    # Raw noise with the level of the phantom's k-space corners and a known coil covariance.
    chol = 2e-6 * np.array([[1.0, 0.0], [0.3 + 0.2j, 0.9]])
    raw_cov = chol @ chol.conj().T

    def edit(lines: list) -> list:
        noise = []
        for _ in range(16):
            white = (rng.standard_normal((2, 320)) + 1j * rng.standard_normal((2, 320))) / np.sqrt(
                2
            )
            line = _copy(lines[0], data=(chol @ white).astype(np.complex64))
            line.remove_flag("ONLINE")
            line.add_flag("NOISEADJSCAN")
            noise.append(line)
        return noise + lines

    data = read_twix(_write_variant(tmp_path, edit))
    assert data.kspace.shape == (1, 2, 160, 160)
    np.testing.assert_allclose(data.kspace, _gre().kspace)  # noise lines are not image lines
    expected = np.sqrt(np.trace(raw_cov).real / 2 / 2)  # per coil, oversampling removed
    assert data.meta.noise_sigma == pytest.approx(expected, rel=0.06)
    covariance = np.array(data.meta.extra["noise_covariance"])
    assert covariance.shape == (2, 2, 2)
    covariance = covariance[..., 0] + 1j * covariance[..., 1]
    np.testing.assert_allclose(covariance, covariance.conj().T)
    np.testing.assert_allclose(covariance, raw_cov / 2, atol=0.15 * np.abs(raw_cov).max())
    assert data.meta.noise_sigma == pytest.approx(np.sqrt(np.trace(covariance).real / 2))
    assert data.meta.extra["noise_scan"]["lines"] == 16
    # Plausible against the thermal noise in the corners of the measured k-space.
    k = data.kspace[0]
    corners = np.concatenate([k[:, :24], k[:, -24:]], axis=1)
    corners = np.concatenate([corners[..., :16], corners[..., -16:]], axis=-1)
    periphery = np.sqrt(np.mean(np.abs(corners) ** 2))
    assert 0.7 < data.meta.noise_sigma / periphery < 1.5


@needs_data
def test_averages_are_averaged_and_later_repetitions_dropped(tmp_path: Path) -> None:
    def edit(lines: list) -> list:
        second = [_copy(m, data=3 * np.asarray(m.data), Ave=1) for m in lines]
        repeat = [_copy(m, data=100 * np.asarray(m.data), Rep=1) for m in lines[::4]]
        return lines + second + repeat

    data = read_twix(_write_variant(tmp_path, edit))
    np.testing.assert_allclose(data.kspace, 2 * _gre().kspace, rtol=1e-5, atol=1e-9)
    assert data.meta.extra["averages"] == 2
    assert data.meta.extra["dropped"]["lines"] == {"Rep": 40}
    assert data.mask is None


@needs_data
def test_slices(tmp_path: Path) -> None:
    def edit(lines: list) -> list:
        return lines + [_copy(m, data=-np.asarray(m.data), Sli=3) for m in lines]

    data = read_twix(_write_variant(tmp_path, edit))
    assert data.kspace.shape == (2, 2, 160, 160)
    np.testing.assert_allclose(data.kspace[0], _gre().kspace[0], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(data.kspace[1], -data.kspace[0], rtol=1e-5, atol=1e-9)
    assert data.meta.extra["slice_counters"] == [0, 3]


@needs_data
def test_3d_partitions_become_slices(tmp_path: Path) -> None:
    def edit(lines: list) -> list:
        return [_copy(m, Par=p, CenterPar=2) for p in range(4) for m in lines]

    data = read_twix(_write_variant(tmp_path, edit))
    assert data.kspace.shape == (4, 2, 160, 160)
    assert data.meta.extra["three_d"] and data.meta.extra["partitions"] == 4
    # Identical partitions: all signal in the centre partition, times sqrt(4) (orthonormal).
    reference = _gre().kspace[0]
    np.testing.assert_allclose(data.kspace[2], 2 * reference, rtol=1e-4, atol=1e-8)
    for p in (0, 1, 3):
        assert np.abs(data.kspace[p]).max() < 1e-4 * np.abs(reference).max()


@needs_data
def test_undersampled_3d_partitions_are_refused(tmp_path: Path) -> None:
    def edit(lines: list) -> list:
        return [_copy(m, Par=p, CenterPar=1) for p in range(2) for m in lines if p or m.cLin]

    with pytest.raises(ReadError, match="3-D data"):
        read_twix(_write_variant(tmp_path, edit))


@needs_data
def test_echo_planar_lines_are_refused(tmp_path: Path) -> None:
    def edit(lines: list) -> list:
        for m in lines[1::2]:
            m.mdh.EvalInfoMask |= 1 << twixtools.mdh_def.mask_dict["REFLECT"]
        return lines

    with pytest.raises(ReadError, match="echo-planar"):
        read_twix(_write_variant(tmp_path, edit))


@needs_data
def test_partial_echo_is_zero_filled_and_masked(tmp_path: Path) -> None:
    def edit(lines: list) -> list:  # drop the first 40 of 320 samples: centre at 120 of 280
        return [_copy(m, data=np.asarray(m.data)[:, 40:], CenterCol=120) for m in lines]

    data = read_twix(_write_variant(tmp_path, edit))
    assert data.kspace.shape == (1, 2, 160, 160)
    assert data.mask is not None and data.meta.undersampled
    rows = data.mask.any(axis=1)
    np.testing.assert_array_equal(rows, np.arange(160) >= 20)  # 40 oversampled = 20 samples
    assert data.mask[20:].all()
    assert np.abs(data.kspace[..., :20, :]).max() == 0
    peak = np.unravel_index(np.abs(data.kspace[0, 0]).argmax(), (160, 160))
    assert peak == (80, 80)


@needs_data
def test_non_cartesian_protocol_is_refused(tmp_path: Path) -> None:
    raw = _gre_bytes()
    marker = b"sKSpace.ucTrajectory\t = \t1"
    assert raw.count(marker) == 2
    radial = raw.replace(marker, marker[:-1] + b"2")
    with _file("radial.dat", radial) as path, pytest.raises(ReadError, match="radial"):
        read_twix(path)


def _as_vb(ve_bytes: bytes) -> bytes:
    """gre.dat rewritten in the VB layout: protocol, then one 128-byte header per coil."""
    from twixtools import mdh_def

    (scan,) = twixtools.read_twix(str(DATA), keep_acqend=True, verbose=False)
    out = bytearray(scan["hdr_str"].tobytes())  # starts with its own length (> 10000)
    for m in scan["mdb"]:
        vb = mdh_def.VB17_header()
        for name in ("MeasUID", "ScanCounter", "TimeStamp", "PMUTimeStamp", "EvalInfoMask"):
            setattr(vb, name, getattr(m.mdh, name))
        for name in ("SamplesInScan", "UsedChannels", "CenterCol", "CenterLin", "CenterPar"):
            setattr(vb, name, getattr(m.mdh, name))
        vb.Counter = m.mdh.Counter
        if m.is_flag_set("ACQEND"):
            vb.FlagsAndDMALength = 128
            return bytes(out + bytes(vb) + bytes(512))  # padded, as the scanner does
        vb.FlagsAndDMALength = 128 + 8 * m.mdh.SamplesInScan
        for coil in np.asarray(m.data):
            vb.ChannelId = len(out) % 7  # anything
            out += bytes(vb) + coil.astype(np.complex64).tobytes()
    raise AssertionError("gre.dat has no ACQEND block")


@needs_data
def test_vb_layout_reads_the_same(tmp_path: Path) -> None:
    with _file("vb.dat", _as_vb(_gre_bytes())) as path:
        data = read_twix(path)
    assert data.meta.extra["version"] == "VB"
    np.testing.assert_allclose(data.kspace, _gre().kspace)


# --------------------------------------------------------------------------------------- fuzz


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_read_errors(data: bytes) -> None:
    with _file("random.dat", data) as path:
        assert isinstance(_outcome(path), ReadError)


@FUZZ
@given(
    count=st.integers(0, 80),
    entries=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 2**20)), max_size=3),
    tail=st.binary(max_size=2048),
)
def test_random_raid_headers_are_read_errors(
    count: int, entries: list[tuple[int, int]], tail: bytes
) -> None:
    """A VD/VE-looking start with lying offsets and lengths over random bytes."""
    raid = bytearray(struct.pack("<II", 0, count) + bytes(9736 - 8))
    for k, (offset, length) in enumerate(entries):
        struct.pack_into("<QQ", raid, 8 + 152 * k + 8, offset, length)
    with _file("raid.dat", bytes(raid) + tail) as path:
        assert isinstance(_outcome(path), ReadError)


@needs_data
@FUZZ
@given(data=st.data())
def test_truncated_files_are_read_errors(data: st.DataObject) -> None:
    whole = _gre_bytes()
    cut = data.draw(
        st.integers(0, len(whole) - 1) | st.integers(GRE_FIRST_BLOCK, len(whole) - 1),
        label="cut",
    )
    with _file("cut.dat", whole[:cut]) as path:
        result = _outcome(path)
    if cut < GRE_SCAN_END:
        assert isinstance(result, ReadError)
    else:  # only the zero padding after the ACQEND block was cut
        assert isinstance(result, KSpaceData)


@needs_data
@pytest.mark.parametrize("block", [0, 1, 80, 159, 160])
@pytest.mark.parametrize("within", [0, 100, GRE_BLOCK - 1])
def test_cuts_at_and_inside_blocks_are_read_errors(block: int, within: int) -> None:
    """Block 160 is the ACQEND block; a cut exactly after a line is also truncation."""
    cut = min(GRE_FIRST_BLOCK + block * GRE_BLOCK + within, GRE_SCAN_END - 1)
    with _file("cut.dat", _gre_bytes()[:cut]) as path:
        assert isinstance(_outcome(path), ReadError)


@needs_data
def test_a_single_raid_file_with_unset_length_and_no_acqend_is_refused() -> None:
    raw = bytearray(_gre_bytes()[: GRE_FIRST_BLOCK + 10 * GRE_BLOCK])
    struct.pack_into("<Q", raw, 8 + 16, 0)  # length 0: twixtools takes the file size
    with _file("nolength.dat", bytes(raw)) as path:
        assert "ACQEND" in str(_outcome(path))


def _regions(size: int) -> st.SearchStrategy[int]:
    """Byte offsets in the binary headers and the protocol text of gre.dat."""
    mdh = st.builds(
        lambda block, offset: GRE_FIRST_BLOCK + block * GRE_BLOCK + offset,
        st.integers(0, 160),
        st.integers(0, 191),
    )
    return st.one_of(
        st.integers(0, 10240 + 16),  # raid header and measurement header length
        st.integers(10240, GRE_FIRST_BLOCK - 1),  # protocol
        mdh,  # block headers: flags, counters, sizes, centres
        st.integers(0, size - 1),
    )


@needs_data
@FUZZ
@given(data=st.data())
def test_flipped_header_bytes_never_crash(data: st.DataObject) -> None:
    corrupt = bytearray(_gre_bytes())
    flips = data.draw(
        st.lists(st.tuples(_regions(len(corrupt)), st.integers(1, 255)), min_size=1, max_size=4),
        label="flips",
    )
    for index, xor in flips:
        corrupt[index] ^= xor
    with _file("corrupt.dat", bytes(corrupt)) as path:
        result = _outcome(path)
    if isinstance(result, KSpaceData):
        assert result.kspace.dtype == np.complex64 and result.kspace.ndim == 4
        assert np.all(np.isfinite(result.kspace))
