"""The model behind the Reconstruct widget: no Qt, no numerics of its own.

It turns napari layers into a :class:`~napari_genreg.io.records.KSpaceData` record and a
sampling mask, bundles the user's choices into a frozen :class:`ReconRequest`, runs the request
as **one** generator of progress events (the same :func:`napari_genreg.recon.build_problem` and
:func:`napari_genreg.recon.iterate` the CLI drives), and turns finished reconstructions into
napari layer data tuples. The Qt widget (:mod:`._reconstruct_widget`) only wires controls to
these functions and runs :func:`run_request` in a ``thread_worker``.

Layers are read duck-typed through their public attributes (``data``, ``metadata``, ``name``,
``scale``) and napari's own layer classes; torch is imported only by the functions that run or
simulate (through :mod:`napari_genreg.recon` and :func:`napari_genreg.io.simulate_kspace`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from napari_genreg import __version__
from napari_genreg._napari._layers import METADATA_KEY, LayerData
from napari_genreg.io.records import KSpaceData
from napari_genreg.physics.masks import (
    MASKS,
    ONE_D,
    achieved_acceleration,
    make_mask,
    validate_mask,
)

if TYPE_CHECKING:  # torch is imported by the functions that run, not at plugin load
    from napari_genreg.recon import Result

#: ``metadata[METADATA_KEY]["kind"]`` of the layers this widget creates.
KIND_RECONSTRUCTION = "reconstruction"
KIND_MASK = "sampling mask"
#: A method's layer while its run goes on (it shows the previews; it becomes the result).
KIND_PREVIEW = "preview"
#: Layers of the Covariance Inspector (covariance maps, samples, the pixel marker).
KIND_COVARIANCE = "covariance"
#: Layers of these kinds are neither inputs nor drawn masks.
OWN_KINDS = frozenset({KIND_RECONSTRUCTION, KIND_MASK, KIND_PREVIEW, KIND_COVARIANCE})

#: Name of the live sampling-mask layer.
MASK_LAYER_NAME = "sampling mask"
#: Seconds between two preview images at least (the event loop is never flooded with images).
PREVIEW_INTERVAL = 0.25
#: Seconds between two refreshes of the live view (preview, progress bar, status, plot) at least.
REFRESH_INTERVAL = 0.25
#: Relative noise of k-space simulated from an image layer (the brain sample's level).
DEFAULT_NOISE_SIGMA = 0.01


# ----------------------------------------------------------------------------------- layers


def layer_kind(layer: Any) -> str | None:
    """``metadata["napari_genreg"]["kind"]`` of a layer, or ``None``."""
    meta = getattr(layer, "metadata", None) or {}
    entry = meta.get(METADATA_KEY)
    return entry.get("kind") if isinstance(entry, Mapping) else None


def _record(layer: Any) -> KSpaceData | None:
    meta = getattr(layer, "metadata", None) or {}
    entry = meta.get(METADATA_KEY)
    record = entry.get("record") if isinstance(entry, Mapping) else None
    return record if isinstance(record, KSpaceData) else None


def input_kind(layer: Any) -> str | None:
    """What a layer offers as the input of a reconstruction.

    Returns
    -------
    str or None
        ``"kspace"`` for a layer that carries a k-space record (from this plugin's reader or
        sample), ``"image"`` for any other grey-scale image layer of 2 or 3 dimensions (k-space
        is simulated from it), ``None`` otherwise (RGB, multiscale and this widget's own
        layers included).
    """
    from napari.layers import Image

    if not isinstance(layer, Image) or layer_kind(layer) in OWN_KINDS:
        return None
    if layer_kind(layer) == "kspace" and _record(layer) is not None:
        return "kspace"
    if layer.rgb or layer.multiscale:
        return None
    if layer.ndim in (2, 3) or (layer.ndim == 4 and np.shape(layer.data)[1] == 1):
        return "image"  # 4-D: a reference beside multi-coil k-space, (slices, 1, H, W)
    return None


def is_mask_source(layer: Any) -> bool:
    """True for a Labels or Shapes layer (not this widget's own) that can be drawn as a mask."""
    from napari.layers import Labels, Shapes

    return isinstance(layer, Labels | Shapes) and layer_kind(layer) not in OWN_KINDS


def kspace_shape(layer: Any) -> tuple[int, int]:
    """``(ky, kx)`` of the k-space an input layer gives (the image shape for image layers)."""
    record = _record(layer) if input_kind(layer) == "kspace" else None
    shape = record.kspace.shape[-2:] if record is not None else np.shape(layer.data)[-2:]
    return int(shape[0]), int(shape[1])


def slice_count(layer: Any) -> int:
    """Number of slices an input layer offers."""
    if input_kind(layer) == "kspace":
        return _record(layer).n_slices
    return 1 if layer.ndim == 2 else int(np.shape(layer.data)[0])


def slice_axis(layer: Any) -> int | None:
    """The axis of ``layer``'s data that runs over the slices an input offers (``None`` for
    one slice)."""
    return 0 if slice_count(layer) > 1 else None


def coil_count(layer: Any) -> int:
    """Number of receive coils (1 for image layers)."""
    return _record(layer).n_coils if input_kind(layer) == "kspace" else 1


def acquired_mask(layer: Any) -> np.ndarray | None:
    """The acquisition mask a file came with (undersampled data), else ``None``."""
    return _record(layer).mask if input_kind(layer) == "kspace" else None


def grid_scale(layer: Any) -> tuple[float, float]:
    """Pixel size of the last two axes of a layer (for the layers placed over it)."""
    return tuple(float(s) for s in layer.scale[-2:])  # type: ignore[return-value]


def grid_translate(layer: Any) -> tuple[float, float]:
    """Position of the first pixel of a layer along its last two axes (for the layers placed
    over it)."""
    return tuple(float(t) for t in layer.translate[-2:])  # type: ignore[return-value]


def describe_input(layer: Any) -> str:
    """One line on what an input layer holds and how it will be used."""
    ky, kx = kspace_shape(layer)
    slices = slice_count(layer)
    many = f", {slices} slices" if slices > 1 else ""
    if input_kind(layer) != "kspace":
        return f"image {ky}x{kx}{many}: k-space is simulated from it"
    record = _record(layer)
    coils = f"{record.n_coils} coil" + ("s" if record.n_coils > 1 else "")
    origin = "simulated" if record.meta.simulated else "measured"
    sampled = "undersampled in the file" if record.mask is not None else "fully sampled"
    return f"{origin} k-space {ky}x{kx}, {coils}{many}, {sampled}"


def load_input(
    layer: Any,
    *,
    slice_index: int = 0,
    noise_sigma: float = DEFAULT_NOISE_SIGMA,
    seed: int = 0,
) -> KSpaceData:
    """The one-slice k-space record an input layer gives.

    A k-space layer gives its record's slice ``slice_index`` unchanged (its own noise and, for
    undersampled files, its own mask). Any other image layer is taken as a magnitude image:
    slice ``slice_index`` of it becomes single-coil k-space by
    :func:`~napari_genreg.io.simulate_kspace` with complex noise of ``noise_sigma`` relative
    to the image maximum and the given ``seed``.

    Raises
    ------
    ValueError
        For a layer that is no input (see :func:`input_kind`), a slice out of range, or an
        image that cannot be simulated from (the message names the layer).
    """
    kind = input_kind(layer)
    if kind is None:
        raise ValueError(f"layer {layer.name!r} is neither k-space nor a grey-scale image")
    count = slice_count(layer)
    if not 0 <= slice_index < count:
        raise ValueError(f"slice {slice_index} is out of range for {layer.name!r} (0..{count - 1})")
    if kind == "kspace":
        return _record(layer).slice(slice_index)
    from napari_genreg.io import simulate_kspace

    image = np.asarray(layer.data)
    if image.ndim >= 3:
        image = image[slice_index].reshape(image.shape[-2:])
    return simulate_kspace(
        image[None],
        noise_sigma=noise_sigma,
        seed=seed,
        source=f"layer:{layer.name}",
        extra={"layer": layer.name, "slice": slice_index, "seed": seed},
    )


def mask_from_layer(layer: Any, shape: tuple[int, int]) -> np.ndarray:
    """A sampling mask drawn in a Labels or Shapes layer.

    Labels: every non-zero pixel is sampled (leading axes beyond the last two are combined,
    so painting in any plane counts). Shapes: the union of all shapes, filled for polygons,
    rectangles and ellipses, one pixel wide for lines and paths. Coordinates are the layer's
    own pixel coordinates, which are the k-space grid's when the layer was drawn over the
    k-space (napari creates new layers at the scale of the existing ones).

    Returns
    -------
    numpy.ndarray
        bool ``shape``, checked by :func:`~napari_genreg.physics.masks.validate_mask`.

    Raises
    ------
    ValueError
        For another layer type, a Labels layer whose last two axes are not ``shape``, or a
        drawing that samples nothing.
    """
    from napari.layers import Labels, Shapes

    if isinstance(layer, Labels):
        data = np.asarray(layer.data)
        if data.shape[-2:] != tuple(shape):
            raise ValueError(
                f"the labels layer {layer.name!r} is {data.shape[-2]}x{data.shape[-1]}, but the "
                f"k-space is {shape[0]}x{shape[1]}"
            )
        drawn = data != 0
        if drawn.ndim > 2:
            drawn = drawn.reshape(-1, *shape).any(axis=0)
    elif isinstance(layer, Shapes):
        if len(layer.data) == 0:
            drawn = np.zeros(shape, dtype=bool)
        else:
            drawn = np.asarray(layer.to_masks(mask_shape=tuple(shape))).any(axis=0)
    else:
        raise ValueError(f"layer {layer.name!r} is neither a Labels nor a Shapes layer")
    try:
        return validate_mask(drawn, shape)
    except ValueError as exc:
        raise ValueError(f"the mask drawn in {layer.name!r}: {exc}") from exc


# ------------------------------------------------------------------------------------ masks


@dataclass(frozen=True)
class MaskSpec:
    """A generated sampling mask: a kind of :data:`~napari_genreg.physics.masks.MASKS` and its
    parameters.

    Attributes
    ----------
    kind
        A key of ``MASKS`` (``"poisson"``, ``"random"``, ...).
    acceleration
        Requested acceleration ``R >= 1``.
    center_fraction
        Fully sampled centre, or ``None`` for
        :func:`~napari_genreg.physics.masks.default_center_fraction`.
    seed
        Seed of the draw.
    """

    kind: str
    acceleration: float = 4.0
    center_fraction: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MASKS:
            raise ValueError(f"unknown mask {self.kind!r}; choose from {', '.join(MASKS)}")

    def draw(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask, bool ``shape`` (:func:`~napari_genreg.physics.masks.make_mask`)."""
        return make_mask(
            self.kind,
            shape,
            acceleration=self.acceleration,
            center_fraction=self.center_fraction,
            seed=self.seed,
        )

    @property
    def label(self) -> str:
        """Short label for layer names, e.g. ``"poisson 4x"``."""
        return f"{self.kind} {self.acceleration:g}x"

    @property
    def dimensions(self) -> str:
        """``"1-D"`` (Cartesian lines) or ``"2-D"``."""
        return "1-D" if self.kind in ONE_D else "2-D"


def acceleration_text(mask: np.ndarray) -> str:
    """``"4.00x achieved (4096 of 16384 samples)"``."""
    sampled = int(np.count_nonzero(mask))
    if sampled == 0:
        return "samples nothing"
    return f"{achieved_acceleration(mask):.2f}x achieved ({sampled} of {mask.size} samples)"


class ResolvedMask(NamedTuple):
    """The mask a run will use.

    Attributes
    ----------
    mask
        bool ``(ky, kx)``.
    label
        For layer names: ``"poisson 4x"``, ``"<drawn layer> 5.3x"`` or ``"acquired 3.9x"``.
    acquired
        True for the input's own acquisition mask (it is then not applied again).
    summary
        One line for the widget: the kind of mask and its achieved acceleration.
    """

    mask: np.ndarray
    label: str
    acquired: bool
    summary: str


def resolve_mask(layer: Any, *, spec: MaskSpec | None = None, drawn: Any = None) -> ResolvedMask:
    """The mask for input ``layer``: its own acquisition mask when it has one, else the mask
    drawn in layer ``drawn`` (:func:`mask_from_layer`) when given, else ``spec`` drawn.

    Raises
    ------
    ValueError
        For a drawn mask that samples nothing or does not fit, or a spec whose centre does not
        fit its acceleration.
    """
    shape = kspace_shape(layer)
    own = acquired_mask(layer)
    if own is not None:
        rate = achieved_acceleration(own)
        summary = f"the file's own acquisition mask: {acceleration_text(own)}"
        return ResolvedMask(own, f"acquired {rate:.1f}x", True, summary)
    if drawn is not None:
        mask = mask_from_layer(drawn, shape)
        label = f"{drawn.name} {achieved_acceleration(mask):.1f}x"
        return ResolvedMask(mask, label, False, f"drawn: {acceleration_text(mask)}")
    if spec is None:
        raise ValueError("no sampling mask chosen")
    mask = spec.draw(shape)
    return ResolvedMask(mask, spec.label, False, f"{spec.dimensions}, {acceleration_text(mask)}")


def mask_layer(
    mask: np.ndarray,
    scale: Sequence[float] = (1.0, 1.0),
    translate: Sequence[float] = (0.0, 0.0),
) -> LayerData:
    """The live sampling-mask layer: an image of 1 where k-space is sampled, 0 elsewhere,
    added in cyan over what lies below (an Image layer: a Labels layer would compile its
    colour map with numba on first use, seconds at start-up)."""
    meta = {METADATA_KEY: {"kind": KIND_MASK}}
    kwargs = {
        "name": MASK_LAYER_NAME,
        "metadata": meta,
        "colormap": "cyan",
        "contrast_limits": (0.0, 1.0),
        "blending": "additive",
        "opacity": 0.6,
        "scale": tuple(scale),
        "translate": tuple(translate),
    }
    return (np.asarray(mask, dtype=np.uint8), kwargs, "image")


# ---------------------------------------------------------------------------------- choices


class MethodInfo(NamedTuple):
    """What the widget shows of a registered method.

    ``objective`` names what the method's states report: ``"objective"``, or ``"data term"``
    for a variational network (it minimises no fixed objective).
    """

    name: str
    description: str
    default_iterations: int
    has_lam: bool
    objective: str = "objective"


class Choices(NamedTuple):
    """The regularisers and devices to offer."""

    methods: tuple[MethodInfo, ...]
    devices: tuple[str, ...]


def load_choices() -> Choices:
    """Every method of :data:`~napari_genreg.recon.METHODS` (so methods registered later appear
    by themselves) and ``"auto"`` followed by :func:`~napari_genreg.recon.available_devices`.

    This imports torch (through the registry): call it off napari's start-up path.
    """
    from napari_genreg.recon import METHODS, available_devices

    methods = tuple(
        MethodInfo(
            m.name,
            m.description,
            m.default_iterations,
            m.has_lam,
            m.objective,
        )
        for m in METHODS.values()
    )
    return Choices(methods, ("auto", *available_devices()))


# ---------------------------------------------------------------------------------- request


@dataclass(frozen=True, eq=False)
class ReconRequest:
    """Everything one run needs: the input, the mask and the regularisers to compare.

    Attributes
    ----------
    data
        One slice of k-space (:func:`load_input`).
    mask
        bool ``(ky, kx)`` applied retrospectively, or ``None`` for data that carries its own.
    mask_label
        How the mask is named in layer names (``"poisson 4x"``, ``"acquired 3.9x"``).
    methods
        Names of :data:`~napari_genreg.recon.METHODS`, run in this order.
    lam
        Weight for every method that has one, or ``None`` for each method's automatic rule.
    iterations
        Iterations of every method, or ``None`` for each method's default.
    device
        ``"auto"`` or a device name (:func:`~napari_genreg.recon.resolve_device`).
    model
        A model folder (``napari-genreg train`` or ``train-vn``) that replaces the shipped model
        of every method that loads one, as the CLI's ``--model``; ``None``: the shipped models.
        Checked against the methods when the request is made
        (:func:`~napari_genreg.recon.check_model`).
    coil_maps
        ``"espirit"`` or ``"lowres"`` (multi-coil data only).
    source
        Name of the input layer.
    slice_index
        The slice of an input of several slices (named in the results), ``None`` for one.
    scale, translate
        Pixel size and first pixel's position of the result layers (the image layer's, for
        image inputs).
    """

    data: KSpaceData
    mask: np.ndarray | None
    mask_label: str
    methods: tuple[str, ...]
    lam: float | None = None
    iterations: int | None = None
    device: str = "auto"
    model: str | None = None
    coil_maps: str = "espirit"
    source: str = ""
    slice_index: int | None = None
    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("choose at least one regulariser")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"a regulariser is chosen twice: {', '.join(self.methods)}")
        if self.lam is not None and not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam must be a finite non-negative number, got {self.lam}")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if self.data.n_slices != 1:
            raise ValueError("a request holds one slice (see load_input)")
        if self.model is not None:
            from napari_genreg.recon import check_model

            check_model(self.model, self.methods)

    def planned_iterations(self) -> dict[str, int]:
        """``method -> iterations`` it will run at most (imports the method registry)."""
        from napari_genreg.recon import get_method
        from napari_genreg.recon.generative import use_model

        if self.iterations is not None:
            return dict.fromkeys(self.methods, self.iterations)
        with use_model(self.model):  # a vn folder brings its own number of stages
            return {name: get_method(name).planned_iterations() for name in self.methods}

    def result_names(self) -> dict[str, str]:
        """``method -> layer name`` of every result (imports the method registry)."""
        from napari_genreg.recon import get_method

        return {name: self.result_name(name, get_method(name).has_lam) for name in self.methods}

    def result_name(self, method: str, has_lam: bool) -> str:
        """The layer name of a result, e.g. ``"tv · poisson 4x"`` (``"· lam 20"`` when set,
        ``"· slice 3"`` for an input of several slices)."""
        name = f"{method} · {self.mask_label}"
        if has_lam and self.lam is not None:
            name += f" · lam {self.lam:g}"
        if self.slice_index is not None:
            name += f" · slice {self.slice_index}"
        return name

    @property
    def title(self) -> str:
        """What the results are of: ``"brain, poisson 4x"`` (``", slice 3"``)."""
        where = "" if self.slice_index is None else f", slice {self.slice_index}"
        return f"{self.source}{where}, {self.mask_label}"


# -------------------------------------------------------------------------------------- run


class ProblemReady(NamedTuple):
    """The problem is built; iterations follow.

    Attributes
    ----------
    info
        What the problem is (see :func:`problem_info`).
    display_range
        ``(0, top)`` contrast limits shared by the preview and all results: the reference's
        maximum, or the image scale without a reference.
    planned
        ``method -> iterations`` at most.
    notes
        What the user should know of the models used (a prior trained at another size).
    """

    info: dict[str, Any]
    display_range: tuple[float, float]
    planned: dict[str, int]
    notes: tuple[str, ...] = ()


class IterationEvent(NamedTuple):
    """One iteration of one method.

    Attributes
    ----------
    method
        The method's name.
    iteration
        1-based.
    planned
        The method's iteration limit.
    objective
        The objective after this iteration.
    preview
        float32 ``(H, W)`` magnitude of the current iterate, at most once per
        :data:`PREVIEW_INTERVAL`; ``None`` otherwise.
    """

    method: str
    iteration: int
    planned: int
    objective: float
    preview: np.ndarray | None


@dataclass(frozen=True, eq=False)
class MethodResult:
    """A finished reconstruction with everything its layer carries.

    Attributes
    ----------
    recon
        The reconstruction itself (:class:`napari_genreg.recon.Result`, as the CLI gets it:
        image, lam, iterations, seconds, objectives, metrics, latent, model).
    name
        The layer name (:meth:`ReconRequest.result_name`).
    has_lam
        Whether the method has a weight at all.
    lam_automatic
        True when ``recon.lam`` came from the method's automatic rule.
    settings
        The request's settings for this method (JSON-serialisable).
    info
        The problem's description (:func:`problem_info`).
    display_range
        Contrast limits shared by the run's results.
    scale, translate
        Pixel size and first pixel's position of the layer.
    prior_head
        The decoder head of a generative method (``"configured"`` or ``"identity"``), else
        ``None``.
    """

    recon: Result = field(repr=False)
    name: str
    has_lam: bool
    lam_automatic: bool
    settings: dict[str, Any]
    info: dict[str, Any]
    display_range: tuple[float, float]
    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)
    prior_head: str | None = None

    @property
    def method(self) -> str:
        """The method's name."""
        return self.recon.name


class MethodFinished(NamedTuple):
    """A method has run to its limit; ``result`` holds the reconstruction."""

    result: MethodResult


RunEvent = ProblemReady | IterationEvent | MethodFinished


# ------------------------------------------------------------------------------ live view


class Throttle:
    """A rate limiter: lets an update through at most once per ``interval`` seconds.

    Parameters
    ----------
    interval
        Seconds between two updates at least.
    clock
        Monotonic clock in seconds (injectable for tests).

    Examples
    --------
    >>> now = [0.0]
    >>> throttle = Throttle(0.25, clock=lambda: now[0])
    >>> throttle.take(), throttle.take(), throttle.wait()
    (True, False, 0.25)
    >>> now[0] = 0.3
    >>> throttle.wait(), throttle.take()
    (0.0, True)
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.interval = float(interval)
        self.clock = clock
        self._last = -math.inf

    def wait(self) -> float:
        """Seconds until an update may go through (0 when one may now)."""
        return max(0.0, self._last + self.interval - self.clock())

    def take(self) -> bool:
        """Whether an update may go through now; if so, it counts as done now."""
        if self.wait() > 0:
            return False
        self._last = self.clock()
        return True

    def reset(self) -> None:
        """Let the next update through at once."""
        self._last = -math.inf


class Preview(NamedTuple):
    """The newest iterate of a running method: float32 ``(H, W)`` magnitude."""

    method: str
    image: np.ndarray


class LiveRun:
    """What a running request has reported, for a view that refreshes at its own pace.

    The widget records every event here (cheap: no drawing) and, at most every
    :data:`REFRESH_INTERVAL`, takes what changed since its last refresh: the newest preview
    (older ones are dropped), the curves that changed, the progress and a status line.
    """

    def __init__(self, description: str = "Reconstruct") -> None:
        self.history: dict[str, list[float]] = {}
        #: Iterations done, counting the unused ones of methods that stopped early.
        self.done = 0
        self.description = description
        self.status = ""
        self.last: IterationEvent | None = None
        self._preview: Preview | None = None
        self._changed: set[str] = set()

    def record(self, event: IterationEvent) -> None:
        """One iteration: its objective, and its preview if it has one."""
        self.history.setdefault(event.method, []).append(event.objective)
        self.last = event
        self.done += 1
        self.description = f"Reconstruct: {event.method}"
        self._changed.add(event.method)
        if event.preview is not None:
            self._preview = Preview(event.method, event.preview)
            self.status = (
                f"{event.method}: iteration {event.iteration} of {event.planned}, "
                f"objective {event.objective:.4g}"
            )

    def finish(self, result: MethodResult) -> None:
        """A method is done: its whole objective history, its unused iterations counted."""
        done = len(self.history.get(result.method, []))
        planned = self.last.planned if self.last is not None else done
        self.done += max(planned - done, 0)  # converged early, or a closed form
        self.history[result.method] = list(result.recon.objectives)
        self._changed.add(result.method)
        if self._preview is not None and self._preview.method == result.method:
            self._preview = None  # the result replaces it

    def take_preview(self) -> Preview | None:
        """The newest preview not shown yet, or ``None``."""
        preview, self._preview = self._preview, None
        return preview

    @property
    def curves_changed(self) -> bool:
        """Whether a curve changed since :meth:`take_curves`."""
        return bool(self._changed)

    def take_curves(self) -> dict[str, list[float]]:
        """``method -> objectives`` of the curves changed since the last call."""
        changed, self._changed = self._changed, set()
        return {name: list(self.history[name]) for name in self.history if name in changed}


def problem_info(request: ReconRequest, problem: Any) -> dict[str, Any]:
    """A JSON-serialisable description of a :class:`~napari_genreg.recon.Problem`."""
    data = request.data
    return {
        "source": request.source or data.meta.source,
        "kspace_shape": list(problem.shape),
        "recon_size": list(problem.recon_size),
        "coils": data.n_coils,
        "coil_method": problem.coil_method,
        "simulated": data.meta.simulated,
        "retrospective": problem.retrospective,
        "mask": request.mask_label,
        "acceleration": achieved_acceleration(problem.mask),
        "calibration": list(problem.calibration),
        "noise_sigma": problem.noise_sigma,
        "noise_sigma_known": data.meta.noise_sigma is not None,
        "noise_relative": problem.noise_relative,
        "scale": problem.scale,
        "whitened": problem.whitened,
        "device": str(problem.device),
        "has_reference": problem.reference is not None,
    }


def run_request(
    request: ReconRequest,
    *,
    preview_interval: float = PREVIEW_INTERVAL,
    clock: Callable[[], float] = time.perf_counter,
) -> Generator[RunEvent, None, tuple[MethodResult, ...]]:
    """Run every method of a request, yielding once per iteration.

    Yields a :class:`ProblemReady`, then for each method one :class:`IterationEvent` per
    iteration and a :class:`MethodFinished`. Stopping early is not asking for the next event
    (a ``thread_worker``'s ``quit()`` does exactly that), so cancellation takes effect within one
    iteration; methods that finished keep their results.

    Parameters
    ----------
    request
        What to run.
    preview_interval
        Seconds between two preview images at least; the first iteration always has one.
    clock
        Monotonic clock in seconds (injectable for tests).

    Returns
    -------
    tuple of MethodResult
        The finished results, in the order of ``request.methods``.

    Raises
    ------
    ValueError
        For an unknown method, an unavailable device or a mask that does not fit the data.
    napari_genreg.recon.ReconstructionError
        When a method diverges or runs out of memory (the message names it).
    """
    from napari_genreg.recon.generative import use_model

    # The model override is a context variable: set around each step only, so that it is set
    # and reset in the same thread and context even when the generator is abandoned after a
    # cancel and closed later elsewhere (a token held across a ``yield`` could not be reset).
    steps = _run_methods(request, preview_interval, clock)
    first = True
    while True:
        try:
            with use_model(request.model, check=first):  # checked once, not every iteration
                event = next(steps)
        except StopIteration as done:
            return done.value
        first = False
        yield event


def _run_methods(
    request: ReconRequest, preview_interval: float, clock: Callable[[], float]
) -> Generator[RunEvent, None, tuple[MethodResult, ...]]:
    from napari_genreg.recon import build_problem, get_method, resolve_device, run
    from napari_genreg.recon.generative import head_of, prior_size_notes

    methods = [get_method(name) for name in request.methods]  # unknown names fail first
    planned = request.planned_iterations()
    device = resolve_device(request.device)
    problem = build_problem(request.data, request.mask, device=device, coil_maps=request.coil_maps)
    info = problem_info(request, problem)
    reference = problem.reference
    top = float(reference.max()) if reference is not None else problem.scale
    display_range = (0.0, top if top > 0 else 1.0)
    notes = tuple(prior_size_notes(request.methods, problem.shape))
    yield ProblemReady(info, display_range, planned, notes)

    results = []
    last_preview = -math.inf
    for method in methods:
        runner = run(
            problem, method.name, lam=request.lam, iterations=planned[method.name], clock=clock
        )
        while True:
            try:
                state = next(runner)
            except StopIteration as finished:
                core = finished.value
                break
            preview = None
            now = clock()
            if now - last_preview >= preview_interval:
                preview = problem.magnitude(state.x)
                last_preview = now
            yield IterationEvent(
                method.name, state.iteration, planned[method.name], state.objective, preview
            )
        lam = core.lam
        head = head_of(method)
        settings = {
            "software": f"napari-genreg {__version__}",
            "input": info["source"],
            "slice": request.slice_index,
            "regularizer": method.name,
            "mask": request.mask_label,
            "lam": lam,
            "lam_automatic": request.lam is None and method.has_lam,
            "iterations_requested": request.iterations,
            "iterations_planned": planned[method.name],
            "device": request.device,
            "coil_maps": request.coil_maps,
            "simulated_noise_sigma": request.data.meta.extra.get("noise_sigma_relative"),
            "simulated_seed": request.data.meta.extra.get("seed"),
        }
        if core.model is not None:
            settings["model"] = core.model
        if head is not None:
            settings["prior_head"] = head
        result = MethodResult(
            recon=core,
            name=request.result_name(method.name, method.has_lam),
            has_lam=method.has_lam,
            lam_automatic=request.lam is None and method.has_lam,
            settings=settings,
            info=info,
            display_range=display_range,
            scale=request.scale,
            translate=request.translate,
            prior_head=head if core.latent is not None else None,
        )
        results.append(result)
        yield MethodFinished(result)
    return tuple(results)


# ----------------------------------------------------------------------------------- output


def result_layer(result: MethodResult, mask: np.ndarray | None = None) -> LayerData:
    """An image layer of a reconstruction, its settings and history in the metadata.

    ``metadata["napari_genreg"]`` holds ``kind="reconstruction"``, ``regularizer``,
    ``settings``, ``lam``, ``iterations``, ``objectives``, ``seconds``, ``metrics`` (a dict or
    ``None``), ``problem`` (:func:`problem_info`, with the intensity ``scale`` and the
    ``recon_size``), the sampling ``mask`` (or ``None``) and, for the generative methods, what
    the Covariance Inspector needs: the ``latent`` z (float32 ``(c, h, w)``), the ``model``
    and the ``prior_head`` (all three ``None`` for the other methods).
    """
    recon = result.recon
    metrics = None if recon.metrics is None else recon.metrics._asdict()
    meta = {
        METADATA_KEY: {
            "kind": KIND_RECONSTRUCTION,
            "regularizer": result.method,
            "settings": dict(result.settings),
            "lam": recon.lam,
            "iterations": recon.iterations,
            "objectives": list(recon.objectives),
            "seconds": recon.seconds,
            "metrics": metrics,
            "problem": dict(result.info),
            "mask": mask,
            "latent": recon.latent,
            "model": recon.model,
            "prior_head": result.prior_head,
        }
    }
    kwargs = {
        "name": result.name,
        "metadata": meta,
        "colormap": "gray",
        "contrast_limits": result.display_range,
        "scale": result.scale,
        "translate": result.translate,
    }
    return (recon.image, kwargs, "image")


def run_layer(
    name: str,
    shape: Sequence[int],
    display_range: tuple[float, float],
    scale: Sequence[float] = (1.0, 1.0),
    translate: Sequence[float] = (0.0, 0.0),
) -> LayerData:
    """The layer of one method of a run, made before the run's first iteration: zeros of the
    reconstruction's ``shape``, named as its result will be, transparent (opacity 0: it hides
    nothing) until the method's first preview. The previews and then the result replace its
    data; ``kind="preview"`` until then (:func:`result_layer` gives its final metadata)."""
    meta = {METADATA_KEY: {"kind": KIND_PREVIEW}}
    kwargs = {
        "name": name,
        "metadata": meta,
        "colormap": "gray",
        "contrast_limits": display_range,
        "scale": tuple(scale),
        "translate": tuple(translate),
        "opacity": 0.0,
    }
    return (np.zeros(tuple(shape), dtype=np.float32), kwargs, "image")


def relative_excess(objectives: Sequence[float]) -> np.ndarray | None:
    """What the convergence plot shows of an objective history: its excess over its lowest
    value, relative to its range, ``(f_k - min f) / (max f - min f)``.

    Read on a log axis, it falls from 1 towards 0 as the method converges, whatever the sign
    and the scale of the objective (the generative methods' objectives are negative: log
    determinants), so methods share one axis. The lowest value is 0, off a log axis.

    Returns
    -------
    numpy.ndarray or None
        float64 of the history's length (NaN where the history is not finite); ``None`` for
        fewer than 2 finite values or a constant history (nothing to show).

    Examples
    --------
    >>> relative_excess([-100.0, -150.0, -160.0, -161.0]).round(3).tolist()
    [1.0, 0.18, 0.016, 0.0]
    """
    f = np.asarray(objectives, dtype=float)
    finite = np.isfinite(f)
    if np.count_nonzero(finite) < 2:
        return None
    low, high = f[finite].min(), f[finite].max()
    if not high > low:
        return None
    return np.where(finite, (f - low) / (high - low), np.nan)


def metrics_row(result: MethodResult) -> tuple[str, ...]:
    """The cells of a metrics-table row (:data:`METRICS_COLUMNS`): regulariser, PSNR, SSIM,
    NMSE, lam, iterations, seconds; "—" where there is no reference or no weight."""
    recon = result.recon
    m = recon.metrics
    quality = ("—", "—", "—") if m is None else (f"{m.psnr:.2f}", f"{m.ssim:.4f}", f"{m.nmse:.3g}")
    lam = f"{recon.lam:.3g}" if result.has_lam else "—"
    return (result.method, *quality, lam, str(recon.iterations), f"{recon.seconds:.1f}")


#: Column titles of the metrics table (PSNR in dB, time in seconds).
METRICS_COLUMNS = ("method", "PSNR", "SSIM", "NMSE", "lam", "it.", "s")
