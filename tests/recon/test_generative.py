"""The generative reconstruction methods (vae-*, range) on small problems.

Small random-weight models saved in a temporary folder stand in for the built-in ones (used only
by the slow test at the end)."""

from __future__ import annotations

import itertools

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
    LAMBDA_NOISE_CONSTANT,
    LAMBDA_RANGE,
    GenerativeSettings,
    generative_method,
    load_prior_model,
    model_spec_of,
    normalise,
    padded_shape,
    use_model,
)
from napari_genreg.samples import load_image

GENERATIVE = ("vae-identity", "vae-diagonal", "vae-structured", "range")


def _save(folder, kind: str, seed: int = 0) -> str:
    config = VAEConfig(covariance=kind, stencil=3, image_size=64, base_channels=4, max_channels=8)
    model = VAE(config, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        head = model.decoder.covariance_head
        if head is not None:
            gen = torch.Generator().manual_seed(seed + 1)
            for p in head.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    save_model(model, config, folder / kind)
    return str(folder / kind)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("models")
    return {kind: _save(folder, kind) for kind in ("identity", "diagonal", "structured")}


@pytest.fixture(scope="module")
def brain64() -> np.ndarray:
    return load_image("brain", 128)[::2, ::2].copy()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, brain64) -> str:
    """A structured model whose mean is fitted to ``brain64`` (Adam until the mean's error is
    below 0.003, a few hundred steps, about 2 s; the loss sits on a plateau near 0.02 for the
    first ~200): a prior that knows the image, so that what the phase test sees is the phase
    handling."""
    config = VAEConfig(
        covariance="structured", stencil=3, image_size=64, base_channels=8, max_channels=16
    )
    model = VAE(config, generator=torch.Generator().manual_seed(0))
    x = torch.from_numpy(brain64)[None]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(1500):
        mu, _ = model.encode(x)
        loss = (model.decode_mean(mu) - x).square().mean()
        if loss.item() < 0.003:
            break
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.003, f"the fixture's prior did not fit the image: {loss.item():.4f}"
    folder = tmp_path_factory.mktemp("fitted")
    save_model(model, config, folder)
    return str(folder)


def _problem(image: np.ndarray, *, sigma: float = 0.01, mask_seed: int = 0, kind="poisson"):
    mask = make_mask(kind, image.shape, acceleration=4, seed=mask_seed)
    data = simulate_kspace(image[None], noise_sigma=sigma, seed=0, source="test")
    return build_problem(data, mask)


def test_the_registry_holds_the_generative_methods():
    for name in GENERATIVE:
        method = get_method(name)
        assert METHODS[name] is method and method.has_lam
        assert method.default_iterations >= 1
    assert model_spec_of(get_method("vae-structured")) == "builtin:structured"
    assert model_spec_of(get_method("range")) == "builtin:identity"
    assert model_spec_of(get_method("tv")) is None


def test_the_automatic_weight_follows_the_noise_level(brain64):
    low, high = _problem(brain64, sigma=0.01), _problem(brain64, sigma=0.05)
    structured = get_method("vae-structured")
    assert structured.auto_lam(low) == pytest.approx(LAMBDA_NOISE_CONSTANT / low.noise_relative)
    assert structured.auto_lam(high) == pytest.approx(structured.auto_lam(low) / 5, rel=0.05)
    assert get_method("range").auto_lam(high) == LAMBDA_RANGE == 1.0
    # on noiseless data the noise floor caps the weight at the Bayesian lam = 1
    assert structured.auto_lam(_problem(brain64, sigma=0.0)) == pytest.approx(1.0)


def test_use_model_overrides_every_generative_method_inside_the_block(models):
    with use_model(models["structured"]):
        assert model_spec_of(get_method("vae-structured")) == models["structured"]
        assert model_spec_of(get_method("range")) == models["structured"]
    assert model_spec_of(get_method("vae-structured")) == "builtin:structured"
    with pytest.raises(FileNotFoundError), use_model("/no/such/model"):
        pass


@pytest.mark.parametrize("name", GENERATIVE)
def test_every_generative_method_runs_and_its_objective_decreases(name, models, brain64):
    problem = _problem(brain64)
    with use_model(models["structured"] if name != "vae-diagonal" else models["diagonal"]):
        result = reconstruct(problem, name, iterations=6)
    assert result.image.shape == (64, 64) and np.all(np.isfinite(result.image))
    assert result.lam == pytest.approx(get_method(name).auto_lam(problem))
    assert result.latent.shape == (4, 8, 8) and result.latent.dtype == np.float32
    assert result.model in (models["structured"], models["diagonal"])
    objectives = np.array(result.objectives)
    assert np.all(np.diff(objectives) <= 1e-9 * np.abs(objectives[:-1]))
    assert objectives[-1] < objectives[0]


def test_the_x_step_settings_reach_the_solver(models, brain64, monkeypatch):
    import napari_genreg.recon.generative as generative

    seen = []
    solver = generative.alternating_minimisation

    def recording(*args, **kwargs):
        seen.append((kwargs["cg_steps"], kwargs["cg_reduction"]))
        return solver(*args, **kwargs)

    monkeypatch.setattr(generative, "alternating_minimisation", recording)
    problem = _problem(brain64)
    with use_model(models["structured"]):
        reconstruct(problem, "vae-structured", iterations=1)
    custom = GenerativeSettings(cg_steps=7, cg_reduction=None)
    method = generative_method("custom", "structured", models["structured"], settings=custom)
    next(method.solve(problem, 1.0))
    assert seen == [(50, 0.1), (7, None)]


def test_a_model_of_another_covariance_is_refused(models, brain64):
    problem = _problem(brain64)
    with use_model(models["structured"]), pytest.raises(ValueError, match="diagonal covariance"):
        reconstruct(problem, "vae-diagonal", iterations=1)


def test_output_stays_on_the_input_scale(models, brain64):
    method = generative_method("vae-test", "structured", models["structured"])
    small = _problem(brain64)
    large = _problem(1000.0 * brain64)
    assert large.scale == pytest.approx(1000.0 * small.scale, rel=1e-5)
    a = list(itertools.islice(method.solve(small, 1.0), 4))[-1]
    b = list(itertools.islice(method.solve(large, 1.0), 4))[-1]
    scale = float(a.x.abs().max())
    assert torch.allclose(b.x / 1000.0, a.x, rtol=1e-3, atol=1e-3 * scale)
    assert torch.allclose(a.z, b.z, atol=1e-3)
    assert b.objective == pytest.approx(a.objective, rel=1e-4)  # the same units


@pytest.mark.parametrize("name", ["vae-identity", "vae-structured"])
def test_sizes_that_are_not_multiples_of_8_are_padded(name, models, brain64):
    image = brain64[2:62, 6:58]  # 60 x 52: padded to 64 x 56
    assert padded_shape(image.shape, 8) == (64, 56)
    assert padded_shape((5, 9), 8) == (8, 16)
    problem = _problem(image, kind="random")
    with use_model(models["structured"]):
        result = reconstruct(problem, name, iterations=4)
    assert result.image.shape == (60, 52)
    assert result.latent.shape == (4, 8, 7)
    assert np.all(np.isfinite(result.image))
    assert result.objectives[-1] < result.objectives[0]


def _phase_map(shape: tuple[int, int]) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]] / np.array(shape).reshape(2, 1, 1)
    return np.exp(1j * (1.2 * x - 0.8 * y**2 + 0.3)).astype(np.complex64)


def test_a_smooth_phase_is_restored_and_does_not_hurt_the_magnitude(fitted, brain64):
    phase = _phase_map(brain64.shape)
    plain = _problem(brain64, sigma=0.01)
    phased = _problem(brain64 * phase, sigma=0.01)
    with use_model(fitted):
        x_plain = list(iterate(plain, "vae-structured", iterations=8))[-1].x.numpy()
        x_phased = list(iterate(phased, "vae-structured", iterations=8))[-1].x.numpy()
    signal = brain64 > 0.3 * brain64.max()
    error = np.abs(np.angle(x_phased * np.conj(phase))[signal])
    # the phase estimate from the 10 x 8 calibration region is itself off by 0.04 (median)
    estimate = np.abs(np.angle(phased.phase().numpy() * np.conj(phase))[signal])
    assert np.median(error) < max(0.06, 1.5 * np.median(estimate))
    assert np.percentile(error, 90) < 0.15

    def psnr(x: np.ndarray) -> float:
        mse = np.mean((np.abs(x) - brain64) ** 2)
        return 10 * np.log10(brain64.max() ** 2 / mse)

    assert psnr(x_phased) == pytest.approx(psnr(x_plain), abs=0.5)
    assert psnr(x_phased) > psnr(phased.zero_filled().numpy()) + 1.0


def _multicoil_problem(image: np.ndarray):
    """4 synthetic coils, random 3x, ESPIRiT maps."""
    maps = synthetic_maps(4, image.shape)
    kspace = simulate_multicoil(torch.from_numpy(image).to(torch.complex64), maps).numpy()[None]
    data = KSpaceData(kspace, image[None], None, Metadata("mc", image.shape, 0.01))
    mask = make_mask("random", image.shape, acceleration=3, center_fraction=0.2, seed=1)
    return build_problem(data, mask)


def test_multicoil_sense_problems_run(models, brain64):
    problem = _multicoil_problem(brain64)
    assert problem.maps is not None
    with use_model(models["diagonal"]):
        result = reconstruct(problem, "vae-diagonal", iterations=4)
    assert np.all(np.isfinite(result.image)) and result.latent.shape == (4, 8, 8)
    objectives = np.array(result.objectives)
    assert np.all(np.diff(objectives) <= 1e-9 * np.abs(objectives[:-1]))


def test_pixels_no_coil_sees_stay_zero_in_the_generative_reconstruction(models, brain64):
    problem = _multicoil_problem(brain64)
    blind = (problem.maps.abs().square().sum(dim=0) == 0).numpy()
    assert 0 < blind.sum() < blind.size  # ESPIRiT's maps vanish outside the object
    normalised = normalise(problem, 8)
    np.testing.assert_array_equal(normalised.support.numpy() == 0, blind)
    with use_model(models["structured"]):
        result = reconstruct(problem, "vae-structured", iterations=3)
    assert np.all(result.image[blind] == 0) and result.image[~blind].max() > 0
    # single-coil data: every pixel is seen
    assert normalise(_problem(brain64), 8).support is None


def test_models_are_loaded_once_and_never_modified(models, brain64):
    model, _ = load_prior_model(models["structured"])
    again, _ = load_prior_model(models["structured"])
    assert model is again
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with use_model(models["structured"]):
        reconstruct(_problem(brain64), "vae-structured", iterations=2)
        reconstruct(_problem(brain64), "range", iterations=2)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def _builtin(kind: str) -> bool:
    return (BUILTIN_DIR / kind / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not _builtin("structured"), reason="the built-in models are not installed")
def test_builtin_structured_prior_beats_zero_filling_on_the_held_out_sample():
    image = load_image("brain", 128)
    mask = make_mask("poisson", (128, 128), acceleration=6, seed=0)
    data = simulate_kspace(image[None], noise_sigma=0.01, seed=0, source="test")
    problem = build_problem(data, mask)
    zero_filled = reconstruct(problem, "zero-filled")
    result = reconstruct(problem, "vae-structured")
    assert result.metrics.psnr > zero_filled.metrics.psnr + 2.0
    assert result.seconds < 30
