import math

import pytest
import torch

from napari_genreg.physics.coils import simulate_multicoil, synthetic_maps
from napari_genreg.physics.fft import fft2c
from napari_genreg.physics.noise import add_noise
from napari_genreg.physics.phase import lowres_phase, remove_phase, restore_phase
from napari_genreg.samples import load_image


def _brain_with_phase():
    image = torch.from_numpy(load_image("brain", 128)).to(torch.complex64)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 128), indexing="ij")
    phi = 1.2 * xx - 0.8 * yy**2 + 0.5  # smooth, as B0 and receiver phase are
    return image * torch.polar(torch.ones_like(phi), phi), torch.polar(torch.ones_like(phi), phi)


def _support(image):
    return image.abs() > 0.2 * image.abs().max()


def test_lowres_phase_recovers_a_known_smooth_phase_where_there_is_signal():
    image, truth = _brain_with_phase()
    k = add_noise(fft2c(image), 0.01, generator=torch.Generator().manual_seed(0))
    phase = lowres_phase(k, (24, 24))
    assert torch.allclose(phase.abs(), torch.ones(128, 128), atol=1e-5)
    error = torch.angle(phase * truth.conj())[_support(image)]
    assert float(error.abs().quantile(0.95)) < 0.1  # radians
    real = remove_phase(image, phase)
    inside = _support(image)
    # after removal the image is essentially real and non-negative
    assert float((real.imag.abs()[inside] / real.abs()[inside]).quantile(0.95)) < 0.1
    assert float((real.real[inside] > 0).float().mean()) > 0.99


def test_remove_then_restore_is_the_identity():
    image, truth = _brain_with_phase()
    assert torch.allclose(restore_phase(remove_phase(image, truth), truth), image, atol=1e-6)


def test_multicoil_phase_is_that_of_the_sense_combination():
    image, truth = _brain_with_phase()
    maps = synthetic_maps(6, (128, 128))
    phase = lowres_phase(simulate_multicoil(image, maps), (24, 24), combine=maps)
    error = torch.angle(phase * truth.conj())[_support(image)]
    assert float(error.abs().quantile(0.95)) < 0.1
    with pytest.raises(ValueError, match="sensitivities"):
        lowres_phase(simulate_multicoil(image, maps), (24, 24))


def test_zero_kspace_gives_unit_phase():
    phase = lowres_phase(torch.zeros(16, 16, dtype=torch.complex64), (8, 8))
    assert torch.equal(phase, torch.ones(16, 16, dtype=torch.complex64))
    assert math.isclose(float(phase.abs().min()), 1.0)


def test_phase_removal_on_the_twix_example_leaves_a_real_positive_image():
    # Real raw data: after removing the low-resolution phase estimated from the calibration
    # centre, the coil-combined image inside the phantom is nearly real and positive.
    from pathlib import Path

    pytest.importorskip("twixtools")
    path = Path(__file__).parents[1] / "data" / "twix" / "gre.dat"
    if not path.is_file():
        pytest.skip("the TWIX example is not in this checkout")
    from napari_genreg.io import read
    from napari_genreg.physics.espirit import espirit_maps
    from napari_genreg.physics.fft import ifft2c

    kspace = torch.from_numpy(read(path).kspace[0])
    maps = espirit_maps(kspace, (24, 24))
    image = (ifft2c(kspace) * maps.conj()).sum(dim=0)
    phase = lowres_phase(kspace, (24, 24), combine=maps)
    inside = image.abs() > 0.3 * image.abs().max()
    assert float(inside.float().mean()) > 0.2
    before = (image.imag.abs()[inside] / image.abs()[inside]).median()
    real = remove_phase(image, phase)
    after = real.imag.abs()[inside] / real.abs()[inside]
    assert float(after.median()) < 0.1 and float(after.median()) < float(before)
    assert float((real.real[inside] > 0).float().mean()) > 0.98
