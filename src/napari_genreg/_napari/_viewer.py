"""What both dock widgets need of the napari viewer and of the Qt event loop.

- :func:`grid`: the viewer's grid settings, across napari versions;
- :func:`add_keeping_selection`: a layer added without taking the user's selection;
- :func:`fit_view`: the camera fitted to some layers (not the hidden ones);
- :class:`StepQueue`: one-off napari calls (adding a layer, removing one, switching the grid)
  run one per event-loop turn, so that none of them follows another without the event loop
  being able to repaint and react in between;
- :func:`scrolling_layout`: a dock's controls in a scroll area, so that two docks stacked in a
  short window scroll instead of squeezing their rows over each other;
- :class:`HeapHold`: Python's cycle collector kept off the objects that exist when a run
  starts, until it ends;
- :func:`glyph_steps`: the glyphs of layer names rendered ahead of time, in steps, so that
  the first draw of a name in grid mode does not render them.
"""

from __future__ import annotations

import gc
import string
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

#: Milliseconds between two queued steps.
STEP_DELAY_MS = 5


#: Holds of the heap in force (:class:`HeapHold`), and whether the first of them froze it.
_holds = {"count": 0, "froze": False}


class HeapHold:
    """Keep Python's cycle collector off the objects that exist now, until :meth:`release`.

    A napari process tracks about 400 000 objects (napari, its Qt wrappers, torch). A full
    collection scans all of them and blocks the thread that triggered it: the GUI thread, or
    the worker while it holds the GIL, for 100-400 ms here (``gc gen 2`` in
    ``benchmarks/event_loop_latency.py``). While a hold is in force the objects that existed
    when the first hold was taken are frozen (:func:`gc.freeze`): a collection only scans what
    was made since. The last release unfreezes them (:func:`gc.unfreeze`), so that what became
    garbage meanwhile is collected later and nothing is kept for good. A heap that someone
    else froze is left as it is.
    """

    def __init__(self) -> None:
        if _holds["count"] == 0:
            _holds["froze"] = gc.get_freeze_count() == 0
            if _holds["froze"]:
                gc.freeze()
        _holds["count"] += 1
        self._held = True

    def release(self) -> None:
        """End this hold (again: a no-op); the last one unfreezes the heap."""
        if not self._held:
            return
        self._held = False
        _holds["count"] -= 1
        if _holds["count"] == 0 and _holds["froze"]:
            gc.unfreeze()
            _holds["froze"] = False


#: What napari's layer-name overlays draw: the run layers' names and most others, and the
#: characters vispy's text visual measures every text with (``ÅÉÑŐ``).
NAME_CHARACTERS = string.ascii_letters + string.digits + string.punctuation + " ·×ÅÉÑŐ"


def glyph_steps(
    viewer: Any, characters: str = NAME_CHARACTERS, per_step: int = 4
) -> list[Callable[[], None]]:
    """Steps that render ``characters`` into the glyph cache of the viewer's canvas,
    ``per_step`` characters each.

    napari renders a glyph (a signed-distance field, on the CPU) the first time a text overlay
    draws it, inside the draw: the first names written in grid mode rendered all theirs in the
    GUI thread (benchmarks/event_loop_latency.py). The cache belongs to napari's vispy canvas
    (private, in the napari versions that draw text with Qt fonts); with another there are no
    steps, and the names are rendered when first drawn.
    """
    try:
        with warnings.catch_warnings():
            # napari warns that a plugin's access to its private attributes is to end (not
            # before 0.10); when it does, there are no steps
            warnings.simplefilter("ignore", FutureWarning)
            info = viewer.window._qt_viewer.canvas._font_info
            font = info.font_manager.get_font(info.face)
    except (AttributeError, TypeError):
        return []

    def render(chunk: str) -> None:
        for char in chunk:
            font[char]

    return [
        lambda chunk=characters[i : i + per_step]: render(chunk)
        for i in range(0, len(characters), per_step)
    ]


def add_keeping_selection(viewer: Any, layer: Any) -> Any:
    """``viewer.add_layer(layer)`` with the layers that were selected selected again (napari
    selects the layer it adds: a hidden helper layer would take the layer controls and the
    status bar from the layer the user works on)."""
    selection = viewer.layers.selection
    before = list(selection)
    added = viewer.add_layer(layer)
    selection.clear()
    selection.update([la for la in before if la in viewer.layers])
    return added


def fit_view(viewer: Any, layers: list[Any], margin: float = 0.05) -> None:
    """Fit the camera to ``layers`` (all shown layers when empty), as ``reset_view`` does for
    all layers, hidden ones too (a k-space twice as wide as its image, a mask), which would
    leave the image off-centre and small.

    napari 0.9's own ``reset_view(layers=...)`` fails on layers of fewer dimensions than the
    viewer (2-D results beside a 4-D multi-coil k-space): there the camera is fitted here, in
    2-D, to the layers' last two axes; before napari 0.7 (no ``layers``) to all layers.
    """
    shown = layers or [la for la in viewer.layers if la.visible]
    if not shown:
        viewer.reset_view()
        return
    try:
        viewer.reset_view(layers=shown)
        return
    except TypeError:  # no ``layers`` argument
        viewer.reset_view()
        return
    except IndexError:  # the layers have fewer dimensions than the viewer
        viewer.reset_view()
    canvas = getattr(viewer, "canvas", None)
    ndim = viewer.dims.ndim
    if (
        viewer.dims.ndisplay != 2
        or tuple(viewer.dims.displayed) != (ndim - 2, ndim - 1)
        or not hasattr(canvas, "viewbox_size")
    ):
        return
    low = np.min([la.extent.world[0][-2:] - la.extent.step[-2:] / 2 for la in shown], axis=0)
    high = np.max([la.extent.world[1][-2:] + la.extent.step[-2:] / 2 for la in shown], axis=0)
    size = high - low
    size[size <= 0] = 1.0
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple(float(c) for c in low + size / 2)
    box = np.asarray(canvas.viewbox_size(viewer.layers), dtype=float)
    camera.zoom = (1 - margin) * float(np.min(box / size))


def grid(viewer: Any) -> Any:
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid``
    before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


class _VerticalScrollArea(QScrollArea):
    """A scroll area that scrolls vertically only: it is as wide as its contents need, at
    least ``keep`` pixels high (or as high as its contents, when they need less), and asks its
    dock for a new size whenever their layout changes (a scroll area would keep the size it
    had when it was docked)."""

    def __init__(self, parent: QWidget, keep: int = 0) -> None:
        super().__init__(parent)
        self._keep = keep

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def minimumSizeHint(self) -> QSize:
        size = super().minimumSizeHint()
        inner = self.widget()
        if inner is None:
            return size
        width = inner.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        height = min(self._keep, inner.sizeHint().height())
        return QSize(max(size.width(), width), max(size.height(), height))

    def sizeHint(self) -> QSize:
        size = super().sizeHint()
        inner = self.widget()
        if inner is None:
            return size
        width = inner.sizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(width, max(size.height(), inner.sizeHint().height()))


def scrolling_layout(widget: QWidget, keep: int = 0) -> QVBoxLayout:
    """The layout to put ``widget``'s controls in: a vertical layout inside a frameless scroll
    area that fills ``widget``. The scroll area is vertically expanding, so napari adds no
    stretch below it; when the dock is shorter than the controls, they scroll (vertically: the
    area is as wide as the controls need). The dock is never squeezed below ``keep`` pixels
    (less when the controls need less): a dock stacked under a taller one keeps that much
    shown."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = _VerticalScrollArea(widget, keep)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    inner = QWidget(area)
    area.setWidget(inner)
    outer.addWidget(area)
    return QVBoxLayout(inner)


class StepQueue(QObject):
    """Callables run in order, one per event-loop turn.

    ``busy``, when given, is asked before each step; while it is true (e.g. inside napari's
    progress bar, which processes events) the step waits for a later turn.
    """

    def __init__(self, parent: QObject, busy: Callable[[], bool] = lambda: False) -> None:
        super().__init__(parent)
        self._steps: deque[Callable[[], None]] = deque()
        self._busy = busy
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(STEP_DELAY_MS)
        self._timer.timeout.connect(self._run_one)

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, *steps: Callable[[], None]) -> None:
        """Run ``steps`` after those queued before."""
        self._steps.extend(steps)
        if self._steps and not self._timer.isActive():
            self._timer.start()

    def add_next(self, *steps: Callable[[], None]) -> None:
        """Run ``steps`` before those queued (from within a step: they follow it)."""
        self._steps.extendleft(reversed(steps))
        if self._steps and not self._timer.isActive():
            self._timer.start()

    def _run_one(self) -> None:
        if self._steps and not self._busy():
            step = self._steps.popleft()
            try:
                step()
            finally:
                if self._steps and not self._timer.isActive():
                    self._timer.start()
        elif self._steps:
            self._timer.start()
