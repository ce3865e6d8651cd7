import pytest
import torch

from napari_genreg.physics.coils import lowres_maps, rss, simulate_multicoil, synthetic_maps
from napari_genreg.physics.fft import ifft2c


def _disc(n=96):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    return (((yy / 0.8) ** 2 + (xx / 0.7) ** 2) < 1).to(torch.complex64) * (1 + 0.3 * yy)


def test_synthetic_maps_are_normalised_smooth_and_distinct():
    maps = synthetic_maps(6, (64, 48))
    assert maps.shape == (6, 64, 48) and maps.dtype == torch.complex64
    assert torch.allclose(rss(maps, dim=0), torch.ones(64, 48), atol=1e-5)
    assert float((maps[0] - maps[1]).abs().max()) > 0.1
    # smooth: neighbouring pixels differ little
    assert float((maps[:, 1:] - maps[:, :-1]).abs().max()) < 0.2


def test_rss_of_simulated_coil_images_recovers_the_magnitude():
    image = _disc()
    maps = synthetic_maps(4, image.shape)
    coil_images = ifft2c(simulate_multicoil(image, maps))
    assert torch.allclose(rss(coil_images, dim=0), image.abs(), atol=1e-5)


def test_lowres_maps_agree_with_the_true_maps_up_to_a_common_phase_where_there_is_signal():
    image = _disc()
    truth = synthetic_maps(4, image.shape)
    maps = lowres_maps(simulate_multicoil(image, truth), calibration=(24, 24))
    support = image.abs() > 0.5
    inner = torch.nn.functional.avg_pool2d(support[None].float(), 9, 1, 4)[0] > 0.999
    # maps are defined up to one phase per pixel (the object's): compare after removing it
    phase = (maps * truth.conj()).sum(0)
    phase = phase / phase.abs().clamp_min(1e-12)
    err = (maps - truth * phase).abs()[:, inner]
    assert float(err.max()) < 0.1
    assert torch.allclose(rss(maps, dim=0)[support], torch.ones(int(support.sum())), atol=1e-4)


def test_synthetic_maps_need_a_coil():
    with pytest.raises(ValueError, match="at least one coil"):
        synthetic_maps(0, (8, 8))
