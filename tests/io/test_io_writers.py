"""Writers: round trips with settings for every format, atomic replacement, errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_genreg.io import (
    SUPPORTED_WRITE_EXTENSIONS,
    WriteError,
    read,
    read_settings,
    write,
)
from napari_genreg.io import writers as writers_module

SETTINGS = {
    "method": "covar",
    "lam": 0.05,
    "iterations": 30,
    "mask": {"kind": "cartesian", "acceleration": 4, "seed": 0},
    "note": "µ-ok ünïcode",
}


def _magnitudes(n: int = 3, h: int = 7, w: int = 5) -> np.ndarray:
    return np.random.default_rng(0).uniform(0.1, 1.0, size=(n, h, w)).astype(np.float32)


@pytest.mark.parametrize("ext", [".npy", ".nii", ".nii.gz", ".h5"])
@pytest.mark.parametrize("shape", [(3, 7, 5), (7, 5)])
def test_round_trip_data_and_settings(tmp_path: Path, ext: str, shape: tuple[int, ...]) -> None:
    magnitudes = _magnitudes().reshape(-1, 7, 5)[: shape[0] if len(shape) == 3 else 1]
    magnitudes = magnitudes.reshape(shape)
    path = write(tmp_path / f"recon{ext}", magnitudes, settings=SETTINGS)
    assert path == tmp_path / f"recon{ext}" and path.is_file()
    assert read_settings(path) == SETTINGS
    stack = magnitudes.reshape(-1, 7, 5)
    if ext == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            stored = f["reconstruction"][()]
            assert json.loads(f.attrs["settings"]) == SETTINGS
        np.testing.assert_array_equal(stored, magnitudes)
        assert stored.dtype == np.float32
    else:
        np.testing.assert_array_equal(read(path).reference, stack)
    if ext == ".npy":
        np.testing.assert_array_equal(np.load(path), magnitudes)
        assert json.loads((tmp_path / "recon.json").read_text()) == SETTINGS
    # nothing but the target (and the sidecar) is left in the folder
    expected = {f"recon{ext}"} | ({"recon.json"} if ext == ".npy" else set())
    assert {p.name for p in tmp_path.iterdir()} == expected


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_settings_in_descrip_and_extension(tmp_path: Path, ext: str) -> None:
    import nibabel as nib

    settings = {"long": "x" * 200, "lam": 1e-3}
    path = write(tmp_path / f"r{ext}", _magnitudes(), settings=settings)
    image = nib.load(path)
    text = json.dumps(settings, sort_keys=True)
    descrip = bytes(image.header["descrip"]).rstrip(b"\0").decode()
    assert descrip == text[:80]
    comments = [e for e in image.header.extensions if e.get_code() == 6]
    assert len(comments) == 1 and json.loads(comments[0].get_content()) == settings
    assert image.get_data_dtype() == np.float32
    assert read_settings(path) == settings


def test_settings_with_numpy_paths_and_dataclasses(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class Config:
        lam: float
        steps: int

    settings = {
        "lam": np.float32(0.5),
        "shape": np.array([3, 4]),
        "file": Path("a/b.npy"),
        "config": Config(0.25, 3),
    }
    path = write(tmp_path / "r.h5", _magnitudes(), settings=settings)
    assert read_settings(path) == {
        "lam": 0.5,
        "shape": [3, 4],
        "file": os.fspath(Path("a/b.npy")),
        "config": {"lam": 0.25, "steps": 3},
    }


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path / "R.NII.GZ", _magnitudes(), settings={"a": 1})
    assert read_settings(path) == {"a": 1}
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip


@pytest.mark.parametrize(
    ("name", "magnitudes", "settings", "problem"),
    [
        ("r.png", _magnitudes(), {}, r"supported: \.npy, \.nii, \.nii\.gz, \.h5"),
        ("r.npy", _magnitudes().astype(np.complex64), {}, "real"),
        ("r.npy", np.ones((2, 2, 2, 2)), {}, "shape"),
        ("r.npy", np.ones((0, 3)), {}, "empty"),
        ("r.npy", np.full((3, 3), np.nan), {}, "NaN"),
        ("r.npy", np.full((3, 3), 1e40), {}, "NaN or infinite"),
        ("r.npy", np.ones((3, 3), bool), {}, "real"),
        ("r.h5", _magnitudes(), {"f": object()}, "JSON"),
        ("r.h5", _magnitudes(), ["not", "a", "mapping"], "mapping"),
        ("missing/r.h5", _magnitudes(), {}, "does not exist"),
    ],
)
def test_write_errors(
    tmp_path: Path, name: str, magnitudes: np.ndarray, settings: object, problem: str
) -> None:
    with pytest.raises(WriteError, match=problem) as info:
        write(tmp_path / name, magnitudes, settings=settings)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{tmp_path / name}: ")
    assert not (tmp_path / name).exists()


def test_supported_write_extensions() -> None:
    assert SUPPORTED_WRITE_EXTENSIONS == (".npy", ".nii", ".nii.gz", ".h5")


@pytest.mark.parametrize("ext", [".npy", ".nii", ".nii.gz", ".h5"])
def test_failed_write_leaves_the_old_file_intact(
    tmp_path: Path, ext: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / f"r{ext}", _magnitudes(), settings={"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(_: Path) -> None:  # the content is written; flushing it fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers_module, "_fsync", disk_full)
    with pytest.raises(WriteError, match="No space left") as info:
        write(path, 2 * _magnitudes(), settings={"run": 2})
    assert isinstance(info.value.__cause__, OSError)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # same files (no temporaries left), same bytes
    assert read_settings(path) == {"run": 1}


def test_interrupted_npy_write_keeps_the_old_pair(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "r.npy", _magnitudes(), settings={"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_save(file, array, **kwargs) -> None:  # writes half a file, then dies
        file.write(b"\x93NUMPY\x01\x00")
        raise KeyboardInterrupt

    monkeypatch.setattr(writers_module.np, "save", half_save)
    with pytest.raises(KeyboardInterrupt):
        write(path, _magnitudes(), settings={"run": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_npy_write_never_replaces_someone_elses_json(tmp_path: Path) -> None:
    """``notes.json`` beside no ``notes.npy`` is not a sidecar: writing ``notes.npy`` would
    replace it, and is refused; a pair written before is replaced together."""
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    with pytest.raises(WriteError, match=r"notes\.json exists beside it"):
        write(tmp_path / "notes.npy", _magnitudes(), settings={"run": 1})
    assert notes.read_text() == '{"mine": true}' and not (tmp_path / "notes.npy").exists()
    path = write(tmp_path / "r.npy", _magnitudes(), settings={"run": 1})
    write(path, _magnitudes(), settings={"run": 2})
    assert read_settings(path) == {"run": 2}


def test_read_settings_errors(tmp_path: Path) -> None:
    from napari_genreg.io import ReadError

    np.save(tmp_path / "bare.npy", np.ones((2, 2)))
    with pytest.raises(ReadError, match="no settings sidecar"):
        read_settings(tmp_path / "bare.npy")
    with pytest.raises(ReadError, match="no such file"):
        read_settings(tmp_path / "none.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(ReadError, match=r"bad\.h5"):
        read_settings(tmp_path / "bad.h5")
    write(tmp_path / "list.npy", np.ones((2, 2)), settings={})
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ReadError, match="not an object"):
        read_settings(tmp_path / "list.npy")
