"""Training the variational network: simulated pairs as reconstruction sees them, a tiny run,
its checkpoint, seeds, the command line."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_genreg.cli import main
from napari_genreg.io import simulate_kspace
from napari_genreg.models.checkpoint import CONFIG_NAME, load_vn
from napari_genreg.models.vn import VariationalNetwork
from napari_genreg.physics.masks import make_mask
from napari_genreg.recon import build_problem
from napari_genreg.training import data as data_module
from napari_genreg.training.vn import VNTrainConfig, _generator, _loss, simulate_pairs, train_vn

SIZE = 32


def _discs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    images = []
    for _ in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2)
        r = rng.uniform(0.2, 0.35)
        inner = ((yy - cy) ** 2 + (xx - cx) ** 2 < (0.5 * r) ** 2) * rng.uniform(0.2, 0.5)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) * rng.uniform(0.6, 1.0)
        image = np.clip(disc - inner, 0.0, 1.0)
        images.append(image / image.max())
    return np.stack(images).astype(np.float16)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A folder in the layout of ``training.data.prepare_dataset``: synthetic discs."""
    root = tmp_path_factory.mktemp("prepared_vn")
    arrays = {}
    for split, array in (("train", _discs(16, 0)), ("val", _discs(4, 1))):
        np.save(root / f"{split}.npy", array, allow_pickle=False)
        digest = hashlib.sha256((root / f"{split}.npy").read_bytes()).hexdigest()
        arrays[split] = {"file": f"{split}.npy", "shape": list(array.shape),
                         "dtype": "float16", "sha256": digest}  # fmt: skip
    content = "".join(f"{a['file']} {a['sha256']}\n" for a in arrays.values())
    manifest = {
        "format": data_module.FORMAT_VERSION,
        "size": SIZE,
        "sources": [],
        "arrays": arrays,
        "content_sha256": hashlib.sha256(content.encode()).hexdigest(),
        "parameters": {"synthetic": "discs"},
        "software": "tests",
    }
    (root / data_module.MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


def _config(prepared: Path, out: Path, **changes) -> VNTrainConfig:
    base = VNTrainConfig(
        data=prepared,
        out=out,
        acceleration=2.0,
        center_fraction=0.2,
        size=SIZE,
        epochs=3,
        steps_per_epoch=4,
        batch_size=4,
        lr=1e-2,
        stages=2,
        filters=4,
        kernel_size=3,
        seed=3,
        device="cpu",
        val_images=4,
        command="pytest",
    )
    return replace(base, **changes)


@pytest.fixture(scope="module")
def tiny_run(prepared, tmp_path_factory):
    config = _config(prepared, tmp_path_factory.mktemp("vn_runs") / "tiny")
    return config, list(train_vn(config))


def test_training_pairs_are_the_reconstruction_problem(prepared):
    """The scale, phase, operator and data that training sees are those of build_problem."""
    config = _config(prepared, prepared / "unused", noise_sigma=0.0)
    image = np.load(prepared / "val.npy")[0].astype(np.float32)
    pairs = simulate_pairs(torch.from_numpy(image)[None], config, [11])
    mask = make_mask("random", (SIZE, SIZE), acceleration=2.0, center_fraction=0.2, seed=11)
    problem = build_problem(simulate_kspace(image[None], source="test"), mask)
    assert float(pairs.scale[0]) == pytest.approx(problem.scale, rel=1e-6)
    torch.testing.assert_close(pairs.phase[0], problem.phase())
    torch.testing.assert_close(pairs.y[0] * pairs.scale[0], problem.y, atol=1e-6, rtol=1e-5)
    x0 = pairs.op.adjoint(pairs.y)[0] * pairs.phase[0] * pairs.scale[0]
    torch.testing.assert_close(x0, problem.zero_filled(), atol=1e-6, rtol=1e-5)


def test_training_noise_has_the_configured_level(prepared):
    config = _config(prepared, prepared / "unused", acceleration=1.0, center_fraction=0.5)
    images = torch.zeros(4, SIZE, SIZE)
    images[:, 0, 0] = 1.0  # peak 1: the noise level is noise_sigma itself
    pairs = simulate_pairs(images, config, [1, 2, 3, 4])
    noise = pairs.y * pairs.scale[:, None, None] - torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(images.to(torch.complex64)), norm="ortho")
    )
    assert float(noise.abs().square().mean().sqrt()) == pytest.approx(0.01, rel=0.05)


def test_a_tiny_run_lowers_the_loss_and_writes_a_loadable_checkpoint(tiny_run):
    config, states = tiny_run
    assert [s.epoch for s in states] == [1, 2, 3]
    assert states[0].best
    model, card = load_vn(config.out)
    assert card.config == config.vn_config()
    assert card.command == "pytest" and card.training["mask"] == "random"
    best = max(states, key=lambda s: s.val_psnr)
    assert card.metrics["val_psnr"] == pytest.approx(best.val_psnr)
    assert [h["epoch"] for h in card.metrics["history"]] == [1, 2, 3]
    # on a fixed batch the trained network beats its own initialisation
    images = torch.from_numpy(np.load(config.data / "train.npy")[:8].astype(np.float32))
    pairs = simulate_pairs(images, config, list(range(8)))
    initial = VariationalNetwork(config.vn_config(), _generator(config.seed, "init"))
    with torch.no_grad():
        assert float(_loss(model, pairs)) < 0.9 * float(_loss(initial, pairs))
    assert best.val_psnr > best.val_psnr_zero_filled


def test_same_seed_same_weights_and_global_rng_untouched(tiny_run, tmp_path):
    config, _ = tiny_run
    state = torch.random.get_rng_state()
    again = replace(config, out=tmp_path / "again")
    list(train_vn(again))
    assert torch.equal(torch.random.get_rng_state(), state)
    first = json.loads((config.out / CONFIG_NAME).read_text())["weights"]["sha256"]
    second = json.loads((again.out / CONFIG_NAME).read_text())["weights"]["sha256"]
    assert first == second


def test_refusals(prepared, tiny_run):
    config, _ = tiny_run
    with pytest.raises(ValueError, match="already holds a model"):
        next(train_vn(config))
    with pytest.raises(ValueError, match="--size is 64"):
        next(train_vn(_config(prepared, prepared / "x", size=64)))
    with pytest.raises(ValueError, match="mask must be one of"):
        _config(prepared, prepared / "x", mask="spiralz")
    with pytest.raises(ValueError, match="lr"):
        _config(prepared, prepared / "x", lr=0.0)


def test_a_split_changed_after_preparation_is_refused(prepared, tmp_path):
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(prepared, changed)
    np.save(changed / "val.npy", np.load(changed / "val.npy")[::-1].copy())
    with pytest.raises(ValueError, match="val split is not the one prepare-data wrote"):
        next(train_vn(_config(changed, tmp_path / "out")))


def test_command_line_train_vn(prepared, tmp_path, capsys):
    out = tmp_path / "cli"
    # no --size: the prepared data's
    argv = ["train-vn", "--data", str(prepared), "--out", str(out),
            "--acceleration", "2", "--center-fraction", "0.2", "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "2", "--stages", "2", "--filters", "4",
            "--kernel-size", "3", "--val-images", "2", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "zero-filled" in err and f"wrote {out}" in err
    _, card = load_vn(out)
    assert card.command.startswith("napari-genreg train-vn --data")
    assert f"--size {SIZE}" in card.command
    assert "--max-minutes" not in card.command
    assert main(argv) == 2  # the folder holds a model now
    assert "already holds a model" in capsys.readouterr().err
