"""SVD coil compression against a dense NumPy SVD of the coil-by-sample data matrix."""

import math

import numpy as np
import pytest
import torch

from napari_genreg.physics.coils import rss, simulate_multicoil, synthetic_maps
from napari_genreg.physics.compression import (
    apply_compression,
    compress_coils,
    compression_matrix,
)
from napari_genreg.physics.fft import ifft2c
from napari_genreg.samples import load_image

COILS = 8


@pytest.fixture(scope="module")
def image():
    magnitude = torch.from_numpy(load_image("brain", 128))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 128), indexing="ij")
    return torch.polar(magnitude, 0.8 * xx + 0.5 * yy**2)


@pytest.fixture(scope="module")
def kspace(image):
    clean = simulate_multicoil(image, synthetic_maps(COILS, image.shape))
    gen = torch.Generator().manual_seed(0)
    noise = torch.view_as_complex(torch.randn((*clean.shape, 2), generator=gen)) * 1e-3
    return clean + noise


def _energy(x):
    return float(x.abs().square().sum())


def _dense_singular_values(kspace):
    data = kspace.reshape(kspace.shape[-3], -1).numpy().astype(np.complex128)
    return np.linalg.svd(data, compute_uv=False)


def test_compression_keeps_the_stated_energy_with_the_fewest_virtual_coils(kspace):
    power = _dense_singular_values(kspace) ** 2
    share = np.cumsum(power) / power.sum()
    for energy in (0.5, 0.9, 0.95, 0.99, 0.999):
        compressed, matrix = compress_coils(kspace, energy=energy)
        virtual = matrix.shape[0]
        assert compressed.shape == (virtual, *kspace.shape[-2:])
        kept = _energy(compressed) / _energy(kspace)
        assert kept >= energy - 1e-6
        assert virtual == 1 or share[virtual - 2] < energy  # one coil fewer would not do
        assert kept == pytest.approx(share[virtual - 1], rel=1e-5)
    _, everything = compress_coils(kspace, energy=1.0)
    assert everything.shape == (COILS, COILS)


def test_8_to_4_virtual_coils_keep_the_top_4_singular_values(kspace):
    compressed, matrix = compress_coils(kspace, 4)
    assert compressed.shape == (4, *kspace.shape[-2:]) and matrix.shape == (4, COILS)
    assert matrix.dtype == kspace.dtype
    power = _dense_singular_values(kspace) ** 2
    kept = _energy(compressed) / _energy(kspace)
    assert kept == pytest.approx(power[:4].sum() / power.sum(), rel=1e-5)
    assert kept >= 0.95  # smooth maps of 8 coils: 4 virtual coils carry nearly all the signal
    # the rows of the matrix are orthonormal and span the top-4 left singular vectors
    eye = torch.eye(4, dtype=torch.complex128)
    assert torch.allclose((matrix @ matrix.mH).to(torch.complex128), eye, atol=1e-5)
    u, _, _ = np.linalg.svd(kspace.reshape(COILS, -1).numpy().astype(np.complex128), False)
    projector = (matrix.mH @ matrix).numpy()
    np.testing.assert_allclose(projector, u[:, :4] @ u[:, :4].conj().T, atol=1e-4)


def test_rss_of_the_compressed_coil_images_stays_close_to_the_original(image, kspace):
    compressed, matrix = compress_coils(kspace, energy=0.99)
    assert matrix.shape[0] < COILS
    before = rss(ifft2c(kspace), dim=0)
    after = rss(ifft2c(compressed), dim=0)
    support = image.abs() > 0.1 * image.abs().max()
    relative = ((after - before).abs() / before)[support]
    assert float(after.max()) <= float(before.max()) * (1 + 1e-5)  # a projection never adds
    assert float(relative.mean()) < 0.002 and float(relative.max()) < 0.01


def test_white_noise_stays_white_with_the_same_variance(kspace):
    matrix = compression_matrix(kspace, 4)
    gen = torch.Generator().manual_seed(1)
    sigma = 0.3
    real = torch.randn((COILS, 256, 256, 2), generator=gen, dtype=torch.float64)
    noise = torch.view_as_complex(real) * (sigma / math.sqrt(2))
    compressed = apply_compression(noise, matrix.to(torch.complex128)).reshape(4, -1)
    covariance = compressed @ compressed.mH / compressed.shape[1]
    expected = sigma**2 * torch.eye(4, dtype=torch.complex128)
    assert torch.allclose(covariance, expected, atol=0.03 * sigma**2)


def test_the_calibration_region_and_batches(kspace):
    centre = compression_matrix(kspace, 3, calibration=(24, 24))
    block = kspace[:, 52:76, 52:76]
    assert torch.allclose(centre, compression_matrix(block, 3))
    eye = torch.eye(3, dtype=torch.complex64)
    assert torch.allclose(centre @ centre.mH, eye, atol=1e-5)
    # a batch of slices: one matrix from all of them, applied to each
    batch = torch.stack([kspace, 0.5 * kspace.flip(-1)])
    compressed, matrix = compress_coils(batch, 3)
    assert compressed.shape == (2, 3, *kspace.shape[-2:])
    assert torch.allclose(compressed[1], apply_compression(batch[1], matrix))
    # compressing coil maps: the virtual coils' maps are T S
    maps = synthetic_maps(COILS, kspace.shape[-2:])
    assert apply_compression(maps, matrix).shape == (3, *kspace.shape[-2:])


def test_compression_refuses_bad_arguments(kspace):
    with pytest.raises(ValueError, match="virtual_coils"):
        compress_coils(kspace, COILS + 1)
    with pytest.raises(ValueError, match="virtual_coils"):
        compress_coils(kspace, 0)
    for energy in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="energy"):
            compress_coils(kspace, energy=energy)
    with pytest.raises(ValueError, match="complex tensor"):
        compress_coils(kspace.real)
    with pytest.raises(ValueError, match="complex tensor"):
        compress_coils(kspace[0])
    with pytest.raises(ValueError, match="zero"):
        compress_coils(torch.zeros_like(kspace))
    with pytest.raises(ValueError, match="shape"):
        apply_compression(kspace, torch.ones((2, 3), dtype=kspace.dtype))
    with pytest.raises(ValueError, match="empty"):
        compress_coils(kspace, calibration=(0, 4))
