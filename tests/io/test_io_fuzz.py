"""Property tests: whatever bytes or arrays a file holds, a reader returns a record or raises
ReadError naming the file, never another exception."""

from __future__ import annotations

import gzip
import os
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_genreg.io import READERS, KSpaceData, ReadError, read

#: ``GENREG_FUZZ_EXAMPLES=2000 pytest tests/io/test_io_fuzz.py`` fuzzes deeper.
FUZZ = settings(
    max_examples=int(os.environ.get("GENREG_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: Formats with a sample in the ``valid_files`` fixture.
SAMPLED = (".npy", ".npz", ".nii", ".nii.gz", ".dcm", ".png", ".tif")
MAGIC = {
    ".npy": b"\x93NUMPY\x01\x00",
    ".npz": b"PK\x03\x04",
    ".nii": struct.pack("<i", 348),
    ".nii.gz": b"\x1f\x8b\x08\x00",
    ".dcm": b"\0" * 128 + b"DICM",
    ".png": b"\x89PNG\r\n\x1a\n",
    ".tif": b"II*\x00",
}


@contextmanager
def _file(name: str, data: bytes = b"") -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        yield path


def _outcome(path: Path, reader: Callable[..., KSpaceData] = read) -> KSpaceData | ReadError:
    """The record, or the ReadError (checked to name the file); anything else propagates."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # libraries warn about odd headers; we judge results
            result = reader(path)
    except ReadError as exc:
        assert str(exc).startswith(f"{path}: "), str(exc)
        return exc
    assert isinstance(result, KSpaceData)
    return result


# -------------------------------------------------------------------------------- raw bytes


@FUZZ
@given(ext=st.sampled_from(sorted(READERS)), data=st.binary(max_size=1024))
def test_random_bytes_are_read_errors(ext: str, data: bytes) -> None:
    with _file(f"random{ext}", data) as path:
        assert isinstance(_outcome(path), ReadError)


@FUZZ
@given(ext=st.sampled_from(SAMPLED), data=st.binary(max_size=512))
def test_random_bytes_behind_a_valid_magic_number(ext: str, data: bytes) -> None:
    with _file(f"magic{ext}", MAGIC[ext] + data) as path:
        _outcome(path)


@FUZZ
@given(ext=st.sampled_from(SAMPLED), data=st.data())
def test_truncated_files_are_read_errors(
    valid_files: dict[str, bytes], ext: str, data: st.DataObject
) -> None:
    whole = valid_files[ext]
    cut = data.draw(st.integers(0, len(whole) - 1), label="cut")
    with _file(f"cut{ext}", whole[:cut]) as path:
        assert isinstance(_outcome(path), ReadError)


@pytest.mark.parametrize("ext", SAMPLED)
def test_the_uncut_samples_are_valid(valid_files: dict[str, bytes], ext: str) -> None:
    with _file(f"whole{ext}", valid_files[ext]) as path:
        assert isinstance(_outcome(path), KSpaceData)


@FUZZ
@given(ext=st.sampled_from(SAMPLED), data=st.data())
def test_corrupted_files_never_crash(
    valid_files: dict[str, bytes], ext: str, data: st.DataObject
) -> None:
    corrupt = bytearray(valid_files[ext])
    if ext == ".nii.gz":  # corrupt the NIfTI inside the gzip stream, not just its CRC
        corrupt = bytearray(gzip.decompress(bytes(corrupt)))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(corrupt) - 1), st.integers(1, 255)), max_size=4),
        label="flips",
    )
    for index, xor in flips:
        corrupt[index] ^= xor
    payload = gzip.compress(bytes(corrupt)) if ext == ".nii.gz" else bytes(corrupt)
    with _file(f"corrupt{ext}", payload) as path:
        _outcome(path)


# ----------------------------------------------------------------------------------- arrays

_ANY_DTYPE = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.datetime64_dtypes(),
    hnp.byte_string_dtypes(max_len=3),
    hnp.unicode_string_dtypes(max_len=3),
    hnp.array_dtypes(subtype_strategy=hnp.integer_dtypes(), max_size=2),
)
_SHAPES = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5)
_SIDE = st.integers(1, 6)


def _arrays(dtypes: st.SearchStrategy = _ANY_DTYPE, shapes: st.SearchStrategy = _SHAPES):
    return hnp.arrays(dtype=dtypes, shape=shapes)


def _must_fail(array: np.ndarray, ranks: tuple[int, ...]) -> bool:
    """Arrays every reader must refuse: bad dtype, rank, empty, NaN/inf, all zero."""
    if array.dtype.names is not None or array.dtype.kind not in "iufc":
        return True
    if array.ndim not in ranks or array.size == 0:
        return True
    with np.errstate(all="ignore"):
        return not np.all(np.isfinite(array)) or not np.any(array)


def _must_pass(array: np.ndarray) -> bool:
    """Finite arrays of moderate, non-vanishing magnitude (no float32 overflow/underflow)."""
    with np.errstate(all="ignore"):
        peak = np.abs(array.astype(np.complex128)).max()
    return 1e-30 < peak < 1e15


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
@FUZZ
@given(array=_arrays())
def test_npy_arrays(array: np.ndarray) -> None:
    with _file("a.npy") as path:
        np.save(path, array, allow_pickle=False)
        result = _outcome(path)
    ranks = (2, 3, 4) if array.dtype.kind == "c" else (2, 3)
    if _must_fail(array, ranks):
        assert isinstance(result, ReadError)
    elif _must_pass(array):
        assert isinstance(result, KSpaceData), result


_NPZ_KEYS = st.sampled_from(["kspace", "reference", "mask", "image", "images", "arr_0", "foo"])


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
@FUZZ
@given(arrays=st.dictionaries(_NPZ_KEYS, _arrays(), max_size=3))
def test_npz_archives(arrays: dict[str, np.ndarray]) -> None:
    with _file("a.npz") as path:
        with path.open("wb") as f:
            np.savez(f, **arrays)
        result = _outcome(path)
    if not arrays:
        assert isinstance(result, ReadError)


_NIFTI_DTYPES = st.sampled_from(
    ["u1", "i1", "<i2", "<u2", "<i4", "<u4", "<i8", "<f4", "<f8", "<c8", "<c16"]
)


@FUZZ
@given(
    array=_arrays(_NIFTI_DTYPES, hnp.array_shapes(min_dims=1, max_dims=5, min_side=1, max_side=4)),
    gz=st.booleans(),
)
def test_nifti_arrays(array: np.ndarray, gz: bool) -> None:
    import nibabel as nib

    with _file("a.nii.gz" if gz else "a.nii") as path:
        nib.save(nib.Nifti1Image(array, np.eye(4), dtype=array.dtype), path)
        result = _outcome(path)
    if array.ndim in (2, 3) and _must_fail(array, (2, 3)):
        assert isinstance(result, ReadError)
    if array.ndim == 1:
        assert isinstance(result, ReadError)


@FUZZ
@given(
    array=_arrays(
        st.sampled_from(["u1", "<u2"]), hnp.array_shapes(min_dims=2, max_dims=2, max_side=9)
    )
    | _arrays(st.just("u1"), st.tuples(_SIDE, _SIDE, st.sampled_from([3, 4])))
)
def test_png_arrays(array: np.ndarray) -> None:
    from PIL import Image

    with _file("a.png") as path:
        Image.fromarray(array).save(path, format="PNG")
        result = _outcome(path)
    gray = array if array.ndim == 2 else array[..., :3]  # alpha is ignored
    assert isinstance(result, ReadError) == (not np.any(gray))


@FUZZ
@given(
    array=_arrays(
        st.sampled_from(["u1", "<u2", "<i2", "<f4", "<f8", "<c8"]),
        hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=5),
    )
)
def test_tiff_arrays(array: np.ndarray) -> None:
    import tifffile

    with _file("a.tif") as path:
        tifffile.imwrite(path, array, photometric="minisblack")
        result = _outcome(path)
    with np.errstate(all="ignore"):
        if not np.all(np.isfinite(array)) or not np.any(array):
            assert isinstance(result, ReadError)
        elif _must_pass(array):
            assert isinstance(result, KSpaceData), result


_DICOM_NUMBERS = st.floats(-1e4, 1e4, allow_nan=False, width=32) | st.just(0.0)


@FUZZ
@given(
    pixels=_arrays(st.just("<u2"), hnp.array_shapes(min_dims=2, max_dims=2, max_side=6)),
    slope=_DICOM_NUMBERS,
    intercept=_DICOM_NUMBERS,
)
def test_dicom_pixels_and_rescale(
    build, pixels: np.ndarray, slope: float, intercept: float
) -> None:
    with _file("a.dcm") as path:
        build.dicom(path, pixels, slope=f"{slope:.6g}", intercept=f"{intercept:.6g}")
        result = _outcome(path)
    values = pixels * float(f"{slope:.6g}") + float(f"{intercept:.6g}")
    if not np.any(values):
        assert isinstance(result, ReadError)
    else:
        assert isinstance(result, KSpaceData), result
        np.testing.assert_allclose(result.reference[0], np.abs(values), rtol=1e-5, atol=1e-3)
