"""The napari reader: k-space and image files through :func:`napari_genreg.io.read`; a
reconstruction this plugin wrote opens again as a reconstruction, its settings with it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_genreg._napari._layers import LayerData, layers_for, saved_result_layer
from napari_genreg.io.records import KSpaceData

#: The extensions napari hands to this reader (PNG/TIFF stay with napari's own reader).
NAPARI_EXTENSIONS = (".npy", ".npz", ".nii", ".nii.gz", ".h5", ".hdf5", ".mrd", ".dat")


def _stem(path: Path) -> str:
    name = path.name
    for ext in NAPARI_EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_layers` for files this plugin reads, else ``None``."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(str(p).lower().endswith(NAPARI_EXTENSIONS) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read each file into layer data; a bad file raises :class:`~napari_genreg.io.ReadError`
    naming the file and the problem (napari shows it as a notification).

    HDF5 files are read in a child process (:func:`~napari_genreg.io.read_isolated`): a corrupt
    one can hang the HDF5 library, which would hang napari with it.
    """
    from napari_genreg import io

    paths = [path] if isinstance(path, str) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        data = io.read_isolated(p) if io.is_hdf5_path(p) else io.read(p)
        settings = _saved_settings(p, data)
        if settings is not None and (
            settings.get("kind") == "reconstruction" or "regularizer" in settings
        ):
            layers.append(saved_result_layer(data, settings, _stem(Path(p))))
        else:
            layers.extend(layers_for(data, _stem(Path(p))))
    return layers


def _saved_settings(path: str, data: KSpaceData) -> dict[str, Any] | None:
    """The settings this plugin's writer stored with the images of ``path``, or ``None``
    (any other file). An ``.h5`` file's come from the child that read it (HDF5 is read in a
    child only); a ``.npy`` file's from its sidecar, a NIfTI file's from its header."""
    from napari_genreg import io

    if data.reference is None or not data.meta.simulated:
        return None  # k-space, not images
    if io.is_hdf5_path(path):
        text = data.meta.extra.get("settings")
        try:
            settings = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            return None
    else:
        try:
            settings = io.read_settings(path)
        except io.ReadError:
            return None
    return settings if isinstance(settings, dict) else None
