"""Responsiveness of the GUI: event-loop blocking during a run, and the inspector's click latency.

The real napari window (under Xvfb) with the brain sample (128 x 128), the Reconstruct widget
and the Covariance Inspector docked through the manifest. A ``QTimer`` ticking every 10 ms
records its ticks; a gap longer than 10 ms between two ticks is time the event loop was blocked
(the GUI could not repaint or react). The timer runs through every phase, one after the other:

- ``idle``: 2 s with nothing running (the floor: timer jitter);
- a run of vae-structured with its default iterations, in three phases: ``layout`` (from
  pressing Run to the first iteration: the worker builds the problem and waits while the widget
  adds the run's layer and switches grid mode on), ``iterations`` (previews, progress bar,
  convergence plot, the result) and ``results`` (until the widget is idle), then ``inspector
  prepares`` (the Covariance Inspector makes its layers and warms up the new latent);
- ``first click`` and ``later clicks``: clicks on the vae-structured result, one after the
  other, each waited for;
- a comparison run, tv and vae-structured, in the same phases;
- what napari's progress bar costs the solver: vae-structured again, with the bar replaced by a
  stub that shows nothing, then with the real bar but its activity indicator (an animated GIF)
  not animated; and the same iterations in a thread with no GUI to serve.

Target: no gap above 100 ms. Per click, the latency from the click to the layers being
updated (the inspector's ``last_latency``). Each gap above 100 ms is listed with what ran
inside it: the GUI-thread calls of the widgets' handlers and of every queued step; ``canvas
draw``, vispy's draw callbacks (the scene drawn with OpenGL: in software here, llvmpipe, as
there is no GPU display); ``napari grid rebuild``, napari replacing its grid of vispy views
when the grid's shape changes; ``gc gen N``, Python's garbage collections. Each phase also
reports its gaps less the drawing (not counting as drawing the collections that ran inside a
draw): an estimate of the gaps where a GPU draws the scene in a few milliseconds (Qt's
compositing of the window, also done in software here, is not taken out).

Run: ``xvfb-run -a .venv/bin/python benchmarks/event_loop_latency.py`` (about a minute);
writes ``benchmarks/results/event_loop_latency.json`` and ``.md``. ``--quick`` only prints;
``--report-only`` rewrites the ``.md`` from the recorded ``.json``. ``--cold-shader-cache`` runs
with Mesa's shader cache empty (a machine's first napari session: the first draws compile their
shaders) and writes ``event_loop_latency_cold_shaders.*``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _machine

NAME = "event_loop_latency"
TICK_MS = 10
TARGET_MS = 100.0
#: GUI-thread methods of the widgets whose calls are timed: the worker's events, the throttled
#: refresh (preview, progress bar, status, plot) and the one-off steps queued one per turn.
RECON_HANDLERS = (
    "_start_progress",
    "_on_event",
    "_refresh",
    "_add_run_layer",
    "_show_result",
    "_add_row",
    "_sync_progress",
    "_finish_progress",
    "_end_run",
)
INSPECTOR_HANDLERS = ("_on_source_changed", "_focus", "_create", "_show")
CLICKS = ((64, 64), (40, 80), (90, 50), (30, 30), (70, 100), (100, 90), (50, 20), (20, 64))
#: The two runs: vae-structured alone (its result is then clicked), and a comparison.
SINGLE = "vae-structured"
COMPARISON = "tv + vae-structured"
STUBBED = "vae-structured, napari's progress bar stubbed"
STILL = "vae-structured, napari's activity indicator not animated"
OUTSIDE = "vae-structured outside the GUI"
#: Labels of the calls recorded besides the widgets' handlers.
DRAW = "canvas draw"
GRID = "napari grid rebuild"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class Ticker:
    """A 10 ms QTimer recording the time of each tick."""

    def __init__(self) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.ticks: list[float] = []

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())

    def start(self) -> None:
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()


class Calls:
    """The GUI-thread calls of the widgets' handlers: ``(name, start, end)`` in seconds."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []

    def wrap(self, obj: object, name: str, label: str | None = None) -> None:
        """Replace ``obj.name`` by a wrapper that records each call as ``label``."""
        original: Callable = getattr(obj, name)
        label = label or name
        calls = self.calls

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                calls.append((label, start, time.perf_counter()))

        setattr(obj, name, wrapper)

    def watch_gc(self) -> None:
        """Record Python's garbage collections as ``gc gen N``."""
        import gc

        started: dict[str, float] = {}

        def callback(phase: str, info: dict) -> None:
            if phase == "start":
                started["t"] = time.perf_counter()
            elif "t" in started:
                self.calls.append(
                    (f"gc gen {info['generation']}", started.pop("t"), time.perf_counter())
                )

        gc.callbacks.append(callback)

    def watch_draws(self, viewer) -> None:
        """Record the vispy canvas's draw events as ``canvas draw``."""
        canvas = viewer.window._qt_viewer.canvas._scene_canvas
        started: dict[str, float] = {}

        def first(event) -> None:
            started["t"] = time.perf_counter()

        def last(event) -> None:
            if "t" in started:
                self.calls.append((DRAW, started.pop("t"), time.perf_counter()))

        canvas.events.draw.connect(first, position="first")
        canvas.events.draw.connect(last, position="last")

    def inside(self, start: float, end: float) -> dict[str, float]:
        """Milliseconds of each handler's calls within ``[start, end]`` (outermost calls)."""
        out: dict[str, float] = defaultdict(float)
        for label, a, b in self.calls:
            overlap = min(b, end) - max(a, start)
            if overlap > 0:
                out[label] += 1e3 * overlap
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}

    def drawing(self, start: float, end: float) -> float:
        """Milliseconds of the canvas's drawing within ``[start, end]``, less the garbage
        collections that ran inside it (they are no drawing)."""
        ms = 0.0
        for label, a, b in self.calls:
            if label != DRAW:
                continue
            lo, hi = max(a, start), min(b, end)
            if hi <= lo:
                continue
            ms += 1e3 * (hi - lo)
            for other, c, d in self.calls:
                if other.startswith("gc gen"):
                    ms -= 1e3 * max(0.0, min(d, hi) - max(c, lo))
        return ms

    def by_name(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(list)
        for label, a, b in self.calls:
            out[label].append(round(1e3 * (b - a), 1))
        return dict(sorted(out.items()))


def _summary(gaps: list[float]) -> dict:
    blocked = [max(g - TICK_MS, 0.0) for g in gaps]
    return {
        "ticks": len(gaps),
        "max_gap_ms": round(max(gaps, default=0.0), 1),
        "p99_gap_ms": round(_percentile(gaps, 99), 1),
        "p50_gap_ms": round(_percentile(gaps, 50), 1),
        "max_blocked_ms": round(max(blocked, default=0.0), 1),
        "gaps_over_100_ms": sum(g > TARGET_MS for g in gaps),
    }


class _StubProgress:
    """What the Reconstruct widget uses of ``napari.utils.progress``, showing nothing."""

    def __init__(self, total: int = 0, desc: str = "") -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_description(self, desc: str) -> None:
        pass

    def close(self) -> None:
        pass


def _outside_the_gui(request) -> float:
    """Seconds of iterations of ``request`` run in a thread as the widget's worker does, with
    no GUI to serve."""
    import threading

    from napari_genreg._napari import _session as session

    seconds: list[float] = []

    def work() -> None:
        for event in session.run_request(request, preview_interval=session.REFRESH_INTERVAL):
            if isinstance(event, session.MethodFinished):
                seconds.append(event.result.recon.seconds)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return sum(seconds)


def _gl_renderer(viewer) -> str:
    """The OpenGL renderer that draws the viewer's canvas (``llvmpipe ...``: in software)."""
    from vispy.gloo import gl

    canvas = viewer.window._qt_viewer.canvas._scene_canvas
    canvas.set_current()
    return str(gl.glGetParameter(gl.GL_RENDERER))


def _shader_cache_files() -> int:
    """Files in Mesa's on-disk shader cache (``MESA_SHADER_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/mesa_shader_cache``, else ``~/.cache/...``; Mesa's single-file cache
    and a disabled cache count as none). With none, the first draws
    of this process compile their shaders with LLVM: 400-550 ms per draw here, once per
    machine (and cache folder), not once per session."""
    folder = os.environ.get("MESA_SHADER_CACHE_DIR")
    if folder is None:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        folder = os.path.join(cache, "mesa_shader_cache")
    return sum(len(files) for _, _, files in os.walk(folder))


def run(quick: bool) -> dict:
    import napari
    import torch

    app = napari.qt.get_qapp()
    shader_cache = _shader_cache_files()  # before napari draws anything

    def wait(condition: Callable[[], bool], timeout: float) -> None:
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > timeout:
                raise TimeoutError("the GUI did not get there in time")
            app.processEvents()
            time.sleep(0.002)

    viewer = napari.Viewer(title="napari-genreg benchmark")
    viewer.window.resize(1400, 900)
    viewer.open_sample("napari-genreg", "brain")
    _, recon = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    _, inspector = viewer.window.add_plugin_dock_widget("napari-genreg", "Covariance Inspector")
    wait(recon.is_ready, 120)
    # the glyphs of the names grid mode writes, rendered a few per turn once the widget opens
    # (a user takes longer to choose a run's settings); they are not measured here
    wait(lambda: not recon._glyphs, 30)
    renderer = _gl_renderer(viewer)
    calls = Calls()
    for name in RECON_HANDLERS:
        calls.wrap(recon, name)
    for name in INSPECTOR_HANDLERS:
        calls.wrap(inspector, name)
    calls.wrap(recon._steps, "_run_one", "recon step")  # every queued step (grid mode too)
    calls.wrap(inspector._steps, "_run_one", "inspector step")
    calls.watch_gc()
    calls.watch_draws(viewer)
    # napari rebuilds its grid of vispy views whenever the grid's shape changes
    calls.wrap(viewer.window._qt_viewer.canvas, "_init_or_update_grid", GRID)
    # the timers were connected to the methods before they were wrapped
    for timer, slot in (
        (recon._refresh_timer, recon._refresh),
        (recon._steps._timer, recon._steps._run_one),
        (inspector._steps._timer, inspector._steps._run_one),
    ):
        timer.timeout.disconnect()
        timer.timeout.connect(slot)
    ticker = Ticker()
    bounds: dict[str, tuple[float, float]] = {}
    runs: dict[str, dict] = {}

    def timed_run(label: str, methods: tuple[str, ...]) -> None:
        """Press Run, wait for the widget (and the inspector) to be idle; the phases: before
        the first iteration, the iterations, after the last result."""
        recon.set_methods(list(methods))
        recon.iterations_spin.setValue(0)  # each method's default
        planned = recon.build_request().planned_iterations()
        seen: list[tuple[float, str]] = []
        start = time.perf_counter()
        recon.run()
        recon.worker.yielded.connect(
            lambda event: seen.append((time.perf_counter(), type(event).__name__))
        )
        wait(lambda: recon.worker is None, 600)
        idle = time.perf_counter()
        wait(lambda: inspector.warm_worker is None and not inspector._steps, 120)
        end = time.perf_counter()
        checked = list(recon.checked_methods())
        assert [r.method for r in recon.results] == checked, recon.status.text()
        first = next(t for t, kind in seen if kind == "IterationEvent")
        last = max(t for t, kind in seen if kind == "MethodFinished")
        bounds[f"{label}: layout"] = (start, first)
        bounds[f"{label}: iterations"] = (first, last)
        bounds[f"{label}: results"] = (last, idle)
        bounds[f"{label}: inspector prepares"] = (idle, end)
        runs[label] = {
            "iterations": planned,
            "run_seconds": round(idle - start, 2),
            "iteration_seconds": round(sum(r.recon.seconds for r in recon.results), 2),
        }

    ticker.start()
    start = time.perf_counter()
    wait(lambda: len(ticker.ticks) > 200, 30)
    bounds["idle"] = (start, time.perf_counter())

    timed_run(SINGLE, ("vae-structured",))
    (result,) = recon.results
    assert inspector.source_combo.currentText() == result.name, "the new result is not chosen"
    source = viewer.layers[result.name]
    latencies = []
    clicks = CLICKS[:3] if quick else CLICKS
    for i, pixel in enumerate(clicks):
        start = time.perf_counter()
        inspector.inspect_world(source.data_to_world(pixel))
        wait(lambda: inspector.worker is None and not inspector._steps, 60)
        latencies.append(inspector.last_latency * 1e3)
        phase = "first click" if i == 0 else "later clicks"
        bounds[phase] = (bounds.get(phase, (start,))[0], time.perf_counter())
    timed_run(COMPARISON, ("tv", "vae-structured"))
    # the cost of napari's progress bar: the same run with a stub in its place
    real_progress = napari.utils.progress
    napari.utils.progress = _StubProgress
    try:
        timed_run(STUBBED, ("vae-structured",))
    finally:
        napari.utils.progress = real_progress
    # and with napari's bar, its activity indicator (an animated GIF) not animated
    from qtpy.QtGui import QMovie

    real_start = QMovie.start
    QMovie.start = lambda self: None
    try:
        timed_run(STILL, ("vae-structured",))
    finally:
        QMovie.start = real_start
    ticker.stop()
    request = recon.build_request()
    viewer.close()
    runs[OUTSIDE] = {
        "iterations": request.planned_iterations(),
        "iteration_seconds": round(_outside_the_gui(request), 2),
    }

    ticks = ticker.ticks
    gaps = [(a, b, 1e3 * (b - a)) for a, b in itertools.pairwise(ticks)]
    origin = bounds[f"{SINGLE}: layout"][0]
    phases, long_gaps = {}, []
    for phase, (lo, hi) in bounds.items():
        inside = [g for g in gaps if lo < g[1] <= hi]  # the gaps that end in the phase
        phases[phase] = _summary([g[2] for g in inside])
        # the same gaps less the canvas's drawing (done in software here)
        undrawn = [ms - calls.drawing(a, b) if ms > 2 * TICK_MS else ms for a, b, ms in inside]
        phases[phase]["max_gap_less_drawing_ms"] = round(max(undrawn, default=0.0), 1)
        phases[phase]["gaps_less_drawing_over_100_ms"] = sum(v > TARGET_MS for v in undrawn)
        for a, b, ms in inside:
            if ms > TARGET_MS:
                handlers = calls.inside(a, b)
                long_gaps.append(
                    {
                        "phase": phase,
                        "ms": round(ms, 1),
                        "less_drawing_ms": round(ms - calls.drawing(a, b), 1),
                        "at_s": round(a - origin, 2),
                        "handlers_ms": handlers,
                    }
                )
    by_name = calls.by_name()
    return {
        "settings": {
            "tick_ms": TICK_MS,
            "gl_renderer": renderer,
            "shader_cache_files": shader_cache,
            "display": os.environ.get("DISPLAY", ""),
            "image": "sample brain 128 x 128, poisson 4x",
            "torch_threads": torch.get_num_threads(),
            "clicks": [list(p) for p in clicks],
            "inspector_options": "positive, negative, marker (the defaults)",
        },
        "runs": runs,
        "phases": phases,
        "inspect": {
            "first_click_ms": round(latencies[0], 1),
            "click_latency_median_ms": round(statistics.median(latencies[1:]), 1),
            "click_latency_max_ms": round(max(latencies[1:]), 1),
            "click_latencies_ms": [round(v, 1) for v in latencies],
        },
        "long_gaps": long_gaps,
        "handlers_max_ms": {k: max(v) for k, v in by_name.items()},
        "handlers_ms": by_name,
    }


NOTES = """\
The widgets only record the worker's events; the preview, the status and the plot, and in a turn
of its own (it processes events) the progress bar, are refreshed at most every 0.25 s. No layer
is added or removed during the iterations: the worker builds the problem and waits while the
widget adds the run's layers (one per method, named as its result, transparent until its first
preview; added hidden and shown in the next turn) and switches grid mode on, one napari call
per event-loop turn; the previews and then the result replace that layer's data. Grid mode
writes each image's name in its cell, one name per turn after the grid is on (in a grid
switched on with the names shown, the first draw builds every name's text program as well as
every image's); while a new layer grows a grid, the names are taken away and written again
after it (napari moves every layer into new views and rebuilds what each draws). The glyphs of
the names are rendered a few per turn when the widget opens (before, the first draw of each
name rendered its new glyphs). While the run
goes on, the Reconstruct widget keeps Python's cycle collector off the objects that existed
when it started (gc.freeze, undone when it ends): a full collection of the ~385 000 objects of
a napari process takes 120-400 ms, and it comes after the run instead (the `gc gen 2` of
*inspector prepares*). The Covariance Inspector makes its layers (hidden) once a
reconstruction is chosen, its latent warmed up and no run going on; a click updates them (the
first click shows each in a turn of its own). The convergence plot is painted with QPainter
(about 7 ms with a curve of 1000 iterations).

What remains above 100 ms, all outside the iterations and the clicks that follow the first
(the list above says which gaps did in this run; the number varies from run to run), is
napari's and vispy's: the first drawing after napari's first progress bar, after a layer is
added or shown, after grid mode is switched on (new vispy views and visuals: their shader
programs generated, in Python, and compiled) and after the first click's overlays (`canvas
draw`); where a run layer is shown in a grid that grows, napari rebuilds its grid of vispy
views (`napari grid rebuild`, in Python) and redraws all that the grid shows; where one is
added to a viewer with more layers, napari builds its layer controls and vispy visuals
(`_add_run_layer`, 50-100 ms here). napari's first progress bar of a session builds its
activity dock (`_start_progress`). After the run, Python's first full collection of the heap
that was frozen during it (`gc gen 2`, 120-400 ms) comes within *inspector prepares*.

The last two runs measure what napari's progress bar costs the solver: once with the bar
stubbed (an object that shows nothing), once with the real bar but its activity indicator (a
GIF of 90 frames at 33 frames per second, in the status bar) not animated (QMovie.start
replaced in this benchmark). The animation repaints the window continually, and the window is
composited in software here."""


def markdown(result: dict) -> str:
    s = result["settings"]
    ins = result["inspect"]
    runs = "; ".join(
        f"{label} ("
        + ", ".join(f"{m} {n} iterations" for m, n in r["iterations"].items())
        + "): "
        + (
            f"{r['run_seconds']} s from pressing Run to the widget being idle, "
            if "run_seconds" in r
            else ""
        )
        + f"{r['iteration_seconds']} s of iterations"
        for label, r in result["runs"].items()
    )
    lines = [
        "# Event-loop latency of the napari plugin",
        "",
        f"Machine: {_machine.machine_line(result['machine'])}, "
        f"load average at the end {result['load_average_end'][0]:.2f}.",
        "",
        f"Command: `{result['command']}`",
        "",
        f"A {s['tick_ms']} ms QTimer in the GUI thread of the real window (1400 x 900, X display "
        f"`{s['display']}`, OpenGL renderer `{s['gl_renderer']}`, "
        + (
            f"Mesa's shader cache warm: {s['shader_cache_files']} files at the start"
            if s.get("shader_cache_files")
            else "Mesa's shader cache empty at the start: the first draws compile their shaders"
        )
        + "); a gap between two ticks is "
        "time the event loop could not "
        f"react. Target: no gap above 100 ms. {s['image']}, torch threads "
        f"{s['torch_threads']}. Runs of the Reconstruct widget, in this order, and the same "
        f"iterations in a thread with no GUI to serve: {runs}. After the first run, "
        f"{len(s['clicks'])} clicks on its result in the Covariance Inspector.",
        "",
        "| phase | ticks | max gap ms | p99 gap ms | median gap ms | gaps > 100 ms "
        "| max gap less drawing ms | gaps less drawing > 100 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase, r in result["phases"].items():
        lines.append(
            f"| {phase} | {r['ticks']} | {r['max_gap_ms']} | {r['p99_gap_ms']} | "
            f"{r['p50_gap_ms']} | {r['gaps_over_100_ms']} | {r['max_gap_less_drawing_ms']} | "
            f"{r['gaps_less_drawing_over_100_ms']} |"
        )
    lines += [
        "",
        "Phases: *layout* from pressing Run to the first iteration (the worker has built the "
        "problem and waits while the widget adds the run's layers and switches grid mode on); "
        "*iterations* until the last result arrives; *results* until the widget is idle; "
        "*inspector prepares* until the Covariance Inspector has made its layers and warmed "
        "up the new latent. *Less drawing*: each gap less the time spent in the vispy "
        "canvas's draw callbacks within it (`canvas draw`: the scene drawn by the OpenGL "
        "renderer above; Qt's compositing of the window is not in it and stays in the gap).",
        "",
        f"Inspector click latency (click to layers updated, {s['inspector_options']}): first "
        f"click {ins['first_click_ms']} ms; later clicks median "
        f"{ins['click_latency_median_ms']} ms, max {ins['click_latency_max_ms']} ms.",
        "",
        "Gaps above 100 ms (seconds from the first Run), with what ran inside each (ms): the "
        "widgets' handlers and queued steps, the canvas's drawing, napari's grid rebuilds and "
        "garbage collections (nested: a step's time includes what ran within it); the rest "
        "of a gap is napari's and Qt's own work, Qt's compositing of the window among it:",
        "",
    ]
    if not result["long_gaps"]:
        lines.append("none.")
    for gap in result["long_gaps"]:
        inside = ", ".join(f"`{k}` {v}" for k, v in gap["handlers_ms"].items()) or "none"
        lines.append(
            f"- {gap['phase']}, at {gap['at_s']} s: {gap['ms']} ms "
            f"({gap['less_drawing_ms']} less drawing); {inside}"
        )
    lines += [
        "",
        "Longest call of each GUI-thread handler (ms): "
        + ", ".join(f"`{k}` {v}" for k, v in result["handlers_max_ms"].items())
        + ".",
        "",
        NOTES,
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 clicks, print only")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the .md from the recorded .json (after a change of this script's text)",
    )
    parser.add_argument(
        "--cold-shader-cache",
        action="store_true",
        help="Mesa's shader cache in a new empty folder, as on a machine's first napari session; "
        f"writes {NAME}_cold_shaders.*",
    )
    args = parser.parse_args()
    if args.report_only:
        recorded = json.loads((_machine.RESULTS / f"{NAME}.json").read_text())
        (_machine.RESULTS / f"{NAME}.md").write_text(markdown(recorded))
        return
    name = NAME
    cold = tempfile.TemporaryDirectory(prefix="mesa-shaders-") if args.cold_shader_cache else None
    if cold is not None:  # read by Mesa when the first OpenGL context is made
        os.environ["MESA_SHADER_CACHE_DIR"] = cold.name
        name = f"{NAME}_cold_shaders"
    _machine.pin_threads(args.threads or len(os.sched_getaffinity(0)))
    machine = _machine.machine_info()
    command = _machine.command_line()
    start = time.perf_counter()
    result = {"benchmark": NAME, "command": command, "machine": machine, **run(args.quick)}
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    _machine.publish(name, result, markdown(result), record=not args.quick)
    if cold is not None:
        cold.cleanup()


if __name__ == "__main__":
    main()
