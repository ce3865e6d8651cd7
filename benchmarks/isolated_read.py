"""Memory and time of reading an HDF5 file in a child process (``io.read_isolated``) against
reading it in the calling process (``io.read``).

A fastMRI-style file of random multi-coil k-space (``--slices``, ``--coils``, ``--size``:
complex64) and its RSS reference (float32) is written to a temporary folder; each way of
reading it runs in a fresh Python of its own (``--measure``), which reports:

- the time of the call (the child's start included, for ``read_isolated``);
- the peak of the memory Python and NumPy allocated during the call (``tracemalloc``), as a
  multiple of the record's arrays: 1.0 is the record itself and nothing more;
- the process's peak resident memory (``ru_maxrss``) above its resident memory before the
  call, which also counts what h5py and HDF5 allocate in C.

Run: ``.venv/bin/python benchmarks/isolated_read.py`` (about a minute on 2 cores; a 250 MB
file); writes ``benchmarks/results/isolated_read.json`` and ``.md``. ``--quick`` is a smoke run
on a small file that writes nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import _machine

NAME = "isolated_read"
WAYS = ("read", "read_isolated")


def write_file(path: Path, slices: int, coils: int, size: tuple[int, int]) -> None:
    """The file, written a slice at a time: this process stays small, and the readers'
    processes, started from it, begin with its peak resident memory as theirs."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    side = min(size) // 2
    with h5py.File(path, "w") as f:
        kspace = f.create_dataset("kspace", (slices, coils, *size), np.complex64)
        reference = f.create_dataset("reconstruction_rss", (slices, side, side), np.float32)
        for s in range(slices):
            block = np.empty((coils, *size), np.complex64)
            block.real = rng.standard_normal(block.shape, np.float32)
            block.imag = rng.standard_normal(block.shape, np.float32)
            kspace[s] = block
            reference[s] = rng.random((side, side), np.float32)


def resident_kib() -> int:
    """This process's resident memory now, in KiB (Linux). Its peak, ``ru_maxrss``, starts
    at the resident memory of the process that started it, so it cannot be the baseline."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() // 1024


def measure(way: str, path: str) -> dict:
    """Read ``path`` in this (fresh) process the ``way`` asked for; what it cost."""
    import h5py  # noqa: F401  (imported by the reader: not counted in its peak)

    from napari_genreg import io

    read = getattr(io, way)
    rss_before = resident_kib()
    tracemalloc.start()
    start = time.perf_counter()
    record = read(path)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    arrays = [a for a in (record.kspace, record.reference, record.mask) if a is not None]
    nbytes = sum(a.nbytes for a in arrays)
    return {
        "way": way,
        "seconds": seconds,
        "record_mb": nbytes / 1e6,
        "peak_traced_mb": peak / 1e6,
        "peak_over_record": peak / nbytes,
        "max_rss_growth_mb": (rss_after - rss_before) / 1e3,  # ru_maxrss: KiB on Linux
        "writeable": all(a.flags.writeable for a in arrays),
    }


def render(result: dict) -> str:
    a = result["args"]
    lines = [
        "# Reading an HDF5 file in a child process",
        "",
        f"Machine: {_machine.machine_line(result['machine'])}",
        "",
        f"Command: `{result['command']}`",
        "",
        f"A fastMRI-style file of {a['slices']} slices x {a['coils']} coils x "
        f"{a['size'][0]} x {a['size'][1]} complex64 k-space with its RSS reference "
        f"({result['file_mb']:.0f} MB on disk), read {a['repeats']} times each way, each read "
        "in a fresh Python (medians; the first read of each way warms the page cache). "
        "*Peak traced*: the most memory Python and NumPy held during the call (tracemalloc), "
        "also as a multiple of the record's arrays; *max RSS growth*: the process's peak "
        "resident memory above its resident memory before the call (C allocations of h5py "
        "and HDF5 included).",
        "",
        "| way | record MB | seconds | peak traced MB | peak / record | max RSS growth MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| `io.{row['way']}` | {row['record_mb']:.0f} | {row['seconds']:.2f} | "
            f"{row['peak_traced_mb']:.0f} | {row['peak_over_record']:.2f} | "
            f"{row['max_rss_growth_mb']:.0f} |"
        )
    lines += [
        "",
        "`read_isolated` runs `read` in a child Python, which writes the record to a file in a "
        "private temporary folder with the arrays' bytes out of band (pickle protocol 5); the "
        "caller reads each array straight into the buffer that becomes its memory. The seconds "
        "include the child's start (imports of NumPy, h5py and napari_genreg) and the "
        "record's round trip through the file.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--coils", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(640, 320))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small file; writes nothing")
    parser.add_argument("--measure", nargs=2, metavar=("WAY", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    if args.quick:
        args.slices, args.coils, args.size, args.repeats = 2, 4, (64, 48), 1

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scan.h5"
        write_file(path, args.slices, args.coils, tuple(args.size))
        file_mb = path.stat().st_size / 1e6
        runs: dict[str, list[dict]] = {way: [] for way in WAYS}
        for _ in range(args.repeats + 1):  # the first round warms the page cache
            for way in WAYS:
                out = subprocess.run(
                    [sys.executable, __file__, "--measure", way, str(path)],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                runs[way].append(json.loads(out.strip().splitlines()[-1]))
    rows = []
    for measured in runs.values():
        kept = measured[1:] if len(measured) > 1 else measured
        row = dict(kept[0])
        for key in ("seconds", "peak_traced_mb", "peak_over_record", "max_rss_growth_mb"):
            row[key] = sorted(m[key] for m in kept)[len(kept) // 2]
        row["writeable"] = all(m["writeable"] for m in kept)
        rows.append(row)
    result = {
        "machine": _machine.machine_info(),
        "command": _machine.command_line(),
        "args": {**vars(args), "size": list(args.size)},
        "file_mb": file_mb,
        "rows": rows,
        "runs": runs,
    }
    _machine.publish(NAME, result, render(result), record=not args.quick)


if __name__ == "__main__":
    main()
