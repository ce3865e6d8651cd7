"""Losses against hand computations; the training loop: staging, checkpoints, resume, seeds, DDP."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_genreg.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_model
from napari_genreg.models.covariance import (
    DiagonalCovariance,
    IdentityCovariance,
    StructuredCovariance,
)
from napari_genreg.models.vae import VAE, VAEConfig
from napari_genreg.training import data as data_module
from napari_genreg.training.losses import (
    COVARIANCE_STAGE,
    MEAN_STAGE,
    bits_per_dim,
    elbo_terms,
    gaussian_nll,
    kl_divergence,
    set_stage,
    stage_loss,
)
from napari_genreg.training.train import (
    STATE_JSON_NAME,
    STATE_WEIGHTS_NAME,
    EpochState,
    TrainConfig,
    latent_noise,
    main,
    train,
)

DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _structured(seed: int = 0) -> StructuredCovariance:
    gen = torch.Generator().manual_seed(seed)
    log_diagonal = 0.3 * torch.randn(2, 8, 8, generator=gen, dtype=DTYPE)
    off = 0.2 * torch.randn(2, 12, 8, 8, generator=gen, dtype=DTYPE)
    return StructuredCovariance(log_diagonal, off, 5)


@pytest.mark.parametrize(
    "covariance",
    [
        IdentityCovariance(torch.tensor([-1.0, 0.5], dtype=DTYPE), (8, 8)),
        DiagonalCovariance(
            0.5 * torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
        ),
        _structured(),
    ],
    ids=["identity", "diagonal", "structured"],
)
def test_gaussian_nll_matches_dense_linear_algebra(covariance):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 8, 8, generator=gen, dtype=DTYPE)
    mean = torch.rand(2, 8, 8, generator=gen, dtype=DTYPE)
    sigma = covariance.dense()  # (2, 64, 64)
    r = (x - mean).reshape(2, 64, 1)
    _, logdet = torch.linalg.slogdet(sigma)
    quad = (r.mT @ torch.linalg.solve(sigma, r)).reshape(2)
    expected = 0.5 * (logdet + quad + 64 * math.log(2 * math.pi))
    assert torch.allclose(gaussian_nll(x, mean, covariance), expected, rtol=1e-10)
    assert torch.allclose(gaussian_nll(x[:, None], mean, covariance), expected, rtol=1e-10)
    reference = torch.distributions.MultivariateNormal(mean.reshape(2, 64), sigma)
    assert torch.allclose(-reference.log_prob(x.reshape(2, 64)), expected, rtol=1e-8)


def test_kl_and_bits_per_dim_by_hand():
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]], dtype=DTYPE)
    logvar = torch.tensor([[0.0, math.log(4.0)], [-1.0, 0.0]], dtype=DTYPE)
    by_hand = torch.tensor(
        [
            0.5 * (0.25 + 1 - 1 - 0) + 0.5 * (1 + 4 - 1 - math.log(4.0)),
            0.5 * (0 + math.exp(-1) - 1 + 1) + 0.5 * (4 + 1 - 1 - 0),
        ],
        dtype=DTYPE,
    )
    assert torch.allclose(kl_divergence(mu, logvar), by_hand)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0, 1)
    ).sum(dim=1)
    assert torch.allclose(kl_divergence(mu, logvar), reference)
    assert bits_per_dim(torch.tensor(64 * math.log(2.0)), 64).item() == pytest.approx(1.0)


def test_stage_losses_and_elbo_terms():
    model = VAE(VAEConfig(covariance="diagonal", image_size=16, base_channels=4))
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    out1 = model(x, eps, "identity")
    terms = elbo_terms(x, out1)
    n = 256
    s = out1.covariance.log_scale[0]
    nll = n * s + (x[:, 0] - out1.mean).square().sum(dim=(1, 2)) / (2 * torch.exp(2 * s))
    nll = nll + 0.5 * n * math.log(2 * math.pi)
    assert torch.allclose(terms.nll, nll, rtol=1e-5)
    loss1 = stage_loss(x, out1, MEAN_STAGE, kl_weight=0.5)
    assert torch.allclose(loss1, (terms.nll + 0.5 * terms.kl).mean() / n, rtol=1e-6)
    out2 = model(x, eps)
    loss2 = stage_loss(x, out2, COVARIANCE_STAGE, kl_weight=0.5)
    assert torch.allclose(loss2, elbo_terms(x, out2).nll.mean() / n, rtol=1e-6)
    with pytest.raises(ValueError, match="stage"):
        stage_loss(x, out2, 3)


@pytest.mark.parametrize("kind", ["identity", "structured"])
def test_set_stage_freezes_per_dorta_staging(kind):
    model = VAE(VAEConfig(covariance=kind, image_size=16, base_channels=4))
    stage1 = dict(set_stage(model, MEAN_STAGE))
    assert "decoder.log_scale" in stage1 and "encoder.head.weight" in stage1
    assert not any(name.startswith("decoder.covariance_head") for name in stage1)
    stage2 = dict(set_stage(model, COVARIANCE_STAGE))
    if kind == "identity":
        assert list(stage2) == ["decoder.log_scale"]
    else:
        assert stage2 and all(n.startswith("decoder.covariance_head.") for n in stage2)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters()} - set(stage2)
    # stage 2 gradients reach only the covariance head
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    stage_loss(x, model(x), COVARIANCE_STAGE).backward()
    assert all((p.grad is None) == (n not in stage2) for n, p in model.named_parameters())


# --------------------------------------------------------------------------------------------
# The training loop on a tiny synthetic prepared folder
# --------------------------------------------------------------------------------------------


def _discs(n: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images = []
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        r = rng.uniform(0.15, 0.35)
        inner = ((yy - cy) ** 2 + (xx - cx) ** 2 < (0.5 * r) ** 2) * rng.uniform(0.2, 0.5)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) * rng.uniform(0.5, 1.0)
        images.append(np.clip(disc - inner, 0.0, 1.0))
    return np.stack(images).astype(np.float16)


def write_prepared(root: Path, train_images: np.ndarray, val_images: np.ndarray) -> Path:
    """A folder in the layout of ``training.data.prepare_dataset``, from arrays."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, array in (("train", train_images), ("val", val_images)):
        np.save(root / f"{split}.npy", array, allow_pickle=False)
        digest = hashlib.sha256((root / f"{split}.npy").read_bytes()).hexdigest()
        arrays[split] = {
            "file": f"{split}.npy",
            "shape": list(array.shape),
            "dtype": "float16",
            "sha256": digest,
        }
    content = "".join(f"{a['file']} {a['sha256']}\n" for a in arrays.values())
    manifest = {
        "format": data_module.FORMAT_VERSION,
        "size": int(train_images.shape[-1]),
        "sources": [],
        "arrays": arrays,
        "content_sha256": hashlib.sha256(content.encode()).hexdigest(),
        "parameters": {"synthetic": "discs"},
        "software": "tests",
    }
    (root / data_module.MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    return write_prepared(root, _discs(32, 32, seed=0), _discs(8, 32, seed=1))


def _config(prepared: Path, out: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        data=prepared,
        out=out,
        covariance="structured",
        stencil=3,
        size=32,
        epochs=4,
        stage_epochs=2,
        batch_size=8,
        lr=2e-3,
        seed=7,
        device="cpu",
        base_channels=4,
        command="pytest",
    )
    return replace(base, **changes)


def _weights_sha(out: Path) -> str:
    return json.loads((out / CONFIG_NAME).read_text())["weights"]["sha256"]


@pytest.fixture(scope="module")
def reference_run(prepared, tmp_path_factory) -> tuple[TrainConfig, list[EpochState]]:
    """Four epochs, two per stage, uninterrupted."""
    config = _config(prepared, tmp_path_factory.mktemp("runs") / "reference")
    return config, list(train(config))


def test_a_run_trains_both_stages_and_writes_a_loadable_checkpoint(reference_run):
    config, states = reference_run
    assert [(s.epoch, s.stage) for s in states] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert all(math.isfinite(s.val_bits_per_dim) and s.images_per_second > 0 for s in states)
    bits = [s.val_bits_per_dim for s in states]
    assert bits[1] < bits[0]  # the mean learns
    assert bits[3] < bits[2] < bits[1]  # the covariance head learns, and beats s^2 I
    assert states[3].train_loss < states[2].train_loss
    _, card = load_model(config.out)
    assert card.config == config.vae_config()
    assert card.command == "pytest"
    assert card.metrics["epochs_completed"] == 4
    assert [h["epoch"] for h in card.metrics["history"]] == [1, 2, 3, 4]
    assert card.training["seed"] == 7 and card.training["mean_epochs"] == 2
    manifest = config.data / data_module.MANIFEST_NAME
    assert card.data_manifest_sha256 == hashlib.sha256(manifest.read_bytes()).hexdigest()
    files = sorted(p.name for p in config.out.iterdir())
    assert files == sorted([CONFIG_NAME, WEIGHTS_NAME, STATE_JSON_NAME, STATE_WEIGHTS_NAME])


def test_the_checkpoint_reproduces_the_logged_validation_figure(reference_run):
    """Loaded weights give back the last epoch's validation bits/dim exactly (same noise)."""
    config, states = reference_run
    model, _ = load_model(config.out)
    val = data_module.SliceDataset(config.data, "val", augment=False)
    x = torch.stack([val[i] for i in range(len(val))])
    eps = latent_noise(config.seed, "validation", range(len(val)), model.latent_shape((32, 32)))
    with torch.no_grad():
        terms = elbo_terms(x, model(x, eps))
    bits = bits_per_dim(terms.negative_elbo(1.0), 32 * 32).mean().item()
    assert bits == pytest.approx(states[-1].val_bits_per_dim, rel=1e-5)


def test_same_seed_same_weights_other_seed_other_weights(reference_run, tmp_path):
    config, states = reference_run
    again = list(train(replace(config, out=tmp_path / "again", epochs=3)))
    assert [s.val_bits_per_dim for s in again] == [s.val_bits_per_dim for s in states[:3]]
    other = list(train(replace(config, out=tmp_path / "other", epochs=2, stage_epochs=1, seed=8)))
    assert other[0].train_loss != states[0].train_loss


def test_loader_workers_do_not_change_the_result(reference_run, tmp_path):
    config, _ = reference_run
    short = replace(config, epochs=2, stage_epochs=1)
    plain = list(train(replace(short, out=tmp_path / "w0")))
    workers = list(train(replace(short, out=tmp_path / "w2", workers=2)))
    assert plain == [
        replace(w, seconds=p.seconds, images_per_second=p.images_per_second)
        for p, w in zip(plain, workers, strict=True)
    ]
    assert _weights_sha(tmp_path / "w0") == _weights_sha(tmp_path / "w2")


@pytest.mark.parametrize("stop_after", [1, 3])
def test_resume_continues_to_the_same_result(reference_run, tmp_path, stop_after):
    config, states = reference_run
    out = tmp_path / "interrupted"
    run = train(replace(config, out=out))
    first = [next(run) for _ in range(stop_after)]
    run.close()  # interrupted after `stop_after` epochs
    assert [s.epoch for s in first] == list(range(1, stop_after + 1))
    with pytest.raises(ValueError, match="--resume"):
        next(train(replace(config, out=out)))
    rest = list(train(replace(config, out=out, resume=True)))
    assert [s.epoch for s in rest] == list(range(stop_after + 1, 5))
    assert [s.val_bits_per_dim for s in rest] == [s.val_bits_per_dim for s in states[stop_after:]]
    assert _weights_sha(out) == _weights_sha(config.out)
    _, card = load_model(out)
    assert [h["epoch"] for h in card.metrics["history"]] == [1, 2, 3, 4]
    assert list(train(replace(config, out=out, resume=True))) == []  # nothing left to do


def test_resume_refuses_other_settings_and_foreign_states(reference_run, tmp_path):
    config, _ = reference_run
    out = tmp_path / "short"
    list(train(replace(config, out=out, epochs=2, stage_epochs=1)))
    with pytest.raises(ValueError, match="lr: saved"):
        next(train(replace(config, out=out, epochs=2, stage_epochs=1, lr=1e-2, resume=True)))
    state = json.loads((out / STATE_JSON_NAME).read_text())
    state["weights_sha256"] = "0" * 64
    (out / STATE_JSON_NAME).write_text(json.dumps(state))
    with pytest.raises(ValueError, match="does not belong to its weights"):
        next(train(replace(config, out=out, epochs=2, stage_epochs=1, resume=True)))


def test_init_from_shares_stage_one(reference_run, tmp_path):
    config, _ = reference_run
    donor = replace(config, out=tmp_path / "identity", covariance="identity", epochs=2)
    list(train(replace(donor, stage_epochs=None)))
    run = replace(  # a head with another bound than the donor's (beyond diagonal dominance)
        config,
        out=tmp_path / "structured",
        epochs=1,
        stage_epochs=None,
        init_from=donor.out,
        off_diagonal_bound=2.5,
    )
    states = list(train(run))
    assert [(s.epoch, s.stage) for s in states] == [(1, 2)]
    donor_model, _ = load_model(donor.out)
    model, card = load_model(run.out)
    reference = donor_model.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("decoder.covariance_head."):
            continue
        assert torch.equal(tensor, reference[name]), name
    assert torch.count_nonzero(model.decoder.covariance_head[-1].weight) > 0  # trained
    assert card.training["initialised_from"]["covariance"] == "identity"
    assert card.training["init_from"] == str(donor.out)
    assert f"--init-from {donor.out}" in replace(run, command=None).command_line()
    assert card.config.off_diagonal_bound == 2.5
    assert "--off-diagonal-bound 2.5" in replace(run, command=None).command_line()
    with pytest.raises(ValueError, match="architecture differs"):
        next(train(replace(run, out=tmp_path / "wide", base_channels=8)))


def test_training_leaves_the_global_rng_alone(prepared, tmp_path):
    state = torch.random.get_rng_state()
    list(
        train(
            _config(prepared, tmp_path / "rng", covariance="identity", epochs=1, stage_epochs=None)
        )
    )
    assert torch.equal(torch.random.get_rng_state(), state)


def test_train_config_validation(prepared, tmp_path):
    with pytest.raises(ValueError, match="covariance head"):
        _config(prepared, tmp_path, epochs=2, stage_epochs=2)
    assert (
        _config(prepared, tmp_path, covariance="identity", epochs=1, stage_epochs=None).mean_epochs
        == 1
    )
    assert TrainConfig(data=".", out=".", epochs=30).mean_epochs == 20
    assert TrainConfig(data=".", out=".", epochs=2).mean_epochs == 1
    bad_settings = ({"size": 36}, {"stencil": 4}, {"covariance": "full"}, {"lr": 0.0})
    for bad in (*bad_settings, {"off_diagonal_bound": 5.0}):
        with pytest.raises(ValueError):
            _config(prepared, tmp_path, **bad)
    for lr in (0.0, -1.0, float("nan")):  # one message for every bad learning rate
        with pytest.raises(ValueError, match="lr must be a positive number"):
            _config(prepared, tmp_path, lr=lr)
    # a prepared split cut short is named
    broken = tmp_path / "broken"
    shutil.copytree(prepared, broken)
    (broken / "val.npy").write_bytes((broken / "val.npy").read_bytes()[:90])
    with pytest.raises(ValueError, match=r"val\.npy: not a readable prepared split"):
        next(train(_config(broken, tmp_path / "m")))
    # a split changed after preparation (same shape): the model could not name its data
    changed = tmp_path / "changed"
    shutil.copytree(prepared, changed)
    array = np.load(changed / "train.npy")
    np.save(changed / "train.npy", array[::-1].copy())
    with pytest.raises(ValueError, match="train split is not the one prepare-data wrote"):
        next(train(_config(changed, tmp_path / "m2")))
    with pytest.raises(ValueError, match="are 32 x 32"):
        next(train(_config(prepared, tmp_path / "big", size=64)))


def test_command_line_module(prepared, tmp_path, capsys):
    out = tmp_path / "cli"
    # no --size: the prepared data's; --stencil with a diagonal head: said to be unused
    argv = ["--data", str(prepared), "--covariance", "diagonal", "--stencil", "7", "--epochs", "2"]
    argv += ["--batch-size", "16", "--seed", "1", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "epoch 2/2 stage 2" in err and "bits/dim" in err
    assert "--stencil unused with --covariance diagonal" in err
    _, card = load_model(out)
    assert card.config.covariance == "diagonal" and card.config.image_size == 32
    assert card.command.startswith(f"napari-genreg train --data {prepared} --covariance diagonal")
    assert "--stage-epochs 1 --batch-size 16" in card.command
    assert main(argv) == 2  # exists, no --resume
    assert "already holds a model" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert "holds all 2 epochs already: nothing to do" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(prepared), "--covariance", "full", "--out", str(out)])


def test_latent_noise_follows_the_item():
    a = latent_noise(3, 1, [5, 2, 9], (4, 2, 2))
    b = latent_noise(3, 1, [9, 5], (4, 2, 2))
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], latent_noise(3, 2, [5], (4, 2, 2))[0])  # another epoch
    assert not torch.equal(a[0], latent_noise(4, 1, [5], (4, 2, 2))[0])  # another seed


@pytest.mark.slow
def test_distributed_data_parallel_with_two_cpu_processes(prepared, tmp_path):
    """torchrun, 2 gloo processes x batch 8 == one process x batch 16, up to rounding."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "napari_genreg.training.train"]
    command += ["--data", str(prepared), "--covariance", "structured", "--stencil", "3"]
    command += ["--size", "32", "--epochs", "2", "--batch-size", "8", "--device", "cpu"]
    command += ["--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("epoch 2/2 stage 2") == 1  # only rank 0 reports
    _, card = load_model(out)
    assert card.training["world_size"] == 2
    assert card.command.startswith("torchrun --nproc_per_node=2 -m napari_genreg.training.train")
    assert math.isfinite(card.metrics["val_bits_per_dim"])
    state = json.loads((out / STATE_JSON_NAME).read_text())
    assert state["epoch"] == 2 and state["world_size"] == 2
    # the gradients were synchronised: the same trajectory as one process with the whole batch
    single = TrainConfig(
        data=prepared,
        out=tmp_path / "single",
        covariance="structured",
        stencil=3,
        size=32,
        epochs=2,
        batch_size=16,
        device="cpu",
    )
    states = list(train(single))
    ddp_model, _ = load_model(out)
    single_model, _ = load_model(single.out)
    reference = single_model.state_dict()
    for name, tensor in ddp_model.state_dict().items():
        assert torch.allclose(tensor, reference[name], atol=1e-5), name
    history = card.metrics["history"]
    assert history[-1]["val_bits_per_dim"] == pytest.approx(states[-1].val_bits_per_dim, rel=1e-5)


def test_a_loss_that_stops_being_finite_says_what_is_kept(prepared, tmp_path, capsys, monkeypatch):
    import napari_genreg.training.train as module
    from napari_genreg.cli import main as cli_main

    def diverging(config):
        config.out.mkdir()  # as train does before its first epoch
        raise FloatingPointError("the training loss of epoch 1 is not finite")
        yield  # a generator, as train is

    monkeypatch.setattr(module, "train", diverging)
    out = tmp_path / "m"
    argv = ["train", "--data", str(prepared), "--covariance", "diagonal", "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "epoch 1 is not finite" in err and f"{out} holds no epoch (try a smaller --lr)" in err
    assert not out.exists()  # the folder it made, left empty, is gone
