"""What both dock widgets need of the napari viewer and of the Qt event loop.

- :func:`grid`: the viewer's grid settings, across napari versions;
- :class:`StepQueue`: one-off napari calls (adding a layer, removing one, switching the grid)
  run one per event-loop turn, so that none of them follows another without the event loop
  being able to repaint and react in between.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, QTimer

#: Milliseconds between two queued steps.
STEP_DELAY_MS = 5


def grid(viewer: Any) -> Any:
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid``
    before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


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
