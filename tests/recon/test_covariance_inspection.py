"""Inspecting the learned covariance around a pixel (recon/covariance.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_genreg.models.covariance import split_signs
from napari_genreg.models.vae import VAE, VAEConfig
from napari_genreg.recon.covariance import (
    CovarianceView,
    covariance_figure,
    inspect_covariance,
)

SIZE = 24


@pytest.fixture(scope="module", params=["structured", "diagonal"])
def model(request) -> VAE:
    config = VAEConfig(
        covariance=request.param, stencil=5, image_size=SIZE, base_channels=4, max_channels=8
    )
    model = VAE(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in model.decoder.covariance_head.parameters():
            p.copy_(0.4 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def z() -> np.ndarray:
    return torch.randn(4, 3, 3, generator=torch.Generator().manual_seed(2)).numpy()


def _view(model, z, pixel=(10, 13), scale=250.0, samples=3, seed=0) -> CovarianceView:
    gen = torch.Generator().manual_seed(seed)
    return inspect_covariance(model, z, pixel, generator=gen, samples=samples, scale=scale)


def test_the_view_is_the_scaled_covariance_of_the_decoder_at_z(model, z):
    scale = 250.0
    view = _view(model, z, scale=scale)
    with torch.no_grad():
        mean, covariance = model.decode(torch.from_numpy(z)[None])
        column = covariance.column((10, 13))[0].numpy()
        dense = covariance.dense()[0].double().numpy()
    assert view.shape == (SIZE, SIZE) and view.pixel == (10, 13)
    np.testing.assert_allclose(view.column, scale**2 * column, rtol=1e-5)
    np.testing.assert_allclose(view.column.ravel(), scale**2 * dense[:, 10 * SIZE + 13], rtol=1e-3,
                               atol=1e-3 * scale**2 * np.abs(dense).max())  # fmt: skip
    np.testing.assert_allclose(view.positive - view.negative, view.column)
    assert (view.positive >= 0).all() and (view.negative >= 0).all()
    np.testing.assert_allclose(view.variance.ravel(), scale**2 * np.diag(dense), rtol=1e-3)
    assert view.correlation[10, 13] == pytest.approx(1.0, abs=1e-5)
    assert np.abs(view.correlation).max() <= 1.0 + 1e-4
    np.testing.assert_allclose(view.mean, scale * mean[0].numpy(), rtol=1e-5)
    assert view.scale == scale
    if model.config.covariance == "diagonal":
        assert np.count_nonzero(view.column) == 1


def test_samples_are_reproducible_and_scaled(model, z):
    a, b = _view(model, z, seed=5), _view(model, z, seed=5)
    c = _view(model, z, seed=6)
    assert a.samples.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)
    unit = _view(model, z, scale=1.0, seed=5)
    np.testing.assert_allclose(a.samples, 250.0 * unit.samples, rtol=1e-4, atol=1e-3)
    none = _view(model, z, samples=0)
    assert none.samples.shape == (0, SIZE, SIZE)


def test_window_and_centred_crop(model, z):
    view = _view(model, z, pixel=(10, 13))
    window = view.window(5)
    assert window.shape == (5, 5) and window.pixel == (2, 2)
    np.testing.assert_array_equal(window.column, view.column[8:13, 11:16])
    np.testing.assert_array_equal(window.samples, view.samples[:, 8:13, 11:16])
    corner = _view(model, z, pixel=(1, 22)).window(6)  # shifted to stay inside
    full = _view(model, z, pixel=(1, 22))
    assert corner.shape == (6, 6) and corner.pixel == (1, 4)
    np.testing.assert_array_equal(corner.correlation, full.correlation[0:6, 18:24])
    assert view.window(100).shape == (SIZE, SIZE)
    cropped = view.cropped((20, 18))  # rows 2..22, cols 3..21
    assert cropped.pixel == (8, 10)
    np.testing.assert_array_equal(cropped.variance, view.variance[2:22, 3:21])
    with pytest.raises(ValueError, match="outside"):
        _view(model, z, pixel=(0, 0)).cropped((10, 10))
    with pytest.raises(ValueError, match="window"):
        view.window(0)


def test_identity_head_and_bad_inputs(model, z):
    gen = torch.Generator().manual_seed(0)
    view = inspect_covariance(model, z, (4, 5), generator=gen, scale=2.0, head="identity")
    with torch.no_grad():
        s2 = float(torch.exp(2 * model.decoder._log_std(model.decoder.log_scale)))
    expected = np.zeros((SIZE, SIZE), np.float32)
    expected[4, 5] = 4.0 * s2
    np.testing.assert_allclose(view.column, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="scale"):
        inspect_covariance(model, z, (4, 5), generator=gen, scale=0.0)
    with pytest.raises(ValueError, match="outside"):
        inspect_covariance(model, z, (40, 5), generator=gen)
    with pytest.raises(ValueError, match="shape"):
        inspect_covariance(model, np.zeros((2, 4, 3, 3), np.float32), (4, 5), generator=gen)


def test_the_figure_is_written(model, z, tmp_path):
    view = _view(model, z)
    path = covariance_figure(tmp_path / "c.png", view, np.abs(view.mean), title="t")
    assert path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="shape"):
        covariance_figure(tmp_path / "d.png", view, np.zeros((3, 3)))


def test_split_signs_is_the_layer_pair():
    c = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    positive, negative = split_signs(c)
    assert torch.equal(positive - negative, c)


def test_a_cached_entry_of_another_model_with_the_same_id_is_replaced(model, z):
    """The cache is keyed on ``id(model)``; a model freed and another allocated at its address
    share it. A stale entry must be replaced, not returned (it was, after the new model's
    decoder ran, which made the diagonal model's view show another model's covariance)."""
    import weakref

    from napari_genreg.recon import covariance as cov

    latent = torch.from_numpy(z)[None]
    cov.clear_covariance_cache()
    entry = cov._at_latent(model, latent, "configured")
    other = torch.nn.Linear(1, 1)  # stands in for a model that had this id
    (key,) = cov._AT_LATENT
    cov._AT_LATENT[key] = cov._AtLatent(weakref.ref(other), entry.mean + 1.0, entry.covariance)
    fresh = cov._at_latent(model, latent, "configured")
    assert fresh.model() is model and cov._AT_LATENT[key] is fresh
    torch.testing.assert_close(fresh.mean, entry.mean)
    cov.clear_covariance_cache()
