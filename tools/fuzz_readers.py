"""Flip bytes of valid files of every readable format and read each in a child with a deadline.

The test suite's fuzz tests read truncated and random files in the test process; a file that
sends a parsing library into a loop that does not end would hang the suite there, so this
campaign is a tool instead: each flipped file is read by :func:`napari_genreg.io.read` in a
forked child (POSIX only) under an address-space limit and an alarm, and the outcome is one
of ``ok`` (a record), ``ReadError``, ``hang`` (the alarm), ``crash`` (another signal, the
memory limit among them) or ``other`` (any other exception: a reader bug). Files of the last
three kinds are kept in ``--out``. From the repository root::

    .venv/bin/python tools/fuzz_readers.py --seed 1 --count 2000

It builds its valid files with the test suite's builders (``tests/conftest.py``) and the
package's writers, and reads the TWIX example in ``tests/data``. HDF5 files that hang are a
known HDF5 behaviour that the napari reader and the CLI guard against
(:func:`napari_genreg.io.read_isolated`); the exit status is 1 when a file crashed or raised
something else than ReadError.
"""

from __future__ import annotations

import argparse
import io as _bytes
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("ok", "ReadError", "hang", "crash", "other")
#: Exit codes of the child, by outcome.
_CODES = {0: "ok", 1: "ReadError", 2: "other"}


def valid_files() -> dict[str, tuple[str, bytes]]:
    """One valid file per format: ``{label: (extension, bytes)}``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest
    from napari_genreg import io

    files = {ext: (ext, data) for ext, data in conftest.valid_file_bytes().items()}
    files["twix .dat"] = (".dat", (ROOT / "tests" / "data" / "twix" / "gre.dat").read_bytes())
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        mask = np.arange(conftest.MRI_ENCODED[1]) % 2 == 0
        conftest.write_fastmri(tmp / "fastmri.h5", mask=mask)
        files["fastMRI .h5"] = (".h5", (tmp / "fastmri.h5").read_bytes())
        kspace, _ = conftest.multicoil_kspace()
        conftest.write_mrd(tmp / "mrd.h5", kspace, recon=conftest.MRI_RECON)
        files["ISMRMRD .h5"] = (".h5", (tmp / "mrd.h5").read_bytes())
        image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
        for ext in (".h5", ".nii.gz", ".npy"):
            io.write(tmp / f"recon{ext}", image, settings={"method": "tv"})
            files[f"written {ext}"] = (ext, (tmp / f"recon{ext}").read_bytes())
    return files


def flip(data: bytes, rng: random.Random, header_bytes: int = 2048) -> bytes:
    """Change 1-3 bytes, most of them (60 %) in the first ``header_bytes``, where the formats
    keep their structure."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        span = min(len(out), header_bytes) if rng.random() < 0.6 else len(out)
        out[rng.randrange(span)] = rng.randrange(256)
    return bytes(out)


def read_in_child(path: Path, seconds: int, memory_bytes: int) -> str:
    """Read ``path`` in a forked child; the outcome's name."""
    from napari_genreg.io import ReadError, read

    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 2
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
            signal.alarm(seconds)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                read(path)
            code = 0
        except ReadError:
            code = 1
        except BaseException as exc:  # a reader bug: reported
            sys.stderr.write(f"{path.name}: {type(exc).__name__}: {exc}\n")
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "hang" if os.WTERMSIG(status) == signal.SIGALRM else "crash"
    return _CODES.get(os.WEXITSTATUS(status), "other")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000, help="flipped files to read")
    parser.add_argument("--seconds", type=int, default=10, help="deadline of one read")
    parser.add_argument("--memory-gib", type=float, default=3.0, help="address-space limit")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"))
    args = parser.parse_args()
    if not hasattr(os, "fork"):
        parser.error("needs os.fork (POSIX)")
    import h5py  # noqa: F401  (imported once here rather than in every child)
    import torch  # noqa: F401  (image formats simulate k-space with torch)

    files = valid_files()
    labels = sorted(files)
    rng = random.Random(args.seed)
    counts: dict[str, Counter] = defaultdict(Counter)
    memory = int(args.memory_gib * 2**30)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.count):
            label = rng.choice(labels)
            ext, data = files[label]
            path = Path(folder) / f"flipped{ext}"
            path.write_bytes(flip(data, rng))
            outcome = read_in_child(path, args.seconds, memory)
            counts[label][outcome] += 1
            if outcome not in ("ok", "ReadError"):
                args.out.mkdir(parents=True, exist_ok=True)
                kept = args.out / f"{outcome}-{args.seed}-{i}{ext}"
                shutil.copy(path, kept)
                print(f"{outcome}: {label}, kept as {kept}", flush=True)
    table = _bytes.StringIO()
    table.write(f"{'format':<14}" + "".join(f"{o:>10}" for o in OUTCOMES) + "\n")
    for label in labels:
        row = counts[label]
        table.write(f"{label:<14}" + "".join(f"{row[o]:>10}" for o in OUTCOMES) + "\n")
    print(table.getvalue(), end="")
    print(f"{args.count} files, seed {args.seed}, {time.monotonic() - start:.0f} s")
    bad = sum(counts[label][o] for label in labels for o in ("crash", "other"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
