import math

import numpy as np
import pytest
import torch

from napari_genreg.physics.noise import add_noise, complex_gaussian, estimate_noise_sigma


def test_complex_gaussian_has_the_documented_moments():
    sigma = 0.3
    n = complex_gaussian(
        (400, 400), sigma, generator=torch.Generator().manual_seed(0), dtype=torch.complex128
    )
    assert float(n.abs().square().mean()) == pytest.approx(sigma**2, rel=0.01)
    assert float(n.real.std()) == pytest.approx(sigma / math.sqrt(2), rel=0.01)
    assert float(n.imag.std()) == pytest.approx(sigma / math.sqrt(2), rel=0.01)
    assert abs(float((n.real * n.imag).mean())) < 0.01 * sigma**2


def test_noise_is_reproducible_and_leaves_global_rng_alone():
    np_state = np.random.get_state()  # noqa: NPY002 - checking it is untouched
    torch_state = torch.random.get_rng_state()
    k = torch.zeros(8, 8, dtype=torch.complex64)
    a = add_noise(k, 0.1, generator=torch.Generator().manual_seed(5))
    b = add_noise(k, 0.1, generator=torch.Generator().manual_seed(5))
    c = add_noise(k, 0.1, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002 - checking it is untouched
    assert all(np.array_equal(x, y) for x, y in zip(after, np_state, strict=True))
    assert torch.equal(k, torch.zeros_like(k))  # input untouched


def test_orthonormal_fft_keeps_the_noise_level_in_the_image():
    from napari_genreg.physics.fft import ifft2c

    n = complex_gaussian((256, 256), 0.05, generator=torch.Generator().manual_seed(1))
    assert float(ifft2c(n).abs().square().mean().sqrt()) == pytest.approx(0.05, rel=0.02)


@pytest.mark.parametrize("sigma", [0.5, -1.0, float("nan")])
def test_bad_noise_levels_are_refused(sigma):
    if sigma >= 0:
        complex_gaussian((2,), sigma, generator=torch.Generator())
        return
    with pytest.raises(ValueError, match="noise sigma"):
        complex_gaussian((2,), sigma, generator=torch.Generator())


@pytest.mark.parametrize("sigma", [0.01, 0.05])
@pytest.mark.parametrize("one_d", [False, True])
def test_noise_estimate_from_the_periphery_of_a_real_brain(sigma, one_d):
    from napari_genreg.physics.fft import fft2c
    from napari_genreg.samples import load_image

    image = torch.from_numpy(load_image("brain", 256)).to(torch.complex64)
    kspace = add_noise(fft2c(image), sigma, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(256, 256, dtype=torch.bool)
    if one_d:
        mask[:, ::4] = True  # no corner sampled densely: the band is used
    else:
        mask[:] = True
    assert estimate_noise_sigma(kspace * mask, mask) == pytest.approx(sigma, rel=0.15)


def test_whitening_decorrelates_coil_noise_and_keeps_the_average_level():
    from napari_genreg.physics.noise import whitening_matrix

    gen = torch.Generator().manual_seed(3)
    mix = torch.view_as_complex(torch.randn((4, 4, 2), generator=gen, dtype=torch.float64))
    mix = mix + 2 * torch.eye(4, dtype=torch.complex128)
    psi = mix @ mix.conj().T
    white = complex_gaussian((4, 20000), 1.0, generator=gen, dtype=torch.complex128)
    noise = mix @ white  # covariance mix mix^H = psi
    w = whitening_matrix(psi)
    whitened = w @ noise
    cov = whitened @ whitened.conj().T / whitened.shape[1]
    sigma_bar2 = float(torch.diagonal(psi).real.mean())
    assert torch.allclose(cov, sigma_bar2 * torch.eye(4, dtype=cov.dtype), atol=0.05 * sigma_bar2)


@pytest.mark.parametrize(
    "psi, message",
    [
        (torch.ones(2, 3, dtype=torch.complex64), "square"),
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.complex64), "positive definite"),
        (torch.full((2, 2), float("nan"), dtype=torch.complex64), "NaN"),
    ],
)
def test_bad_noise_covariances_are_refused(psi, message):
    from napari_genreg.physics.noise import whitening_matrix

    with pytest.raises(ValueError, match=message):
        whitening_matrix(psi)
