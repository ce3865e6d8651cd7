"""fastMRI .h5 files and the HDF5 dispatcher: round trips, conventions, errors, fuzzing."""

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

from napari_genreg import io as nio
from napari_genreg.io import KSpaceData, ReadError, read, read_fastmri, read_h5

FUZZ = settings(
    max_examples=int(os.environ.get("GENREG_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def rss(kspace: np.ndarray, mri: SimpleNamespace) -> np.ndarray:
    return np.sqrt((np.abs(mri.ifft2c(kspace)) ** 2).sum(axis=1))


# ------------------------------------------------------------------------------ round trips


def test_multicoil_round_trip(tmp_path: Path, mri: SimpleNamespace) -> None:
    truth = mri.fastmri(tmp_path / "multi.h5")
    data = read(tmp_path / "multi.h5")

    assert data.kspace.dtype == np.complex64
    assert data.kspace.shape == (mri.slices, mri.coils, *mri.encoded)
    np.testing.assert_array_equal(data.kspace, truth["kspace"])
    np.testing.assert_allclose(rss(data.kspace, mri), truth["phantom"], atol=1e-5)
    # fastMRI's convention: reconstruct the full matrix, crop the centre to the recon size
    recon = tuple(data.meta.extra["recon_size"])
    assert recon == mri.recon
    np.testing.assert_allclose(mri.crop(rss(data.kspace, mri), recon), data.reference, atol=1e-5)
    np.testing.assert_array_equal(data.reference, truth["reference"])

    meta = data.meta
    assert meta.matrix_size == mri.encoded
    assert meta.noise_sigma is None and not meta.simulated and not meta.undersampled
    assert data.mask is None
    assert meta.extra["format"] == "fastmri"
    assert meta.extra["axes"] == ["slice", "coil", "readout", "phase"]
    assert meta.extra["encoded_size"] == list(mri.encoded)
    assert meta.extra["kspace_padding"] == [0, mri.encoded[1]]
    assert meta.extra["reference_key"] == "reconstruction_rss"
    assert meta.extra["acquisition"] == "CORPD_FBK"
    assert meta.extra["patient_id"] == "synthetic-0001"
    assert meta.extra["max"] == pytest.approx(float(truth["reference"].max()))
    assert "norm" in meta.extra
    assert meta.extra["header"]["vendor"] == "SYNTHETIC"
    json.dumps(meta.extra)  # JSON-serialisable


def test_single_coil(tmp_path: Path, mri: SimpleNamespace) -> None:
    truth = mri.fastmri(tmp_path / "single.h5", single_coil=True)
    data = read_fastmri(tmp_path / "single.h5")
    assert data.kspace.shape == (mri.slices, 1, *mri.encoded)
    np.testing.assert_array_equal(data.kspace, truth["kspace"])
    assert data.meta.extra["single_coil"] is True
    assert data.meta.extra["reference_key"] == "reconstruction_esc"
    np.testing.assert_array_equal(data.reference, truth["reference"])


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32])
def test_undersampled_file_carries_its_column_mask(
    tmp_path: Path, mri: SimpleNamespace, dtype: type
) -> None:
    ny = mri.encoded[1]
    columns = np.zeros(ny, dtype=bool)
    columns[::4] = True
    columns[ny // 2 - 4 : ny // 2 + 4] = True
    truth = mri.fastmri(
        tmp_path / "test.h5",
        mask=columns.astype(dtype),
        reference=False,
        attrs={"acceleration": 4, "num_low_frequency": 8},
    )
    data = read(tmp_path / "test.h5")
    assert data.meta.undersampled
    assert data.mask.shape == mri.encoded and data.mask.dtype == np.bool_
    # the 1-D mask selects phase-encoding lines: whole columns of the last axis
    np.testing.assert_array_equal(data.mask, np.broadcast_to(columns, mri.encoded))
    assert not np.any(data.kspace[..., ~columns])
    np.testing.assert_array_equal(data.kspace, truth["kspace"])
    assert data.reference is None
    assert data.meta.extra["acceleration"] == 4
    assert data.meta.extra["num_low_frequency"] == 8


def test_our_fft_is_fastmris(mri: SimpleNamespace) -> None:
    """fastmri.fft2c = fftshift(fftn(ifftshift(x), dim=(-2, -1), norm="ortho")): ours."""
    rng = np.random.default_rng(1)
    for shape in [(6, 5), (8, 8), (7, 4)]:
        x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        axes = (-2, -1)
        fastmri = np.fft.fftshift(
            np.fft.fftn(np.fft.ifftshift(x, axes=axes), axes=axes, norm="ortho"), axes=axes
        )
        np.testing.assert_allclose(mri.fft2c(x), fastmri, atol=1e-5)
    # DC of a constant image sits at (ny // 2, nx // 2)
    k = mri.fft2c(np.ones((6, 5), np.complex64))
    assert np.unravel_index(np.abs(k).argmax(), k.shape) == (3, 2)


def test_header_without_namespace_and_without_header(tmp_path: Path, mri: SimpleNamespace) -> None:
    plain = mri.header((*mri.encoded, 1), (20, 24, 1), namespace=False)
    mri.fastmri(tmp_path / "plain.h5", header=plain)
    assert read(tmp_path / "plain.h5").meta.extra["recon_size"] == [20, 24]

    mri.fastmri(tmp_path / "noheader.h5", header=None)
    data = read(tmp_path / "noheader.h5")
    assert data.meta.extra["recon_size"] == list(mri.recon)  # the reference's shape
    assert "encoded_size" not in data.meta.extra

    mri.fastmri(tmp_path / "bare.h5", header=None, reference=False, attrs={})
    assert "recon_size" not in read(tmp_path / "bare.h5").meta.extra


def test_phase_padding_from_the_encoding_limits(tmp_path: Path, mri: SimpleNamespace) -> None:
    # fastMRI: padding_left = ny // 2 - center, padding_right = padding_left + maximum + 1
    header = mri.header((*mri.encoded, 1), (*mri.recon, 1), phase_limits=(0, 39, 20))
    mri.fastmri(tmp_path / "padded.h5", header=header)
    assert read(tmp_path / "padded.h5").meta.extra["kspace_padding"] == [4, 44]


# ------------------------------------------------------------------------------ images only


def test_reconstruction_only_is_read_as_images(tmp_path: Path, mri: SimpleNamespace) -> None:
    import h5py

    images = mri.phantom(40, 36, 2)
    with h5py.File(tmp_path / "recon.h5", "w") as f:
        f.create_dataset("reconstruction_rss", data=images)
        f.attrs["acquisition"] = "AXT2"
    data = read(tmp_path / "recon.h5", noise_sigma=0.05, seed=3)
    assert data.meta.simulated and data.kspace.shape == (2, 1, 40, 36)
    np.testing.assert_array_equal(data.reference, images)
    assert data.meta.noise_sigma == pytest.approx(0.05 * float(images.max()))
    assert data.meta.extra["key"] == "reconstruction_rss"
    assert data.meta.extra["acquisition"] == "AXT2"
    again = read(tmp_path / "recon.h5", noise_sigma=0.05, seed=3)
    np.testing.assert_array_equal(data.kspace, again.kspace)


def test_our_writers_output_reads_back_as_images(tmp_path: Path, mri: SimpleNamespace) -> None:
    magnitudes = mri.phantom(24, 20, 3)
    nio.write(tmp_path / "out.h5", magnitudes, settings={"method": "tv", "lambda": 0.01})
    data = read(tmp_path / "out.h5")
    np.testing.assert_allclose(data.reference, magnitudes)
    assert data.meta.extra["format"] == "h5" and data.meta.extra["key"] == "reconstruction"
    assert json.loads(data.meta.extra["settings"]) == {"method": "tv", "lambda": 0.01}


# ---------------------------------------------------------------------------------- dispatch


def test_h5_dispatch_by_content(tmp_path: Path, mri: SimpleNamespace) -> None:
    mri.fastmri(tmp_path / "fastmri.h5")
    kspace, _ = mri.multicoil(slices=1, coils=2, shape=(16, 12))
    mri.mrd(tmp_path / "raw.h5", kspace, recon=(8, 12))
    nio.write(tmp_path / "images.h5", mri.phantom(8, 8), settings={})
    (tmp_path / "images.h5").rename(tmp_path / "images.hdf5")
    assert read(tmp_path / "fastmri.h5").meta.extra["format"] == "fastmri"
    assert read(tmp_path / "raw.h5").meta.extra["format"] == "ismrmrd"
    assert read(tmp_path / "images.hdf5").meta.simulated
    assert {".h5", ".hdf5", ".mrd"} <= set(nio.READERS)


def test_other_content_lists_what_was_found(tmp_path: Path) -> None:
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("volume", data=np.ones((2, 2)))
        f.create_group("meta")
    with pytest.raises(ReadError) as info:
        read_h5(tmp_path / "other.h5")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'other.h5'}: no MRI data")
    assert "'volume'" in message and "'meta'" in message and "'kspace'" in message


def test_external_links_are_refused(tmp_path: Path, mri: SimpleNamespace) -> None:
    import h5py

    mri.fastmri(tmp_path / "target.h5")
    with h5py.File(tmp_path / "link.h5", "w") as f:
        f["kspace"] = h5py.ExternalLink(str(tmp_path / "target.h5"), "kspace")
    with pytest.raises(ReadError, match="ExternalLink"):
        read(tmp_path / "link.h5")


def test_import_stays_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, napari_genreg.io\nprint([m for m in ('h5py', 'ismrmrd') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kspace": np.ones((2, 8, 6), np.float32)}, "dtype float32"),
        ({"kspace": np.ones((2, 8, 6), np.int16)}, "dtype int16"),
        ({"kspace": np.ones(6, np.complex64)}, "must be 3-D or 4-D"),
        ({"kspace": np.ones((1, 1, 2, 8, 6), np.complex64)}, "must be 3-D or 4-D"),
        ({"kspace": np.full((2, 8, 6), np.nan, np.complex64)}, "NaN"),
        ({"kspace": np.zeros((2, 8, 6), np.complex64)}, "all zero"),
        ({"mask": np.ones(5, bool)}, "mask must have shape"),
        ({"mask": np.zeros(6, bool)}, "samples nothing"),
        ({"mask": np.full(6, 2.0)}, "only 0 and 1"),
        ({"reconstruction_esc": np.ones((3, 4, 4), np.float32)}, "has 3 slices"),
        ({"ismrmrd_header": "<ismrmrdHeader><encoding>"}, "not valid XML"),
        ({"ismrmrd_header": "<other/>"}, "not <ismrmrdHeader>"),
    ],
)
def test_bad_files_are_read_errors(
    tmp_path: Path, mri: SimpleNamespace, change: dict[str, object], message: str
) -> None:
    import h5py

    arrays = {
        "kspace": np.ones((2, 8, 6), np.complex64),
        "ismrmrd_header": mri.header((8, 6, 1), (4, 4, 1)),
        **change,
    }
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    with pytest.raises(ReadError, match=message) as info:
        read(path)
    assert str(info.value).startswith(f"{path}: ")


def test_header_that_disagrees_with_the_kspace(tmp_path: Path, mri: SimpleNamespace) -> None:
    header = mri.header((mri.encoded[0], mri.encoded[1] + 2, 1), (*mri.recon, 1))
    mri.fastmri(tmp_path / "mismatch.h5", header=header)
    with pytest.raises(ReadError, match="does not match the k-space"):
        read(tmp_path / "mismatch.h5")
    swapped = mri.header((mri.encoded[1], mri.encoded[0], 1), (*mri.recon, 1))
    mri.fastmri(tmp_path / "swapped.h5", header=swapped)
    with pytest.raises(ReadError, match="looks transposed"):
        read(tmp_path / "swapped.h5")


# ------------------------------------------------------------------------------------- fuzz


@contextmanager
def _file(name: str, data: bytes | None = None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        if data is not None:
            path.write_bytes(data)
        yield path


def _outcome(path: Path, reader=read) -> KSpaceData | ReadError:
    """The record, or the ReadError (checked to name the file); anything else propagates."""
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
def fastmri_bytes(tmp_path_factory: pytest.TempPathFactory, mri: SimpleNamespace) -> bytes:
    path = tmp_path_factory.mktemp("fastmri") / "whole.h5"
    mri.fastmri(path, mask=np.arange(mri.encoded[1]) % 2 == 0)
    return path.read_bytes()


@FUZZ
@given(
    data=st.binary(max_size=2048), signature=st.booleans(), ext=st.sampled_from([".h5", ".hdf5"])
)
def test_random_bytes(data: bytes, signature: bool, ext: str) -> None:
    with _file(f"random{ext}", (HDF5_SIGNATURE if signature else b"") + data) as path:
        assert isinstance(_outcome(path), ReadError)
        assert isinstance(_outcome(path, read_fastmri), ReadError)


@FUZZ
@given(data=st.data())
def test_truncated_files(fastmri_bytes: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(fastmri_bytes) - 1), label="cut")
    with _file("cut.h5", fastmri_bytes[:cut]) as path:
        assert isinstance(_outcome(path), ReadError)


def test_the_uncut_file_is_valid(fastmri_bytes: bytes) -> None:
    with _file("whole.h5", fastmri_bytes) as path:
        assert isinstance(_outcome(path), KSpaceData)


_DTYPES = st.sampled_from(["<c8", "<c16", "<f4", "<f8", "<i2", "|u1", "|b1"])


_DEFECTS = (
    "dtype",
    "rank",
    "nan",
    "zero",
    "header mismatch",
    "header garbage",
    "mask length",
    "mask empty",
    "mask values",
    "reference slices",
    "reference rank",
    "reference nan",
)


@st.composite
def _fastmri_content(draw: st.DrawFn) -> tuple[dict[str, object], str | None]:
    """Datasets of a fastMRI-like file with at most one defect (``None``: a valid file)."""
    defect = draw(st.sampled_from((None,) * 6 + _DEFECTS), label="defect")
    rank = draw(st.sampled_from((1, 2, 5) if defect == "rank" else (3, 4)), label="rank")
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank), label="shape"))
    rng = np.random.default_rng(draw(st.integers(0, 2**16), label="seed"))
    values = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    if defect == "nan":
        values.flat[draw(st.integers(0, values.size - 1))] = np.nan
    if defect == "zero":
        values[...] = 0
    dtype = np.dtype(draw(_REAL_DTYPES if defect == "dtype" else st.sampled_from(["<c8", "<c16"])))
    kspace = values.astype(dtype) if dtype.kind == "c" else values.real.astype(dtype)
    content: dict[str, object] = {"kspace": kspace}
    nx, ny = (1, *shape)[-2:]

    if defect == "header mismatch":
        grow = draw(st.sampled_from([(1, 0), (0, 1), (1, 1)]))
        content["ismrmrd_header"] = _header(nx + grow[0], ny + grow[1])
    elif defect == "header garbage":
        content["ismrmrd_header"] = draw(st.sampled_from(["<x", "", "<ismrmrdHeader/>", "no"]))
    elif draw(st.booleans(), label="header"):
        content["ismrmrd_header"] = _header(nx, ny)

    if defect in ("mask length", "mask empty", "mask values") or draw(st.booleans()):
        length = ny + draw(st.sampled_from([-1, 1])) if defect == "mask length" else ny
        fill = {"mask empty": 0.0, "mask values": 2.0}.get(defect or "", 1.0)
        mask = np.full(length, fill, np.float32)
        if defect is None:
            mask[draw(st.integers(0, ny - 1))] = 0.0  # still samples something if ny > 1
            mask[ny // 2] = 1.0
        content["mask"] = mask

    if defect in ("reference slices", "reference rank", "reference nan") or draw(st.booleans()):
        slices = shape[0] + (defect == "reference slices")
        reference = np.ones((slices, 3, 3) if defect != "reference rank" else (3, 3), np.float32)
        if defect == "reference nan":
            reference[0, 0, 0] = np.nan
        content["reconstruction_rss"] = reference
    return content, defect


_REAL_DTYPES = st.sampled_from(["<f4", "<f8", "<i2", "|u1", "|b1"])


def _header(nx: int, ny: int) -> str:
    return (
        "<ismrmrdHeader><encoding>"
        f"<encodedSpace><matrixSize><x>{nx}</x><y>{ny}</y><z>1</z></matrixSize></encodedSpace>"
        "<reconSpace><matrixSize><x>3</x><y>3</y><z>1</z></matrixSize></reconSpace>"
        "</encoding></ismrmrdHeader>"
    )


@FUZZ
@given(content=_fastmri_content())
def test_fastmri_content(content: tuple[dict[str, object], str | None]) -> None:
    import h5py

    arrays, defect = content
    with _file("fuzz.h5") as path:
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=value)
        result = _outcome(path)
    assert isinstance(result, KSpaceData) == (defect is None), (defect, result)


@FUZZ
@given(
    key=st.sampled_from(["reconstruction_rss", "reconstruction_esc", "reconstruction", "other"]),
    dtype=_DTYPES,
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple),
)
def test_image_only_content(key: str, dtype: str, shape: tuple[int, ...]) -> None:
    import h5py

    with np.errstate(invalid="ignore"):
        array = (np.arange(np.prod(shape)) + 1.0).reshape(shape)
        array = array.astype(dtype) if np.dtype(dtype).kind != "b" else array > 0
    with _file("images.h5") as path:
        with h5py.File(path, "w") as f:
            f.create_dataset(key, data=array)
        result = _outcome(path)
    valid = key != "other" and np.dtype(dtype).kind in "iuf" and len(shape) in (2, 3)
    valid = valid and 0 not in shape
    assert isinstance(result, KSpaceData) == valid, result
