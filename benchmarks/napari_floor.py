"""What napari itself blocks the event loop for when a layer is added or shown: the floor under
the Reconstruct widget's layout of a run (``event_loop_latency.py``), with none of this
package's code in the window.

A bare napari window (1400 x 900, under Xvfb; a new one for each case) holds ``n`` visible
128 x 128 image layers (as a viewer holds earlier results). One operation at a time runs from
the event loop (a zero-time ``QTimer``), then the loop runs on for 0.4 s after it while a 10 ms
``QTimer`` records its ticks (the same measure as ``event_loop_latency.py``); the longest gap
is what the operation blocked, the draw and Qt's work that follow it included. The
operations, each on a new 128 x 128 image:

- ``add hidden``: ``viewer.add_layer`` of a hidden layer (the widget's first step per method);
- ``show``: that layer made visible (the widget's second step); in grid mode it takes a new
  cell, and napari rebuilds its grid of views when the grid's shape changes;
- ``add shown``: ``add_layer`` of a visible layer (both steps in one call).

Each in grid mode and out of it, for each ``n`` in ``--layers``, ``--repeats`` times (the
layer removed in between; medians). The call's own time (``call ms``) is measured around it.

Run: ``xvfb-run -a .venv/bin/python benchmarks/napari_floor.py`` (about eight minutes); writes
``benchmarks/results/napari_floor.json`` and ``.md``. ``--quick``: two sizes, one repeat,
printed only; ``--report-only`` rewrites the ``.md`` from the recorded ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine
from event_loop_latency import TARGET_MS, Ticker, _gl_renderer, _shader_cache_files

NAME = "napari_floor"
SETTLE_S = 0.4
OPERATIONS = ("add hidden", "show", "add shown")


def run(layer_counts: list[int], repeats: int) -> dict:
    import napari
    import numpy as np
    from napari.layers import Image
    from qtpy.QtCore import QTimer

    app = napari.qt.get_qapp()
    shader_cache = _shader_cache_files()
    rng = np.random.default_rng(0)
    ticker = Ticker()

    def settle(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.002)

    def measured(operation) -> tuple[float, float]:
        """(the call's ms, the longest gap in ms) of ``operation`` run from the event loop:
        the ticks are recorded until ``SETTLE_S`` after the call returned."""
        took: list[float] = []

        def call() -> None:
            start = time.perf_counter()
            operation()
            took.append(time.perf_counter() - start)
            took.append(time.perf_counter())

        ticker.start()
        QTimer.singleShot(0, call)
        while not took or time.perf_counter() < took[1] + SETTLE_S:
            app.processEvents()
            time.sleep(0.002)
        ticker.stop()
        gaps = [1e3 * (b - a) for a, b in zip(ticker.ticks, ticker.ticks[1:], strict=False)]
        return 1e3 * took[0], max(gaps)

    def image(visible: bool) -> Image:
        return Image(rng.random((128, 128), np.float32), visible=visible)

    rows = []
    renderer = ""
    for grid in (True, False):
        for n in layer_counts:
            # a new window for each: in one window, 4 layers after rounds with 1 crashed
            # Mesa's llvmpipe in a draw (napari 0.9.2; said in the results)
            viewer = napari.Viewer(title="napari floor benchmark")
            viewer.window.resize(1400, 900)
            renderer = renderer or _gl_renderer(viewer)
            viewer.canvas.grid.enabled = grid
            for _ in range(n):
                viewer.add_layer(image(True))
            settle(1.0)
            samples: dict[str, list[tuple[float, float]]] = {op: [] for op in OPERATIONS}
            cells_before = viewer.canvas.grid.actual_shape(viewer.layers)
            grows = False
            for _ in range(repeats + 1):  # the first round warms napari's caches: dropped
                layer = image(False)
                added = measured(lambda layer=layer, viewer=viewer: viewer.add_layer(layer))
                shown = measured(lambda layer=layer: setattr(layer, "visible", True))
                grows = viewer.canvas.grid.actual_shape(viewer.layers) != cells_before
                viewer.layers.remove(layer)
                settle(0.3)
                layer = image(True)
                both = measured(lambda layer=layer, viewer=viewer: viewer.add_layer(layer))
                viewer.layers.remove(layer)
                settle(0.3)
                for op, sample in zip(OPERATIONS, (added, shown, both), strict=True):
                    samples[op].append(sample)
            viewer.close()
            settle(0.2)
            print(f"grid {'on' if grid else 'off'}, {n} layers: done", file=sys.stderr)
            for op in OPERATIONS:
                kept = samples[op][1:]
                rows.append(
                    {
                        "grid": grid,
                        "layers": n,
                        "operation": op,
                        "grid_grows": grows and grid and op != "add hidden",
                        "call_ms": round(statistics.median(s[0] for s in kept), 1),
                        "gap_ms": round(statistics.median(s[1] for s in kept), 1),
                        "gap_max_ms": round(max(s[1] for s in kept), 1),
                    }
                )
    settings = {
        "display": os.environ.get("DISPLAY"),
        "gl_renderer": renderer,
        "shader_cache_files": shader_cache,
        "repeats": repeats,
        "napari": napari.__version__,
    }
    return {"settings": settings, "rows": rows}


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# What napari blocks the event loop for when a layer is added or shown",
        "",
        f"Machine: {_machine.machine_line(result['machine'])}.",
        "",
        f"Command: `{result['command']}`",
        "",
        f"napari {s['napari']} alone (none of this package's code in the window), 1400 x 900, "
        f"X display `{s['display']}`, OpenGL renderer `{s['gl_renderer']}`, Mesa's shader "
        f"cache {'warm' if s['shader_cache_files'] else 'empty'} at the start. A viewer with "
        "*layers* visible 128 x 128 images; each operation on a new 128 x 128 image runs "
        "from the event loop, then a 10 ms QTimer records the loop's ticks for "
        f"{SETTLE_S} s: *gap* is the longest time between two ticks (the call, the draw and "
        "Qt's work that follow it), *call* the operation's own time. Medians of "
        f"{s['repeats']} repeats (after one dropped), and the longest gap of them. "
        f"Target of the Reconstruct widget: no gap above {TARGET_MS:.0f} ms.",
        "",
        "| grid mode | layers | operation | grid grows | call ms | gap ms | longest gap ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {'on' if r['grid'] else 'off'} | {r['layers']} | {r['operation']} | "
            f"{'yes' if r['grid_grows'] else ''} | {r['call_ms']} | {r['gap_ms']} | "
            f"{r['gap_max_ms']} |"
        )
    lines += [
        "",
        "*add hidden* and *show* are the two steps, one event-loop turn each, in which the "
        "Reconstruct widget lays out each method's layer before a run's first iteration; "
        "*add shown* is both in one call. Where a row's gap is above the target, no ordering "
        "of the widget's own steps brings that step under it: the gap is napari's call and "
        "the drawing and Qt work it causes.",
        "",
        "Each case has a window of its own: with one window for all, Mesa's llvmpipe crashed "
        "(a segmentation fault in `glDrawArrays`, drawing an image of a view outside the "
        "grid) when a fifth layer was added after the rounds with one layer.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 16, 20])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="two sizes, one repeat, print only")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the .md from the recorded .json"
    )
    args = parser.parse_args()
    if args.report_only:
        recorded = json.loads((_machine.RESULTS / f"{NAME}.json").read_text())
        (_machine.RESULTS / f"{NAME}.md").write_text(markdown(recorded))
        return
    if args.quick:
        args.layers, args.repeats = [1, 4], 1
    _machine.pin_threads(len(os.sched_getaffinity(0)))
    machine = _machine.machine_info()
    command = _machine.command_line()
    start = time.perf_counter()
    result = {"benchmark": NAME, "command": command, "machine": machine}
    result.update(run(args.layers, args.repeats))
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    _machine.publish(NAME, result, markdown(result), record=not args.quick)


if __name__ == "__main__":
    main()
