"""The CLI with the generative regularisers: latents, --model and the covariance command.

A small random-weight model saved in a temporary folder stands in for the built-in ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_genreg.cli import main
from napari_genreg.io import read_settings
from napari_genreg.models.checkpoint import load_model, save_model
from napari_genreg.models.vae import VAE, VAEConfig
from napari_genreg.recon.covariance import inspect_covariance


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    config = VAEConfig(
        covariance="structured", stencil=3, image_size=64, base_channels=4, max_channels=8
    )
    model = VAE(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in model.decoder.covariance_head.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    folder = tmp_path_factory.mktemp("model")
    save_model(model, config, folder)
    return str(folder)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, model_dir):
    out = tmp_path_factory.mktemp("cmp")
    code = main(
        ["compare", "sample:brain", "--regularizers", "zero-filled,vae-structured",
         "--model", model_dir, "--iterations", "3", "--noise-sigma", "0.01",
         "--out-dir", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    return out


def test_compare_writes_the_latent_and_the_prior_settings(compared, model_dir):
    latent = np.load(compared / "vae-structured.latent.npy")
    assert latent.shape == (4, 16, 16) and latent.dtype == np.float32
    assert not (compared / "zero-filled.latent.npy").exists()
    settings = read_settings(compared / "vae-structured.npy")
    assert settings["model"] == str(model_dir)
    assert settings["prior_head"] == "configured"
    assert settings["latent"] == "vae-structured.latent.npy"
    assert 0.5 < settings["scale"][0] <= 1.0
    assert "model" not in read_settings(compared / "zero-filled.npy")
    records = json.loads((compared / "metrics.json").read_text())
    assert {r["regularizer"] for r in records} == {"zero-filled", "vae-structured"}


def test_covariance_on_a_compare_folder(compared, model_dir, tmp_path):
    out = tmp_path / "cov"
    assert main(["covariance", str(compared), "--pixel", "60", "70", "--out", str(out)]) == 0
    names = ["column", "positive", "negative", "correlation", "variance", "mean", "reconstruction"]
    arrays = {n: np.load(out / f"{n}.npy") for n in names}
    assert all(a.shape == (128, 128) for a in arrays.values())
    assert np.load(out / "samples.npy").shape == (4, 128, 128)
    np.testing.assert_allclose(arrays["positive"] - arrays["negative"], arrays["column"])
    assert (out / "covariance.png").stat().st_size > 10_000
    # the column is the model's at the saved latent, in the reconstruction's units
    settings = read_settings(compared / "vae-structured.npy")
    model, _ = load_model(model_dir)
    view = inspect_covariance(
        model, np.load(compared / "vae-structured.latent.npy"), (60, 70),
        generator=torch.Generator(), scale=settings["scale"][0], samples=0,
    )  # fmt: skip
    np.testing.assert_allclose(arrays["column"], view.column, rtol=1e-5)
    assert arrays["column"][60, 70] == pytest.approx(arrays["variance"][60, 70], rel=1e-5)
    assert arrays["variance"].min() > 0
    np.testing.assert_array_equal(
        arrays["reconstruction"], np.load(compared / "vae-structured.npy")
    )
    info = json.loads((out / "covariance.json").read_text())
    assert info["pixel"] == [60, 70] and info["model"] == str(model_dir)

    windowed = tmp_path / "win"
    assert main(["covariance", str(compared), "--pixel", "60", "70", "--window", "16",
                 "--out", str(windowed)]) == 0  # fmt: skip
    column = np.load(windowed / "column.npy")
    assert column.shape == (16, 16)
    np.testing.assert_array_equal(column, arrays["column"][52:68, 62:78])
    assert np.load(windowed / "samples.npy").shape == (4, 16, 16)


def test_covariance_of_an_input_reconstructs_first(model_dir, tmp_path, capsys):
    out = tmp_path / "cov"
    code = main(
        ["covariance", "sample:brain", "--regularizer", "vae-structured", "--model", model_dir,
         "--iterations", "2", "--pixel", "64", "64", "--window", "9", "--out", str(out),
         "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert np.load(out / "correlation.npy").shape == (9, 9)
    assert np.load(out / "correlation.npy")[4, 4] == pytest.approx(1.0, abs=1e-5)


def test_reconstruct_saves_the_latent_beside_the_output(model_dir, tmp_path):
    out = tmp_path / "recon.nii.gz"
    code = main(
        ["reconstruct", "sample:brain", "--regularizer", "vae-structured", "--model", model_dir,
         "--iterations", "2", "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert np.load(tmp_path / "recon.latent.npy").shape == (4, 16, 16)
    assert read_settings(out)["latent"] == "recon.latent.npy"


def test_covariance_of_a_reconstruct_output_uses_its_latent_and_model(model_dir, tmp_path, capsys):
    """The file `reconstruct` wrote, with its latent beside it: inspected at that latent with
    the model that reached it (not reconstructed again, from the magnitudes, with the
    default model); the flags of a reconstruction are said to be unused; another
    --regularizer than the file's is refused."""
    out = tmp_path / "recon.nii.gz"
    assert main(["reconstruct", "sample:brain", "--regularizer", "vae-structured", "--model",
                 model_dir, "--iterations", "2", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    code = main(["covariance", str(out), "--regularizer", "vae-diagonal", "--pixel", "60",
                 "70", "--out", str(tmp_path / "refused")])  # fmt: skip
    assert code == 2 and not (tmp_path / "refused").exists()
    assert "recon.nii.gz is a vae-structured reconstruction" in capsys.readouterr().err
    cov = tmp_path / "cov"
    assert main(["covariance", str(out), "--pixel", "60", "70", "--lam", "0.5",
                 "--noise-sigma", "0.1", "--mask", "radial", "--out", str(cov)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "--mask, --noise-sigma, --lam unused" in err and "recon.nii.gz" in err
    info = json.loads((cov / "covariance.json").read_text())
    assert info["model"] == model_dir and info["regularizer"] == "vae-structured"
    model, _ = load_model(model_dir)
    view = inspect_covariance(
        model, np.load(tmp_path / "recon.latent.npy"), (60, 70),
        generator=torch.Generator(), scale=read_settings(out)["scale"][0], samples=0,
    )  # fmt: skip
    np.testing.assert_allclose(np.load(cov / "column.npy"), view.column, rtol=1e-5)


def test_covariance_refuses_another_model_for_a_saved_latent(compared, tmp_path, capsys):
    code = main(["covariance", str(compared), "--pixel", "60", "70", "--model",
                 "builtin:diagonal", "--out", str(tmp_path / "c")])  # fmt: skip
    assert code == 2
    assert "were reached with the model" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_model_whose_covariance_head_never_trained_is_refused(model_dir, tmp_path, capsys):
    """A training run interrupted in stage 1 (the mean only) left a loadable model: vae-* with
    a covariance head refuse it, naming the stage and how to go on."""
    model, _ = load_model(model_dir)
    stopped = tmp_path / "stopped"
    save_model(model, model.config, stopped, metrics={"epochs_completed": 5, "stage": 1},
               training={"epochs": 400})  # fmt: skip
    code = main(["reconstruct", "sample:brain", "--regularizer", "vae-structured", "--model",
                 str(stopped), "--iterations", "1", "--out", str(tmp_path / "r.npy"),
                 "--quiet"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "covariance head of the model" in err and "stage 1 (epoch 5 of 400)" in err
    assert "--resume" in err
    assert main(["reconstruct", "sample:brain", "--regularizer", "vae-identity", "--model",
                 str(stopped), "--iterations", "1", "--out", str(tmp_path / "r.npy"),
                 "--quiet"]) == 0  # fmt: skip


def test_the_command_line_says_when_a_prior_was_trained_at_another_size(
    model_dir, tmp_path, capsys
):
    """The test model was trained on 64 x 64 images; the sample is 128 x 128 (a note, not an
    error: the prior is convolutional). A --model that no method uses is said too."""
    assert main(["reconstruct", "sample:brain", "--regularizer", "vae-structured", "--model",
                 model_dir, "--iterations", "1", "--out", str(tmp_path / "r.npy"),
                 "--quiet"]) == 0  # fmt: skip
    assert "was trained on 64x64 images, this input is 128x128" in capsys.readouterr().err
    assert main(["reconstruct", "sample:brain", "--regularizer", "tv", "--model", model_dir,
                 "--iterations", "1", "--out", str(tmp_path / "t.npy"),
                 "--quiet"]) == 0  # fmt: skip
    assert f"--model {model_dir} is not used by tv" in capsys.readouterr().err


def test_clear_errors(compared, model_dir, tmp_path, capsys):
    args = ["--out", str(tmp_path / "x"), "--pixel", "1", "1"]
    assert main(["covariance", str(compared), "--regularizer", "zero-filled", *args]) == 2
    assert "recorded no latent" in capsys.readouterr().err
    assert main(["covariance", str(compared), "--pixel", "500", "1", "--out", str(tmp_path)]) == 2
    assert "outside" in capsys.readouterr().err
    code = main(["reconstruct", "sample:brain", "--regularizer", "vae-diagonal", "--model",
                 model_dir, "--iterations", "1", "--out", str(tmp_path / "r.npy"),
                 "--quiet"])  # fmt: skip
    assert code == 2
    assert "diagonal covariance" in capsys.readouterr().err
    code = main(["compare", "sample:brain", "--regularizers", "vae-structured", "--model",
                 str(tmp_path / "missing"), "--out-dir", str(tmp_path / "c"),
                 "--quiet"])  # fmt: skip
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_covariance_on_a_folder_whose_settings_are_gone_says_so(compared, tmp_path, capsys):
    import shutil

    folder = tmp_path / "cmp"
    shutil.copytree(compared, folder)
    (folder / "vae-structured.json").unlink()
    assert (
        main(["covariance", str(folder), "--pixel", "60", "70", "--out", str(tmp_path / "c")]) == 2
    )
    assert "no settings sidecar vae-structured.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    "latent, message",
    [
        (np.full((4, 16, 16), np.nan, np.float32), "holds NaN or infinite values"),
        (np.zeros((4, 8, 8), np.float32), "is no latent of this 128 x 128 reconstruction"),
        (np.zeros((3, 16, 16), np.float32), "is no latent of this 128 x 128 reconstruction"),
        (np.zeros((16, 16), np.float32), "a latent is a float array"),
        (b"truncated", "not a readable latent array"),
    ],
)
def test_a_bad_saved_latent_is_named(compared, tmp_path, capsys, latent, message):
    """A compare folder whose latent file was damaged or replaced: a message naming it (not
    a triangular solve growing by nan, nor a crop that fails)."""
    import shutil

    folder = tmp_path / "cmp"
    shutil.copytree(compared, folder)
    target = folder / "vae-structured.latent.npy"
    if isinstance(latent, bytes):
        target.write_bytes(np.load(target).tobytes()[:10])
    else:
        np.save(target, latent)
    code = main(["covariance", str(folder), "--pixel", "60", "70", "--out", str(tmp_path / "c")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_a_model_folder_without_its_weights_is_named(model_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").unlink()
    code = main(["reconstruct", "sample:brain", "--regularizer", "vae-structured", "--model",
                 str(broken), "--iterations", "1", "--out", str(tmp_path / "r.npy")])  # fmt: skip
    assert code == 2
    assert "is no complete model: model.safetensors is missing" in capsys.readouterr().err
