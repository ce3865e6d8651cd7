"""The VAE: shapes at several sizes, the covariance heads, bounds, configuration and seeding."""

from __future__ import annotations

import pytest
import torch

from napari_genreg.models.covariance import (
    DiagonalCovariance,
    IdentityCovariance,
    StructuredCovariance,
)
from napari_genreg.models.vae import ARCHITECTURE, VAE, VAEConfig, VAEOutput

HEADS = {
    "identity": IdentityCovariance,
    "diagonal": DiagonalCovariance,
    "structured": StructuredCovariance,
}


@pytest.fixture(scope="module")
def models() -> dict[str, VAE]:
    return {kind: VAE(VAEConfig(covariance=kind)) for kind in HEADS}


@pytest.mark.parametrize("kind", list(HEADS))
@pytest.mark.parametrize("size", [128, 256])
def test_shapes_and_covariance_types(models, kind, size):
    model = models[kind]
    x = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (2, 4, size // 8, size // 8)
        assert model.latent_shape((size, size)) == (4, size // 8, size // 8)
        mean, cov = model.decode(mu)
    assert mean.shape == (2, size, size)
    assert isinstance(cov, HEADS[kind])
    assert cov.shape == (size, size) and cov.batch_size == 2
    assert torch.isfinite(cov.logdet()).all()
    assert torch.isfinite(cov.mahalanobis(x[:, 0] - mean)).all()


def test_rectangular_images_and_the_latent_shape(models):
    model = models["structured"]
    assert model.latent_shape((1, 64, 192)) == (4, 8, 24)
    with torch.no_grad():
        mean, cov = model.decode(torch.zeros(1, 4, 8, 24))
    assert mean.shape == (1, 64, 192) and cov.off_diagonal.shape == (1, 12, 64, 192)


@pytest.mark.parametrize("shape", [(130, 130), (128, 130), (4, 128), (0, 8)])
def test_sizes_not_divisible_by_the_downsampling_are_refused(models, shape):
    model = models["diagonal"]
    with pytest.raises(ValueError, match="multiples of 8"):
        model.encode(torch.zeros(1, 1, *shape))
    with pytest.raises(ValueError, match="multiples of 8"):
        model.latent_shape(shape)


def test_bad_inputs_are_refused(models):
    model = models["identity"]
    with pytest.raises(ValueError, match=r"\(B, H, W\) or \(B, 1, H, W\)"):
        model.encode(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="real floating"):
        model.encode(torch.zeros(1, 16, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="z must have shape"):
        model.decode(torch.zeros(1, 3, 2, 2))


@pytest.mark.parametrize(("stencil", "m"), [(3, 4), (5, 12), (7, 24)])
def test_structured_stencils(stencil, m):
    model = VAE(VAEConfig(covariance="structured", stencil=stencil, image_size=32))
    with torch.no_grad():
        _, cov = model.decode(torch.zeros(1, 4, 4, 4))
    assert cov.stencil == stencil and cov.off_diagonal.shape == (1, m, 32, 32)


@pytest.mark.parametrize("alpha", [0.9, 2.5])
def test_structured_rows_stay_within_their_bound_for_any_head_output(alpha):
    """|sum_m w_m| <= sum_m |w_m| < alpha L_ii however large the raw outputs get (diagonally
    dominant for alpha < 1)."""
    config = VAEConfig(
        covariance="structured",
        image_size=16,
        base_channels=4,
        max_channels=8,
        off_diagonal_bound=alpha,
    )
    model = VAE(config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.decoder.covariance_head.parameters():
            p.copy_(50.0 * torch.randn(p.shape, generator=gen))
        _, cov = model.decode(torch.randn(2, 4, 2, 2, generator=gen))
    diagonal = torch.exp(cov.log_diagonal)
    ratio = cov.off_diagonal.abs().sum(dim=1) / diagonal
    assert ratio.max() < config.off_diagonal_bound
    assert ratio.max() > 0.5 * alpha  # the bound is reachable, not a tiny cone
    std = 1.0 / diagonal  # conditional standard deviations within [min_std, max_std]
    assert std.min() >= config.min_std * (1 - 1e-5) and std.max() <= config.max_std * (1 + 1e-5)


def test_a_new_model_predicts_a_plain_diagonal_covariance():
    model = VAE(VAEConfig(covariance="structured", image_size=16, base_channels=4))
    with torch.no_grad():
        _, cov = model.decode(torch.zeros(1, 4, 2, 2))
    assert torch.count_nonzero(cov.off_diagonal) == 0
    assert torch.allclose(cov.log_diagonal, cov.log_diagonal[0, 0, 0].expand_as(cov.log_diagonal))


def test_forward_returns_the_pieces_and_reparameterizes(models):
    model = models["diagonal"]
    x = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, VAEOutput)
        assert torch.equal(out.z, out.mu)
        eps = torch.ones_like(out.mu)
        noisy = model(x, eps)
        assert torch.allclose(noisy.z, out.mu + torch.exp(0.5 * out.logvar))
        identity = model(x, head="identity")
        assert isinstance(identity.covariance, IdentityCovariance)
        assert torch.equal(identity.mean, out.mean)
        assert torch.equal(model.decode_mean(out.mu), out.mean)
    with pytest.raises(ValueError, match="head"):
        model(x, head="full")


def test_size_and_speed_budget(models):
    for kind, model in models.items():
        n = model.num_parameters()
        assert 100_000 < n < 2_000_000, kind  # < 8 MB of float32 weights
    assert models["structured"].num_parameters() > models["identity"].num_parameters()


def test_construction_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    config = VAEConfig(covariance="diagonal", image_size=16, base_channels=4)
    a = VAE(config, generator=torch.Generator().manual_seed(5))
    b = VAE(config, generator=torch.Generator().manual_seed(5))
    c = VAE(config, generator=torch.Generator().manual_seed(6))
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert all(p.device.type == "cpu" for p in a.parameters())


def test_config_round_trip_and_validation():
    config = VAEConfig(covariance="structured", stencil=7, image_size=256, base_channels=8)
    data = config.to_dict()
    assert data["architecture"] == ARCHITECTURE
    assert VAEConfig.from_dict(data) == config
    assert "multiples of 8" in config.accepted_sizes()
    with pytest.raises(ValueError, match="architecture"):
        VAEConfig.from_dict({**data, "architecture": "conv-vae-v9"})
    with pytest.raises(ValueError, match="unknown fields"):
        VAEConfig.from_dict({**data, "dropout": 0.1})
    missing = dict(data)
    del missing["stencil"]
    with pytest.raises(ValueError, match="missing fields"):
        VAEConfig.from_dict(missing)
    for bad in (
        {"covariance": "full"},
        {"stencil": 4},
        {"stencil": True},
        {"image_size": 130},
        {"min_std": 0.0},
        {"min_std": 2.0},
        {"off_diagonal_bound": 0.0},
        {"off_diagonal_bound": 4.5},
        {"off_diagonal_bound": float("nan")},
        {"downsamplings": 0},
        {"latent_channels": 1.5},
    ):
        with pytest.raises(ValueError):
            VAEConfig.from_dict({**data, **bad})
