"""read(): the extension registry, errors, and a light package import."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_genreg.io as nio
from napari_genreg.io import READERS, SUPPORTED_EXTENSIONS, ReadError, WriteError, read


def test_registry_is_the_single_source_of_extensions() -> None:
    assert tuple(READERS) == SUPPORTED_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in READERS)
    assert {".npy", ".npz", ".nii", ".nii.gz", ".dcm", ".png", ".tif", ".tiff"} <= set(READERS)


@pytest.mark.parametrize("name", ["a.NPY", "b.Npy", "c.tar.npy"])
def test_extension_is_case_insensitive(tmp_path: Path, name: str) -> None:
    np.save(tmp_path / "x.npy", np.ones((3, 3)))
    (tmp_path / name).write_bytes((tmp_path / "x.npy").read_bytes())
    assert read(tmp_path / name).meta.extra["format"] == "npy"


def test_nii_gz_goes_to_the_nifti_reader(tmp_path: Path, valid_files: dict[str, bytes]) -> None:
    (tmp_path / "v.NII.GZ").write_bytes(valid_files[".nii.gz"])
    assert read(str(tmp_path / "v.NII.GZ")).meta.extra["format"] == "nifti"


def test_new_format_is_one_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def read_fake(path, *, noise_sigma=0.0, seed=0):
        return nio.simulate_kspace(np.ones((2, 2)), source=str(path), extra={"format": "fake"})

    monkeypatch.setitem(READERS, ".fake", read_fake)
    (tmp_path / "x.fake").write_bytes(b"")
    assert read(tmp_path / "x.fake").meta.extra["format"] == "fake"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="no such file") as info:
        read(tmp_path / "nope.npy")
    assert str(info.value) == f"{tmp_path / 'nope.npy'}: no such file"


@pytest.mark.parametrize("name", ["x.jpg", "x", "x.gz", "npy"])
def test_unknown_extension_lists_the_supported_ones(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"data")
    with pytest.raises(ReadError, match="unsupported file type") as info:
        read(tmp_path / name)
    assert all(ext in str(info.value) for ext in SUPPORTED_EXTENSIONS)


@pytest.mark.parametrize("kwargs", [{"noise_sigma": -1.0}, {"seed": -3}, {"noise_sigma": "0.1"}])
def test_bad_arguments_are_value_errors_before_reading(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError) as info:
        read(tmp_path / "does-not-matter.npy", **kwargs)
    assert not isinstance(info.value, ReadError)


def test_errors_name_the_file_and_pickle() -> None:
    for cls in (ReadError, WriteError):
        error = cls(Path("/data/a.npy"), "truncated")
        assert str(error) == "/data/a.npy: truncated"
        assert isinstance(error, ValueError)
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), copy.path, copy.problem) == (cls, "/data/a.npy", "truncated")


def test_public_api() -> None:
    for name in (
        "read",
        "write",
        "read_settings",
        "simulate_kspace",
        "KSpaceData",
        "Metadata",
        "ReadError",
        "WriteError",
        "READERS",
        "SUPPORTED_EXTENSIONS",
    ):
        assert name in nio.__all__ and hasattr(nio, name)


def test_import_is_light() -> None:
    heavy = ["torch", "nibabel", "pydicom", "PIL", "tifffile", "h5py", "scipy", "napari", "qtpy"]
    code = f"import sys, napari_genreg.io\nprint([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
