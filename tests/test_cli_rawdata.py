"""The CLI on raw scanner data: fastMRI-style multi-coil, ISMRMRD and the TWIX example.

Every existing regulariser must run through `reconstruct` and `compare` on each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_genreg.cli import main
from napari_genreg.recon import METHODS

TWIX = Path(__file__).parent / "data" / "twix" / "gre.dat"
ALL = ",".join(METHODS)


def _compare(path: Path, out: Path, *extra: str) -> list[dict]:
    argv = ["compare", str(path), "--regularizers", ALL, "--out-dir", str(out), "--quiet",
            *extra]  # fmt: skip
    assert main(argv) == 0
    records = json.loads((out / "metrics.json").read_text())
    assert {r["regularizer"] for r in records} == set(METHODS)
    for name in METHODS:
        assert np.all(np.isfinite(np.load(out / f"{name}.npy")))
    return records


def test_fastmri_multicoil_file_every_regulariser(tmp_path, mri, capsys):
    path = tmp_path / "knee.h5"
    truth = mri.fastmri(path)
    records = _compare(path, tmp_path / "cmp", "--mask", "random", "--acceleration", "2",
                       "--slice", "1", "--center-fraction", "0.25")  # fmt: skip
    err = capsys.readouterr().err
    assert "4 coil(s) (espirit maps)" in err and "retrospectively undersampled" in err
    assert f"output cropped to {mri.recon[0]}x{mri.recon[1]}" in err
    tv = np.load(tmp_path / "cmp" / "tv.npy")
    assert tv.shape == tuple(mri.recon) == truth["reference"].shape[-2:]
    psnr = {r["regularizer"]: r["psnr"] for r in records}
    assert psnr["tv"] > psnr["zero-filled"]
    out = tmp_path / "recon.h5"
    assert main(["reconstruct", str(path), "--regularizer", "tv", "--iterations", "5",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    assert out.is_file()


def test_undersampled_fastmri_file_keeps_its_own_mask(tmp_path, mri, capsys):
    mask = np.zeros(mri.encoded[1], dtype=bool)
    mask[::2] = True
    mask[mri.encoded[1] // 2 - 8 : mri.encoded[1] // 2 + 8] = True
    path = tmp_path / "under.h5"
    mri.fastmri(path, mask=mask)
    _compare(path, tmp_path / "cmp", "--mask", "radial", "--slice", "0")
    err = capsys.readouterr().err
    assert "the file's own mask" in err and "undersampled in the file" in err
    np.testing.assert_array_equal(np.load(tmp_path / "cmp" / "mask.npy")[0], mask)


def test_ismrmrd_file_every_regulariser(tmp_path, mri, capsys):
    kspace, _ = mri.multicoil(slices=1)
    gen = np.random.default_rng(0)
    noise = 0.01 * (gen.standard_normal((2, mri.coils, 256)) + 1j * gen.standard_normal(
        (2, mri.coils, 256))) / np.sqrt(2)  # fmt: skip
    path = mri.mrd(tmp_path / "scan.h5", kspace, recon=tuple(mri.encoded), noise=noise)
    _compare(path, tmp_path / "cmp", "--mask", "random", "--acceleration", "2",
             "--center-fraction", "0.25")  # fmt: skip
    err = capsys.readouterr().err
    assert "noise sigma" in err and "(known)" in err
    assert "coil-whitened" in err


@pytest.mark.skipif(not TWIX.is_file(), reason="the TWIX example is not in this checkout")
def test_twix_example_every_regulariser(tmp_path, capsys):
    pytest.importorskip("twixtools")
    records = _compare(TWIX, tmp_path / "cmp", "--mask", "random", "--acceleration", "4")
    psnr = {r["regularizer"]: r["psnr"] for r in records}
    assert psnr["tv"] > psnr["zero-filled"]
    assert "2 coil(s)" in capsys.readouterr().err
