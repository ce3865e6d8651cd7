"""Import hygiene: the package and its numerics load without Qt; start-up stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_importing_the_package_loads_neither_torch_nor_qt():
    loaded = _modules_after("import napari_genreg")
    assert not {"torch", "qtpy", "PyQt6", "napari", "h5py", "scipy"} & loaded


@pytest.mark.parametrize(
    "module",
    ["napari_genreg.recon", "napari_genreg.cli", "napari_genreg.io", "napari_genreg.report"],
)
def test_numerics_io_and_cli_never_import_the_gui(module):
    loaded = _modules_after(f"import {module}")
    assert not {m for m in loaded if m.split(".")[0] in {"qtpy", "PyQt6", "napari", "magicgui"}}


def test_the_napari_modules_loaded_at_start_up_defer_torch():
    loaded = _modules_after(
        "import napari_genreg._napari._reader, napari_genreg._napari._sample_data"
    )
    assert "torch" not in loaded
