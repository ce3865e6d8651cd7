"""Reading an untrusted HDF5 file in a child process.

HDF5 files are parsed by the HDF5 C library, and a corrupt file can send it into an endless
loop: one byte changed in the size field of a global heap collection of an ISMRMRD file (where
the acquisitions' variable-length arrays live) kept ``H5Dread`` spinning for minutes under
HDF5 2.0.0 (found by flipping bytes of valid files; ``tests/io/test_isolated.py`` makes such a
file). Python cannot interrupt that call: the reading thread stays blocked, holding h5py's
lock, and Ctrl-C waits for the call to return. napari's readers run in its GUI thread, so
napari would stop answering for good, with the user's unsaved layers in it.

:func:`read_isolated` runs :func:`napari_genreg.io.read` in a child Python (a new process:
none of the caller's threads, Qt or torch) and waits at most :func:`time_limit` seconds, a
limit that grows with the file's size; a child that has not answered by then is killed, and
one that dies is reported. Either way the caller gets a :class:`ReadError` naming the file,
and nothing in the calling process was touched. The price is the child's start (importing
NumPy, h5py and this package) and sending the record back, pickled, through a pipe.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._common import check_read_args
from .errors import ReadError
from .records import KSpaceData

#: Extensions of the files :func:`read_isolated` is meant for: those HDF5 parses.
HDF5_EXTENSIONS = (".h5", ".hdf5", ".mrd")
#: Seconds any read is given, whatever the file's size.
BASE_SECONDS = 60.0
#: Seconds more per GiB of file: reading at 17 MB/s, a slow network share.
SECONDS_PER_GIB = 60.0


def is_hdf5_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a file of :data:`HDF5_EXTENSIONS`."""
    return os.fspath(path).lower().endswith(HDF5_EXTENSIONS)


def time_limit(path: str | os.PathLike[str]) -> float:
    """Seconds :func:`read_isolated` waits for ``path`` by default: :data:`BASE_SECONDS` and
    :data:`SECONDS_PER_GIB` per GiB of the file."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        size = 0
    return BASE_SECONDS + SECONDS_PER_GIB * size / 2**30


def read_isolated(
    path: str | os.PathLike[str],
    *,
    noise_sigma: float = 0.0,
    seed: int = 0,
    timeout: float | None = None,
) -> KSpaceData:
    """:func:`napari_genreg.io.read` in a child process that is killed when it takes longer
    than ``timeout`` seconds (default :func:`time_limit`).

    Raises
    ------
    ReadError
        What :func:`~napari_genreg.io.read` raises in the child, or that the child did not
        finish in time or died.
    ValueError
        On a bad ``noise_sigma``, ``seed`` or ``timeout`` (checked before any child starts).
    """
    check_read_args(noise_sigma, seed)
    if timeout is None:
        timeout = time_limit(path)
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    request = pickle.dumps((os.fspath(path), noise_sigma, seed))
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # no cwd first on sys.path
    child = subprocess.Popen(
        [sys.executable, *safe_path, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        answer, errors = child.communicate(request, timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise ReadError(
            path,
            f"reading did not finish within {timeout:.0f} s and was stopped (a corrupt HDF5 "
            "file can send the HDF5 library into an endless loop)",
        ) from None
    if child.returncode != 0 or not answer:
        said = errors.decode("utf-8", "replace").strip().splitlines()
        last = f": {said[-1]}" if said else ""
        if child.returncode < 0:  # ended by a signal: a crash, or killed
            raise ReadError(
                path,
                f"the process reading it died (signal {-child.returncode}): the file is "
                f"probably corrupt{last}",
            )
        raise ReadError(path, f"the process reading it failed (exit code {child.returncode}){last}")
    # pickled by our child from the record it built: none of the file's bytes is unpickled
    status, payload = pickle.loads(answer)
    if status == "error":
        raise payload
    return payload


#: What the child runs (``python -c``): not the caller's ``__main__``, which a
#: ``multiprocessing`` child would import again (napari's, a second of imports).
CHILD = "from napari_genreg.io.isolated import _child_main; _child_main()"


def _child_main() -> None:
    """The child: read the request from stdin, answer ``("ok", record)`` or
    ``("error", ReadError)`` on stdout (anything printed meanwhile goes to stderr)."""
    answer = sys.stdout.buffer
    sys.stdout = sys.stderr
    path, noise_sigma, seed = pickle.loads(sys.stdin.buffer.read())  # read_isolated's request
    from napari_genreg import io

    try:
        result: tuple[str, Any] = ("ok", io.read(path, noise_sigma=noise_sigma, seed=seed))
    except ReadError as exc:
        result = ("error", exc)
    except Exception as exc:  # read() turns readers' failures into ReadError; anything else
        result = ("error", ReadError(path, f"{type(exc).__name__}: {exc}"))
    answer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    answer.flush()
