"""The ``vn`` method: registry contract, the shipped network at its own setting, any operator,
model override, the command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_genreg.cli import main
from napari_genreg.io import simulate_kspace
from napari_genreg.io.records import KSpaceData, Metadata
from napari_genreg.models.checkpoint import CheckpointError, load_vn, save_vn
from napari_genreg.models.vn import VariationalNetwork, VNConfig
from napari_genreg.physics.coils import simulate_multicoil, synthetic_maps
from napari_genreg.physics.masks import make_mask
from napari_genreg.recon import METHODS, build_problem, check_model, iterate, reconstruct
from napari_genreg.recon.generative import use_model
from napari_genreg.recon.learned import BUILTIN_VN_STAGES, VNSolve, vn_method
from napari_genreg.samples import load_image


@pytest.fixture(scope="module")
def brain():
    return load_image("brain", 128)


def _problem(image, sigma=0.01, seed=0, **mask):
    settings = {"acceleration": 4, "center_fraction": 0.08, **mask}
    kind = settings.pop("kind", "random")
    mask = make_mask(kind, image.shape, seed=seed, **settings)
    return build_problem(
        simulate_kspace(image[None], noise_sigma=sigma, seed=seed, source="t"), mask
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    config = VNConfig(stages=3, filters=4, kernel_size=3)
    out = tmp_path_factory.mktemp("vn_models") / "tiny"
    save_vn(VariationalNetwork(config), config, out)
    return out


def test_registered_with_the_contract():
    method = METHODS["vn"]
    assert not method.has_lam
    _, card = load_vn("builtin:vn")
    assert method.default_iterations == BUILTIN_VN_STAGES == card.config.stages


def test_the_shipped_network_beats_zero_filling_at_its_own_setting(brain):
    """Colin27 (the sample) is held out of the training data."""
    problem = _problem(brain)
    zero_filled = reconstruct(problem, "zero-filled")
    result = reconstruct(problem, "vn")
    assert result.iterations == BUILTIN_VN_STAGES and result.lam == 0.0
    assert result.metrics.psnr > zero_filled.metrics.psnr + 3.0
    assert result.metrics.ssim > zero_filled.metrics.ssim


def test_states_report_the_data_term_and_iterations_are_clamped(brain):
    problem = _problem(brain)
    states = list(iterate(problem, "vn", iterations=50))
    assert [s.iteration for s in states] == list(range(1, BUILTIN_VN_STAGES + 1))
    x = states[-1].x
    expected = 0.5 * float((problem.op(x) - problem.y).abs().square().sum())
    assert states[-1].objective == pytest.approx(expected / problem.noise_sigma**2, rel=1e-5)
    assert len(list(iterate(problem, "vn", iterations=2))) == 2


def test_output_follows_the_input_scale(brain):
    small = reconstruct(_problem(brain), "vn")
    large = reconstruct(_problem(1000.0 * brain), "vn")
    np.testing.assert_allclose(large.image, 1000.0 * small.image, rtol=1e-3, atol=1e-1)


def test_multicoil_sense_and_odd_sizes(brain):
    maps = synthetic_maps(4, (128, 128))
    kspace = simulate_multicoil(torch.from_numpy(brain).to(torch.complex64), maps)
    data = KSpaceData(kspace.numpy()[None], brain[None], None, Metadata("mc", (128, 128), 1e-3))
    mask = make_mask("random", (128, 128), acceleration=4, center_fraction=0.08, seed=1)
    problem = build_problem(data, mask)
    assert problem.maps is not None
    result = reconstruct(problem, "vn")
    assert result.metrics.psnr > reconstruct(problem, "zero-filled").metrics.psnr
    odd = _problem(brain[10:107, 5:120].copy())
    assert reconstruct(odd, "vn").image.shape == (97, 115)


def test_model_override_uses_a_network_and_refuses_a_vae(tiny_model, tmp_path, capsys):
    solve = METHODS["vn"].solve
    assert isinstance(solve, VNSolve)
    with use_model(tiny_model):
        assert solve.model_spec == str(tiny_model)
    with use_model("builtin:structured"), pytest.raises(CheckpointError, match="VAE prior"):
        solve.model_spec  # noqa: B018
    with pytest.raises(CheckpointError, match="VAE prior"):
        vn_method("vn-vae", "builtin:structured")
    method = vn_method("vn-tiny", tiny_model)
    assert method.default_iterations == method.planned_iterations() == 3
    argv = ["reconstruct", "sample:brain", "--regularizer", "vn", "--model", "builtin:identity"]
    assert main([*argv, "--out", str(tmp_path / "x.npy"), "--quiet"]) == 2
    assert "VAE prior" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists()


def test_a_model_network_runs_all_its_stages_by_default(tmp_path):
    deep = VNConfig(stages=BUILTIN_VN_STAGES + 2, filters=2, kernel_size=3)
    save_vn(VariationalNetwork(deep), deep, tmp_path / "deep")
    vn = METHODS["vn"]
    assert vn.planned_iterations() == BUILTIN_VN_STAGES
    with use_model(tmp_path / "deep"):
        assert vn.planned_iterations() == deep.stages
        states = list(iterate(_problem(np.ones((32, 32), np.float32)), "vn"))
    assert [s.iteration for s in states] == list(range(1, deep.stages + 1))


def test_command_line_reconstruct_with_vn(tmp_path, tiny_model, capsys):
    out = tmp_path / "vn.npy"
    argv = ["reconstruct", "sample:brain", "--regularizer", "vn", "--noise-sigma", "0.01",
            "--center-fraction", "0.08", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    image = np.load(out)
    assert image.shape == (128, 128) and np.all(np.isfinite(image))
    said = capsys.readouterr().err
    assert "slice 0: vn 8 it" in said and "lam=" not in said  # the vn has no weight
    other = tmp_path / "tiny.npy"
    assert main([*argv[:-3], "--model", str(tiny_model), "--out", str(other), "--quiet"]) == 0
    assert not np.allclose(np.load(other), image)


def test_check_model_names_the_methods_a_folder_cannot_serve(tiny_model, tmp_path):
    check_model(tiny_model, ["tv", "vn"])  # methods without a model ignore the folder
    check_model("builtin:structured", ["tv", "vae-structured", "range", "adapt"])
    with pytest.raises(CheckpointError, match="is a VAE prior, but vn needs a variational"):
        check_model("builtin:structured", ["vae-structured", "vn"])
    with pytest.raises(CheckpointError, match="vae-identity, adapt need a VAE prior"):
        check_model(tiny_model, ["vae-identity", "adapt", "vn", "tv"])
    with pytest.raises(FileNotFoundError):
        check_model(tmp_path / "nothing here", ["tv"])
