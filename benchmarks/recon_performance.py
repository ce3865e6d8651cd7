"""Time and memory of the generative reconstructions on the CPU, and where the time goes.

Problem: the shipped Colin27 slice (``napari_genreg.samples.load_image("brain", size)``, a real
256 x 256 image and its anti-aliased 128 x 128 version), single-coil k-space simulated with
noise sigma 0.01 (relative to the image maximum, noise seed 1) and a random 1-D 4x mask
(seed 0). Each method runs its default iterations with its automatic ``lam`` through
``napari_genreg.recon.reconstruct``, torch limited to ``--threads`` (default 2) threads.

Measured, per size and method, all in one process:

- **wall time** of a reconstruction: the median of ``--repeats`` (default 3) runs after a
  warm-up run (targets for ``vae-structured``: 5 s at 128 x 128, 20 s at 256 x 256);
- **breakdown** of one outer iteration (the mean over iterations 2 to the end of one more run,
  instrumented): the functions below are wrapped by timers (exclusive times: a call's time
  without the timed calls inside it) while the solver runs as usual:
  ``decoder forward`` (``GenerativeRegularizer.decode`` / ``decode_mean``), ``backward``
  (``torch.autograd.grad``: through the decoder and the prior's terms), ``x-step FFTs``
  (``fft2c`` / ``ifft2c`` called inside the x-step), ``x-step other`` (CG vectors, the
  precision :math:`P^H \\Sigma^{-1} P`, the preconditioner), ``prior terms`` (log det and
  Mahalanobis norm, for the z-step's loss and the objective), ``data-term FFTs`` (FFTs outside
  the x-step: the objective's ``A x``) and ``other`` (the rest: Adam, bookkeeping);
- **floor** of an outer iteration: decoder forward + backward + the x-step's FFTs, from the
  same instrumented run, and the **ratio** outer iteration / floor (target: at most 1.3);
- **peak memory** at 256 x 256: in a fresh subprocess per method, the peak resident set size
  during a reconstruction (``VmHWM``, reset just before it) over the resident set after the
  model, the data and the problem are loaded (torch's CPU allocations are invisible to
  ``tracemalloc``).

The machine is shared in development: the load average is recorded with every number; re-run
on an idle machine for the figures to quote.

Run: ``.venv/bin/python benchmarks/recon_performance.py`` (a few minutes on 2 cores); writes
``benchmarks/results/recon_performance.json`` and ``.md``. ``--quick`` is a smoke run (128 x 128,
``vae-structured``, one repeat) that only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import _machine

NAME = "recon_performance"
SIZES = (128, 256)
METHODS = ("vae-structured", "vae-diagonal", "vae-identity", "range")
TARGET_SECONDS = {128: 5.0, 256: 20.0}
TARGET_RATIO = 1.3
SIGMA = 0.01
PARTS = (
    "decoder forward",
    "backward",
    "x-step FFTs",
    "x-step other",
    "prior terms",
    "data-term FFTs",
    "other",
)


def make_problem(size: int):
    """The benchmark's problem at ``size`` (128 or 256)."""
    from napari_genreg.io import simulate_kspace
    from napari_genreg.physics.masks import make_mask
    from napari_genreg.recon import build_problem
    from napari_genreg.samples import load_image

    image = load_image("brain", size)
    mask = make_mask("random", image.shape, acceleration=4, seed=0)
    data = simulate_kspace(image[None], noise_sigma=SIGMA, seed=1, source="colin27")
    return build_problem(data, mask)


class Timers:
    """Exclusive wall time of wrapped functions, by part (a stack subtracts nested calls)."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(PARTS, 0.0)
        self.calls = dict.fromkeys(PARTS, 0)
        self._stack: list[list] = []  # [part, time spent in nested timed calls]

    def reset(self) -> None:
        self.totals = dict.fromkeys(PARTS, 0.0)
        self.calls = dict.fromkeys(PARTS, 0)

    def inside(self, part: str) -> bool:
        return any(frame[0] == part for frame in self._stack)

    def wrap(self, part: str | Callable[[], str], fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            name = part() if callable(part) else part
            frame = [name, 0.0]
            self._stack.append(frame)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self._stack.pop()
                self.totals[name] += elapsed - frame[1]
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][1] += elapsed

        return timed


def instrument(timers: Timers) -> Callable[[], None]:
    """Wrap the solver's pieces with ``timers``; returns a function that undoes it."""
    import torch

    from napari_genreg.physics import operators
    from napari_genreg.regularizers.generative import GenerativeRegularizer
    from napari_genreg.solvers import alternating

    def fft_part() -> str:
        return "x-step FFTs" if timers.inside("x-step other") else "data-term FFTs"

    patches = [
        (GenerativeRegularizer, "decode", "decoder forward"),
        (GenerativeRegularizer, "decode_mean", "decoder forward"),
        (GenerativeRegularizer, "terms", "prior terms"),
        (torch.autograd, "grad", "backward"),
        (alternating, "x_step", "x-step other"),
        (alternating, "fft2c", fft_part),
        (alternating, "ifft2c", fft_part),
        (operators, "fft2c", fft_part),
        (operators, "ifft2c", fft_part),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    for owner, attr, part in patches:
        setattr(owner, attr, timers.wrap(part, getattr(owner, attr)))

    def undo() -> None:
        for owner, attr, original in saved:
            setattr(owner, attr, original)

    return undo


def breakdown(problem, name: str) -> dict:
    """One instrumented run: seconds per outer iteration (2..n) by part, and the floor."""
    from napari_genreg.recon import get_method, iterate
    from napari_genreg.recon.generative import GenerativeSolve

    method = get_method(name)
    n = method.default_iterations
    timers = Timers()
    undo = instrument(timers)
    try:
        states = iterate(problem, name)
        next(states)
        timers.reset()
        start = time.perf_counter()
        count = sum(1 for _ in states)
        wall = time.perf_counter() - start
    finally:
        undo()
    parts = {p: timers.totals[p] / count for p in PARTS if p != "other"}
    per_iteration = wall / count
    parts["other"] = per_iteration - sum(parts.values())
    floor = parts["decoder forward"] + parts["backward"] + parts["x-step FFTs"]
    solve = method.solve
    settings = solve.settings if isinstance(solve, GenerativeSolve) else None
    return {
        "iterations": n,
        "z_steps": None if name == "range" or settings is None else settings.z_steps,
        "cg_steps": None if name == "range" or settings is None else settings.cg_steps,
        "cg_reduction": None if name == "range" or settings is None else settings.cg_reduction,
        "per_iteration_s": per_iteration,
        "parts_s": parts,
        "calls_per_iteration": {p: timers.calls[p] / count for p in PARTS if p != "other"},
        "floor_s": floor,
        "ratio": per_iteration / floor,
    }


def wall_times(problem, name: str, repeats: int) -> dict:
    """Median (and all) wall times of ``reconstruct`` after one warm-up run."""
    from napari_genreg.recon import reconstruct

    reconstruct(problem, name)  # warm-up: loads the model, fills the caches
    times, psnr = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = reconstruct(problem, name)
        times.append(time.perf_counter() - start)
        psnr = result.metrics.psnr if result.metrics is not None else None
    return {"median_s": statistics.median(times), "times_s": times, "psnr": psnr}


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in KiB (``None`` off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_child(size: int, name: str, threads: int) -> None:
    """In a fresh process: print the resident set (KiB) before and its peak during one
    reconstruction.

    The peak is ``VmHWM`` of ``/proc/self/status``, reset just before the reconstruction
    (``/proc/self/clear_refs``); ``ru_maxrss`` would carry the parent's peak over ``fork`` and
    ``exec``. Off Linux, ``ru_maxrss`` before and after.
    """
    import torch

    torch.set_num_threads(threads)
    from napari_genreg.recon import get_method, reconstruct
    from napari_genreg.recon.generative import GenerativeSolve

    problem = make_problem(size)
    solve = get_method(name).solve
    if isinstance(solve, GenerativeSolve):
        solve.prior(problem)  # load the model (cached) before the baseline
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        peak_field = "VmHWM"
    except OSError:
        peak_field = None
    if before is None or peak_field is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reconstruct(problem, name)
    after = _status_kib(peak_field) if peak_field else None
    if after is None:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "after_kib": after}))


def peak_memory(size: int, name: str, threads: int) -> dict:
    script = Path(__file__).resolve()
    env = {**os.environ, **{v: str(threads) for v in _machine.THREAD_VARIABLES}}
    out = subprocess.run(
        [sys.executable, str(script), "--memory-child", str(size), name, "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    record = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "baseline_mib": record["before_kib"] / 1024,
        "peak_mib": record["after_kib"] / 1024,
        "increase_mib": (record["after_kib"] - record["before_kib"]) / 1024,
    }


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "# Generative reconstruction: time, breakdown, memory (CPU)",
        "",
        f"Machine: {_machine.machine_line(result['machine'])}, load average at the end "
        f"{result['load_average_end'][0]:.2f}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "Problem: the shipped Colin27 slice (real 128 x 128 and 256 x 256 images), single coil, "
        f"random 1-D 4x mask (seed 0), noise sigma {SIGMA} (seed 1); default iterations and "
        f"automatic lam; torch with {result['settings']['threads']} threads, float32. Load "
        "averages below include this benchmark's own threads; a load well above the thread count "
        "means other jobs shared the machine and the figures should be measured again.",
        "",
        "## Wall time per reconstruction (median of "
        f"{result['settings']['repeats']} after a warm-up)",
        "",
        "| size | method | iterations | median (s) | all runs (s) | target | met | PSNR (dB) "
        "| load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = TARGET_SECONDS.get(r["size"]) if r["method"] == "vae-structured" else None
        met = "" if target is None else ("yes" if r["wall"]["median_s"] <= target else "**no**")
        lines.append(
            f"| {r['size']} | {r['method']} | {r['breakdown']['iterations']} | "
            f"{r['wall']['median_s']:.2f} | "
            + ", ".join(f"{t:.2f}" for t in r["wall"]["times_s"])
            + f" | {'' if target is None else f'{target:g} s'} | {met} | "
            f"{r['wall']['psnr']:.2f} | {r['load_average'][0]:.2f} |"
        )
    lines += [
        "",
        "## Where an outer iteration goes (ms, mean over iterations 2 to the end)",
        "",
        "Exclusive times of the wrapped pieces in one instrumented run. Floor = decoder forward "
        "+ backward + the x-step's FFTs; target: outer iteration / floor at most "
        f"{TARGET_RATIO}. `backward` is `torch.autograd.grad` through the decoder and the "
        "prior's terms; `range` has no x-step (its floor is the decoder's forward + backward "
        "for all its starts).",
        "",
        "| size | method | outer iteration | " + " | ".join(PARTS) + " | floor | ratio | met |",
        "|---|---|---|" + "---|" * len(PARTS) + "---|---|---|",
    ]
    for r in rows:
        b = r["breakdown"]
        lines.append(
            f"| {r['size']} | {r['method']} | {1e3 * b['per_iteration_s']:.1f} | "
            + " | ".join(f"{1e3 * b['parts_s'][p]:.1f}" for p in PARTS)
            + f" | {1e3 * b['floor_s']:.1f} | {b['ratio']:.2f} | "
            + ("yes" if b["ratio"] <= TARGET_RATIO else "**no**")
            + " |"
        )
    lines += [
        "",
        "Calls per outer iteration: "
        + "; ".join(
            f"{r['size']} {r['method']}: "
            + ", ".join(f"{p} {c:g}" for p, c in r["breakdown"]["calls_per_iteration"].items() if c)
            for r in rows
            if r["size"] == rows[0]["size"]
        )
        + ".",
        "",
        "## Peak memory at 256 x 256",
        "",
        "A fresh process per method: resident set after loading the model and the problem "
        "(baseline), its peak during one reconstruction (`VmHWM`), and the increase.",
        "",
        "| method | baseline (MiB) | peak (MiB) | increase (MiB) |",
        "|---|---|---|---|",
    ]
    for name, m in result["memory_256"].items():
        lines.append(
            f"| {name} | {m['baseline_mib']:.0f} | {m['peak_mib']:.0f} | {m['increase_mib']:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 128, vae-structured")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated sizes")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory runs")
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    _machine.pin_threads(args.threads)
    if args.memory_child:
        memory_child(int(args.memory_child[0]), args.memory_child[1], args.threads)
        return
    methods = ["vae-structured"] if args.quick else args.methods.split(",")
    sizes = (128,) if args.quick else tuple(int(n) for n in args.sizes.split(","))
    repeats = 1 if args.quick else args.repeats
    machine = _machine.machine_info()
    command = _machine.command_line()
    start = time.perf_counter()
    rows = []
    for size in sizes:
        problem = make_problem(size)
        for name in methods:
            wall = wall_times(problem, name, repeats)
            parts = breakdown(problem, name)
            rows.append(
                {
                    "size": size,
                    "method": name,
                    "wall": wall,
                    "breakdown": parts,
                    "load_average": [round(v, 2) for v in os.getloadavg()],
                }
            )
            print(
                f"{size} {name}: {wall['median_s']:.2f} s, {1e3 * parts['per_iteration_s']:.1f} ms"
                f"/iteration, floor {1e3 * parts['floor_s']:.1f} ms, ratio {parts['ratio']:.2f}",
                flush=True,
            )
    skip = args.quick or args.no_memory
    memory = {} if skip else {name: peak_memory(256, name, args.threads) for name in methods}
    result = {
        "benchmark": NAME,
        "command": command,
        "machine": machine,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "wall_time_s": round(time.perf_counter() - start, 1),
        "settings": {
            "threads": args.threads,
            "repeats": repeats,
            "mask": "random 1-D 4x, seed 0",
            "noise_sigma": SIGMA,
            "image": "napari_genreg.samples brain (Colin27), 128 and 256",
        },
        "rows": rows,
        "memory_256": memory,
    }
    _machine.publish(NAME, result, markdown(result), record=not args.quick)


if __name__ == "__main__":
    main()
