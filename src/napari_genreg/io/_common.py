"""Helpers shared by the readers: argument checks, the parse boundary, image stacks.

Private to :mod:`napari_genreg.io`. Only NumPy is imported here, so that
``import napari_genreg.io`` stays light.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import ReadError
from .records import KSpaceData, Metadata

#: ITU-R BT.601 luma weights (Pillow's ``convert("L")`` uses the same).
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
LUMA_NOTE = "RGB converted to luminance 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601)"


def check_read_args(noise_sigma: float, seed: int) -> None:
    """Reject bad simulation arguments (a caller's error, so :class:`ValueError`).

    Parameters
    ----------
    noise_sigma
        Relative noise level; must be finite and non-negative.
    seed
        Seed of the noise generator; an integer in ``[0, 2**64)``.
    """
    if isinstance(noise_sigma, bool) or not isinstance(
        noise_sigma, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"noise_sigma must be a number, got {type(noise_sigma).__name__}")
    if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
        raise ValueError(f"noise_sigma must be finite and non-negative, got {noise_sigma}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")


def checked_path(path: str | os.PathLike[str], noise_sigma: float, seed: int) -> Path:
    """Check the reader arguments and that ``path`` exists; return it as a :class:`Path`.

    Raises
    ------
    ValueError
        On a bad ``noise_sigma`` or ``seed`` (the caller's error, raised before the file is
        touched).
    ReadError
        When nothing exists at ``path``.
    """
    check_read_args(noise_sigma, seed)
    path = Path(path)
    if not path.exists():
        raise ReadError(path, "no such file")
    return path


@contextmanager
def parse_boundary(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn any exception in the block into ``ReadError(path, f"{what}: ...")``.

    Used where a library parses bytes from the file: whatever it raises on corrupt input
    (``ValueError``, ``OSError``, ``EOFError``, ``zlib.error``, ``MemoryError``, ...) becomes
    one exception type that names the file. :class:`ReadError` passes through.
    """
    try:
        yield
    except ReadError:
        raise
    except Exception as exc:
        raise ReadError(path, f"{what}: {type(exc).__name__}: {exc}") from exc


def image_stack(
    array: np.ndarray, path: str | os.PathLike[str], *, allow_complex: bool = False
) -> np.ndarray:
    """Check an image array and return it as a stack ``(N, H, W)`` (a view where possible).

    Parameters
    ----------
    array
        Real (integer or floating) array of shape ``(H, W)`` or ``(N, H, W)``; complex too when
        ``allow_complex``.
    path
        The file, for messages.
    allow_complex
        Accept complex images (their magnitude becomes the reference).

    Raises
    ------
    ReadError
        On an unsupported dtype (bool, object, strings, structured, dates), another rank, or an
        empty shape.
    """
    kinds = "iufc" if allow_complex else "iuf"
    check_dtype(array, path, kinds, "an image")
    if array.ndim not in (2, 3):
        raise ReadError(
            path, f"an image must have shape (H, W) or (N, H, W), got {array.ndim}-D {array.shape}"
        )
    if array.size == 0:
        raise ReadError(path, f"the image is empty, shape {array.shape}")
    return array if array.ndim == 3 else array[np.newaxis]


def check_dtype(
    array: np.ndarray | np.dtype, path: str | os.PathLike[str], kinds: str, what: str
) -> None:
    """Raise :class:`ReadError` unless the dtype's kind is one of ``kinds``.

    ``kinds`` uses NumPy's letters: ``b`` bool, ``i`` signed, ``u`` unsigned, ``f`` float,
    ``c`` complex. Structured and sub-array dtypes are always rejected.
    """
    dtype = array if isinstance(array, np.dtype) else array.dtype
    if dtype.names is not None or dtype.subdtype is not None or dtype.kind not in kinds:
        names = {"b": "bool", "i": "integer", "u": "integer", "f": "floating", "c": "complex"}
        wanted = " or ".join(dict.fromkeys(names[k] for k in kinds))
        raise ReadError(path, f"{what} has dtype {dtype}; expected {wanted} numbers")


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Luminance of an RGB(A) array ``(..., 3 or 4)`` (alpha ignored), float64 ``(...)``."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    wr, wg, wb = LUMA_WEIGHTS
    return wr * r + wg * g + wb * b


def check_file_size(path: Path, needed: int, what: str) -> None:
    """Raise :class:`ReadError` when the file is shorter than its header says it must be."""
    size = path.stat().st_size
    if size < needed:
        raise ReadError(
            path, f"truncated {what}: the header needs {needed} bytes, the file has {size}"
        )


def record(
    path: str | os.PathLike[str],
    *,
    kspace: np.ndarray,
    reference: np.ndarray | None,
    mask: np.ndarray | None,
    meta: Metadata,
) -> KSpaceData:
    """Build a :class:`KSpaceData`, turning its validation errors into :class:`ReadError`."""
    try:
        return KSpaceData(kspace=kspace, reference=reference, mask=mask, meta=meta)
    except ValueError as exc:
        message = str(exc)
        prefix = f"{meta.source}: "
        raise ReadError(path, message.removeprefix(prefix)) from exc


def json_safe(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into plain Python (for ``meta.extra``)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Reader(Protocol):
    """The signature every reader in :data:`napari_genreg.io.READERS` has."""

    def __call__(
        self, path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0
    ) -> KSpaceData: ...


def match_extension(path: Path, extensions: Iterable[str]) -> str | None:
    """The longest of ``extensions`` that ``path``'s name ends with (case-insensitive)."""
    name = path.name.lower()
    for ext in sorted(extensions, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return None
