"""The ``adapt`` method (generator adaptation) through the reconstruction registry.

A small random-weight model saved in a temporary folder stands in for the built-in one, except
in the tests that check the shipped model itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_genreg.io import simulate_kspace
from napari_genreg.io.records import KSpaceData, Metadata
from napari_genreg.models.checkpoint import BUILTIN_DIR, save_model
from napari_genreg.models.vae import VAE, VAEConfig
from napari_genreg.physics.coils import simulate_multicoil, synthetic_maps
from napari_genreg.physics.masks import make_mask
from napari_genreg.recon import METHODS, build_problem, get_method, iterate, reconstruct
from napari_genreg.recon.generative import (
    ADAPT_SETTINGS,
    LAMBDA_RANGE,
    head_of,
    load_prior_model,
    model_spec_of,
    use_model,
)
from napari_genreg.samples import load_image

#: Past the latent search, so that the decoder's weights are adapted.
ADAPTED = ADAPT_SETTINGS.search_iterations + 10


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    config = VAEConfig(covariance="identity", image_size=64, base_channels=4, max_channels=8)
    folder = tmp_path_factory.mktemp("adapt") / "identity"
    save_model(VAE(config, generator=torch.Generator().manual_seed(0)), config, folder)
    return str(folder)


@pytest.fixture(scope="module")
def brain64() -> np.ndarray:
    return load_image("brain", 128)[::2, ::2].copy()


def _problem(image: np.ndarray, *, sigma: float = 0.01, kind: str = "poisson"):
    mask = make_mask(kind, image.shape, acceleration=4, seed=0)
    data = simulate_kspace(image[None], noise_sigma=sigma, seed=0, source="test")
    return build_problem(data, mask)


def _snapshot(vae: VAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def _unchanged(vae: VAE, before: dict[str, torch.Tensor]) -> bool:
    after = vae.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_adapt_is_registered_like_the_other_generative_methods():
    method = get_method("adapt")
    assert METHODS["adapt"] is method and method.has_lam
    assert model_spec_of(method) == "builtin:identity"
    assert head_of(method) == "identity"
    assert method.default_iterations > ADAPT_SETTINGS.search_iterations


def test_the_automatic_weight_is_the_bayesian_one(brain64):
    assert get_method("adapt").auto_lam(_problem(brain64, sigma=0.05)) == LAMBDA_RANGE == 1.0


def test_runs_with_another_model_and_the_loaded_model_is_never_modified(model, brain64):
    vae, _ = load_prior_model(model)
    before = _snapshot(vae)
    with use_model(model):
        assert model_spec_of(get_method("adapt")) == model
        result = reconstruct(_problem(brain64), "adapt", iterations=ADAPTED)
    assert result.iterations == ADAPTED and result.model == model
    assert result.image.shape == (64, 64) and np.all(np.isfinite(result.image))
    assert result.latent.shape == (4, 8, 8) and result.latent.dtype == np.float32
    assert all(np.isfinite(result.objectives))
    cached, _ = load_prior_model(model)
    assert cached is vae and _unchanged(vae, before)
    assert all(p.grad is None for p in vae.parameters()) and not vae.training


def test_same_seed_same_result_and_the_global_rng_is_untouched(model, brain64):
    problem = _problem(brain64, sigma=0.05)
    state = torch.get_rng_state()
    with use_model(model):
        a = list(iterate(problem, "adapt", iterations=ADAPTED))[-1]
        b = list(iterate(problem, "adapt", iterations=ADAPTED))[-1]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z) and a.objective == b.objective


def test_multicoil_and_padded_problems_run(model, brain64):
    image = torch.from_numpy(brain64).to(torch.complex64)
    maps = synthetic_maps(4, brain64.shape)
    kspace = simulate_multicoil(image, maps).numpy()[None]
    data = KSpaceData(kspace, brain64[None], None, Metadata("mc", brain64.shape, 0.01))
    mask = make_mask("random", brain64.shape, acceleration=3, center_fraction=0.2, seed=1)
    multicoil = build_problem(data, mask)
    assert multicoil.maps is not None
    padded = _problem(brain64[2:62, 6:58], kind="random")  # 60 x 52: padded to 64 x 56
    with use_model(model):
        mc = reconstruct(multicoil, "adapt", iterations=ADAPTED)
        pad = reconstruct(padded, "adapt", iterations=ADAPTED)
    assert np.all(np.isfinite(mc.image)) and mc.latent.shape == (4, 8, 8)
    assert all(np.isfinite(mc.objectives))
    assert pad.image.shape == (60, 52) and pad.latent.shape == (4, 8, 7)
    assert all(np.isfinite(pad.objectives))


def _builtin() -> bool:
    return (BUILTIN_DIR / "identity" / "config.json").is_file()


@pytest.mark.skipif(not _builtin(), reason="the built-in models are not installed")
def test_the_shipped_model_is_never_modified_by_adapt(brain64):
    vae, _ = load_prior_model("builtin:identity")
    before = _snapshot(vae)
    result = reconstruct(_problem(brain64), "adapt", iterations=ADAPTED)
    assert np.all(np.isfinite(result.image)) and result.model == "builtin:identity"
    cached, _ = load_prior_model("builtin:identity")
    assert cached is vae and _unchanged(vae, before)
    assert all(p.grad is None for p in vae.parameters())
    # the other methods that share the cached model still see the shipped weights
    assert _unchanged(load_prior_model("builtin:identity")[0], before)


@pytest.mark.slow
@pytest.mark.skipif(not _builtin(), reason="the built-in models are not installed")
def test_adaptation_beats_the_range_on_the_held_out_sample():
    image = load_image("brain", 128)
    mask = make_mask("poisson", (128, 128), acceleration=6, seed=0)
    data = simulate_kspace(image[None], noise_sigma=0.01, seed=0, source="test")
    problem = build_problem(data, mask)
    searched = reconstruct(problem, "adapt", iterations=ADAPT_SETTINGS.search_iterations)
    adapted = reconstruct(problem, "adapt")
    range_ = reconstruct(problem, "range")
    assert adapted.objectives[-1] < 0.8 * searched.objectives[-1]  # a better data fit
    assert adapted.metrics.psnr > range_.metrics.psnr + 0.5
    assert adapted.seconds < 30
