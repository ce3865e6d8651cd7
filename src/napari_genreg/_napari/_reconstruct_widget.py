"""The Reconstruct dock widget: Qt controls wired to :mod:`._session`.

The widget holds no numerics. It builds a :class:`~._session.ReconRequest` from its controls,
runs :func:`~._session.run_request` (the generator the CLI's code path also drives) in a napari
``thread_worker``, and turns the events into a progress bar, one layer per method (its throttled
previews, then its result), a metrics table and a convergence plot (:mod:`._plot`). torch is not
imported by this module: the method registry is loaded in a worker thread when the widget opens,
and the run imports the rest.

Keeping the event loop free during a run: the worker's events are only recorded, and shown at
most every :data:`~._session.REFRESH_INTERVAL`; the napari calls that take 100 ms or more
(adding a layer, switching grid mode on) are made before the first iteration, while the worker
waits, one per event-loop turn; during the iterations, previews and results only replace the
data of those layers. While a run goes on, Python's cycle collector leaves alone the objects
that existed when it started (:class:`~._viewer.HeapHold`): a full collection of napari's heap
blocks for 100-400 ms.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_genreg._napari import _session as session
from napari_genreg._napari._plot import ConvergencePlot
from napari_genreg._napari._viewer import (
    HeapHold,
    StepQueue,
    fit_view,
    glyph_steps,
    grid,
    scrolling_layout,
)
from napari_genreg.physics.masks import MASKS

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

logger = logging.getLogger(__name__)

#: The mask chosen when the widget opens.
DEFAULT_MASK = "poisson"
#: Regularisers checked when the widget opens (those of them that are registered).
DEFAULT_METHODS = ("zero-filled", "tv")
#: Milliseconds the live mask waits for more control changes before it is redrawn.
MASK_DEBOUNCE_MS = 120
#: Pixels the metrics table may widen the dock to, at most.
MAX_TABLE_WIDTH = 480
#: Prefix of the mask choices that take a drawn layer.
CUSTOM_PREFIX = "custom: from layer "
#: Kinds of layers hidden in grid mode: the k-space, the live mask, the inspector's overlays.
NOT_COMPARED = frozenset({"kspace", session.KIND_MASK, session.KIND_COVARIANCE})


class ReconstructionFailed(Exception):
    """A run failed in the worker thread.

    superqt's ``GeneratorWorker`` takes any ``RuntimeError`` out of the generator for a deleted
    worker: it only warns, and never emits ``errored`` or ``finished``. Reconstruction errors
    (and torch's) are ``RuntimeError`` subclasses, so they are re-raised as this instead.
    """


#: Seconds between two looks at the worker's abort flag while it waits for the layout.
LAYOUT_POLL = 0.05


def _run_in_thread(
    request: session.ReconRequest, laid_out: threading.Event, aborted: Callable[[], bool]
) -> Generator[session.RunEvent, None, tuple[session.MethodResult, ...]]:
    """:func:`~._session.run_request`, waiting after its :class:`~._session.ProblemReady`
    until ``laid_out`` is set (the GUI makes the run's layers meanwhile: napari calls of 100 ms
    and more, which take twice as long while a solver runs beside them) or ``aborted()`` (a
    quit that does not come through the widget, e.g. napari closing, which no longer runs the
    layout), with ``RuntimeError`` re-raised as :class:`ReconstructionFailed` (see there)."""
    events = session.run_request(request, preview_interval=session.REFRESH_INTERVAL)
    try:
        for event in events:
            yield event
            if isinstance(event, session.ProblemReady):
                while not laid_out.wait(LAYOUT_POLL) and not aborted():
                    pass
                break
        return (yield from events)
    except RuntimeError as exc:
        raise ReconstructionFailed(str(exc)) from exc


def _load_choices() -> session.Choices:
    return session.load_choices()


def _layer_from(data: session.LayerData) -> Layer:
    from napari.layers import Layer

    array, kwargs, kind = data
    return Layer.create(array, kwargs, kind)


class ReconstructWidget(QWidget):
    """Point-and-click reconstruction of k-space (or of k-space simulated from an image).

    Parameters
    ----------
    napari_viewer
        The viewer whose layers are the inputs and receive the results.
    """

    #: Emitted when a run has ended (finished, failed or cancelled) and the widget is idle.
    run_finished = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.choices: session.Choices | None = None
        self.worker: Any = None
        self.results: list[session.MethodResult] = []
        self._mask_layer: Any = None
        #: The layers of the current (or last) run by method: previews, then results.
        self._run_layers: dict[str, Any] = {}
        self._names: dict[str, str] = {}
        self._curve_labels: dict[str, str] = {}
        self._laid_out = threading.Event()
        self._stop_worker: Callable[..., None] | None = None
        #: Python's cycle collector kept off the older objects while a run goes on.
        self._heap_hold: HeapHold | None = None
        #: Whether the current (or last) run switched grid mode on.
        self._grid_by_run = False
        self._mask_source: Any = None
        self._hidden_for_grid: list[Any] = []
        self._named_for_grid: list[Any] = []
        self._unnamed_for_layout: list[Any] = []  # names of the grid hidden while it grows
        self._switching_grid = False  # grid mode switched by this widget, not by another
        self._renamed_by_grid: list[Any] = []  # names taken away when another left the grid
        self._live = session.LiveRun()
        self._pbar: Any = None
        self._display_range: tuple[float, float] = (0.0, 1.0)
        self._run_mask: np.ndarray | None = None
        self._scale: tuple[float, float] = (1.0, 1.0)
        self._translate: tuple[float, float] = (0.0, 0.0)
        self._failed = False
        self._cancelled = False

        self._mask_timer = QTimer(self)
        self._mask_timer.setSingleShot(True)
        self._mask_timer.setInterval(MASK_DEBOUNCE_MS)
        self._mask_timer.timeout.connect(self.refresh_mask)
        # The worker's events are only recorded (self._live); the preview, the progress bar,
        # the status and the plot are refreshed from a timer, at most every REFRESH_INTERVAL,
        # always with the latest state. napari's progress bar runs
        # QApplication.processEvents() on every update, which may re-enter the handlers.
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.timeout.connect(self._refresh)
        self._refresh_throttle = session.Throttle(session.REFRESH_INTERVAL)
        self._syncing = False
        self._shown_description = ""
        # One-off napari calls (adding a layer, grid mode, a result into its layer) each take
        # tens of milliseconds or more: they are queued and run one per event-loop turn.
        self._steps = StepQueue(self, busy=lambda: self._syncing)
        # the glyphs of the names grid mode writes, rendered ahead, a few per turn (not
        # while a run goes on: its steps alone take a turn each)
        self._glyphs = StepQueue(self, busy=lambda: self._syncing or self.worker is not None)

        self._build_ui()
        self._rebuild_layer_choices()
        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layers_changed)
        for layer in layers:
            layer.events.name.connect(self._on_layers_changed)
        emitter = grid(self.viewer).events.enabled
        emitter.connect(self._on_grid_switched)
        self.destroyed.connect(lambda *_: emitter.disconnect(self._on_grid_switched))
        steps = self.viewer.dims.events.point
        steps.connect(self._follow_slider)
        self.destroyed.connect(lambda *_: steps.disconnect(self._follow_slider))
        self._on_input_changed()
        self.refresh_mask()
        self._start_loading_choices()
        self._glyphs.add(*glyph_steps(self.viewer))

    # ------------------------------------------------------------------------------ layout

    def _build_ui(self) -> None:
        root = scrolling_layout(self)

        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.input_combo = QComboBox()
        self.input_combo.setToolTip(
            "A k-space layer (from this plugin's reader or sample) or any grey-scale image "
            "layer, from which single-coil k-space is simulated"
        )
        self.input_info = QLabel()
        self.input_info.setWordWrap(True)
        self.noise_spin = QDoubleSpinBox()
        self.noise_spin.setRange(0.0, 1.0)
        self.noise_spin.setDecimals(4)
        self.noise_spin.setSingleStep(0.005)
        self.noise_spin.setValue(session.DEFAULT_NOISE_SIGMA)
        self.noise_spin.setToolTip(
            "Image inputs: standard deviation of the complex k-space noise, relative to the "
            "image maximum"
        )
        self.noise_seed = QSpinBox()
        self.noise_seed.setRange(0, 2**31 - 1)
        self.noise_seed.setToolTip("Image inputs: seed of the simulated noise")
        self.noise_row = QWidget()
        noise_row = QHBoxLayout(self.noise_row)
        noise_row.setContentsMargins(0, 0, 0, 0)
        noise_row.addWidget(self.noise_spin)
        noise_row.addWidget(QLabel("seed"))
        noise_row.addWidget(self.noise_seed)
        self.slice_spin = QSpinBox()
        self.coil_maps_combo = QComboBox()
        self.coil_maps_combo.addItems(["espirit", "lowres"])
        self.coil_maps_combo.setToolTip("Coil sensitivities of multi-coil data")
        form.addRow("layer", self.input_combo)
        form.addRow(self.input_info)
        form.addRow("noise σ", self.noise_row)
        form.addRow("slice", self.slice_spin)
        form.addRow("coil maps", self.coil_maps_combo)
        self._input_form = form
        root.addWidget(box)

        box = QGroupBox("Sampling mask")
        form = QFormLayout(box)
        self.mask_combo = QComboBox()
        self.mask_combo.setToolTip(
            "A generated pattern, or a Labels layer painted / a Shapes layer drawn over k-space"
        )
        self.acceleration_spin = QDoubleSpinBox()
        self.acceleration_spin.setRange(1.0, 64.0)
        self.acceleration_spin.setDecimals(1)
        self.acceleration_spin.setSingleStep(1.0)
        self.acceleration_spin.setValue(4.0)
        self.acceleration_spin.setSuffix("x")
        self.center_spin = QDoubleSpinBox()
        self.center_spin.setRange(-0.01, 0.5)
        self.center_spin.setDecimals(3)
        self.center_spin.setSingleStep(0.01)
        self.center_spin.setSpecialValueText("auto")
        self.center_spin.setValue(-0.01)
        self.center_spin.setToolTip(
            "Fully sampled centre: a fraction of the k_x lines (1-D masks) or of each side "
            "(2-D masks); auto: 0.08, capped at half the sampling budget"
        )
        self.mask_seed = QSpinBox()
        self.mask_seed.setRange(0, 2**31 - 1)
        self.mask_info = QLabel()
        self.mask_info.setWordWrap(True)
        form.addRow("type", self.mask_combo)
        form.addRow("acceleration", self.acceleration_spin)
        form.addRow("centre", self.center_spin)
        form.addRow("seed", self.mask_seed)
        form.addRow(self.mask_info)
        self._mask_form = form
        root.addWidget(box)

        box = QGroupBox("Regularisers")
        form = QFormLayout(box)
        self.method_list = QListWidget()
        self.method_list.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.method_list.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.method_list.addItem("loading the methods…")
        self.lam_edit = QLineEdit()
        self.lam_edit.setPlaceholderText("auto")
        self.lam_edit.setToolTip(
            "Weight of the regulariser for every checked method that has one; empty: each "
            "method's automatic rule"
        )
        self.iterations_spin = QSpinBox()
        self.iterations_spin.setRange(0, 1_000_000)
        self.iterations_spin.setSpecialValueText("per method")
        self.iterations_spin.setToolTip("Iterations of every method; 0: each method's default")
        self.device_combo = QComboBox()
        self.device_combo.addItem("auto")
        self.model_edit = QLineEdit()
        self.model_edit.setPlaceholderText("shipped models")
        self.model_edit.setToolTip(
            "A model folder written by 'napari-genreg train' (a VAE prior, for the vae-*, range "
            "and adapt methods) or 'napari-genreg train-vn' (for vn), used instead of the "
            "shipped model; empty: each method's shipped model"
        )
        self.model_button = QPushButton("…")
        self.model_button.setToolTip("Choose a model folder")
        self.model_button.clicked.connect(self._choose_model)
        model_row = QHBoxLayout()
        model_row.setContentsMargins(0, 0, 0, 0)
        model_row.addWidget(self.model_edit)
        model_row.addWidget(self.model_button)
        form.addRow(self.method_list)
        form.addRow("lam", self.lam_edit)
        form.addRow("iterations", self.iterations_spin)
        form.addRow("model", model_row)
        form.addRow("device", self.device_combo)
        root.addWidget(box)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.setEnabled(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        root.addLayout(buttons)
        self.grid_check = QCheckBox("side by side (grid)")
        self.grid_check.setChecked(True)
        self.grid_check.setToolTip(
            "Show the methods side by side in napari's grid mode as the run starts, with the "
            "k-space, the sampling mask and the inspector's overlays hidden; unchecking "
            "restores them"
        )
        root.addWidget(self.grid_check)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)

        box = QGroupBox("Results")
        self.results_box = box
        layout = QVBoxLayout(box)
        self.table = QTableWidget(0, len(session.METRICS_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(session.METRICS_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(110)
        header = self.table.horizontalHeader()
        for column, tip in enumerate(
            (
                "The regulariser (hover a row for its layer)",
                "Peak signal-to-noise ratio against the reference, dB",
                "Structural similarity against the reference",
                "Normalised mean squared error ||ref - x||² / ||ref||²",
                "The weight used",
                "Iterations run",
                "Seconds",
            )
        ):
            self.table.horizontalHeaderItem(column).setToolTip(tip)
        header.setMinimumSectionSize(24)
        self.plot = ConvergencePlot(theme=str(getattr(self.viewer, "theme", "dark")))
        layout.addWidget(self.table)
        layout.addWidget(self.plot)
        root.addWidget(box)

        self.input_combo.currentIndexChanged.connect(self._on_input_changed)
        self.slice_spin.valueChanged.connect(self._schedule_mask_refresh)
        self.slice_spin.valueChanged.connect(self._show_slice)
        self.mask_combo.currentIndexChanged.connect(self._on_mask_choice_changed)
        self.mask_combo.activated.connect(self._on_mask_chosen)  # by the user only
        for spin in (self.acceleration_spin, self.center_spin, self.mask_seed):
            spin.valueChanged.connect(self._schedule_mask_refresh)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.grid_check.toggled.connect(self._on_grid_toggled)

    # ------------------------------------------------------------------- method registry

    def _start_loading_choices(self) -> None:
        from napari.qt.threading import thread_worker
        from superqt.utils import FunctionWorker

        worker = thread_worker(
            _load_choices, start_thread=False, worker_class=FunctionWorker, ignore_errors=True
        )()
        worker.returned.connect(self._set_choices)
        worker.errored.connect(lambda exc: show_error(f"Reconstruct: cannot load methods: {exc}"))
        self._choices_worker = worker
        worker.start()

    def _set_choices(self, choices: session.Choices) -> None:
        self.choices = choices
        self.method_list.clear()
        for info in choices.methods:
            iterations = f"{info.default_iterations} iteration" + (
                "s" if info.default_iterations != 1 else ""
            )
            item = QListWidgetItem(f"{info.name}  ({iterations})")
            item.setData(Qt.ItemDataRole.UserRole, info.name)
            item.setToolTip(info.description)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            checked = info.name in DEFAULT_METHODS
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            self.method_list.addItem(item)
        rows = self.method_list.count()
        self.method_list.setMaximumHeight(self.method_list.sizeHintForRow(0) * rows + 6)
        self.device_combo.clear()
        self.device_combo.addItems(list(choices.devices))
        self._update_run_button()

    def is_ready(self) -> bool:
        """True once the regularisers are listed (they load in a thread when the widget opens)."""
        return self.choices is not None

    def set_methods(self, names: tuple[str, ...] | list[str]) -> None:
        """Check exactly the regularisers ``names`` (those not registered are ignored)."""
        for row in range(self.method_list.count()):
            item = self.method_list.item(row)
            name = item.data(Qt.ItemDataRole.UserRole)
            if name is not None:
                state = Qt.CheckState.Checked if name in names else Qt.CheckState.Unchecked
                item.setCheckState(state)

    def checked_methods(self) -> tuple[str, ...]:
        """The checked regularisers, in the registry's order."""
        names = []
        for row in range(self.method_list.count()):
            item = self.method_list.item(row)
            name = item.data(Qt.ItemDataRole.UserRole)
            if name is not None and item.checkState() == Qt.CheckState.Checked:
                names.append(name)
        return tuple(names)

    # ---------------------------------------------------------------------------- layers

    def _on_layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._on_layers_changed)
        self._rebuild_layer_choices()

    def _rebuild_layer_choices(self) -> None:
        old_input = self.input_combo.currentText()
        old_mask = self.mask_combo.currentData()
        inputs = [layer.name for layer in self.viewer.layers if session.input_kind(layer)]
        sources = [layer.name for layer in self.viewer.layers if session.is_mask_source(layer)]

        self.input_combo.blockSignals(True)
        self.input_combo.clear()
        self.input_combo.addItems(inputs)
        if old_input in inputs:
            self.input_combo.setCurrentText(old_input)
        else:
            kspace = [n for n in inputs if session.input_kind(self.viewer.layers[n]) == "kspace"]
            self.input_combo.setCurrentText((kspace or inputs or [""])[0])
        self.input_combo.blockSignals(False)

        self.mask_combo.blockSignals(True)
        self.mask_combo.clear()
        for name in MASKS:
            self.mask_combo.addItem(name, f"generated:{name}")
        for name in sources:
            self.mask_combo.addItem(CUSTOM_PREFIX + name, f"layer:{name}")
        index = self.mask_combo.findData(old_mask) if old_mask is not None else -1
        if index < 0:
            index = self.mask_combo.findData(f"generated:{DEFAULT_MASK}")
        self.mask_combo.setCurrentIndex(max(index, 0))
        self.mask_combo.blockSignals(False)

        if self.input_combo.currentText() != old_input:
            self._on_input_changed()
        elif self.mask_combo.currentData() != old_mask:
            self._on_mask_choice_changed()

    def input_layer(self) -> Any:
        """The chosen input layer, or ``None``."""
        name = self.input_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _on_input_changed(self, *_: Any) -> None:
        layer = self.input_layer()
        is_image = layer is not None and session.input_kind(layer) == "image"
        slices = session.slice_count(layer) if layer is not None else 1
        coils = session.coil_count(layer) if layer is not None else 1
        self.input_info.setText(session.describe_input(layer) if layer is not None else "no input")
        _set_row_visible(self._input_form, self.noise_row, is_image)
        _set_row_visible(self._input_form, self.slice_spin, slices > 1)
        _set_row_visible(self._input_form, self.coil_maps_combo, coils > 1)
        self.slice_spin.setRange(0, max(slices - 1, 0))
        self._follow_slider()  # the slice the viewer shows (napari opens a stack mid-way)
        self._on_mask_choice_changed()

    def _on_mask_choice_changed(self, *_: Any) -> None:
        layer = self.input_layer()
        acquired = layer is not None and session.acquired_mask(layer) is not None
        choice = self.mask_choice()
        generated = choice[0] == "generated" and not acquired
        self.mask_combo.setEnabled(not acquired)
        for spin in (self.acceleration_spin, self.center_spin, self.mask_seed):
            spin.setEnabled(generated)
        self._watch_mask_source(None if acquired or choice[0] != "layer" else choice[1])
        self._schedule_mask_refresh()

    def _slider_slice(self, layer: Any) -> int | None:
        """The slice of ``layer`` the viewer's slider is on (``None``: one slice, or off it)."""
        axis = session.slice_axis(layer)
        if axis is None or self.viewer.dims.ndim < layer.ndim:
            return None
        index = round(float(layer.world_to_data(self.viewer.dims.point)[axis]))
        return index if 0 <= index < session.slice_count(layer) else None

    def _follow_slider(self, *_: Any) -> None:
        """The slice chosen here is the one the viewer shows: moved with its slider."""
        layer = self.input_layer()
        index = None if layer is None else self._slider_slice(layer)
        if index is not None and index != self.slice_spin.value():
            self.slice_spin.setValue(index)

    def _show_slice(self, index: int) -> None:
        """Move the viewer's slider of the input's slices to the slice chosen here (the
        k-space and the reference beside it show what is reconstructed)."""
        layer = self.input_layer()
        axis = None if layer is None else session.slice_axis(layer)
        if axis is None:
            return
        world = self.viewer.dims.ndim - layer.ndim + axis  # napari lines up the last axes
        position = [0.0] * layer.ndim
        position[axis] = index
        if 0 <= world < self.viewer.dims.ndim:  # in world units (a slice thickness, scaled)
            self.viewer.dims.set_point(world, float(layer.data_to_world(position)[axis]))

    def _on_mask_chosen(self, *_: Any) -> None:
        """A drawn layer chosen as the mask by the user (not a run going on): leave the grid
        and hide the results above the input, so that the drawing lies over the k-space it
        masks (in the grid it had a cell of its own, and the results covered the k-space)."""
        if self.mask_choice()[0] != "layer" or self.worker is not None:
            return
        if grid(self.viewer).enabled:
            self._hide_grid()
        layer = self.input_layer()
        if layer is None:
            return
        layer.visible = True
        layers = list(self.viewer.layers)
        for other in layers[layers.index(layer) + 1 :]:
            if other.visible and session.layer_kind(other) == session.KIND_RECONSTRUCTION:
                other.visible = False

    def _watch_mask_source(self, name: str | None) -> None:
        """Redraw the live mask when the drawn layer ``name`` changes."""
        if self._mask_source is not None:
            for emitter in self._source_events(self._mask_source):
                emitter.disconnect(self._schedule_mask_refresh)
        self._mask_source = None
        if name is not None and name in self.viewer.layers:
            self._mask_source = self.viewer.layers[name]
            for emitter in self._source_events(self._mask_source):
                emitter.connect(self._schedule_mask_refresh)

    @staticmethod
    def _source_events(layer: Any) -> list[Any]:
        events = layer.events
        return [getattr(events, n) for n in ("data", "paint", "set_data") if hasattr(events, n)]

    # ------------------------------------------------------------------------------ mask

    def _schedule_mask_refresh(self, *_: Any) -> None:
        self._mask_timer.start()

    def mask_choice(self) -> tuple[str, str]:
        """``("generated", mask kind)`` or ``("layer", layer name)``."""
        data = self.mask_combo.currentData() or f"generated:{DEFAULT_MASK}"
        origin, _, value = str(data).partition(":")
        return origin, value

    def set_mask_choice(self, kind: str | None = None, layer: str | None = None) -> None:
        """Choose a generated mask ``kind`` or the layer called ``layer``."""
        data = f"generated:{kind}" if layer is None else f"layer:{layer}"
        index = self.mask_combo.findData(data)
        if index < 0:
            raise ValueError(f"no mask choice {data!r}")
        self.mask_combo.setCurrentIndex(index)

    def mask_spec(self) -> session.MaskSpec:
        """The generated mask the controls describe."""
        choice = self.mask_choice()
        centre = self.center_spin.value()
        return session.MaskSpec(
            kind=choice[1] if choice[0] == "generated" else DEFAULT_MASK,
            acceleration=self.acceleration_spin.value(),
            center_fraction=None if centre < 0 else centre,
            seed=self.mask_seed.value(),
        )

    def current_mask(self) -> session.ResolvedMask:
        """The mask the chosen input and the mask controls give (:func:`~._session.resolve_mask`).

        Raises
        ------
        ValueError
            Without an input, or for a mask that cannot be drawn (an empty or misfitting layer,
            a centre too large for the acceleration).
        """
        layer = self.input_layer()
        if layer is None:
            raise ValueError("no input: open k-space or an image (File > Open Sample)")
        origin, value = self.mask_choice()
        if origin == "layer":
            if value not in self.viewer.layers:
                raise ValueError(f"the mask layer {value!r} is gone")
            return session.resolve_mask(layer, drawn=self.viewer.layers[value])
        return session.resolve_mask(layer, spec=self.mask_spec())

    def refresh_mask(self) -> None:
        """Redraw the live mask layer and its acceleration from the controls."""
        self._mask_timer.stop()
        layer = self.input_layer()
        if layer is None:
            self.mask_info.setText("no input layer")
            return
        try:
            resolved = self.current_mask()
        except ValueError as exc:
            self.mask_info.setText(f"<span style='color:#ff6b6b'>{exc}</span>")
            return
        self.mask_info.setText(resolved.summary)
        self._show_mask(resolved.mask, session.grid_scale(layer), session.grid_translate(layer))

    def _show_mask(
        self, mask: np.ndarray, scale: tuple[float, float], translate: tuple[float, float]
    ) -> None:
        data = mask.astype(np.uint8)
        if self._mask_layer is not None and self._mask_layer in self.viewer.layers:
            self._mask_layer.data = data
            self._mask_layer.scale = scale
            self._mask_layer.translate = translate
            return
        self._mask_layer = self.viewer.add_layer(
            _layer_from(session.mask_layer(mask, scale, translate))
        )

    @property
    def history(self) -> dict[str, list[float]]:
        """``method -> objectives`` received so far in the current (or last) run."""
        return {name: list(values) for name, values in self._live.history.items()}

    @property
    def mask_layer(self) -> Any:
        """The live sampling-mask layer (``None`` before the first mask)."""
        return self._mask_layer

    # ------------------------------------------------------------------------------- run

    def _choose_model(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self, "Model folder", self.model_edit.text())
        if folder:
            self.model_edit.setText(folder)

    def _update_run_button(self) -> None:
        running = self.worker is not None
        self.run_button.setEnabled(self.is_ready() and not running)
        self.cancel_button.setEnabled(running)

    def build_request(self) -> session.ReconRequest:
        """The request the controls describe.

        Raises
        ------
        ValueError
            For a missing input, a mask that cannot be drawn, no regulariser, a bad lam.
        FileNotFoundError, napari_genreg.models.checkpoint.CheckpointError
            For a model folder that does not exist or does not suit the checked methods.
        """
        layer = self.input_layer()
        if layer is None:
            raise ValueError("no input: open k-space or an image (File > Open Sample)")
        resolved = self.current_mask()
        text = self.lam_edit.text().strip()
        lam = None
        if text and text.lower() != "auto":
            try:
                lam = float(text)
            except ValueError:
                raise ValueError(f"lam must be a number or empty (auto), got {text!r}") from None
        data = session.load_input(
            layer,
            slice_index=self.slice_spin.value(),
            noise_sigma=self.noise_spin.value(),
            seed=self.noise_seed.value(),
        )
        image_input = session.input_kind(layer) == "image"
        return session.ReconRequest(
            data=data,
            mask=None if resolved.acquired else resolved.mask,
            mask_label=resolved.label,
            methods=self.checked_methods(),
            lam=lam,
            iterations=self.iterations_spin.value() or None,
            device=self.device_combo.currentText() or "auto",
            model=self.model_edit.text().strip() or None,
            coil_maps=self.coil_maps_combo.currentText(),
            source=layer.name,
            slice_index=self.slice_spin.value() if session.slice_count(layer) > 1 else None,
            scale=session.grid_scale(layer) if image_input else (1.0, 1.0),
            translate=session.grid_translate(layer) if image_input else (0.0, 0.0),
        )

    def run(self) -> None:
        """Start a run with the current settings (a no-op while one is running).

        Errors in the settings are shown as a notification and nothing is started.
        """
        if self.worker is not None or not self.is_ready():
            return
        try:
            request = self.build_request()
            planned = request.planned_iterations()
        except Exception as exc:
            show_error(f"Reconstruct: {exc}")
            return
        self.start(request, planned)

    def start(self, request: session.ReconRequest, planned: dict[str, int]) -> None:
        """Run ``request`` in a ``thread_worker`` (``planned``: iterations per method).

        The worker builds the problem, reports it and waits: meanwhile the GUI makes one layer
        per method (named as its result, transparent until its first preview) and switches
        grid mode on, one napari call per event-loop turn, while no solver competes with it.
        Then the iterations run, and the previews and the results only replace layer data.
        """
        from napari.qt.threading import thread_worker
        from superqt.utils import GeneratorWorker

        self.results = []
        self._live = session.LiveRun()
        self._refresh_throttle.reset()
        self._failed = False
        self._cancelled = False
        self._run_mask = request.mask
        self._scale = request.scale
        self._translate = request.translate
        self._names = request.result_names()
        # a curve's legend says what it shows when that is no objective: "vn (data term)"
        reported = {m.name: m.objective for m in self.choices.methods} if self.choices else {}
        self._curve_labels = {
            name: f"{name} ({reported[name]})"
            for name in request.methods
            if reported.get(name, "objective") != "objective"
        }
        self._run_layers = {}
        self._laid_out = laid_out = threading.Event()
        self._grid_by_run = False
        self.table.setRowCount(0)
        self.results_box.setTitle(f"Results: {request.title}")
        self.plot.clear()
        self._shown_description = self._live.description
        total = sum(planned.values())
        # next turn: the first progress bar of a session builds napari's activity dock
        self._steps.add(lambda: self._start_progress(total))
        # superqt's plain GeneratorWorker: napari's would also relay errors as tracebacks.
        made: list[Any] = []  # the worker, for the generator to see its abort flag
        worker = thread_worker(
            _run_in_thread, start_thread=False, worker_class=GeneratorWorker, ignore_errors=True
        )(request, laid_out, lambda: bool(made) and made[0].abort_requested)
        made.append(worker)
        worker.yielded.connect(self._on_event)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker

        # a full collection of napari's heap would block the GUI thread for 100-400 ms
        self._heap_hold = hold = HeapHold()

        def stop(*_: Any) -> None:  # the dock closes: stop computing
            laid_out.set()
            worker.quit()
            hold.release()

        self._stop_worker = stop
        self.destroyed.connect(stop)
        self.status.setText(f"building the problem ({request.mask_label})…")
        self._update_run_button()
        worker.start()

    def _start_progress(self, total: int) -> None:
        from napari.utils import progress

        if self.worker is None:  # over already
            return
        self._syncing = True  # it processes events: no other step within this one
        try:
            self._pbar = progress(total=total, desc=self._shown_description)
        finally:
            self._syncing = False

    def event(self, event: QEvent) -> bool:
        """A dock closed with its X is taken out of the window, not destroyed (napari's
        ``remove_dock_widget``): a run going on is cancelled then, as by Cancel."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.cancel()
        return super().event(event)

    def cancel(self) -> None:
        """Ask the running worker to stop after the iteration in progress."""
        if self.worker is not None:
            self.worker.quit()
            self._laid_out.set()
            self.status.setText("cancelling…")

    # -------------------------------------------------------------------- worker events

    def _on_event(self, event: session.RunEvent) -> None:
        if isinstance(event, session.ProblemReady):
            self._display_range = event.display_range
            info = event.info
            self.status.setText(
                f"{info['kspace_shape'][0]}x{info['kspace_shape'][1]}, {info['coils']} coil(s), "
                f"{info['acceleration']:.2f}x, noise σ {info['noise_sigma']:.3g} on "
                f"{info['device']}"
            )
            for note in event.notes:
                show_info(f"Reconstruct: {note}")
            self._lay_out(tuple(info["recon_size"]))
        elif isinstance(event, session.IterationEvent):
            self._on_iteration(event)
        elif isinstance(event, session.MethodFinished):
            self._on_method_finished(event.result)

    def _lay_out(self, shape: tuple[int, int]) -> None:
        """While the worker waits: one layer per method (added hidden, then shown), then grid
        mode (when asked for), one napari call per event-loop turn; then the worker goes on."""
        for method, name in self._names.items():
            self._steps.add(lambda m=method, n=name: self._add_run_layer(m, n, shape))
        if self.grid_check.isChecked():
            self._steps.add(self._plan_grid)
        self._steps.add(self._laid_out.set)

    def _plan_grid(self) -> None:
        """Grid mode's steps, planned once the run's layers are in (unless cancelled)."""
        if not self._laid_out.is_set():
            self._grid_by_run = not grid(self.viewer).enabled
            self._steps.add_next(*self._grid_steps())

    def _add_run_layer(self, method: str, name: str, shape: tuple[int, int]) -> None:
        if self._laid_out.is_set():  # cancelled meanwhile
            return
        data = session.run_layer(name, shape, self._display_range, self._scale, self._translate)
        layer = _layer_from(data)
        # added hidden, shown in the next turn: in grid mode a layer that takes a cell makes
        # napari rebuild its grid of views (20-100 ms here, benchmarks/event_loop_latency.py),
        # a hidden one takes none; one turn each instead of both in one
        layer.visible = False
        self._run_layers[method] = self.viewer.add_layer(layer)
        self._steps.add_next(lambda: self._show_run_layer(method))

    def _show_run_layer(self, method: str) -> None:
        layer = self._run_layer(method)
        if layer is None or self._laid_out.is_set():
            return
        if grid(self.viewer).enabled and self._named_for_grid:
            # a grid that grows makes napari move every layer into new views and rebuild what
            # each draws (an image, a name) in one draw; the names are written again one per
            # turn, by the grid's steps or the clean-up's (benchmarks/event_loop_latency.py)
            self._unnamed_for_layout.extend(self._unname())
        layer.visible = True

    def _run_layer(self, method: str) -> Any:
        """The layer of ``method`` in this run, or ``None`` (not made, or deleted by the user)."""
        layer = self._run_layers.get(method)
        return layer if layer is not None and layer in self.viewer.layers else None

    def _on_iteration(self, event: session.IterationEvent) -> None:
        self._live.record(event)  # shown by the next refresh
        if not self._refresh_timer.isActive():
            self._refresh_timer.start(round(1e3 * self._refresh_throttle.wait()))

    def _refresh(self) -> None:
        """Show the latest state: preview, status, plot and progress bar. Never re-entered
        (the progress bar processes events)."""
        if self._syncing:
            return
        self._refresh_throttle.take()
        live = self._live
        preview = live.take_preview()
        if preview is not None:
            self._show_preview(preview)
        if live.status and not (self._failed or self._cancelled):
            self.status.setText(live.status)
        for name, objectives in live.take_curves().items():
            self._set_curve(name, objectives)
        # in a turn of its own: the progress bar processes events, so the repaint of the
        # preview would otherwise be drawn within this call
        self._steps.add(self._sync_progress)

    def _show_preview(self, preview: session.Preview) -> None:
        layer = self._run_layer(preview.method)
        if layer is None:
            return
        layer.data = preview.image  # the contrast limits are the run's, set once
        if layer.opacity == 0:
            layer.opacity = 1.0

    def _set_curve(self, method: str, objectives: list[float]) -> None:
        self.plot.set_curve(method, objectives, label=self._curve_labels.get(method, method))

    def _on_method_finished(self, result: session.MethodResult) -> None:
        self.results.append(result)
        self._live.finish(result)
        self._steps.add(lambda: self._show_result(result))

    def _show_result(self, result: session.MethodResult) -> None:
        """The result into its method's layer (its data and metadata; a new layer if the
        user deleted it); its row and its whole curve come next turn."""
        array, kwargs, kind = session.result_layer(result, self._run_mask)
        layer = self._run_layer(result.method)
        if layer is None:
            self._run_layers[result.method] = self.viewer.add_layer(
                _layer_from((array, kwargs, kind))
            )
        else:
            layer.data = array
            if tuple(layer.contrast_limits) != tuple(kwargs["contrast_limits"]):
                layer.contrast_limits = kwargs["contrast_limits"]
            layer.opacity = 1.0
            layer.metadata = kwargs["metadata"]  # a reconstruction now (the inspector sees it)
        self._steps.add_next(lambda: self._add_row(result))

    def _add_row(self, result: session.MethodResult) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        for column, text in enumerate(session.metrics_row(result)):
            item = QTableWidgetItem(text)
            item.setToolTip(result.name)
            if column == 4 and result.lam_automatic:
                item.setToolTip(f"{result.name}: lam from the automatic rule")
            if column:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(row, column, item)
        self._fit_table()
        self._refresh()

    def _fit_table(self) -> None:
        """Widen the table (and so the dock) to show every column, up to a limit."""
        self.table.resizeColumnsToContents()
        width = self.table.horizontalHeader().length() + 2 * self.table.frameWidth() + 2
        self.table.setMinimumWidth(min(width, MAX_TABLE_WIDTH))

    def _on_error(self, exc: BaseException) -> None:
        from napari_genreg.recon import ReconstructionError

        if isinstance(exc, ReconstructionFailed) and exc.__cause__ is not None:
            exc = exc.__cause__
        known = isinstance(exc, ValueError | ReconstructionError | MemoryError)
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        if not known:  # a bug rather than a bad input: keep the traceback in the log
            logger.error("reconstruction failed", exc_info=(type(exc), exc, exc.__traceback__))
        self._failed = True
        show_error(f"Reconstruct failed: {message}")
        self.status.setText(f"failed: {message}")

    def _on_aborted(self) -> None:
        last = self._live.last
        where = "" if last is None else f" in {last.method} at iteration {last.iteration}"
        kept = f"; {len(self.results)} finished result(s) kept" if self.results else ""
        self._cancelled = True
        show_info(f"Reconstruct: cancelled{where}{kept}")
        self.status.setText(f"cancelled{where}{kept}")

    def _sync_progress(self) -> None:
        """Bring napari's progress bar up to date (never re-entered)."""
        pbar = self._pbar
        if pbar is None or self._syncing:
            return
        self._syncing = True
        try:
            live = self._live
            if self._shown_description != live.description:  # tqdm appends ": " to desc
                self._shown_description = live.description
                pbar.set_description(live.description)
            if live.done > pbar.n:
                pbar.update(live.done - pbar.n)
        finally:
            self._syncing = False

    def _on_finished(self) -> None:
        """The worker is done: finish the display in steps, one per event-loop turn (after
        the results still queued); :attr:`run_finished` is emitted by the last. A failed or
        cancelled run takes away the layers of the methods that did not finish (and grid
        mode, when no method finished and this run switched it on)."""
        self._laid_out.set()
        self._steps.add(self._finish_progress)
        if self._failed or self._cancelled:
            self._steps.add(lambda: self._steps.add_next(*self._cleanup_steps()))
        self._steps.add(self._end_run)

    def _finish_progress(self) -> None:
        self._refresh_timer.stop()
        self._refresh()
        self._sync_progress()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _cleanup_steps(self) -> list[Callable[[], None]]:
        finished = {result.method for result in self.results}

        def remove(method: str) -> None:
            layer = self._run_layer(method)
            self._run_layers.pop(method, None)
            if layer is not None:
                self.viewer.layers.remove(layer)

        steps: list[Callable[[], None]] = [
            lambda m=method: remove(m) for method in self._run_layers if method not in finished
        ]
        if not finished and self._grid_by_run:
            steps.append(self._hide_grid)
        else:  # the names taken away while a layer was shown (if the grid is still on)
            steps.extend(self._name_steps(self._unnamed_for_layout))
        return steps

    def _end_run(self) -> None:
        if self.worker is not None:
            self.destroyed.disconnect(self._stop_worker)
        self._stop_worker = None  # it holds the worker, and the worker its generator
        self._unnamed_for_layout = []  # written again by now, or deleted, or off the grid
        if self._heap_hold is not None:
            self._heap_hold.release()
            self._heap_hold = None
        self.worker = None
        self._update_run_button()
        if not (self._failed or self._cancelled):
            names = ", ".join(r.name for r in self.results)
            self.status.setText(f"done: {names}")
        self.run_finished.emit()

    # ---------------------------------------------------------------------------- grid

    def _show_grid(self) -> None:
        """Grid mode with the k-space, the live mask and the Covariance Inspector's overlays
        hidden (they are not images to compare; each would take a cell) and each image's name
        written in its cell."""
        for step in self._grid_steps():
            step()

    def _grid_steps(self) -> list[Callable[[], None]]:
        """:meth:`_show_grid` as steps of one napari call each (hide the layers that are no
        images to compare, switch the grid on, show each name): each redraws the canvas."""

        def hide() -> None:
            if not self.grid_check.isChecked():  # unticked since: _hide_grid has run
                return
            for layer in self.viewer.layers:
                if layer.visible and session.layer_kind(layer) in NOT_COMPARED:
                    layer.visible = False
                    self._hidden_for_grid.append(layer)

        def grid_on() -> None:
            if self.grid_check.isChecked():
                self._switch_grid(True)

        def fit() -> None:  # each cell is smaller than the canvas was: zoomed in, cut off
            if self.grid_check.isChecked():
                fit_view(self.viewer, [])

        # the grid first, then one name per turn: in a grid switched on with the names shown,
        # the first draw builds each name's text program as well as the images'
        return [hide, grid_on, fit, *self._name_steps(list(self.viewer.layers))]

    def _name_steps(self, layers: list[Any]) -> list[Callable[[], None]]:
        """Steps that write the name of each of ``layers`` that is shown in its grid cell."""

        def name(layer: Any) -> None:
            if layer in self._unnamed_for_layout:
                self._unnamed_for_layout.remove(layer)
            if not (self.grid_check.isChecked() and grid(self.viewer).enabled):
                return  # the grid was left meanwhile
            overlay = layer.name_overlay
            if layer in self.viewer.layers and layer.visible and not overlay.visible:
                overlay.visible = True
                self._named_for_grid.append(layer)

        return [
            lambda layer=layer: name(layer)
            for layer in layers
            if getattr(layer, "name_overlay", None) is not None  # napari >= 0.6
        ]

    def _hide_grid(self) -> None:
        """Leave grid mode (fitting the view to what it showed, a cell's zoom on the whole
        canvas); show what it hid and hide the names it wrote."""
        was_on = grid(self.viewer).enabled
        shown = [la for la in self.viewer.layers if la.visible]
        self._switch_grid(False)
        if was_on:
            fit_view(self.viewer, shown)
        for layer in self._hidden_for_grid:
            if layer in self.viewer.layers:
                layer.visible = True
        self._unname()
        self._hidden_for_grid = []
        self._unnamed_for_layout = []

    def _switch_grid(self, enabled: bool) -> None:
        self._renamed_by_grid = []  # this widget's grid steps write the names
        self._switching_grid = True
        try:
            grid(self.viewer).enabled = enabled
        finally:
            self._switching_grid = False

    def _unname(self) -> list[Any]:
        """Hide the names this widget wrote in the grid's cells; the layers that had one."""
        named, self._named_for_grid = self._named_for_grid, []
        named = [layer for layer in named if layer in self.viewer.layers]
        for layer in named:
            layer.name_overlay.visible = False
        return named

    def _on_grid_switched(self, event: Any = None) -> None:
        """Grid mode switched by napari's grid button or by another widget (the Covariance
        Inspector leaves it to draw over one image): the names this widget wrote go with the
        grid (out of it, napari stacks them all in the canvas's corner), and those come back
        with it, when the box is still ticked."""
        if self._switching_grid:
            return
        if not grid(self.viewer).enabled:
            self._renamed_by_grid = self._unname()
        elif self.grid_check.isChecked() and self._renamed_by_grid:
            named, self._renamed_by_grid = self._renamed_by_grid, []
            self._steps.add(*self._name_steps(named))

    def _on_grid_toggled(self, checked: bool) -> None:
        if not checked:
            self._hide_grid()
        elif any(self._run_layer(method) is not None for method in self._run_layers):
            self._show_grid()


def _set_row_visible(form: QFormLayout, field: QWidget, visible: bool) -> None:
    """Show or hide a form row (its field and its label)."""
    field.setVisible(visible)
    label = form.labelForField(field)
    if label is not None:
        label.setVisible(visible)
