"""The convergence plot of the Reconstruct dock: a small line plot painted with ``QPainter``.

A matplotlib draw of the same plot held the GUI thread for 35 to 160 ms (most of it laying out
and rendering the tick labels), and while a solver ran in the worker for twice that; a paint of
this widget takes a few milliseconds (a long curve is reduced to its envelope at the plot's
width first, :func:`envelope`), so the plot follows a run live without blocking the event
loop. It shows :func:`~._session.relative_excess` of each iterative method's objective history,
log against log: methods of 8 and of 1000 iterations share the iteration axis.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from napari_genreg._napari._session import relative_excess

#: Line colours, in the order the curves arrive (matplotlib's ``tab10``).
COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
#: The axis titles.
X_LABEL = "iteration"
Y_LABEL = "objective − lowest (relative)"
#: Pixels around the plot area: left (tick labels and the y title), top, right, bottom.
MARGINS = (46, 10, 18, 32)
#: The lowest decade the y axis goes down to.
LOWEST_DECADE = -12


def decade_label(k: int) -> str:
    """The label of the tick at ``10**k``: ``"1"``, ``"0.1"``, ``"0.01"``, ``"1e-3"``, ..."""
    if k >= 0:
        return str(10**k)
    return f"{10.0**k:g}" if k >= -2 else f"1e{k}"


def x_ticks(last: int) -> list[int]:
    """Iterations to mark on a log axis from 1 to ``last``: the powers of ten, with 2 and 5
    times them where the axis spans less than three decades, and ``last`` itself unless a tick
    is close below it.

    Examples
    --------
    >>> x_ticks(8), x_ticks(20), x_ticks(1000), x_ticks(3000)
    ([1, 2, 5, 8], [1, 2, 5, 10, 20], [1, 10, 100, 1000], [1, 10, 100, 1000, 3000])
    """
    multiples = (1, 2, 5) if last < 1000 else (1,)
    ticks = [
        m * 10**k
        for k in range(int(math.log10(max(last, 1))) + 1)
        for m in multiples
        if m * 10**k <= last
    ]
    if last / ticks[-1] > 1.3:
        ticks.append(last)
    return ticks


def apart(centres: Sequence[float], halves: Sequence[float]) -> list[int]:
    """Indices of the labels to draw, centred at increasing ``centres`` with half-widths
    ``halves``: the last, and each one before it that ends before the next drawn one begins.

    Examples
    --------
    >>> apart([0.0, 50.0, 90.0, 100.0], [10.0, 10.0, 10.0, 10.0])
    [0, 1, 3]
    """
    kept = [len(centres) - 1] if centres else []
    for i in range(len(centres) - 2, -1, -1):
        if centres[i] + halves[i] <= centres[kept[-1]] - halves[kept[-1]]:
            kept.append(i)
    return kept[::-1]


def envelope(y: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The points of a curve worth drawing at ``bins`` pixel columns: ``(iterations, values)``.

    A curve of at most ``2 * bins`` points is drawn whole. A longer one is cut into at most
    ``bins`` runs of iterations as wide as the pixel columns of a log axis (a run of iteration
    ``k`` to ``r k``, ``r`` the same for all), and of each run the points of its lowest and
    its highest drawable (finite, positive) value are kept, in iteration order: the polyline
    looks the same at that width, and a paint costs the same after a million iterations as
    after a thousand. A run with nothing drawable keeps one undrawable point, so the line
    breaks there.

    Examples
    --------
    >>> k, v = envelope(np.array([5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 6.0, 1.0]), 2)
    >>> k.tolist(), v.tolist()
    ([1, 2, 7, 8], [5.0, 1.0, 6.0, 1.0])
    """
    n = y.size
    if n <= 2 * bins:
        return np.arange(1, n + 1), y
    drawable = np.where(np.isfinite(y) & (y > 0), y, np.nan)
    edges = np.unique(np.round(np.geomspace(1, n + 1, bins + 1)).astype(int) - 1)
    keep: list[int] = []
    for start, stop in itertools.pairwise(edges):
        part = drawable[start:stop]
        if part.size == 0:
            continue
        if np.all(np.isnan(part)):
            keep.append(start)
            continue
        low, high = start + int(np.nanargmin(part)), start + int(np.nanargmax(part))
        keep.extend(sorted({low, high}))
    index = np.asarray(keep)
    return index + 1, y[index]


class ConvergencePlot(QWidget):
    """The objective per iteration of each iterative method of a run.

    Each curve is :func:`~._session.relative_excess` of a method's history: its objective
    minus its lowest value, relative to its range, on a log axis (1: the method's worst value,
    0.01: within 1 % of its range from its lowest). Methods whose objectives differ in sign or
    by orders of magnitude so share one axis; the lowest point itself (0) is not drawn, and
    closed-form methods (one iterate) have no curve.

    Parameters
    ----------
    theme
        The napari theme whose background and text colours the plot takes.
    """

    def __init__(self, theme: str = "dark", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        background, text = _theme_colors(theme)
        self._background = QColor(background)
        self._text = QColor(text)
        self._curves: dict[str, np.ndarray] = {}
        self._labels: dict[str, str] = {}
        self.setMinimumHeight(180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip(
            "Objective per iteration of each iterative method, minus its lowest value, "
            "relative to its range (log axis: 1 is the worst value, 0.01 within 1 % of the "
            "lowest); the vn reports its data term"
        )

    # ------------------------------------------------------------------------------- data

    def clear(self) -> None:
        """Remove every curve."""
        self._curves.clear()
        self._labels.clear()
        self.update()

    def set_curve(self, name: str, objectives: Sequence[float], label: str | None = None) -> None:
        """Show (or update) the curve of method ``name`` from its objective history, with
        ``label`` in the legend (default ``name``); nothing for a history with nothing to
        show (see :func:`~._session.relative_excess`)."""
        y = relative_excess(objectives)
        if y is None:
            return
        self._curves[name] = y
        self._labels[name] = label or name
        self.update()  # painted on the next event-loop turn, once however many curves changed

    def curves(self) -> dict[str, np.ndarray]:
        """``name -> y`` of the curves shown."""
        return {name: y.copy() for name, y in self._curves.items()}

    def labels(self) -> dict[str, str]:
        """``name -> legend label`` of the curves shown."""
        return dict(self._labels)

    # ---------------------------------------------------------------------------- drawing

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        try:
            self._paint(painter)
        finally:
            painter.end()

    def _paint(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self._background)
        font = QFont(painter.font())
        font.setPointSizeF(7.5)
        painter.setFont(font)
        metrics = painter.fontMetrics()
        left, top, right, bottom = MARGINS
        area = QRectF(
            left, top, max(self.width() - left - right, 10), max(self.height() - top - bottom, 10)
        )
        faint = QColor(self._text)
        faint.setAlpha(45)
        axis_pen = QPen(self._text, 1.0)

        positive = [y[np.isfinite(y) & (y > 0)] for y in self._curves.values()]
        lowest = min((float(v.min()) for v in positive if v.size), default=1e-3)
        low = max(LOWEST_DECADE, min(-1, math.floor(math.log10(lowest))))
        last = max((y.size for y in self._curves.values()), default=10)
        last = max(last, 2)

        def px(x: float) -> float:
            return area.left() + math.log(x) / math.log(last) * area.width()

        def py(y: float) -> float:
            return area.top() + (-math.log10(y)) / (-low) * area.height()

        # the grid and the y ticks: every decade, labelled every `step`-th
        step = max(1, math.ceil(-low / 5))
        for k in range(low, 1):
            y = py(10.0**k)
            painter.setPen(QPen(faint, 1.0))
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            if k % step == 0:
                painter.setPen(axis_pen)
                painter.drawLine(QPointF(area.left() - 3, y), QPointF(area.left(), y))
                text = decade_label(k)
                rect = QRectF(0, y - 8, area.left() - 5, 16)
                painter.drawText(
                    rect, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), text
                )
        # the x ticks; a label that would touch the one before it is left out (the last
        # iteration, close after a power of ten on a log axis), the last label kept
        painter.setPen(axis_pen)
        ticks = x_ticks(last)
        half = [metrics.horizontalAdvance(str(t)) / 2 + 3 for t in ticks]
        for i in apart([px(t) for t in ticks], half):
            x = px(ticks[i])
            painter.drawLine(QPointF(x, area.bottom()), QPointF(x, area.bottom() + 3))
            rect = QRectF(x - 20, area.bottom() + 3, 40, metrics.height())
            painter.drawText(rect, int(Qt.AlignmentFlag.AlignHCenter), str(ticks[i]))
        painter.drawRect(area)
        # the titles
        title = QRectF(area.left(), self.height() - metrics.height() - 1, area.width(), 14)
        painter.drawText(title, int(Qt.AlignmentFlag.AlignHCenter), X_LABEL)
        painter.save()
        painter.translate(2, area.center().y())
        painter.rotate(-90)
        painter.drawText(
            QRectF(-area.height() / 2 - 40, 0, area.height() + 80, metrics.height()),
            int(Qt.AlignmentFlag.AlignHCenter),
            Y_LABEL,
        )
        painter.restore()

        if not self._curves:
            painter.drawText(
                area,
                int(Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap),
                "objective per iteration\n(iterative methods)",
            )
            return
        # the curves: a polyline through each run of drawable points (y > 0)
        painter.setClipRect(area.adjusted(-1, -1, 1, 1))
        columns = max(int(area.width()), 1)
        for i, y in enumerate(self._curves.values()):
            path = QPainterPath()
            pen_down = False
            for k, value in zip(*envelope(y, columns), strict=True):
                if not (np.isfinite(value) and value > 0):
                    pen_down = False
                    continue
                point = QPointF(px(k), py(max(value, 10.0**low)))
                if pen_down:
                    path.lineTo(point)
                else:
                    path.moveTo(point)
                    pen_down = True
            painter.setPen(QPen(QColor(COLORS[i % len(COLORS)]), 1.4))
            painter.drawPath(path)
        painter.setClipping(False)
        # the legend, top right
        row = metrics.height()
        width = max(metrics.horizontalAdvance(label) for label in self._labels.values()) + 24
        x0 = area.right() - width - 4
        for i, name in enumerate(self._curves):
            y = area.top() + 4 + i * row + row / 2
            painter.setPen(QPen(QColor(COLORS[i % len(COLORS)]), 1.6))
            painter.drawLine(QPointF(x0, y), QPointF(x0 + 16, y))
            painter.setPen(axis_pen)
            rect = QRectF(x0 + 20, y - row / 2, width, row)
            painter.drawText(rect, int(Qt.AlignmentFlag.AlignVCenter), self._labels[name])


def _theme_colors(theme: str) -> tuple[str, str]:
    """``(background, text)`` of a napari theme, as hex colours."""
    try:
        from napari.utils.theme import get_theme

        t = get_theme(theme)
        return t.background.as_hex(), t.text.as_hex()
    except Exception:  # an unknown or "system" theme: napari's dark default
        return "#262930", "#f0f1f2"
