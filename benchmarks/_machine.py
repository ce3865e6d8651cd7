"""Shared by the speed benchmarks: thread pinning, the machine record and the command line.

Only the standard library is imported here, so a script can pin the thread pools with
:func:`pin_threads` before numpy, torch or sigpy are imported.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: Thread-pool variables read when numpy (OpenBLAS/MKL), torch (OpenMP) and numba load.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def pin_threads(threads: int) -> None:
    """Limit every thread pool to ``threads``: call before numpy/torch/sigpy are imported.

    torch's intra-op pool is also set at run time (``torch.set_num_threads``); numpy's FFT
    (pocketfft), its element-wise loops and sigpy's numba ``vectorize`` kernels are
    single-threaded whatever the setting.
    """
    if "numpy" in sys.modules or "torch" in sys.modules:
        raise RuntimeError("pin_threads must run before numpy and torch are imported")
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def publish(name: str, result: dict, text: str, *, record: bool = True) -> None:
    """Print ``text``; when ``record``, also write ``RESULTS/<name>.json`` (``result``) and
    ``RESULTS/<name>.md`` (``text``). Every benchmark ends here (``--quick`` runs print only)."""
    import json

    if record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / f"{name}.md").write_text(text)
    print(text)


def machine_info() -> dict:
    """Date, CPU, load and library versions, for the results file."""
    import numpy as np
    import torch

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "thread_variables": {name: os.environ.get(name) for name in THREAD_VARIABLES},
    }
    try:
        import sigpy

        info["sigpy"] = sigpy.__version__
    except ImportError:  # operator_overhead does not need it
        info["sigpy"] = None
    return info


def command_line() -> str:
    """The command that ran this script, with paths relative to the repository root."""

    def relative(path: str) -> str:
        try:
            return str(Path(path).absolute().relative_to(ROOT))
        except ValueError:
            return path

    return shlex.join([relative(sys.executable), relative(sys.argv[0]), *sys.argv[1:]])


def machine_line(info: dict) -> str:
    """One Markdown line describing the machine."""
    return (
        f"{info['date']}; {info['cpus_available']} of {info['cpu_count']} CPUs "
        f"({info['cpu_model']}); numpy {info['numpy']}, torch {info['torch']} "
        f"(torch.get_num_threads() = {info['torch_num_threads']})"
        + (f", sigpy {info['sigpy']}" if info.get("sigpy") else "")
        + f"; load average at start {info['load_average_1_5_15_min'][0]:.2f}"
    )


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def round_robin(
    fns: dict[str, Callable[[], object]], seconds: float, warmup: int
) -> tuple[dict[str, tuple[float, float]], int]:
    """``{name: (median seconds, page faults per call)}`` and the number of rounds.

    The functions are called in turn, round after round (the order rotated every round), so
    that a change in the machine's load affects all of them alike; the number of rounds is
    chosen so that they take about ``seconds`` in all.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    start = time.perf_counter()
    for name in names:
        fns[name]()
    once = max(time.perf_counter() - start, 1e-6)
    rounds = int(min(5000, max(30, seconds / once)))
    times: dict[str, list[float]] = {name: [] for name in names}
    faults = dict.fromkeys(names, 0)
    for i in range(rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            f0 = _faults()
            t0 = time.perf_counter()
            fns[name]()
            t1 = time.perf_counter()
            faults[name] += _faults() - f0
            times[name].append(t1 - t0)
    return {n: (statistics.median(times[n]), faults[n] / rounds) for n in names}, rounds
