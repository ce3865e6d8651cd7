"""The model behind the Covariance Inspector: no Qt, no numerics of its own.

A reconstruction layer made by a generative method (``vae-*``, ``range``) carries the latent
``z`` it reached, its prior model, the decoder head and the problem's intensity scale in
``metadata["napari_genreg"]`` (:func:`._session.result_layer`). From them,

- :func:`inspect_target` reads what an inspection needs from such a layer (a clear
  ``ValueError`` for any other layer);
- :func:`pixel_at` turns a click's world position into the layer's ``(row, col)``;
- :func:`compute_view` calls :func:`napari_genreg.recon.covariance.inspect_covariance` at the
  pixel (moved onto the model's padded grid) and crops the maps back to the reconstruction;
- :func:`view_layers` turns the :class:`~napari_genreg.recon.covariance.CovarianceView` into
  napari layer data tuples: the positive part (red) and the negative part (blue) of the
  covariance column, added over the reconstruction, optional correlation and variance maps and
  samples, and a Points marker at the pixel.

The Qt widget (:mod:`._covariance_widget`) runs :func:`compute_layers` in a worker thread and
only puts the tuples into layers. torch is imported by :func:`compute_view` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from napari_genreg._napari._layers import METADATA_KEY, LayerData
from napari_genreg._napari._session import KIND_COVARIANCE, KIND_RECONSTRUCTION, layer_kind

if TYPE_CHECKING:
    from napari_genreg.recon.covariance import CovarianceView

#: The layers an inspection shows, by role, in the order they are stacked (bottom to top).
ROLES = ("correlation", "variance", "samples", "positive", "negative", "marker")
#: Names of the layers by role.
LAYER_NAMES = {
    "positive": "covariance (+)",
    "negative": "covariance (−)",
    "correlation": "correlation",
    "variance": "variance",
    "samples": "prior samples",
    "marker": "inspected pixel",
}
#: Number of samples drawn when the samples are asked for.
DEFAULT_SAMPLES = 4


@dataclass(frozen=True, eq=False)
class InspectTarget:
    """What an inspection needs from a generative reconstruction layer.

    Attributes
    ----------
    name
        The layer's name.
    method
        The regulariser (``"vae-structured"``, ...).
    latent
        float32 ``(c, h, w)``: the latent ``z`` the reconstruction reached.
    model
        The prior model: ``builtin:<name>`` or a directory.
    head
        The decoder head: ``"configured"`` or ``"identity"``.
    scale
        ``c``: the problem's intensity scale (the prior saw ``x / c``).
    shape
        ``(H, W)`` of the reconstruction (the centred crop of the model's padded grid).
    device
        The device the reconstruction ran on (the model is cached there).
    layer_scale, layer_translate
        The layer's pixel size and offset (the inspection's layers are placed alike).
    """

    name: str
    method: str
    latent: np.ndarray
    model: str
    head: str
    scale: float
    shape: tuple[int, int]
    device: str = "cpu"
    layer_scale: tuple[float, float] = (1.0, 1.0)
    layer_translate: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class InspectOptions:
    """What to show besides the positive and negative parts.

    Attributes
    ----------
    correlation
        Add the correlation map (unitless, in [-1, 1]).
    variance
        Add the variance map (the reconstruction's intensity squared).
    samples
        Number of prior samples to add as a stack (0: none).
    seed
        Seed of the samples.
    """

    correlation: bool = False
    variance: bool = False
    samples: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int):
            raise ValueError(f"samples must be an integer, got {self.samples!r}")
        if self.samples < 0:
            raise ValueError(f"samples must be non-negative, got {self.samples}")

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles of :data:`ROLES` these options show."""
        wanted = {"positive", "negative", "marker"}
        wanted |= {"correlation"} if self.correlation else set()
        wanted |= {"variance"} if self.variance else set()
        wanted |= {"samples"} if self.samples else set()
        return tuple(role for role in ROLES if role in wanted)


def _entry(layer: Any) -> Mapping[str, Any]:
    meta = getattr(layer, "metadata", None) or {}
    entry = meta.get(METADATA_KEY)
    return entry if isinstance(entry, Mapping) else {}


def is_reconstruction(layer: Any) -> bool:
    """True for a reconstruction layer of the Reconstruct widget (any method)."""
    return layer_kind(layer) == KIND_RECONSTRUCTION


def is_generative(layer: Any) -> bool:
    """True for a reconstruction layer that carries a latent and a prior model."""
    entry = _entry(layer)
    return (
        is_reconstruction(layer)
        and entry.get("latent") is not None
        and entry.get("model") is not None
    )


def is_inspectable(layer: Any) -> bool:
    """True for a reconstruction by a vae-* method: what the Covariance Inspector lists (one
    whose latent went missing is listed, to say so when chosen)."""
    entry = _entry(layer)
    return (
        is_reconstruction(layer)
        and entry.get("regularizer") != "adapt"
        and (entry.get("prior_head") is not None or is_generative(layer))
    )


def inspect_target(layer: Any) -> InspectTarget:
    """What :func:`compute_view` needs, read from a reconstruction layer's metadata.

    Raises
    ------
    ValueError
        For ``None``, a layer that is no reconstruction, a reconstruction by a method without
        a generative prior (``tv``, ``wavelet``, ...) or one whose latent, model or scale is
        missing; the message names the layer.
    """
    if layer is None:
        raise ValueError("choose a reconstruction layer made by a vae-* method")
    name = getattr(layer, "name", "?")
    if not is_reconstruction(layer):
        raise ValueError(f"{name!r} is not a reconstruction; choose one made by a vae-* method")
    entry = _entry(layer)
    method = str(entry.get("regularizer", "?"))
    latent = entry.get("latent")
    model = entry.get("model")
    if entry.get("prior_head") is not None and latent is None:
        raise ValueError(
            f"{name!r} ({method}) carries no latent in its metadata: reconstruct it again to "
            "inspect its covariance"
        )
    if latent is None or model is None:
        raise ValueError(
            f"{name!r} was made by {method}, which has no generative prior: there is no "
            "covariance to inspect (reconstruct with vae-structured, vae-diagonal or vae-identity)"
        )
    if method == "adapt":
        raise ValueError(
            f"{name!r} was made by adapt, whose latent decodes to the image only through the "
            "decoder weights it adapted and did not keep: inspect a vae-* reconstruction"
        )
    latent = np.asarray(latent, dtype=np.float32)
    if latent.ndim != 3:
        raise ValueError(f"{name!r}: the latent has shape {latent.shape}, not (c, h, w)")
    problem = entry.get("problem") or {}
    scale = problem.get("scale")
    if scale is None or not np.isfinite(float(scale)) or float(scale) <= 0:
        raise ValueError(f"{name!r}: the metadata holds no intensity scale of the problem")
    shape = tuple(int(n) for n in np.shape(layer.data)[-2:])
    return InspectTarget(
        name=name,
        method=method,
        latent=latent,
        model=str(model),
        head=str(entry.get("prior_head") or "configured"),
        scale=float(scale),
        shape=(shape[0], shape[1]),
        device=str(problem.get("device", "cpu")),
        layer_scale=tuple(float(s) for s in layer.scale[-2:]),  # type: ignore[arg-type]
        layer_translate=tuple(float(t) for t in layer.translate[-2:]),  # type: ignore[arg-type]
    )


def pixel_at(layer: Any, position: Sequence[float]) -> tuple[int, int]:
    """The ``(row, col)`` of ``layer`` under the world ``position`` of a click.

    Raises
    ------
    ValueError
        When the position lies outside the layer's image.
    """
    data = np.asarray(layer.world_to_data(position), dtype=float)[-2:]
    row, col = (int(np.floor(v + 0.5)) for v in data)
    h, w = np.shape(layer.data)[-2:]
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(
            f"the click at ({data[0]:.1f}, {data[1]:.1f}) lies outside {layer.name!r} "
            f"({h} x {w}): click inside the image"
        )
    return row, col


def model_pixel(target: InspectTarget, pixel: tuple[int, int], factor: int) -> tuple[int, int]:
    """``pixel`` of the reconstruction on the model's padded grid ``(factor h, factor w)``
    (the reconstruction is its centred crop: centre ``n // 2`` at ``m // 2``)."""
    grid = (target.latent.shape[-2] * factor, target.latent.shape[-1] * factor)
    h, w = target.shape
    return (pixel[0] + grid[0] // 2 - h // 2, pixel[1] + grid[1] // 2 - w // 2)


def compute_view(
    target: InspectTarget, pixel: tuple[int, int], options: InspectOptions = InspectOptions()
) -> CovarianceView:
    """The covariance around ``pixel`` at the reconstruction's latent, on its grid.

    :func:`~napari_genreg.recon.covariance.inspect_covariance` with the target's model (loaded
    once per device and cached), latent, head and scale, at the pixel moved onto the padded
    grid, the samples drawn from ``torch.Generator(device).manual_seed(options.seed)``;
    cropped to the reconstruction's shape. The exact variance map is computed only when the
    correlation or the variance map is shown (it dominates the first click on a latent).

    Raises
    ------
    ValueError
        For a pixel outside the reconstruction.
    """
    import torch

    from napari_genreg.recon.covariance import inspect_covariance
    from napari_genreg.recon.generative import load_prior_model

    h, w = target.shape
    if not (0 <= pixel[0] < h and 0 <= pixel[1] < w):
        raise ValueError(f"pixel {tuple(pixel)} lies outside the {h} x {w} reconstruction")
    model, _ = load_prior_model(target.model, target.device)
    device = next(model.parameters()).device
    view = inspect_covariance(
        model,
        target.latent,
        model_pixel(target, pixel, model.config.factor),
        generator=torch.Generator(device=device).manual_seed(options.seed),
        samples=options.samples,
        scale=target.scale,
        head=target.head,  # type: ignore[arg-type]
        variance=options.correlation or options.variance,  # the exact map costs O(H W^3)
    )
    return view.cropped((h, w))


def warm_up(target: InspectTarget) -> None:
    """Compute what every click on ``target`` reuses: the decoder's output and the exact
    variance map at its latent (cached by :mod:`~napari_genreg.recon.covariance` for the last
    few latents), so that the first click costs what the next ones do. Run it in a worker
    when a reconstruction is chosen."""
    h, w = target.shape
    compute_view(target, (h // 2, w // 2), InspectOptions(correlation=True))


def overlay_limit(view: CovarianceView) -> float:
    """The top of the positive and negative layers' contrast: the largest magnitude of the
    column away from the pixel itself (whose variance dwarfs its neighbours')."""
    off = np.abs(view.column).copy()
    off[view.pixel] = 0.0
    top = float(off.max()) or float(np.abs(view.column).max())
    return top if top > 0 and np.isfinite(top) else 1.0


#: A negative part below this fraction of the positive part (away from the pixel) is reported
#: as none: float noise of the triangular solves, not a learned anti-correlation.
NEGLIGIBLE_NEGATIVE = 1e-3


def describe_signs(layers: dict[str, LayerData]) -> str:
    """One line on the signs of an inspection (:func:`view_layers`'s ``positive`` and
    ``negative`` layers): how large the negative part is against the positive part away from
    the clicked pixel, so that an empty blue layer is explained rather than puzzling.
    ``""`` when either layer is missing.

    Examples
    --------
    >>> meta = {METADATA_KEY: {"pixel": [0, 0]}}
    >>> pos = np.array([[9.0, 2.0], [0.5, 0.0]], dtype=np.float32)
    >>> neg = np.array([[0.0, 0.0], [0.0, 0.5]], dtype=np.float32)
    >>> layers = {"positive": (pos, {"metadata": meta}, "image"),
    ...           "negative": (neg, {"metadata": meta}, "image")}
    >>> describe_signs(layers)
    'largest negative covariance 25 % of the largest positive one away from the pixel'
    """
    if "positive" not in layers or "negative" not in layers:
        return ""
    positive, kwargs, _ = layers["positive"]
    row, col = kwargs["metadata"][METADATA_KEY]["pixel"]
    off = np.array(positive, dtype=np.float64)
    off[row, col] = 0.0
    top_positive = float(off.max())
    top_negative = float(np.max(layers["negative"][0]))
    if not (top_positive > 0 or top_negative > 0):
        return "no covariance with any other pixel"
    if top_negative < NEGLIGIBLE_NEGATIVE * top_positive:
        return (
            "no negative covariance here: every pixel varies with this one or not at all "
            "(the blue layer stays empty)"
        )
    if top_positive < NEGLIGIBLE_NEGATIVE * top_negative:
        return (
            "no positive covariance away from the pixel: every other pixel varies against "
            "this one or not at all"
        )
    return (
        f"largest negative covariance {100 * top_negative / top_positive:.0f} % of the "
        "largest positive one away from the pixel"
    )


def view_layers(
    view: CovarianceView, target: InspectTarget, options: InspectOptions = InspectOptions()
) -> dict[str, LayerData]:
    """Layer data tuples of an inspection, by role (:attr:`InspectOptions.roles`, in order).

    - ``positive``, ``negative``: ``max(±column, 0)`` in red and blue, additive blending,
      contrast ``(0, overlay_limit)``;
    - ``correlation`` (colormap ``PiYG``, contrast ``(-1, 1)``) and ``variance`` (magma);
    - ``samples``: the ``(n, H, W)`` stack on the reconstruction's contrast;
    - ``marker``: a Points layer at the pixel.

    Every layer is placed like the reconstruction and carries ``kind="covariance"``, the
    ``role``, the ``source`` layer's name and the ``pixel`` in its metadata.
    """
    top = overlay_limit(view)
    grid = {"scale": target.layer_scale, "translate": target.layer_translate}

    def meta(role: str) -> dict[str, Any]:
        entry = {
            "kind": KIND_COVARIANCE,
            "role": role,
            "source": target.name,
            "method": target.method,
            "pixel": [int(view.pixel[0]), int(view.pixel[1])],
        }
        return {METADATA_KEY: entry}

    def image(role: str, data: np.ndarray, **style: Any) -> LayerData:
        kwargs = {"name": LAYER_NAMES[role], "metadata": meta(role), **grid, **style}
        return (np.asarray(data, dtype=np.float32), kwargs, "image")

    layers: dict[str, LayerData] = {}
    for role in options.roles:
        if role == "positive":
            layers[role] = image(
                role,
                view.positive,
                colormap="red",
                blending="additive",
                contrast_limits=(0.0, top),
            )
        elif role == "negative":
            layers[role] = image(
                role,
                view.negative,
                colormap="blue",
                blending="additive",
                contrast_limits=(0.0, top),
            )
        elif role == "correlation":
            layers[role] = image(
                role, view.correlation, colormap="PiYG", contrast_limits=(-1.0, 1.0)
            )
        elif role == "variance":
            top_variance = float(view.variance.max())
            layers[role] = image(
                role,
                view.variance,
                colormap="magma",
                contrast_limits=(0.0, top_variance if top_variance > 0 else 1.0),
            )
        elif role == "samples":
            top_sample = float(np.abs(view.mean).max())
            layers[role] = image(
                role,
                view.samples,
                colormap="gray",
                contrast_limits=(0.0, top_sample if top_sample > 0 else 1.0),
            )
        else:
            kwargs = {
                "name": LAYER_NAMES[role],
                "metadata": meta(role),
                "symbol": "ring",
                "size": 2.0,
                "face_color": "yellow",
                "border_width": 0,
                **grid,
            }
            layers[role] = (np.array([view.pixel], dtype=float), kwargs, "points")
    return layers


class _Blank(NamedTuple):
    """Zero maps in the shape of an inspection (what :func:`view_layers` reads of a view)."""

    pixel: tuple[int, int]
    mean: np.ndarray
    column: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    correlation: np.ndarray
    variance: np.ndarray
    samples: np.ndarray


def placeholder_layers(
    target: InspectTarget, pixel: tuple[int, int], options: InspectOptions = InspectOptions()
) -> dict[str, LayerData]:
    """:func:`view_layers` of zero maps (the marker at ``pixel``): the layers an inspection
    will fill, styled and placed alike, for the widget to create while the inspection is
    computed (their data and contrast are replaced when it is done)."""
    zeros = np.zeros(target.shape, dtype=np.float32)
    samples = np.zeros((max(options.samples, 1), *target.shape), dtype=np.float32)
    blank = _Blank(pixel, zeros, zeros, zeros, zeros, zeros, zeros, samples)
    return view_layers(blank, target, options)  # type: ignore[arg-type]


def compute_layers(
    target: InspectTarget, pixel: tuple[int, int], options: InspectOptions = InspectOptions()
) -> dict[str, LayerData]:
    """:func:`compute_view` then :func:`view_layers`: what the widget's worker runs."""
    return view_layers(compute_view(target, pixel, options), target, options)
