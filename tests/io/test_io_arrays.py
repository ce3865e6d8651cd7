""".npy and .npz readers: complex k-space, real images, keys, masks, untrusted content."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_genreg.io import ReadError, read, read_npy, read_npz
from napari_genreg.physics.fft import ifft2c


def _kspace(*shape: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((6, 5), (1, 1, 6, 5)), ((3, 6, 5), (1, 3, 6, 5)), ((2, 3, 6, 5), (2, 3, 6, 5))],
)
def test_npy_complex_is_measured_kspace(tmp_path: Path, shape: tuple, expected: tuple) -> None:
    kspace = _kspace(*shape).astype(np.complex128)
    np.save(tmp_path / "k.npy", kspace)
    data = read(tmp_path / "k.npy", noise_sigma=0.3)
    assert data.kspace.shape == expected and data.kspace.dtype == np.complex64
    np.testing.assert_array_equal(data.kspace.reshape(shape), kspace.astype(np.complex64))
    assert data.reference is None and data.mask is None
    assert data.meta.noise_sigma is None
    assert not data.meta.simulated and not data.meta.undersampled
    assert data.meta.matrix_size == (6, 5)
    assert data.meta.extra["format"] == "npy"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16, np.uint16])
@pytest.mark.parametrize("n", [None, 3])
def test_npy_real_images_give_simulated_kspace(tmp_path: Path, dtype: type, n: int | None) -> None:
    image = (np.arange(3 * 8 * 6).reshape(3, 8, 6) % 97 + 1).astype(dtype)
    if n is None:
        image = image[0]
    np.save(tmp_path / "im.npy", image)
    data = read_npy(tmp_path / "im.npy")
    stack = image if n else image[None]
    assert data.kspace.shape == (stack.shape[0], 1, 8, 6)
    back = ifft2c(torch.from_numpy(data.kspace[:, 0])).numpy()
    np.testing.assert_allclose(back.real, stack.astype(np.float64), atol=1e-4)
    np.testing.assert_allclose(back.imag, 0.0, atol=1e-4)
    np.testing.assert_array_equal(data.reference, stack.astype(np.float32))
    assert data.meta.simulated and data.meta.noise_sigma == 0.0


def test_npz_kspace_with_reference_and_mask(tmp_path: Path) -> None:
    kspace = _kspace(2, 4, 6, 5)
    reference = np.abs(np.random.default_rng(0).normal(size=(2, 6, 5)))
    mask = np.zeros((6, 5), dtype=bool)
    mask[:, ::2] = True
    np.savez(tmp_path / "d.npz", kspace=kspace, reference=reference, mask=mask)
    data = read(tmp_path / "d.npz")
    np.testing.assert_array_equal(data.kspace, kspace)
    np.testing.assert_allclose(data.reference, reference.astype(np.float32))
    np.testing.assert_array_equal(data.mask, mask)
    assert data.meta.undersampled and data.meta.noise_sigma is None
    assert data.meta.extra == {"format": "npz", "key": "kspace"}


@pytest.mark.parametrize(
    "mask", [np.array([1, 0, 1, 0, 1]), np.array([True, False, True, False, True])]
)
def test_npz_column_mask_is_broadcast(tmp_path: Path, mask: np.ndarray) -> None:
    np.savez(tmp_path / "d.npz", kspace=_kspace(6, 5), mask=mask)
    data = read(tmp_path / "d.npz")
    assert data.mask.shape == (6, 5) and data.mask.dtype == np.bool_
    np.testing.assert_array_equal(data.mask, np.broadcast_to(mask.astype(bool), (6, 5)))


def test_npz_without_mask_is_fully_sampled(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", kspace=_kspace(6, 5))
    data = read(tmp_path / "d.npz")
    assert data.mask is None and not data.meta.undersampled


@pytest.mark.parametrize("key", ["image", "images", "reference"])
def test_npz_image_keys(tmp_path: Path, key: str) -> None:
    image = np.arange(1, 31, dtype=np.float64).reshape(5, 6)
    np.savez(tmp_path / "d.npz", **{key: image, "other": np.zeros(3)})
    data = read(tmp_path / "d.npz", noise_sigma=0.01, seed=2)
    np.testing.assert_array_equal(data.reference[0], image.astype(np.float32))
    assert data.meta.simulated and data.meta.extra["key"] == key


def test_npz_image_key_order(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", reference=np.ones((4, 4)), image=np.full((3, 3), 2.0))
    assert read(tmp_path / "d.npz").meta.extra["key"] == "image"


def test_npz_single_array_of_any_name(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", _kspace(3, 6, 5))  # stored as arr_0
    data = read_npz(tmp_path / "d.npz")
    assert data.kspace.shape == (1, 3, 6, 5) and data.meta.extra["key"] == "arr_0"


def test_npz_without_usable_key_lists_the_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", foo=np.ones((3, 3)), bar=np.ones((3, 3)))
    with pytest.raises(ReadError, match=r"\['bar', 'foo'\]") as info:
        read(tmp_path / "d.npz")
    assert str(tmp_path / "d.npz") in str(info.value)


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"kspace": np.ones((4, 4))}, "complex"),
        ({"kspace": _kspace(4, 4), "mask": np.ones((3, 4), bool)}, "mask must have shape"),
        ({"kspace": _kspace(4, 4), "mask": np.zeros((4, 4), bool)}, "samples nothing"),
        ({"kspace": _kspace(4, 4), "mask": np.full((4, 4), 0.5)}, "only 0 and 1"),
        ({"kspace": _kspace(2, 1, 4, 4), "reference": np.ones((3, 4, 4))}, "slices"),
        ({"kspace": _kspace(4, 4), "reference": np.full((4, 4), np.nan)}, "NaN"),
        ({"kspace": np.full((4, 4), np.nan + 0j)}, "NaN"),
        ({"kspace": np.zeros((4, 4), np.complex64)}, "all zero"),
        ({"kspace": _kspace(1, 1, 1, 4, 4)}, "shape"),
        ({"image": np.ones((4, 4), bool)}, "dtype"),
    ],
)
def test_npz_bad_content(tmp_path: Path, arrays: dict, problem: str) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ReadError, match=problem):
        read(tmp_path / "d.npz")


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.ones((3, 3), dtype=bool), "dtype bool"),
        (np.array([["a"]]), "dtype"),
        (np.zeros((2, 2), dtype=[("a", "f4"), ("b", "f4")]), "dtype"),
        (np.zeros((2, 2), dtype="datetime64[s]"), "dtype"),
        (np.ones((2, 2, 2, 2)), "shape"),
        (np.ones(7), "shape"),
        (np.float64(3.0), "shape"),
        (np.ones((0, 5)), "empty"),
        (np.full((3, 3), np.nan), "NaN"),
        (np.ones((1, 1, 1, 1, 1), np.complex64), "shape"),
        (np.ones((0, 4, 4), np.complex64), "empty"),
    ],
)
def test_npy_bad_arrays(tmp_path: Path, array: np.ndarray, problem: str) -> None:
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(ReadError, match=problem) as info:
        read(tmp_path / "x.npy")
    assert str(info.value).startswith(f"{tmp_path / 'x.npy'}: ")


class _Exploit:
    """Unpickling this would create a file: proof that the reader never unpickles."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.target),))


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_object_arrays_are_never_unpickled(tmp_path: Path, ext: str) -> None:
    marker = tmp_path / "pwned"
    array = np.array([_Exploit(str(marker)), 1], dtype=object)
    path = tmp_path / f"x{ext}"
    if ext == ".npy":
        np.save(path, array, allow_pickle=True)
    else:
        np.savez(path, kspace=array)
    assert pickle.loads(pickle.dumps(_Exploit(str(tmp_path / "probe")))) is None  # it works...
    assert (tmp_path / "probe").exists()
    with pytest.raises(ReadError, match="object"):
        read(path)
    assert not marker.exists()  # ...but the reader never ran it


def test_png_bytes_in_npy_file(tmp_path: Path, valid_files: dict[str, bytes]) -> None:
    path = tmp_path / "image.npy"
    path.write_bytes(valid_files[".png"])
    with pytest.raises(ReadError, match=r"not a \.npy file"):
        read(path)


def test_npz_in_npy_file(tmp_path: Path, valid_files: dict[str, bytes]) -> None:
    path = tmp_path / "image.npy"
    path.write_bytes(valid_files[".npz"])
    with pytest.raises(ReadError):
        read(path)


def test_npy_header_claiming_more_data_than_present(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (100_000, 100_000)}
        )
        f.write(b"\0" * 64)
    with pytest.raises(ReadError, match="truncated"):
        read(path)
