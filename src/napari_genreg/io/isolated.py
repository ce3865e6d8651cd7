"""Reading an untrusted HDF5 file in a child process.

HDF5 files are parsed by the HDF5 C library, and a corrupt file can send it into a loop that
does not end: one byte changed in the size field of a global heap collection of an ISMRMRD
file (where the acquisitions' variable-length arrays live) kept ``H5Dread`` spinning under
HDF5 2.0.0 for ten minutes, when it was stopped (found by flipping bytes of valid files;
``tests/io/test_isolated.py`` makes such a file). Python cannot interrupt that call: the
reading thread stays blocked, holding h5py's lock, and Ctrl-C waits for the call to return.
napari's readers run in its GUI thread, so napari would stop answering, with the user's
unsaved layers in it.

:func:`read_isolated` runs :func:`napari_genreg.io.read` in a child Python (a new process:
none of the caller's threads, Qt or torch) and waits at most :func:`time_limit` seconds, a
limit that grows with the file's size; a child that has not answered by then is killed, and
one that dies is reported. Either way the caller gets a :class:`ReadError` naming the file,
and nothing in the calling process was touched. The price is the child's start (importing
NumPy, h5py and this package, about a second) and the record's round trip through a file in a
private temporary folder: the child writes the arrays' bytes out of band (pickle protocol 5),
and the caller reads them straight into the memory of its arrays, so that it never holds the
record more than once (``benchmarks/isolated_read.py``).

Where :data:`sys.executable` is no Python to start (a frozen application), the file is read
in the calling process.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
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
#: Seconds to wait for a killed child to go (one stuck in the kernel, on a hung network
#: share, goes only when its I/O returns); after that it is left to end on its own.
KILL_WAIT_SECONDS = 5.0
#: The file, in a private temporary folder, through which the child hands the record back.
ANSWER = "answer"
#: Characters of the child's stderr kept for a message.
STDERR_TAIL = 2000


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
        finish in time, died or failed.
    ValueError
        On a bad ``noise_sigma``, ``seed`` or ``timeout`` (checked before any child starts).
    """
    check_read_args(noise_sigma, seed)
    if timeout is None:
        timeout = time_limit(path)
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if getattr(sys, "frozen", False) or not sys.executable:
        from napari_genreg import io

        return io.read(path, noise_sigma=noise_sigma, seed=seed)
    # (a killed child that is still going holds its files open: Windows cannot delete them)
    with tempfile.TemporaryDirectory(
        prefix="napari-genreg-read-", ignore_cleanup_errors=True
    ) as folder:
        answer = Path(folder) / ANSWER
        request = pickle.dumps((os.fspath(path), noise_sigma, seed, os.fspath(answer)))
        said, code = _run_child(path, request, timeout, Path(folder) / "output")
        try:
            # pickled by our child from the record it built: none of the file's bytes is
            # unpickled
            status, payload = _load_answer(answer) if code == 0 else (None, None)
        except (OSError, EOFError, ValueError, MemoryError, OverflowError, pickle.UnpicklingError):
            status = None
    if status is None:
        last = f": {said[-1]}" if said else ""
        if code < 0 or code >= 0xC0000000:  # a signal; a Windows crash
            raise ReadError(
                path,
                f"the process reading it died (exit code {code}): the file is probably "
                f"corrupt{last}",
            )
        if code == 0:  # not seen: our child writes its answer before it exits
            raise ReadError(path, "the process reading it gave no readable answer")
        raise ReadError(path, f"the process reading it failed (exit code {code}){last}")
    if status == "error":
        raise payload
    return payload


def _run_child(
    path: str | os.PathLike[str], request: bytes, timeout: float, output: Path
) -> tuple[list[str], int]:
    """Run the child on ``request``; its last lines of output (stdout and stderr, kept in
    the file ``output``) and its exit code."""
    with open(output, "w+b") as said:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=said,
            stderr=said,
            env=_child_environment(),
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # Windows: no console
        )
        try:
            child.communicate(request, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ReadError(
                path,
                f"reading did not finish within {timeout:.0f} s and was stopped (a corrupt "
                "HDF5 file can send the HDF5 library into a loop that does not end)",
            ) from None
        finally:  # a timeout, Ctrl-C, anything: the child does not outlive the call
            if child.poll() is None:
                child.kill()
                try:
                    child.wait(timeout=KILL_WAIT_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
        said.seek(max(0, said.seek(0, os.SEEK_END) - STDERR_TAIL))
        lines = said.read().decode("utf-8", "replace").strip().splitlines()
    return lines, child.returncode


def _save_answer(result: tuple[str, Any], path: str) -> None:
    """Write ``result`` to ``path``: its pickle (protocol 5) with the arrays' bytes out of band,
    each after its length (see :func:`_load_answer`)."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    with open(path, "wb") as out:
        out.write(len(head).to_bytes(8, "little") + head)
        for buffer in buffers:
            raw = buffer.raw()
            out.write(raw.nbytes.to_bytes(8, "little"))
            out.write(raw)


def _load_answer(path: Path) -> tuple[str, Any]:
    """What :func:`_save_answer` wrote: each array is read into a buffer of its own, which
    the unpickled array uses as its memory (no copy)."""
    with open(path, "rb") as source:
        size = source.seek(0, os.SEEK_END)
        source.seek(0)
        head = source.read(int.from_bytes(source.read(8), "little"))
        buffers = []
        while source.tell() < size:
            buffer = bytearray(int.from_bytes(source.read(8), "little"))
            if source.readinto(buffer) != len(buffer):
                raise EOFError(f"{path}: the answer ends early")
            buffers.append(buffer)
    return pickle.loads(head, buffers=buffers)


def _child_environment() -> dict[str, str]:
    """The caller's environment, with the caller's ``sys.path`` after ``PYTHONPATH``: the
    child imports this package and its dependencies from where the caller did."""
    env = dict(os.environ)
    paths = [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []
    paths += [p for p in sys.path if p and os.path.isabs(p)]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


#: What the child runs (``python -c``; not the caller's ``__main__``, which a
#: ``multiprocessing`` child would import again: napari's, a second of imports). The working
#: directory, first on ``sys.path`` under ``-c``, is taken off it.
CHILD = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "from napari_genreg.io.isolated import _child_main; _child_main()"
)


def _child_main() -> None:
    """The child: read the request from stdin, write ``("ok", record)`` or
    ``("error", ReadError)`` to the answer's file (:func:`_save_answer`)."""
    path, noise_sigma, seed, answer = pickle.loads(sys.stdin.buffer.read())  # read_isolated's
    from napari_genreg import io

    try:
        result: tuple[str, Any] = ("ok", io.read(path, noise_sigma=noise_sigma, seed=seed))
    except ReadError as exc:
        result = ("error", exc)
    except Exception as exc:  # read() turns readers' failures into ReadError; anything else
        result = ("error", ReadError(path, f"{type(exc).__name__}: {exc}"))
    try:
        _save_answer(result, answer)
    except OSError as exc:  # a temporary folder that is full (a /tmp in memory, capped)
        print(
            f"the record could not be handed back through {os.path.dirname(answer)} "
            f"({exc.strerror or exc}); point TMPDIR at a folder with room",
            file=sys.stderr,
        )
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the answer is out: nothing at interpreter exit may turn it into a crash
