"""The inspection reuses the decoder output and variance map of a latent (recon/covariance.py)."""

from __future__ import annotations

import numpy as np
import torch

from napari_genreg.models.vae import VAE, VAEConfig
from napari_genreg.recon import covariance as inspection

SIZE = 24


def _model() -> VAE:
    config = VAEConfig(covariance="structured", image_size=SIZE, base_channels=4, max_channels=8)
    model = VAE(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in model.decoder.covariance_head.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen))
    return model


def _view(model, z, pixel, variance=True):
    gen = torch.Generator().manual_seed(0)
    return inspection.inspect_covariance(
        model, z, pixel, generator=gen, samples=2, scale=3.0, variance=variance
    )


def test_a_cached_latent_gives_the_same_view_as_a_fresh_one():
    model = _model()
    z = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(2))
    inspection.clear_covariance_cache()
    first = _view(model, z, (5, 7))
    again = _view(model, z, (5, 7))  # from the cache
    inspection.clear_covariance_cache()
    other = _view(model, z, (12, 3))
    cached_other = _view(model, z, (12, 3))
    for name, array in first.arrays().items():
        np.testing.assert_array_equal(array, again.arrays()[name])
    for name, array in other.arrays().items():
        np.testing.assert_array_equal(array, cached_other.arrays()[name])
    with torch.no_grad():
        _, covariance = model.decode(z[None])
        expected = covariance.correlation((12, 3))[0].numpy()
    np.testing.assert_allclose(other.correlation, expected, rtol=1e-5, atol=1e-6)


def test_changed_weights_or_another_latent_are_decoded_again():
    model = _model()
    z = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(3))
    before = _view(model, z, (5, 7))
    with torch.no_grad():
        model.decoder.mean_head.bias.add_(1.0)
    after = _view(model, z, (5, 7))
    np.testing.assert_allclose(after.mean, before.mean + 3.0, rtol=1e-5, atol=1e-5)
    shifted = _view(model, z + 0.5, (5, 7))
    assert not np.allclose(shifted.column, after.column)


def test_without_the_variance_map_the_correlation_and_variance_are_absent():
    model = _model()
    z = torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(4))
    inspection.clear_covariance_cache()
    light = _view(model, z, (5, 7), variance=False)
    full = _view(model, z, (5, 7))
    assert light.correlation is None and light.variance is None
    assert set(light.arrays()) == {"mean", "column", "positive", "negative", "samples"}
    np.testing.assert_array_equal(light.column, full.column)
    window = light.window(5).cropped((5, 5))
    assert window.correlation is None and window.column.shape == (5, 5)
