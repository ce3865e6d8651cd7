"""simulate_kspace: exact noiseless k-space, the noise level, seeds, rejection of bad images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_genreg.io import KSpaceData, ReadError, simulate_kspace
from napari_genreg.physics.fft import ifft2c


def _image(n: int = 2, h: int = 16, w: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 3.0, size=(n, h, w))


@pytest.mark.parametrize("complex_input", [False, True])
def test_noiseless_kspace_inverts_to_the_image(complex_input: bool) -> None:
    image = _image()
    if complex_input:
        image = image * np.exp(1j * np.linspace(0, 2, image.size).reshape(image.shape))
    data = simulate_kspace(image, source="test")
    assert isinstance(data, KSpaceData)
    assert data.kspace.shape == (2, 1, 16, 12) and data.kspace.dtype == np.complex64
    back = ifft2c(torch.from_numpy(data.kspace[:, 0])).numpy()
    np.testing.assert_allclose(back, image, atol=1e-5 * np.abs(image).max())
    assert data.reference.dtype == np.float32
    np.testing.assert_allclose(data.reference, np.abs(image), rtol=1e-6)
    assert data.mask is None
    meta = data.meta
    assert meta.simulated and not meta.undersampled
    assert meta.noise_sigma == 0.0 and meta.matrix_size == (16, 12)
    assert meta.extra["image_scale"] == pytest.approx(np.abs(image).max(), rel=1e-6)
    assert meta.extra["noise_sigma_relative"] == 0.0


def test_two_dimensional_input_is_one_slice() -> None:
    data = simulate_kspace(np.ones((4, 6)), source="x")
    assert data.kspace.shape == (1, 1, 4, 6)
    # DC of the orthonormal FFT of ones: sum / sqrt(H W) = sqrt(24)
    assert abs(data.kspace[0, 0, 2, 3]) == pytest.approx(np.sqrt(24), rel=1e-6)


def test_noise_level_matches_sigma_times_scale() -> None:
    image = _image(n=2, h=256, w=256) * 7.0
    sigma = 0.05
    clean = simulate_kspace(image, source="clean").kspace
    noisy = simulate_kspace(image, noise_sigma=sigma, seed=3, source="noisy")
    scale = np.abs(image).max()
    noise = noisy.kspace - clean
    power = np.mean(np.abs(noise.astype(np.complex128)) ** 2)
    assert power == pytest.approx((sigma * scale) ** 2, rel=0.02)
    # circular: real and imaginary parts carry half each
    assert np.mean(noise.real.astype(np.float64) ** 2) == pytest.approx(power / 2, rel=0.03)
    assert noisy.meta.noise_sigma == pytest.approx(sigma * scale, rel=1e-6)
    assert noisy.meta.extra["noise_sigma_relative"] == sigma
    # the reference stays the clean image
    np.testing.assert_array_equal(noisy.reference, np.abs(image).astype(np.float32))


def test_same_seed_same_noise_other_seed_other_noise() -> None:
    image = _image()
    a = simulate_kspace(image, noise_sigma=0.1, seed=5, source="a").kspace
    b = simulate_kspace(image, noise_sigma=0.1, seed=5, source="b").kspace
    c = simulate_kspace(image, noise_sigma=0.1, seed=6, source="c").kspace
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_global_random_state_is_untouched() -> None:
    torch_state = torch.random.get_rng_state().clone()
    # the legacy global NumPy RNG is what must stay untouched, so read it on purpose
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002
    simulate_kspace(_image(), noise_sigma=0.2, seed=1, source="x")
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002


def test_integer_images_are_accepted() -> None:
    image = (np.arange(20).reshape(4, 5) * 1000).astype(np.uint16)
    data = simulate_kspace(image, source="ints")
    np.testing.assert_array_equal(data.reference[0], image.astype(np.float32))


@pytest.mark.parametrize(
    ("images", "problem"),
    [
        (np.full((4, 4), np.nan), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
        (np.zeros((0, 4, 4)), "empty"),
        (np.zeros((3, 4)), "all zero"),
        (np.ones((2, 2, 3, 3)), "shape"),
        (np.ones(5), "shape"),
        (np.ones((3, 3), dtype=bool), "dtype"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype"),
        (np.full((3, 3), 1e39), "float32 range"),
        (np.full((64, 64), 3e38, dtype=np.float32), "overflows"),
        (np.full((3, 3), 1e-60), "all zero"),
    ],
)
def test_bad_images_raise_read_error_naming_the_source(images: np.ndarray, problem: str) -> None:
    with pytest.raises(ReadError, match=problem) as info:
        simulate_kspace(images, source="my-source")
    assert str(info.value).startswith("my-source: ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [{"noise_sigma": -0.1}, {"noise_sigma": float("nan")}, {"seed": -1}, {"seed": 1.5}],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        simulate_kspace(np.ones((4, 4)), source="x", **kwargs)  # type: ignore[arg-type]


def test_extra_is_merged_into_metadata() -> None:
    data = simulate_kspace(np.ones((4, 4)), source="x", extra={"format": "png", "n": np.int64(3)})
    assert data.meta.extra["format"] == "png"
    assert data.meta.extra["n"] == 3 and type(data.meta.extra["n"]) is int
