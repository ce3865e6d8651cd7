"""Reading an untrusted HDF5 file in a child process.

HDF5 files are parsed by the HDF5 C library, and a corrupt file can send it into an endless
loop: one byte changed in the size field of a global heap collection of an ISMRMRD file (where
the acquisitions' variable-length arrays live) kept ``H5Dread`` spinning for minutes under
HDF5 2.0.0 (found by flipping bytes of valid files; ``tests/io/test_isolated.py`` makes such a
file). Python cannot interrupt that call: the reading thread stays blocked, holding h5py's
lock, and Ctrl-C waits for the call to return. napari's readers run in its GUI thread, so
napari would stop answering for good, with the user's unsaved layers in it.

:func:`read_isolated` runs :func:`napari_genreg.io.read` in a child process (``spawn``: no
copy of the caller's threads, Qt or torch) and waits at most :func:`time_limit` seconds, a
limit that grows with the file's size; a child that has not answered by then is killed, and
one that dies is reported. Either way the caller gets a :class:`ReadError` naming the file,
and nothing in the calling process was touched. The price is the child's start (importing
NumPy, h5py and this package) and sending the record back through a pipe.
"""

from __future__ import annotations

import multiprocessing
import os
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
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_read_and_send,
        args=(sender, os.fspath(path), noise_sigma, seed),
        name="napari-genreg reader",
        daemon=True,
    )
    child.start()
    sender.close()  # the child's end: EOF here once the child is gone
    try:
        if not receiver.poll(timeout):
            raise ReadError(
                path,
                f"reading did not finish within {timeout:.0f} s and was stopped (a corrupt "
                "HDF5 file can send the HDF5 library into an endless loop)",
            )
        try:
            status, payload = receiver.recv()
        except EOFError:
            child.join()
            raise ReadError(
                path,
                f"the process reading it died (exit code {child.exitcode}): the file is "
                "probably corrupt",
            ) from None
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()
    if status == "error":
        raise payload
    return payload


def _read_and_send(sender: Any, path: str, noise_sigma: float, seed: int) -> None:
    """The child: read, and send ``("ok", record)`` or ``("error", ReadError)``."""
    from napari_genreg import io

    try:
        result: tuple[str, Any] = ("ok", io.read(path, noise_sigma=noise_sigma, seed=seed))
    except ReadError as exc:
        result = ("error", exc)
    except Exception as exc:  # read() turns readers' failures into ReadError; anything else
        result = ("error", ReadError(path, f"{type(exc).__name__}: {exc}"))
    sender.send(result)
    sender.close()
