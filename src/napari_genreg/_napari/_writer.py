"""The napari writer: image layers through :func:`napari_genreg.io.write`, settings included.

napari hands a single-layer writer the path, the layer's data and its attributes
(``name``, ``scale``, ``metadata``, ...). A reconstruction's settings are the JSON-safe part of
its ``metadata["napari_genreg"]`` (:func:`layer_settings`): the method, lam, iterations, the
objectives, the metrics, the mask's description, the problem and, for the generative methods,
the prior model; arrays (the mask, the latent) and loaded records are left out. The library
writer picks the format from the extension and writes atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_genreg import __version__
from napari_genreg._napari._layers import METADATA_KEY

#: Entries of ``metadata["napari_genreg"]`` that are never written as settings: the arrays and
#: records a layer carries for the widgets (the mask is described by ``settings["mask"]``).
_LEFT_OUT = frozenset({"record", "latent", "mask"})


def _json_safe(value: Any) -> Any:
    """``value`` with NumPy scalars as numbers; ``None`` for what cannot be written (arrays
    larger than a few numbers, objects)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items() if _keep(v)}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray) and value.size <= 16:
        return value.tolist()
    return None


def _keep(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.size <= 16
    return value is None or isinstance(
        value, bool | int | float | str | np.generic | os.PathLike | Mapping | list | tuple
    )


def layer_settings(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The settings stored with a layer: its name and grid (scale and translate), and for this
    plugin's layers the JSON-safe entries of ``metadata["napari_genreg"]`` (see the module
    docstring).

    Parameters
    ----------
    attributes
        The layer's attributes, as napari passes them to a writer (``layer.as_layer_data_tuple()``).
    """
    settings: dict[str, Any] = {
        "software": f"napari-genreg {__version__}",
        "layer": str(attributes.get("name", "")),
    }
    for attribute in ("scale", "translate"):
        if attributes.get(attribute) is not None:
            settings[f"layer_{attribute}"] = [float(v) for v in attributes[attribute]]
    entry = (attributes.get("metadata") or {}).get(METADATA_KEY)
    if isinstance(entry, Mapping):
        for key, value in entry.items():
            if key not in _LEFT_OUT and _keep(value):
                settings[key] = _json_safe(value)
    return settings


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one image layer as ``.npy`` (+ ``.json`` sidecar), NIfTI or ``.h5``.

    Returns
    -------
    list of str
        The files written (for ``.npy`` the array and its sidecar).

    Raises
    ------
    napari_genreg.io.WriteError
        For an unsupported extension (the message lists the supported ones), a k-space layer
        (its log-magnitude is for display), data that is not a real ``(H, W)`` or
        ``(N, H, W)`` array (a multi-coil file's ``(N, 1, H, W)`` reference is written as
        ``(N, H, W)``), or an I/O error; the target is left as it was.
    """
    from napari_genreg.io import WriteError, write
    from napari_genreg.io.writers import sidecar_path

    if isinstance(data, list):  # a multiscale layer: its full resolution
        data = data[0]
    array = np.asarray(data)
    if attributes.get("rgb"):
        raise WriteError(path, "RGB layers cannot be written; choose a grey-scale image layer")
    entry = (attributes.get("metadata") or {}).get(METADATA_KEY)
    if isinstance(entry, Mapping) and entry.get("kind") == "kspace":
        raise WriteError(
            path,
            "a k-space layer shows log(1 + |k|), for the eye: written, its complex data would "
            "be lost; save a reconstruction or a reference image",
        )
    if array.ndim == 4 and array.shape[1] == 1:  # a multi-coil file's reference: (S, 1, H, W)
        array = array[:, 0]
        for attribute in ("scale", "translate"):  # without the coil axis's
            value = attributes.get(attribute)
            if value is not None and len(value) == 4:
                attributes = {**attributes, attribute: [value[0], *value[2:]]}
    written = write(path, array, settings=layer_settings(attributes))
    paths = [str(written)]
    if written.name.lower().endswith(".npy"):
        paths.append(str(sidecar_path(written)))
    return paths
