"""The command line, end to end on the shipped sample and on small files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_genreg.cli import main
from napari_genreg.io import read_settings
from napari_genreg.physics.masks import make_mask
from napari_genreg.samples import load_image, load_stack


def test_compare_on_the_sample_writes_every_output_and_beats_zero_filling(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare", "sample:brain", "--mask", "poisson", "--acceleration", "4",
            "--noise-sigma", "0.01", "--regularizers", "zero-filled,tv,wavelet",
            "--out-dir", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    for name in ["zero-filled", "tv", "wavelet", "mask", "reference"]:
        assert (out / f"{name}.npy").is_file()
    assert (out / "comparison.png").stat().st_size > 10_000
    records = json.loads((out / "metrics.json").read_text())
    assert {r["regularizer"] for r in records} == {"zero-filled", "tv", "wavelet"}
    assert set(records[0]) >= {"regularizer", "slice", "psnr", "ssim", "nmse", "seconds"}
    psnr = {r["regularizer"]: r["psnr"] for r in records}
    assert psnr["tv"] > psnr["zero-filled"] and psnr["wavelet"] > psnr["zero-filled"]
    assert np.load(out / "tv.npy").shape == (128, 128)
    assert np.load(out / "mask.npy").dtype == bool
    assert "| tv |" in (out / "metrics.md").read_text()
    assert "poisson (2-D) 4x requested" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".npy", ".nii.gz", ".h5"])
def test_reconstruct_writes_each_format_with_its_settings(tmp_path, suffix):
    out = tmp_path / f"recon{suffix}"
    code = main(
        ["reconstruct", "sample:brain", "--regularizer", "tv", "--iterations", "5",
         "--out", str(out), "--quiet", "--seed", "3"]
    )  # fmt: skip
    assert code == 0 and out.is_file()
    settings = read_settings(out)
    assert settings["regularizer"] == "tv" and settings["seed"] == 3
    assert settings["iterations"] == [5]


def test_multi_slice_images_reconstruct_each_slice_with_one_mask(tmp_path):
    stack = 100.0 * load_stack("brain")
    path = tmp_path / "stack.npy"
    np.save(path, stack)
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--regularizers", "zero-filled,tv", "--iterations",
                 "20", "--out-dir", str(out), "--quiet"]) == 0  # fmt: skip
    tv = np.load(out / "tv.npy")
    assert tv.shape == stack.shape
    assert 0.5 * stack.max() < tv.max() < 2 * stack.max()  # the input's intensity scale
    records = json.loads((out / "metrics.json").read_text())
    assert sorted({r["slice"] for r in records}) == [0, 1, 2]


def test_a_user_mask_file_is_used(tmp_path):
    mask = make_mask("radial", (128, 128), acceleration=6, seed=0)
    mask_path = tmp_path / "mask.npy"
    np.save(mask_path, mask)
    out = tmp_path / "r.npy"
    assert main(["reconstruct", "sample:brain", "--mask", str(mask_path), "--regularizer",
                 "zero-filled", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    assert "mask.npy" in read_settings(out)["mask"]


def test_complex_kspace_input_is_reconstructed(tmp_path):
    import torch

    from napari_genreg.physics.fft import fft2c

    image = torch.from_numpy(load_image("brain", 128)).to(torch.complex64)
    path = tmp_path / "k.npy"
    np.save(path, fft2c(image).numpy())
    out = tmp_path / "cmp"
    assert main(["compare", str(path), "--regularizers", "zero-filled", "--out-dir",
                 str(out), "--quiet"]) == 0  # fmt: skip
    # fully sampled k-space: the reference is its own inverse FFT
    assert np.load(out / "reference.npy").shape == (128, 128)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reconstruct", "missing.npy", "--out", "x.npy"], "missing.npy"),
        (["reconstruct", "sample:nope", "--out", "x.npy"], "unknown sample"),
        (
            ["reconstruct", "sample:brain", "--out", "x.npy", "--regularizer", "magic"],
            "unknown regulariser 'magic'",
        ),
        (["reconstruct", "sample:brain", "--out", "x.xyz", "--iterations", "1"], "x.xyz"),
        (["reconstruct", "sample:brain", "--out", "x.npy", "--mask", "sparkly"], "sparkly"),
        (["reconstruct", "sample:brain", "--out", "x.npy", "--slice", "4"], "out of range"),
        (["reconstruct", "sample:brain", "--out", "x.npy", "--device", "tpu"], "unknown device"),
        (["compare", "sample:brain", "--out-dir", "d", "--regularizers", "tv,tv"], "twice"),
        (["reconstruct", "sample:brain", "--out", "x.npy", "--acceleration", "0"], ">= 1, got 0"),
        (
            [
                "reconstruct",
                "sample:brain",
                "--out",
                "x.npy",
                "--mask",
                "random",
                "--acceleration",
                "1000",
            ],
            "the random mask at 1000x samples none of the 128 kx lines (its centre is under",
        ),
        (["reconstruct", "sample:brain", "--out", "x.npy", "--mask", "none.npy"], "none.npy"),
    ],
)
def test_bad_arguments_fail_with_a_clear_message_and_write_nothing(
    argv, message, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "d").exists()


def test_output_that_cannot_be_written_fails_before_the_work(tmp_path, monkeypatch, capsys):
    """A missing folder, an unknown extension, a file where the comparison's folder would be:
    told at once, not after the reconstruction."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.npy").write_text("a file")
    for argv, message in [
        (["reconstruct", "sample:brain", "--out", "nodir/x.npy"], "the folder nodir does not"),
        (["compare", "sample:brain", "--regularizers", "tv", "--out-dir", "taken.npy"],
         "--out-dir taken.npy: taken.npy is a file, not a folder"),
        (["compare", "sample:brain", "--regularizers", "tv", "--out-dir", "taken.npy/d"],
         "--out-dir taken.npy/d: taken.npy is a file, not a folder"),
        (["covariance", "sample:brain", "--pixel", "60", "60", "--out", "taken.npy"],
         "--out taken.npy: taken.npy is a file, not a folder"),
        (["covariance", "sample:brain", "--pixel", "60", "60", "--samples", "100000", "--out",
          "c"], "--samples must lie in 0..64, got 100000"),
        (["prepare-data", "--source", "nowhere", "--validation", "x", "--out", "taken.npy"],
         "--out taken.npy: taken.npy is a file, not a folder"),
        (["train", "--data", "nowhere", "--covariance", "diagonal", "--out", "taken.npy"],
         "--out taken.npy: taken.npy is a file, not a folder"),
    ]:  # fmt: skip
        quiet = ["--quiet"] if argv[0] in ("reconstruct", "compare", "covariance") else []
        assert main([*argv, *quiet]) == 2
        err = capsys.readouterr().err
        assert message in err and "mask:" not in err  # no input was read


def test_an_empty_mask_file_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "empty.npy", np.zeros((128, 128), dtype=bool))
    assert main(["reconstruct", "sample:brain", "--mask", "empty.npy", "--out", "x.npy"]) == 2
    assert "--mask empty.npy: mask samples nothing" in capsys.readouterr().err


def test_the_weights_of_methods_without_one_are_not_shown_as_zero(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "sample:brain", "--regularizers", "zero-filled,tv", "--iterations",
                 "3", "--out-dir", str(out), "--quiet"]) == 0  # fmt: skip
    lam = {r["regularizer"]: r["lam"] for r in json.loads((out / "metrics.json").read_text())}
    assert lam["zero-filled"] is None and lam["tv"] > 0
    table = (out / "metrics.md").read_text()
    assert "| zero-filled | 1 |" in table and "| — |" in table
    assert main(["reconstruct", "sample:brain", "--regularizer", "zero-filled", "--out",
                 str(tmp_path / "zf.npy"), "--quiet"]) == 0  # fmt: skip
    assert "lam=" not in capsys.readouterr().err
    # a weight given to a method without one is said to be unused
    argv = ["compare", "sample:brain", "--regularizers", "zero-filled,tv", "--lam", "5"]
    assert main([*argv, "--iterations", "2", "--out-dir", str(tmp_path / "c2"), "--quiet"]) == 0
    assert "--lam 5 is not used by zero-filled" in capsys.readouterr().err


@pytest.mark.parametrize(
    "noise, said",
    [
        ("0", "noise sigma 0.005 of the image scale (the floor) (none simulated)"),
        ("0.05", "of the image scale (0.05 of the image maximum simulated)"),
    ],
)
def test_the_noise_line_says_what_was_simulated_and_what_is_assumed(noise, said, tmp_path, capsys):
    assert main(["reconstruct", "sample:brain", "--regularizer", "zero-filled", "--noise-sigma",
                 noise, "--out", str(tmp_path / "zf.npy"), "--quiet"]) == 0  # fmt: skip
    assert said in capsys.readouterr().err


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "napari_genreg", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "reconstruct" in done.stdout


def test_an_output_is_never_one_of_the_inputs(tmp_path, monkeypatch, capsys):
    """--out on the input (by its name, another spelling or a link) or on the mask file, and a
    comparison folder whose outputs would replace the input: refused before any work, the
    files untouched."""
    import os

    monkeypatch.chdir(tmp_path)
    np.save("image.npy", load_image("brain", 128)[::4, ::4])
    np.save("mask.npy", make_mask("poisson", (32, 32), acceleration=2, seed=0))
    os.symlink("image.npy", "link.npy")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for argv in [
        ["reconstruct", "image.npy", "--out", "image.npy"],
        ["reconstruct", "image.npy", "--out", f"{tmp_path}/./image.npy"],
        ["reconstruct", "image.npy", "--out", "link.npy"],
        ["reconstruct", "image.npy", "--mask", "mask.npy", "--out", "mask.npy"],
        ["compare", "mask.npy", "--regularizers", "zero-filled", "--out-dir", "."],
    ]:
        assert main([*argv, "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert "writing there would destroy it" in err and "mask:" not in err, argv
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before and os.path.islink("link.npy")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".napari-genreg-")]


@pytest.mark.parametrize("command", ["reconstruct", "compare", "covariance"])
def test_an_interrupted_command_leaves_no_output(command, tmp_path, monkeypatch, capsys):
    """Ctrl-C (or an error) while a command writes its files: none of them is left (they are
    moved in together at the end), and the message says so truthfully."""
    import napari_genreg.cli as cli

    def interrupted(self) -> None:  # every file written, then Ctrl-C before they move in
        assert any(self.stage.iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(cli._Staged, "publish", interrupted)
    monkeypatch.chdir(tmp_path)
    argv = {
        "reconstruct": ["reconstruct", "sample:brain", "--regularizer", "vae-identity",
                        "--iterations", "1", "--out", "out/r.npy"],
        "compare": ["compare", "sample:brain", "--regularizers", "zero-filled,tv",
                    "--iterations", "2", "--out-dir", "out/cmp"],
        "covariance": ["covariance", "sample:brain", "--regularizer", "vae-diagonal",
                       "--iterations", "1", "--pixel", "60", "60", "--out", "out/cov"],
    }[command]  # fmt: skip
    (tmp_path / "out").mkdir()
    assert main([*argv, "--quiet"]) == 130
    assert "cancelled; nothing was written" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []  # no output, no staging folder


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError("Unable to allocate 37.3 GiB for an array"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 68719476736 bytes"
        ),
    ],
)
def test_running_out_of_memory_is_one_line(exc, tmp_path, monkeypatch, capsys):
    import napari_genreg.cli as cli

    def exhausted(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli, "_run", exhausted)
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", "sample:brain", "--out", "x.npy", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: out of memory (" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(cli, "_run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):  # any other error is no out-of-memory
        main(["reconstruct", "sample:brain", "--out", "x.npy", "--quiet"])


def test_sigterm_is_a_cancel_that_cleans_up(tmp_path, monkeypatch, capsys):
    """A scheduler's SIGTERM mid-command: the clean-up runs as for Ctrl-C (no output, no
    staging folder), exit status 128 + 15; the handler before it is back afterwards."""
    import os
    import signal

    import napari_genreg.cli as cli

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cli, "_run", killed)
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["reconstruct", "sample:brain", "--out", "x.npy", "--quiet"]) == 143
    assert "cancelled; nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) == before


def test_a_mask_file_that_is_no_array_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.npy").write_text("not an array")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, message in [
        ("text.npy", "no NumPy magic string"),
        ("objects.npy", "refusing to unpickle"),
    ]:
        assert main(["reconstruct", "sample:brain", "--mask", name, "--out", "x.npy"]) == 2
        err = capsys.readouterr().err
        assert f"--mask {name}: " in err and message in err and "allow_pickle" not in err


def test_a_4d_nifti_says_which_volume_is_reconstructed(tmp_path, capsys):
    import nibabel as nib

    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((32, 32, 2, 3), np.float32), np.eye(4)), path)
    out = tmp_path / "r.npy"
    assert main(["reconstruct", str(path), "--regularizer", "zero-filled", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    assert "the first volume of a 4-D file (32x32x2x3)" in capsys.readouterr().err
