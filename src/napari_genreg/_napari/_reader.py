"""The napari reader: k-space and image files through :func:`napari_genreg.io.read`; a
reconstruction this plugin wrote opens again as a reconstruction, its settings with it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari_genreg._napari._layers import LayerData, layers_for, saved_result_layer

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
        images = data.reference is not None and data.meta.simulated  # not k-space
        settings = io.stored_settings(p, data) if images else None
        if settings is not None and (
            settings.get("kind") == "reconstruction" or "regularizer" in settings
        ):
            layers.append(saved_result_layer(data, settings, _stem(Path(p))))
        else:
            layers.extend(layers_for(data, _stem(Path(p))))
    return layers
