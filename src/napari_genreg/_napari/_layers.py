"""Converting loaded-data records to napari layer data tuples.

K-space becomes an image layer showing ``log(1 + |k|)``; the complex data itself is never
converted: the whole :class:`~napari_genreg.io.records.KSpaceData` record travels in the layer's
``metadata["napari_genreg"]``, from which the widgets take it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_genreg.io.records import KSpaceData

METADATA_KEY = "napari_genreg"

LayerData = tuple[Any, dict[str, Any], str]


def _squeeze(array: np.ndarray) -> np.ndarray:
    """Drop the slice and coil axes when they have length 1 (never the image axes)."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return array


def kspace_layer(data: KSpaceData, name: str) -> LayerData:
    """An image layer of ``log(1 + |k|)`` with the record in its metadata.

    The displayed array has shape ``(slices, coils, ky, kx)`` with length-1 axes dropped.
    """
    display = _squeeze(np.log1p(np.abs(data.kspace)).astype(np.float32))
    meta = {METADATA_KEY: {"kind": "kspace", "record": data, "source": data.meta.source}}
    kwargs = {"name": name, "metadata": meta, "colormap": "magma"}
    return (display, kwargs, "image")


def reference_layer(data: KSpaceData, name: str) -> LayerData:
    """The reference magnitude image (``(slices, H, W)``, or ``(H, W)`` for one slice;
    :func:`layers_for` gives it a coil axis of 1 beside multi-slice multi-coil k-space)."""
    if data.reference is None:
        raise ValueError(f"{data.meta.source}: there is no reference image")
    meta = {METADATA_KEY: {"kind": "reference", "record": data, "source": data.meta.source}}
    kwargs = {"name": name, "metadata": meta, "colormap": "gray"}
    return (_squeeze(data.reference), kwargs, "image")


def layers_for(data: KSpaceData, stem: str) -> list[LayerData]:
    """Measured k-space opens as a k-space layer (plus its reference, if the file has one);
    images open as a reference image layer that carries the simulated k-space with it."""
    if data.meta.simulated:
        return [reference_layer(data, stem)]
    layers = [kspace_layer(data, f"{stem} k-space")]
    if data.reference is not None:
        reference, kwargs, kind = reference_layer(data, f"{stem} reference")
        if layers[0][0].ndim == 4 and reference.ndim == 3:
            # (slices, coils, ky, kx) beside (slices, H, W): napari lines up the last axes, so
            # the slices would follow the coil slider; a coil axis of 1 keeps them on the
            # slice slider, and spread over the coils' range it shows at every coil (napari
            # starts its slider in the middle: a reference at coil 0 only was blank)
            coils = layers[0][0].shape[1]
            reference = reference[:, None]
            kwargs = {**kwargs, "scale": (1, coils, 1, 1), "translate": (0, (coils - 1) / 2, 0, 0)}
        layers.append((reference, kwargs, kind))
    return layers


def saved_result_layer(data: KSpaceData, settings: dict[str, Any], stem: str) -> LayerData:
    """A reconstruction written by this plugin (``settings["kind"] == "reconstruction"``),
    opened again: the magnitudes as a reconstruction layer named as it was saved, its settings
    back in ``metadata["napari_genreg"]``. What was not saved stays missing (the latent: the
    Covariance Inspector says to reconstruct it again; the mask array)."""
    placement = {"layer_scale": "scale", "layer_translate": "translate"}
    entry = {key: value for key, value in settings.items() if key not in ("layer", *placement)}
    entry.update(kind="reconstruction", latent=None, mask=None, source=data.meta.source)
    kwargs: dict[str, Any] = {
        "name": str(settings.get("layer") or stem),
        "metadata": {METADATA_KEY: entry},
        "colormap": "gray",
    }
    for key, attribute in placement.items():
        value = settings.get(key)
        if isinstance(value, list) and len(value) >= 2:  # the image axes (a stack's are more)
            kwargs[attribute] = tuple(float(v) for v in value[-2:])
    return (_squeeze(data.reference), kwargs, "image")
