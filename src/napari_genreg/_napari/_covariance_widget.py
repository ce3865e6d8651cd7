"""The Covariance Inspector dock widget: click a pixel, see the learned covariance around it.

The widget holds no numerics. A left click on the canvas (in pan/zoom mode) is turned into a
pixel of the chosen reconstruction layer (:func:`._inspector.pixel_at`);
:func:`._inspector.compute_layers` runs in a napari ``thread_worker`` (one inspection costs a
decoder pass and two triangular solves, about 0.3 s at 128 x 128 on one CPU thread: too long
for the event loop) and its layer data tuples replace the data of the inspection's layers.
The layers are created, hidden, when a reconstruction is chosen, one per event-loop turn
(adding a layer to napari takes 100 ms and more), and updated in place on every click. Clicks
that arrive while an inspection is computing are not queued: only the latest is run next, the
others are dropped.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error
from qtpy.QtCore import QEvent, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QSpinBox,
    QWidget,
)

from napari_genreg._napari import _inspector as inspector
from napari_genreg._napari._layers import METADATA_KEY
from napari_genreg._napari._session import KIND_COVARIANCE, KIND_PREVIEW, layer_kind
from napari_genreg._napari._viewer import (
    StepQueue,
    add_keeping_selection,
    fit_view,
    grid,
    scrolling_layout,
)

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

#: Notification prefix of the widget's errors.
TITLE = "Covariance Inspector"


#: Pixels of its controls the dock keeps shown when stacked under another: the layer, its
#: description, the status line and most options, in the usual fonts (a window 945 pixels high,
#: the first launch's on a 1920 x 1080 screen, then shows the Reconstruct dock down to Run).
KEEP_HEIGHT = 240


class InspectionFailed(Exception):
    """An inspection failed in the worker thread (``RuntimeError`` re-raised: superqt's
    workers swallow ``RuntimeError`` as a sign of a deleted worker)."""


def _compute(
    target: inspector.InspectTarget, pixel: tuple[int, int], options: inspector.InspectOptions
) -> dict[str, Any]:
    _warm_up_points()
    try:
        return inspector.compute_layers(target, pixel, options)
    except RuntimeError as exc:
        raise InspectionFailed(f"{type(exc).__name__}: {exc}") from exc


def _warm_up(target: inspector.InspectTarget) -> None:
    """What the worker runs when a reconstruction is chosen: :func:`._inspector.warm_up`, and
    napari's first Points layer (see :func:`_warm_up_points`)."""
    _warm_up_points()
    inspector.warm_up(target)


@functools.cache
def _warm_up_points() -> None:
    """Make a Points layer once, in the worker: napari's first one imports pandas (0.2 s),
    which would otherwise block the event loop when the marker is created."""
    import numpy as np
    from napari.layers import Points

    Points(np.zeros((1, 2)))


class CovarianceWidget(QWidget):
    """Inspect the covariance a generative reconstruction's prior learned around a pixel.

    Parameters
    ----------
    napari_viewer
        The viewer whose reconstruction layers are inspected and which receives the layers.
    """

    #: Emitted when the layers show a finished inspection.
    inspection_done = Signal()
    #: Emitted with the message when an inspection could not be shown.
    inspection_failed = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        #: The inspection's layers by role (:data:`._inspector.ROLES`).
        self.layers: dict[str, Any] = {}
        self.worker: Any = None
        #: The worker preparing the chosen reconstruction's latent, while it runs.
        self.warm_worker: Any = None
        self._warmed: tuple[str, bytes] | None = None
        self._warm_next: inspector.InspectTarget | None = None
        self.pixel: tuple[int, int] | None = None
        #: Seconds from the last shown click to its layers being updated.
        self.last_latency: float | None = None
        self._pending: tuple[Any, ...] | None = None
        self._focused: str | None = None
        self._adding = False  # while an inspection layer is added (the selection moves)
        self._inspected: str | None = None  # the layer the last shown inspection was of
        #: The reconstructions listed (a generative one not among them is chosen when it comes).
        self._known: set[str] = set()
        # adding a layer takes tens of milliseconds: one napari call per event-loop turn
        self._steps = StepQueue(self)
        self._build_ui()
        self._rebuild_sources()
        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layers_changed)
        layers.selection.events.active.connect(self._on_active_changed)
        for layer in layers:
            self._watch(layer)
        self._attach()
        callbacks = self.viewer.mouse_drag_callbacks
        self.destroyed.connect(lambda *_: _remove(callbacks, self._on_mouse_drag))

    def _attach(self) -> None:
        """Follow the viewer's clicks (once)."""
        if self._on_mouse_drag not in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.append(self._on_mouse_drag)

    def event(self, event: QEvent) -> bool:
        """A dock closed with its X is taken out of the window, not destroyed (napari's
        ``remove_dock_widget``): the widget stops following clicks then (a closed inspector
        kept inspecting, and one opened again inspected each click twice), drops a click
        waiting for its turn, and follows them again if it is docked again."""
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is None:
                _remove(self.viewer.mouse_drag_callbacks, self._on_mouse_drag)
                self._pending = None
            else:
                self._attach()
        return super().event(event)

    # ------------------------------------------------------------------------------ layout

    def _build_ui(self) -> None:
        # stacked under the Reconstruct dock, which scrolls: the layer, the status line and
        # the options stay shown
        root = scrolling_layout(self, keep=KEEP_HEIGHT)
        box = QGroupBox("Reconstruction")
        form = QFormLayout(box)
        self.source_combo = QComboBox()
        self.source_combo.setToolTip(
            "A reconstruction made by a vae-* method: its prior's covariance at the latent the "
            "reconstruction reached is inspected"
        )
        self.source_info = QLabel()
        self.source_info.setWordWrap(True)
        self.status = QLabel("click a pixel of the reconstruction")
        self.status.setWordWrap(True)
        form.addRow("layer", self.source_combo)
        form.addRow(self.source_info)
        form.addRow(self.status)
        root.addWidget(box)

        box = QGroupBox("Show")
        form = QFormLayout(box)
        self.click_check = QCheckBox("inspect the pixel I click (pan/zoom mode)")
        self.click_check.setChecked(True)
        self.correlation_check = QCheckBox("correlation map")
        self.variance_check = QCheckBox("variance map")
        self.samples_check = QCheckBox("prior samples")
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(1, 64)  # as the command line (cli.MAX_SAMPLES)
        self.samples_spin.setValue(inspector.DEFAULT_SAMPLES)
        self.samples_spin.setToolTip("Number of samples x ~ N(mean, covariance) at the latent")
        form.addRow(self.click_check)
        form.addRow(self.correlation_check)
        form.addRow(self.variance_check)
        form.addRow(self.samples_check, self.samples_spin)
        root.addWidget(box)

        legend = QLabel(
            "Red: pixels that vary <b>with</b> the clicked one (positive covariance); blue: "
            "pixels that vary <b>against</b> it (negative). Both are scaled to the largest "
            "covariance away from the pixel itself."
        )
        legend.setWordWrap(True)
        root.addWidget(legend)
        root.addStretch(1)

        self.source_combo.currentIndexChanged.connect(self._on_source_changed)

    # ---------------------------------------------------------------------------- sources

    def _watch(self, layer: Any) -> None:
        """Follow a layer's name and metadata (the Reconstruct widget's layers become
        reconstructions when their method finishes: their metadata is replaced)."""
        layer.events.name.connect(self._on_layers_changed)
        layer.events.metadata.connect(self._on_layers_changed)

    def _on_layers_changed(self, event: Any = None) -> None:
        kind = getattr(event, "type", "")
        if kind == "inserted":
            self._watch(event.value)
        elif kind == "removed" and event.value.name == self._inspected:
            # its overlays would lie over whatever is below it now
            for layer in self.layers.values():
                if layer in self.viewer.layers and layer.visible:
                    layer.visible = False
        elif kind == "metadata" and layer_kind(event.source) == KIND_COVARIANCE:
            return  # an inspection's own layer, updated
        self._rebuild_sources()

    def _rebuild_sources(self) -> None:
        """List the reconstructions made by vae-* methods (the others have no covariance to
        show); one that is new (just added, or just finished by the Reconstruct widget) is
        chosen, else the choice is kept."""
        old = self.source_combo.currentText()
        names = [la.name for la in self.viewer.layers if inspector.is_inspectable(la)]
        new = [n for n in names if n not in self._known]
        self._known = set(names)
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        self.source_combo.addItems(names)
        if new:
            self.source_combo.setCurrentText(new[-1])
        elif old in names:
            self.source_combo.setCurrentText(old)
        else:
            self.source_combo.setCurrentText((names or [""])[-1])
        self.source_combo.blockSignals(False)
        self._on_source_changed()

    def _on_active_changed(self, event: Any = None) -> None:
        if self._adding:  # the selection given back after a helper layer was added
            return
        layer = self.viewer.layers.selection.active
        if layer is not None and inspector.is_inspectable(layer):
            self.source_combo.setCurrentText(layer.name)

    def _on_source_changed(self, *_: Any) -> None:
        layer = self.source_layer()
        if self.pixel is not None and (layer is None or layer.name != self._inspected):
            # the status line spoke of an inspection of another layer (or of one deleted)
            self.pixel = None
            self.status.setText("click a pixel of the reconstruction")
        if layer is None:
            self.source_info.setText(
                "no reconstruction by a vae-* method yet: run one in Reconstruct"
            )
            return
        try:
            target = inspector.inspect_target(layer)
        except ValueError as exc:
            self.source_info.setText(f"<span style='color:#ff6b6b'>{exc}</span>")
            return
        c, h, w = target.latent.shape
        self.source_info.setText(
            f"{target.method}, model {target.model}, latent {c}x{h}x{w}, "
            f"{target.shape[0]}x{target.shape[1]} pixels"
        )
        self._warm_up(target)
        self._prepare_layers()

    def _prepare_layers(self) -> None:
        """Create the chosen reconstruction's missing inspection layers, hidden, one per
        event-loop turn, so that a click only updates them.

        Adding a layer to napari takes 100 ms and more of the GUI thread, and twice that while
        a computation runs beside it: the layers wait for the warm-up (which also imports what
        a Points layer needs) and for a run of the Reconstruct widget to end (a layer of its
        run is still pending: ``kind="preview"``); both ends come back here.
        """
        if self.warm_worker is not None:
            return
        if any(layer_kind(la) == KIND_PREVIEW for la in self.viewer.layers):
            return
        try:
            target = inspector.inspect_target(self.source_layer())
        except ValueError:
            return
        h, w = target.shape
        blanks = inspector.placeholder_layers(target, (h // 2, w // 2), self.options())
        for role, data in blanks.items():
            if not self._has(role, data[2]):
                self._steps.add(lambda r=role, d=data: self._create(target.name, r, d))

    def _warm_up(self, target: inspector.InspectTarget) -> None:
        """Prepare the target's latent in a worker (the decoder's output and the variance
        map, ~0.2 s at 128 x 128 and ~1 s at 256 x 256), so that the first click is fast.

        Once per latent, one worker at a time: a target chosen while one runs waits for it.
        """
        from napari.qt.threading import thread_worker
        from superqt.utils import FunctionWorker

        key = (target.model, target.latent.tobytes())
        if key == self._warmed:
            return
        if self.warm_worker is not None:
            self._warm_next = target
            return
        self._warmed = key
        worker = thread_worker(
            _warm_up, start_thread=False, worker_class=FunctionWorker, ignore_errors=True
        )(target)
        worker.finished.connect(self._on_warm_finished)
        self.warm_worker = worker  # errors surface on the click that needs the same work
        worker.start()

    def _on_warm_finished(self) -> None:
        self.warm_worker = None
        target, self._warm_next = self._warm_next, None
        if target is not None:
            self._warm_up(target)
        else:
            self._prepare_layers()

    def source_layer(self) -> Any:
        """The chosen reconstruction layer, or ``None``."""
        name = self.source_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def set_source(self, name: str) -> None:
        """Choose the reconstruction layer called ``name``."""
        index = self.source_combo.findText(name)
        if index < 0:
            raise ValueError(f"{name!r} is not a reconstruction made by a vae-* method")
        self.source_combo.setCurrentIndex(index)

    def options(self) -> inspector.InspectOptions:
        """What the check boxes ask for."""
        return inspector.InspectOptions(
            correlation=self.correlation_check.isChecked(),
            variance=self.variance_check.isChecked(),
            samples=self.samples_spin.value() if self.samples_check.isChecked() else 0,
        )

    # ----------------------------------------------------------------------------- clicks

    def _on_mouse_drag(self, viewer: Any, event: Any):
        """A left click without a drag, in pan/zoom mode, inspects the pixel under it."""
        if not self.click_check.isChecked() or getattr(event, "button", 1) != 1:
            return
        if getattr(event, "modifiers", ()) or not self._pan_zoom_mode():
            return
        position = tuple(event.position)
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            self.inspect_world(position)

    def _pan_zoom_mode(self) -> bool:
        active = self.viewer.layers.selection.active
        mode = getattr(active, "mode", "pan_zoom") if active is not None else "pan_zoom"
        return str(mode) == "pan_zoom"

    def inspect_world(self, position: Sequence[float]) -> bool:
        """Inspect the pixel of the chosen reconstruction under the world ``position`` (what a
        click does). Errors are shown as notifications; the layers are left as they are.

        Returns
        -------
        bool
            True when an inspection was started or queued.
        """
        layer = self.source_layer()
        try:
            target = inspector.inspect_target(layer)
            pixel = inspector.pixel_at(layer, position)
        except ValueError as exc:
            self._fail(str(exc))
            return False
        return self._request(target, pixel)

    def inspect_pixel(self, pixel: tuple[int, int]) -> bool:
        """Inspect ``(row, col)`` of the chosen reconstruction (see :meth:`inspect_world`)."""
        layer = self.source_layer()
        try:
            target = inspector.inspect_target(layer)
            h, w = target.shape
            if not (0 <= pixel[0] < h and 0 <= pixel[1] < w):
                raise ValueError(f"pixel {tuple(pixel)} lies outside {layer.name!r} ({h} x {w})")
        except ValueError as exc:
            self._fail(str(exc))
            return False
        return self._request(target, (int(pixel[0]), int(pixel[1])))

    def _fail(self, message: str) -> None:
        show_error(f"{TITLE}: {message}")
        self.status.setText(f"<span style='color:#ff6b6b'>{message}</span>")
        self.inspection_failed.emit(message)

    # ----------------------------------------------------------------------------- worker

    def _request(self, target: inspector.InspectTarget, pixel: tuple[int, int]) -> bool:
        request = (target, pixel, self.options(), time.perf_counter())
        if self.worker is not None:
            self._pending = request  # only the latest click waits; earlier ones are dropped
            self.status.setText(f"pixel {pixel}: waiting for the inspection in progress…")
            return True
        self._start(request)
        return True

    def _start(self, request: tuple[Any, ...]) -> None:
        from napari.qt.threading import thread_worker
        from superqt.utils import FunctionWorker

        target, pixel, options, clicked = request
        worker = thread_worker(
            _compute, start_thread=False, worker_class=FunctionWorker, ignore_errors=True
        )(target, pixel, options)
        worker.returned.connect(
            lambda layers: self._steps.add(lambda: self._show(target, pixel, layers, clicked))
        )
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: self._steps.add(self._on_finished))  # after the show
        self.worker = worker
        self.status.setText(f"{target.name}: computing the covariance at pixel {pixel}…")
        worker.start()
        self._prepare(target, pixel, options)

    def _prepare(
        self, target: inspector.InspectTarget, pixel: tuple[int, int], options: Any
    ) -> None:
        """While the worker computes: leave grid mode, then create the layers that are
        missing (an option ticked since the reconstruction was chosen, a layer deleted),
        hidden, one per turn."""
        self._steps.add(lambda: self._focus(target.name))
        blanks = inspector.placeholder_layers(target, pixel, options)
        for role, data in blanks.items():
            self._steps.add(lambda role=role, data=data: self._create(target.name, role, data))

    def _create(self, source: str, role: str, data: tuple[Any, dict[str, Any], str]) -> None:
        """Add the hidden layer of ``role`` unless it exists (or the source is gone)."""
        from napari.layers import Layer

        if source not in self.viewer.layers:
            return
        array, kwargs, kind = data = self._placed(role, data)
        if self._has(role, kind):
            return
        self._drop(role)  # one of another shape (the viewer gained axes since): replaced
        self._adding = True
        try:
            self.layers[role] = add_keeping_selection(
                self.viewer, Layer.create(array, {**kwargs, "visible": False}, kind)
            )
        finally:
            self._adding = False
        self._steps.add_next(lambda: self._place(role, source))

    def _place(self, role: str, source: str) -> None:
        """Move the layer of ``role`` below the inspection's layers that go above it
        (:data:`._inspector.ROLES`), and never below the ``source`` reconstruction: an
        option ticked later adds its layer on top."""
        layer = self.layers.get(role)
        layers = self.viewer.layers
        if layer is None or layer not in layers or source not in layers:
            return
        above = [
            layers.index(other)
            for later in inspector.ROLES[inspector.ROLES.index(role) + 1 :]
            if (other := self.layers.get(later)) is not None and other in layers
        ]
        index = layers.index(layer)
        target = max(min(above, default=index), layers.index(layers[source]) + 1)
        if target < index:
            layers.move(index, target)

    def _has(self, role: str, kind: str) -> bool:
        """Whether the layer of ``role`` exists, of the type ``kind`` (and, for the samples,
        with the axes :meth:`_placed` gives them)."""
        layer = self.layers.get(role)
        if layer is None or layer not in self.viewer.layers or not _is_kind(layer, kind):
            return False
        return role != "samples" or layer.ndim == 3 + len(self._outer_axes())

    def _outer_axes(self) -> list[tuple[float, float]]:
        """``(centre, extent)`` in world units of each axis the viewer has in front of the
        images' two (a stack's slices, a file's coils), besides the samples' own."""
        ndim = max((la.ndim for la in self.viewer.layers if not _is_samples(la)), default=2)
        ranges = self.viewer.dims.range[self.viewer.dims.ndim - ndim :][: ndim - 2]
        return [((r.start + r.stop) / 2, r.stop - r.start + r.step) for r in ranges]

    def _placed(self, role: str, data: tuple[Any, dict[str, Any], str]) -> tuple[Any, ...]:
        """The samples stack ``(n, H, W)`` in a viewer of a stack of slices (or coils) gets an
        axis of length 1 for each, spread over its whole range: the samples keep a slider of
        their own and show at every slice (as ``(n, H, W)`` they took the slice slider)."""
        axes = self._outer_axes() if role == "samples" else []
        if not axes:
            return data
        array, kwargs, kind = data
        array = array.reshape(array.shape[:1] + (1,) * len(axes) + array.shape[1:])
        kwargs = {
            **kwargs,
            "scale": (1.0, *(extent for _, extent in axes), *kwargs["scale"]),
            "translate": (0.0, *(centre for centre, _ in axes), *kwargs["translate"]),
        }
        return array, kwargs, kind

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, InspectionFailed) and exc.__cause__ is not None:
            exc = exc.__cause__
        known = isinstance(exc, ValueError | MemoryError)
        if not known:
            logger.error("inspection failed", exc_info=(type(exc), exc, exc.__traceback__))
        self._fail(str(exc) if known else f"{type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        pending, self._pending = self._pending, None
        if pending is not None:
            self._start(pending)

    def _show(
        self,
        target: inspector.InspectTarget,
        pixel: tuple[int, int],
        layers: dict[str, Any],
        clicked: float,
    ) -> None:
        """Put an inspection's layer data into its layers (a missing one is created first, in
        a turn of its own) and show them.

        The layers shown already are updated together (one repaint); a layer shown for the
        first time (its first draw compiles its shaders) and a layer no longer asked for
        (removing one takes 100 ms and more) take a turn each.
        """
        if target.name not in self.viewer.layers:
            self._fail(f"the layer {target.name!r} is gone")
            return
        missing = [role for role, (_, _, kind) in layers.items() if not self._has(role, kind)]
        # (a samples layer of other axes is missing: _create replaces it)
        if missing:  # deleted by the user meanwhile: create them, then come back
            for role in missing:
                self._steps.add(lambda role=role: self._create(target.name, role, layers[role]))
            self._steps.add(lambda: self._show(target, pixel, layers, clicked))
            return
        self._focus(target.name)
        for role, layer_data in layers.items():
            data, kwargs, _ = self._placed(role, layer_data)
            _update(self.layers[role], data, kwargs)
        steps: list[Callable[[], None]] = [
            lambda r=role: self._drop(r) for role in self.layers if role not in layers
        ]
        steps += [
            lambda layer=self.layers[role]: _show_layer(layer)
            for role in layers
            if not self.layers[role].visible
        ]
        done = functools.partial(
            self._shown, target, pixel, clicked, inspector.describe_signs(layers)
        )
        if steps:
            self._steps.add_next(*steps, done)
        else:
            done()

    def _drop(self, role: str) -> None:
        """Remove the layer of ``role`` (no longer asked for)."""
        old = self.layers.pop(role, None)
        if old is not None and old in self.viewer.layers:
            self.viewer.layers.remove(old)

    def _shown(
        self,
        target: inspector.InspectTarget,
        pixel: tuple[int, int],
        clicked: float,
        signs: str,
    ) -> None:
        self.pixel = pixel
        self._inspected = target.name
        self.last_latency = time.perf_counter() - clicked
        self.status.setText(
            f"{target.name}: covariance with pixel {pixel} "
            f"({1e3 * self.last_latency:.0f} ms from the click)" + (f"; {signs}" if signs else "")
        )
        self.inspection_done.emit()

    def _focus(self, source: str) -> None:
        """Once per source (and again when grid mode came back): leave grid mode and hide the
        images that would cover the source, so that the overlay is drawn over it."""
        if self._focused == source and not grid(self.viewer).enabled:
            return
        self._focused = source
        layers = self.viewer.layers
        settings = grid(self.viewer)
        base = layers[source]
        if settings.enabled:
            settings.enabled = False
            fit_view(self.viewer, [base])  # a cell's zoom on the whole canvas: the image small
        base.visible = True
        start = layers.index(base)
        for layer in list(layers)[start + 1 :]:
            if layer_kind(layer) != KIND_COVARIANCE and layer.visible:
                layer.visible = False
        self._stack_over(base)

    def _stack_over(self, base: Any) -> None:
        """Put the inspection's layers right above ``base``, in the order of
        :data:`._inspector.ROLES` (made for an earlier reconstruction, they lie under the
        layers added since: a later run's results)."""
        layers = self.viewer.layers
        anchor = base
        for role in inspector.ROLES:
            layer = self.layers.get(role)
            if layer is None or layer not in layers:
                continue
            above = layers.index(anchor) + 1
            if layers.index(layer) != above:
                layers.move(layers.index(layer), above)  # indices before the move
            anchor = layer


def _update(layer: Any, data: Any, kwargs: dict[str, Any]) -> None:
    """Give ``layer`` the data and the settings of a new inspection (only what changed is
    set: each setter redraws the layer)."""
    import numpy as np

    layer.metadata = kwargs["metadata"]
    for name in ("scale", "translate"):
        value = kwargs[name]
        if not np.array_equal(getattr(layer, name)[-len(value) :], value):
            setattr(layer, name, value)
    limits = kwargs.get("contrast_limits")
    if limits is not None and tuple(layer.contrast_limits) != tuple(limits):
        layer.contrast_limits_range = limits  # the slider's range; it clips the limits
        if tuple(layer.contrast_limits) != tuple(limits):
            layer.contrast_limits = limits
    layer.data = data


def _show_layer(layer: Any) -> None:
    layer.visible = True


def _remove(callbacks: list[Callable[..., Any]], callback: Callable[..., Any]) -> None:
    if callback in callbacks:
        callbacks.remove(callback)


def _is_samples(layer: Any) -> bool:
    """Whether ``layer`` is an inspection's samples stack (by its metadata: napari hands
    plugins proxies of its layers, so identity does not tell)."""
    entry = layer.metadata.get(METADATA_KEY)
    return layer_kind(layer) == KIND_COVARIANCE and entry.get("role") == "samples"


def _is_kind(layer: Any, kind: str) -> bool:
    """Whether ``layer`` is of the type ``kind`` of a layer data tuple (``"image"``, ``"points"``;
    ``isinstance`` sees through the proxies napari hands to plugins)."""
    from napari.layers import Image, Points

    return isinstance(layer, {"image": Image, "points": Points}[kind])
