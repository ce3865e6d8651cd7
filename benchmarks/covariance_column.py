"""Speed of the structured covariance's solves: a covariance column, samples and the variance map.

``StructuredCovariance`` (5 x 5 stencil, batch 1, float32) with realistic parameters: a causal
autoregressive precision like the ones a decoder learns, ``L_ii = exp(log_diagonal_i)`` with
``log_diagonal ~ 3 + 0.3 N(0, 1)`` (a noise level of about 0.05) and off-diagonal weights
``-L_ii w_m (1 + 0.2 N(0, 1))`` with ``w_m`` proportional to the inverse distance of the offset
and ``sum_m w_m = 0.9`` (a correlation length of a few pixels).

Timed, each on its own (median of repetitions after a warm-up, CPU, at each ``--threads``):

- ``column``: :math:`\\Sigma e_p = L^{-T} L^{-1} e_p` at the centre pixel (targets: 100 ms at
  128 x 128, 300 ms at 256 x 256);
- ``column (corner)``: at pixel ``(0, 0)``, where the forward solve runs over every row;
- ``solve_factor_t``: one back substitution :math:`L^{-T} e`;
- ``sample(16)``, ``sample(64)``: :math:`L^{-T}\\varepsilon` for 16 and 64 right-hand sides;
- ``variance exact``: the row recursion for :math:`\\operatorname{diag}\\Sigma`;
- ``variance MC 64``: the Monte-Carlo estimate from 64 samples (relative error
  :math:`\\sqrt{2/64} = 18\\,\\%`).

Quality figures (no asserts): the column's residual :math:`\\|\\Sigma^{-1} c - e_p\\| / \\|e_p\\|`
and the RMS relative error of the Monte-Carlo variance against the exact one.

Run: ``.venv/bin/python benchmarks/covariance_column.py`` (under a minute on 2 cores); writes
``benchmarks/results/covariance_column.json`` and ``.md``. ``--quick`` is a smoke run that only
prints.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import _machine

NAME = "covariance_column"
SIZES = (128, 256)
STENCIL = 5


def _median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


def realistic_covariance(size: int, seed: int = 0):
    """A 5 x 5 structured covariance of a ``size x size`` image, float32, batch 1."""
    import torch

    from napari_genreg.models.covariance import StructuredCovariance, stencil_offsets

    gen = torch.Generator().manual_seed(seed)
    offsets = stencil_offsets(STENCIL)
    weights = torch.tensor([1.0 / math.hypot(dy, dx) for dy, dx in offsets])
    weights = 0.9 * weights / weights.sum()
    log_diagonal = 3.0 + 0.3 * torch.randn(1, size, size, generator=gen)
    jitter = 1.0 + 0.2 * torch.randn(1, len(offsets), size, size, generator=gen)
    off_diagonal = -torch.exp(log_diagonal)[:, None] * weights[None, :, None, None] * jitter
    return StructuredCovariance(log_diagonal, off_diagonal, STENCIL)


def bench_size(size: int, threads: int, quick: bool) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    cov = realistic_covariance(size)
    gen = torch.Generator().manual_seed(1)
    centre = (size // 2, size // 2)
    e = torch.zeros(1, size, size)
    e[0, size // 2, size // 2] = 1.0
    fast, slow = (3, 1) if quick else (15, 3)
    cases: list[tuple[str, Callable[[], object], int]] = [
        ("column", lambda: cov.column(centre), fast),
        ("column (corner)", lambda: cov.column((0, 0)), fast),
        ("solve_factor_t", lambda: cov.solve_factor_t(e), fast),
        ("sample(16)", lambda: cov.sample(16, gen), fast),
        ("sample(64)", lambda: cov.sample(64, gen), slow + 2),
        ("variance exact", lambda: cov.variance(), slow),
        ("variance MC 64", lambda: cov.variance(samples=64, generator=gen), slow + 2),
    ]
    rows = []
    for label, fn, repeats in cases:
        median, times = _median_ms(fn, repeats, warmup=1)
        rows.append(
            {
                "size": size,
                "threads": threads,
                "case": label,
                "median_ms": round(median, 2),
                "min_ms": round(min(times), 2),
                "repeats": repeats,
            }
        )
        print(f"{size} x {size}, {threads} thread(s): {label}: {median:.1f} ms", flush=True)
    with torch.no_grad():
        column = cov.column(centre)
        residual = (cov.precision(column) - e).norm() / e.norm()
        exact = cov.variance()
        estimate = cov.variance(samples=64, generator=torch.Generator().manual_seed(2))
        mc_error = (estimate / exact - 1.0).square().mean().sqrt()
    for row in rows:
        row["column_residual"] = float(residual)
        row["variance_mc64_rms_relative_error"] = round(float(mc_error), 4)
    return rows


def markdown(result: dict) -> str:
    rows = result["rows"]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    columns = list(dict.fromkeys((r["size"], r["threads"]) for r in rows))
    lines = [
        "# Structured covariance (5 x 5 stencil): column, samples, variance map",
        "",
        f"Machine: {_machine.machine_line(result['machine'])}, "
        f"load average at the end {result['load_average_end'][0]:.2f}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "Median wall time in ms (minimum in brackets) of one call, batch 1, float32, CPU. "
        "Targets for `column`: 100 ms at 128 x 128, 300 ms at 256 x 256.",
        "",
        "| case | " + " | ".join(f"{s} x {s}, {t} thr" for s, t in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for case in cases:
        cells = []
        for size, threads in columns:
            row = next(
                r for r in rows if (r["case"], r["size"], r["threads"]) == (case, size, threads)
            )
            cells.append(f"{row['median_ms']:.1f} ({row['min_ms']:.1f})")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines += ["", "Quality:", ""]
    for size in dict.fromkeys(r["size"] for r in rows):
        row = next(r for r in rows if r["size"] == size)
        lines.append(
            f"- {size} x {size}: column residual ||Q c - e_p|| / ||e_p|| = "
            f"{row['column_residual']:.1e}; Monte-Carlo variance (64 samples) RMS relative "
            f"error {100 * row['variance_mc64_rms_relative_error']:.1f} % "
            f"(stated sqrt(2/64) = {100 * math.sqrt(2 / 64):.1f} %)"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (128 x 128 only)")
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch thread counts (default: 1 and all CPUs)",
    )
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    threads = (
        sorted({1, cpus}) if args.threads is None else [int(t) for t in args.threads.split(",")]
    )
    _machine.pin_threads(threads[0])
    sizes = (128,) if args.quick else SIZES
    machine = _machine.machine_info()
    command = _machine.command_line()
    start = time.perf_counter()
    rows = [row for n in threads for size in sizes for row in bench_size(size, n, args.quick)]
    result = {
        "benchmark": NAME,
        "command": command,
        "machine": machine,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "wall_time_s": round(time.perf_counter() - start, 1),
        "settings": {"threads": threads, "stencil": STENCIL, "dtype": "float32", "batch": 1},
        "rows": rows,
    }
    _machine.publish(NAME, result, markdown(result), record=not args.quick)


if __name__ == "__main__":
    main()
