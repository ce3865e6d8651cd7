"""ISMRMRD (MRD) files: assembly, oversampling, undersampling, noise, errors, fuzzing."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_genreg.io import KSpaceData, ReadError, read, read_fastmri, read_mrd
from napari_genreg.io.mrd import parse_header
from napari_genreg.io.records import decode_covariance

FUZZ = settings(
    max_examples=int(os.environ.get("GENREG_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SIGMA = 0.05
NOISE_BLOCKS, NOISE_SAMPLES = 16, 256
#: Missing phase-encoding lines (columns of the last axis) of the undersampled file.
MISSING = (3, 11, 36, 40)


def correlated_noise(coils: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(noise (blocks, coils, samples), covariance)`` with ``trace(cov) / coils = SIGMA^2``."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((coils, coils)) + 1j * rng.standard_normal((coils, coils))
    covariance = a @ a.conj().T + coils * np.eye(coils)
    covariance *= SIGMA**2 * coils / np.trace(covariance).real
    white = rng.standard_normal((NOISE_BLOCKS, coils, NOISE_SAMPLES)) + 1j * rng.standard_normal(
        (NOISE_BLOCKS, coils, NOISE_SAMPLES)
    )
    noise = np.linalg.cholesky(covariance) @ (white / np.sqrt(2))
    return noise, covariance


def without_oversampling(kspace: np.ndarray, recon_x: int, mri: SimpleNamespace) -> np.ndarray:
    """Independent reference: 2-D inverse FFT, crop the readout rows, 2-D FFT."""
    image = mri.ifft2c(kspace)
    return mri.fft2c(mri.crop(image, (recon_x, kspace.shape[-1])))


@pytest.fixture(scope="module")
def undersampled(tmp_path_factory: pytest.TempPathFactory, mri: SimpleNamespace):
    """An oversampled, undersampled file with noise scans, a reversed line and navigators."""
    kspace, _ = mri.multicoil()
    noise, covariance = correlated_noise(mri.coils)
    rng = np.random.default_rng(7)
    measured = kspace + (SIGMA / np.sqrt(2)) * (
        rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape)
    ).astype(np.complex64)
    path = tmp_path_factory.mktemp("mrd") / "undersampled.mrd"
    recon = (mri.encoded[0] // 2, mri.encoded[1])
    mri.mrd(path, measured, recon=recon, noise=noise, missing=MISSING, reverse=(20,), navigators=2)
    truth = measured.copy()
    truth[..., list(MISSING)] = 0
    return SimpleNamespace(
        path=path,
        kspace=without_oversampling(truth, recon[0], mri),
        covariance=covariance,
        noise=noise,
        recon=recon,
    )


# ------------------------------------------------------------------------------ round trips


def test_assembled_kspace_is_what_was_acquired(undersampled: SimpleNamespace) -> None:
    data = read(undersampled.path)
    assert data.kspace.dtype == np.complex64
    assert data.kspace.shape == undersampled.kspace.shape == (3, 4, 32, 48)
    scale = np.abs(undersampled.kspace).max()
    np.testing.assert_allclose(data.kspace, undersampled.kspace, atol=1e-6 * scale)

    meta = data.meta
    assert meta.extra["format"] == "ismrmrd"
    assert meta.extra["axes"] == ["slice", "coil", "readout", "phase"]
    assert meta.extra["readout_oversampling_removed"] is True
    assert meta.extra["encoded_size"] == [64, 48]
    assert meta.extra["recon_size"] == list(undersampled.recon)
    assert meta.extra["slice_indices"] == [0, 1, 2]
    assert meta.extra["skipped_acquisitions"] == {"navigator": 2}
    assert meta.matrix_size == (32, 48)
    assert not meta.simulated
    json.dumps(meta.extra)


def test_missing_lines_make_the_mask(undersampled: SimpleNamespace) -> None:
    data = read_mrd(undersampled.path)
    assert data.meta.undersampled
    columns = np.ones(48, bool)
    columns[list(MISSING)] = False
    # phase-encoding lines are columns of the last axis, as for fastMRI's 1-D masks
    np.testing.assert_array_equal(data.mask, np.broadcast_to(columns, (32, 48)))
    assert not np.any(data.kspace[..., ~columns])


def test_noise_scans_give_sigma_and_covariance(undersampled: SimpleNamespace) -> None:
    meta = read(undersampled.path).meta
    samples = NOISE_BLOCKS * NOISE_SAMPLES
    assert meta.noise_sigma == pytest.approx(SIGMA, rel=0.03)
    # the estimate is exactly the sample covariance of what was written
    noise = undersampled.noise.transpose(1, 0, 2).reshape(4, -1)
    sample_covariance = noise @ noise.conj().T / samples
    estimate = decode_covariance(meta.extra["noise_covariance"], 4)
    np.testing.assert_allclose(estimate, sample_covariance, atol=1e-6)
    error = np.linalg.norm(estimate - undersampled.covariance)
    assert error < 0.1 * np.linalg.norm(undersampled.covariance)
    assert meta.extra["noise_samples"] == samples


def test_fully_sampled_round_trip_matches_the_phantom(tmp_path: Path, mri: SimpleNamespace) -> None:
    kspace, phantom = mri.multicoil()
    recon = (mri.encoded[0] // 2, 40)
    mri.mrd(tmp_path / "full.mrd", kspace, recon=recon)
    data = read(tmp_path / "full.mrd")
    assert data.mask is None and not data.meta.undersampled
    assert data.meta.noise_sigma is None and "noise_covariance" not in data.meta.extra
    image = np.sqrt((np.abs(mri.ifft2c(data.kspace)) ** 2).sum(axis=1))
    # the readout oversampling is gone; the phase direction is cropped downstream
    np.testing.assert_allclose(image, mri.crop(phantom, (recon[0], 48)), atol=1e-5)
    assert data.meta.extra["recon_size"] == [32, 40]
    final = mri.crop(image, tuple(data.meta.extra["recon_size"]))
    np.testing.assert_allclose(final, mri.crop(phantom, recon), atol=1e-5)


def test_without_oversampling_the_kspace_is_kept(tmp_path: Path, mri: SimpleNamespace) -> None:
    kspace, _ = mri.multicoil(slices=2, coils=3, shape=(24, 20))
    mri.mrd(tmp_path / "plain.mrd", kspace, recon=(24, 20))
    data = read(tmp_path / "plain.mrd")
    np.testing.assert_array_equal(data.kspace, kspace)
    assert data.meta.extra["readout_oversampling_removed"] is False


def test_averages_are_averaged_and_lower_sigma(tmp_path: Path, mri: SimpleNamespace) -> None:
    kspace, _ = mri.multicoil(slices=1, coils=2, shape=(16, 12))
    noise, _ = correlated_noise(2)
    mri.mrd(tmp_path / "avg.mrd", kspace, recon=(16, 12), noise=noise, averages=3)
    mri.mrd(tmp_path / "one.mrd", kspace, recon=(16, 12), noise=noise)
    averaged, single = read(tmp_path / "avg.mrd"), read(tmp_path / "one.mrd")
    np.testing.assert_allclose(averaged.kspace, kspace, rtol=1e-6, atol=1e-6)
    assert averaged.meta.extra["averages"] == [3, 3]
    assert averaged.meta.noise_sigma == pytest.approx(single.meta.noise_sigma / np.sqrt(3))


def test_noise_dwell_time_scales_sigma(tmp_path: Path, mri: SimpleNamespace) -> None:
    kspace, _ = mri.multicoil(slices=1, coils=2, shape=(16, 12))
    noise, _ = correlated_noise(2)
    mri.mrd(tmp_path / "same.mrd", kspace, recon=(16, 12), noise=noise)
    mri.mrd(tmp_path / "slow.mrd", kspace, recon=(16, 12), noise=noise, noise_dwell_us=8.0)
    same, slow = read(tmp_path / "same.mrd"), read(tmp_path / "slow.mrd")
    # noise sampled with a 4x longer dwell (4x narrower band) has 4x less power per sample
    assert slow.meta.noise_sigma == pytest.approx(2 * same.meta.noise_sigma)


def test_calibration_lines_fill_unacquired_lines(tmp_path: Path, mri: SimpleNamespace) -> None:
    kspace, _ = mri.multicoil(slices=2, coils=2, shape=(16, 12))
    missing = (1, 3, 9)
    mri.mrd(tmp_path / "cal.mrd", kspace, recon=(16, 12), missing=missing, calibration_only=(5, 6))
    data = read(tmp_path / "cal.mrd")
    assert data.meta.extra["calibration_lines"] == 2
    expected = kspace.copy()
    expected[..., list(missing)] = 0
    np.testing.assert_array_equal(data.kspace, expected)
    assert data.meta.undersampled


def test_partial_fourier_lines_are_placed_by_the_limits_centre(
    tmp_path: Path, mri: SimpleNamespace
) -> None:
    kspace, _ = mri.multicoil(slices=1, coils=2, shape=(16, 24))
    # steps 0..17 of 24, centre 8: step s goes to column s + (24 // 2 - 8) = s + 4
    mri.mrd(tmp_path / "pf.mrd", kspace, recon=(16, 24), phase_limits=(0, 17, 8))
    data = read(tmp_path / "pf.mrd")
    assert data.meta.extra["kspace_padding"] == [4, 22]
    assert not data.meta.undersampled and data.mask is None  # all lines within the limits
    expected = np.zeros_like(kspace)
    expected[..., 4:22] = kspace[..., 4:22]
    np.testing.assert_array_equal(data.kspace, expected)


def test_read_only_file(tmp_path: Path, mri: SimpleNamespace) -> None:
    kspace, _ = mri.multicoil(slices=1, coils=2, shape=(8, 8))
    path = mri.mrd(tmp_path / "ro.mrd", kspace, recon=(8, 8))
    before = path.read_bytes()
    path.chmod(0o444)
    try:
        assert read(path).kspace.shape == (1, 2, 8, 8)
    finally:
        path.chmod(0o644)
    assert path.read_bytes() == before


def test_other_group_name_and_dispatch(tmp_path: Path, mri: SimpleNamespace) -> None:
    import h5py

    kspace, _ = mri.multicoil(slices=1, coils=2, shape=(8, 8))
    path = mri.mrd(tmp_path / "raw.h5", kspace, recon=(8, 8))
    with h5py.File(path, "a") as f:
        f.move("dataset", "scan")
    assert read(path).meta.extra["format"] == "ismrmrd"
    with pytest.raises(ReadError, match="no 'kspace' or reconstruction"):
        read_fastmri(path)


def test_a_fastmri_file_is_not_ismrmrd(tmp_path: Path, mri: SimpleNamespace) -> None:
    mri.fastmri(tmp_path / "f.h5")
    with pytest.raises(ReadError, match="no ISMRMRD group"):
        read_mrd(tmp_path / "f.h5")


def test_parse_header(mri: SimpleNamespace) -> None:
    header = parse_header(mri.header((64, 48, 1), (32, 30, 1), phase_limits=(2, 40, 22)), "h")
    assert header.encoded_size == (64, 48, 1) and header.recon_size == (32, 30, 1)
    assert header.phase_offset() == 2 and header.phase_range() == (4, 43)
    assert header.trajectory == "cartesian"
    assert header.summary["field_strength_T"] == 3.0
    plain = parse_header(mri.header((8, 6, 0), (8, 6, 0), namespace=False), "h")
    assert plain.encoded_size == (8, 6, 0)  # z = 0 occurs in 2-D headers


# ------------------------------------------------------------------------------------ errors


def _tweak_samples(acq, i: int) -> None:
    if i == 3:
        acq.resize(acq.number_of_samples + 3, acq.active_channels)


def _tweak_coils(acq, i: int) -> None:
    if i == 2:
        acq.resize(acq.number_of_samples, acq.active_channels + 1)


def _tweak_step(acq, i: int) -> None:
    if i == 4:
        acq.idx.kspace_encode_step_1 = 200


def _tweak_step2(acq, i: int) -> None:
    acq.idx.kspace_encode_step_2 = 1


def _tweak_nan(acq, i: int) -> None:
    if i == 1:
        acq.data[0, 0] = np.nan


def _tweak_everything_skipped(acq, i: int) -> None:
    acq.idx.repetition = 1


_ERRORS = {
    "samples": ({"tweak": _tweak_samples}, "do not fit the encoded readout"),
    "coils": ({"tweak": _tweak_coils}, "3 coils, the earlier acquisitions 2"),
    "step": ({"tweak": _tweak_step}, "falls outside the encoded matrix"),
    "step2": ({"tweak": _tweak_step2}, "kspace_encode_step_2"),
    "nan": ({"tweak": _tweak_nan}, "NaN"),
    "nothing": ({"tweak": _tweak_everything_skipped}, "no imaging acquisitions"),
    "radial": ({"trajectory": "radial"}, "radial trajectory is not supported"),
    "3d": ({"z": 4}, "3-D encoding"),
    "slices": ({"slice_missing_line": True}, "sampled on different lines"),
}


@pytest.mark.parametrize("case", sorted(_ERRORS))
def test_unsupported_or_inconsistent_files(tmp_path: Path, mri: SimpleNamespace, case: str):
    options, message = _ERRORS[case]
    kspace, _ = mri.multicoil(slices=2, coils=2, shape=(8, 6))
    header = mri.header(
        (8, 6, options.get("z", 1)), (8, 6, 1), trajectory=options.get("trajectory", "cartesian")
    )
    tweak = options.get("tweak")
    if options.get("slice_missing_line"):

        def tweak(acq, i: int) -> None:
            if i == 8:  # a line of the second slice
                acq.idx.slice = 0

    path = mri.mrd(tmp_path / "bad.mrd", kspace, recon=(8, 6), header=header, tweak=tweak)
    with pytest.raises(ReadError, match=message) as info:
        read(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        ("no xml", "no dataset 'dataset/xml'"),
        ("no data", "no dataset 'dataset/data'"),
        ("float table", "not an ISMRMRD acquisition table"),
        ("int xml", "must be one string"),
        ("empty table", "holds no acquisitions"),
        ("bad xml", "not valid XML"),
        ("xml no encoding", "has no <encoding>"),
        ("xml bad size", "not an integer"),
        ("xml zero size", "not in 1.."),
    ],
)
def test_malformed_files(tmp_path: Path, mri: SimpleNamespace, build: str, message: str) -> None:
    import h5py

    kspace, _ = mri.multicoil(slices=1, coils=2, shape=(8, 6))
    path = mri.mrd(tmp_path / "m.mrd", kspace, recon=(8, 6))
    with h5py.File(path, "a") as f:
        group = f["dataset"]
        xml = mri.header((8, 6, 1), (8, 6, 1))
        replace = {
            "bad xml": "<ismrmrdHeader><encoding>",
            "xml no encoding": "<ismrmrdHeader/>",
            "xml bad size": xml.replace("<x>8</x>", "<x>eight</x>", 1),
            "xml zero size": xml.replace("<x>8</x>", "<x>0</x>", 1),
        }
        if build in ("no xml", "int xml") or build in replace:
            del group["xml"]
        if build == "int xml":
            group.create_dataset("xml", data=np.arange(3))
        if build in replace:
            group.create_dataset("xml", data=replace[build])
        if build in ("no data", "float table", "empty table"):
            dtype = group["data"].dtype
            del group["data"]
            if build == "float table":
                group.create_dataset("data", data=np.ones(4))
            if build == "empty table":
                group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=dtype)
    with pytest.raises(ReadError, match=message) as info:
        read_mrd(path)
    assert str(info.value).startswith(f"{path}: ")


# ------------------------------------------------------------------------------------- fuzz


@contextmanager
def _file(name: str, data: bytes | None = None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        if data is not None:
            path.write_bytes(data)
        yield path


def _outcome(path: Path, reader=read) -> KSpaceData | ReadError:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = reader(path)
    except ReadError as exc:
        assert str(exc).startswith(f"{path}: "), str(exc)
        return exc
    assert isinstance(result, KSpaceData)
    return result


@pytest.fixture(scope="module")
def mrd_bytes(undersampled: SimpleNamespace) -> bytes:
    return undersampled.path.read_bytes()


@FUZZ
@given(data=st.binary(max_size=2048), signature=st.booleans())
def test_random_bytes(data: bytes, signature: bool) -> None:
    with _file("random.mrd", (b"\x89HDF\r\n\x1a\n" if signature else b"") + data) as path:
        assert isinstance(_outcome(path), ReadError)


@FUZZ
@given(data=st.data())
def test_truncated_files(mrd_bytes: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(mrd_bytes) - 1), label="cut")
    with _file("cut.mrd", mrd_bytes[:cut]) as path:
        assert isinstance(_outcome(path), ReadError)


_FIELDS = st.sampled_from(
    [
        "kspace_encode_step_1",
        "kspace_encode_step_2",
        "slice",
        "average",
        "contrast",
        "repetition",
        "number_of_samples",
        "active_channels",
        "center_sample",
        "discard_pre",
        "discard_post",
        "flags",
        "data",
    ]
)


@FUZZ
@given(
    changes=st.lists(
        st.tuples(st.integers(0, 11), _FIELDS, st.integers(0, 2**16 - 1)), min_size=1, max_size=3
    ),
    nx=st.integers(4, 12),
    ny=st.integers(2, 8),
    header_nx=st.integers(1, 24),
)
def test_random_acquisition_headers(
    mri: SimpleNamespace,
    changes: list[tuple[int, str, int]],
    nx: int,
    ny: int,
    header_nx: int,
) -> None:
    """Acquisitions with random counters, sizes and flags, and a header whose readout size
    may disagree with the data: a record or a ReadError, never another exception."""
    kspace, _ = mri.multicoil(slices=2, coils=2, shape=(nx, ny))

    def tweak(acq, i: int) -> None:
        for index, name, value in changes:
            if index != i:
                continue
            if name == "data":
                acq.data[value % acq.data.shape[0], value % acq.data.shape[1]] = np.nan
            elif name in ("number_of_samples", "active_channels"):
                samples = value % 40 if name == "number_of_samples" else acq.number_of_samples
                coils = value % 5 if name == "active_channels" else acq.active_channels
                acq.resize(samples, coils)
            elif name == "flags":
                acq.flags = (value << (value % 48)) & (2**64 - 1)
            elif hasattr(acq.idx, name):
                setattr(acq.idx, name, value)
            else:
                setattr(acq, name, value)

    header = mri.header((header_nx, ny, 1), (max(1, header_nx // 2), ny, 1))
    with _file("fuzz.mrd") as path:
        mri.mrd(path, kspace, recon=(nx, ny), header=header, tweak=tweak)
        _outcome(path)
