"""HDF5 (``.h5``, ``.hdf5``): one dispatcher over what the file holds, and shared helpers.

:func:`read_h5` opens the file read-only and looks at its top level:

* a dataset ``kspace``: fastMRI raw data, read by
  :func:`~napari_genreg.io.fastmri.read_fastmri`;
* a group ``dataset`` (or the only group) holding ``xml`` or ``data``: ISMRMRD / MRD raw data,
  read by :func:`~napari_genreg.io.mrd.read_mrd`;
* only ``reconstruction_rss``, ``reconstruction_esc`` or ``reconstruction`` (our own ``.h5``
  writer's output): images, read by :func:`~napari_genreg.io.fastmri.read_fastmri`, which
  simulates their k-space;
* anything else: a :class:`~napari_genreg.io.errors.ReadError` listing the datasets and groups
  found and what was expected.

Files are untrusted. The helpers here refuse links (soft, external) where a dataset is
expected, datasets stored in external raw files or assembled from other files (virtual),
arrays over :data:`MAX_BYTES`, and arrays whose stored bytes fall short of their declared size
(truncated or never written), before anything is read into memory. Any error of h5py or HDF5
becomes a :class:`~napari_genreg.io.errors.ReadError` naming the file.

h5py is imported by the functions that use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._common import check_dtype, checked_path, parse_boundary
from .errors import ReadError
from .records import KSpaceData

if TYPE_CHECKING:
    import h5py

#: Largest array (in bytes, as stored) a reader loads: 8 GiB.
MAX_BYTES = 2**33
#: The dataset of fastMRI raw data.
KSPACE_KEY = "kspace"
#: Image datasets, in order of preference: fastMRI's references, then our writer's output.
IMAGE_KEYS = ("reconstruction_rss", "reconstruction_esc", "reconstruction")
#: The default name of the ISMRMRD group.
MRD_GROUP = "dataset"
#: Longest string attribute copied into ``meta.extra``.
MAX_ATTRIBUTE_CHARS = 4096
#: Attributes stored in more bytes are not even read.
MAX_ATTRIBUTE_BYTES = 2**16

Content = Literal["fastmri", "mrd", "images"]


def read_h5(path: str | os.PathLike[str], *, noise_sigma: float = 0.0, seed: int = 0) -> KSpaceData:
    """Read an HDF5 file, choosing the reader from its content (see the module docstring).

    Parameters
    ----------
    path
        The ``.h5`` / ``.hdf5`` file.
    noise_sigma, seed
        Relative noise level and seed for simulated k-space (image-only files); measured
        k-space is returned as stored.

    Returns
    -------
    KSpaceData

    Raises
    ------
    ReadError
        When the file is missing, not HDF5, truncated or corrupt, holds none of the expected
        datasets (the message lists the ones found), or the chosen reader refuses it.
    """
    from .fastmri import read_fastmri
    from .mrd import read_mrd

    path = checked_path(path, noise_sigma, seed)
    with open_h5(path) as f:
        content = sniff(f, path)
    if content == "mrd":
        return read_mrd(path, noise_sigma=noise_sigma, seed=seed)
    return read_fastmri(path, noise_sigma=noise_sigma, seed=seed)


def sniff(f: h5py.File, path: str | os.PathLike[str]) -> Content:
    """What an open HDF5 file holds: ``"fastmri"``, ``"mrd"`` or ``"images"``.

    Raises
    ------
    ReadError
        When it holds none of them; the message lists the top-level names found.
    """
    if KSPACE_KEY in f:
        return "fastmri"
    if mrd_group(f) is not None:
        return "mrd"
    if any(key in f for key in IMAGE_KEYS):
        return "images"
    raise ReadError(
        path,
        f"no MRI data among {describe(f)}: expected a dataset {KSPACE_KEY!r} (fastMRI "
        f"k-space), a group {MRD_GROUP!r} holding 'xml' and 'data' (ISMRMRD), or one of "
        f"{', '.join(repr(k) for k in IMAGE_KEYS)} (images)",
    )


def mrd_group(f: h5py.File) -> str | None:
    """The ISMRMRD group of an open file: ``dataset`` when it holds ``xml`` or ``data``, else
    the only top-level group that does; ``None`` when there is none (or several)."""
    import h5py

    def is_mrd(name: str) -> bool:
        link = f.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            return False
        group = f.get(name)
        return isinstance(group, h5py.Group) and ("xml" in group or "data" in group)

    if MRD_GROUP in f and is_mrd(MRD_GROUP):
        return MRD_GROUP
    candidates = [name for name in f if is_mrd(name)]
    return candidates[0] if len(candidates) == 1 else None


def describe(f: h5py.Group, limit: int = 20) -> str:
    """The top-level names of a group, for messages: ``"datasets ['a', 'b'] and groups []"``."""
    import h5py

    datasets, groups, other = [], [], []
    for name in f:
        link = f.get(name, getlink=True)
        item = f.get(name) if isinstance(link, h5py.HardLink) else None
        kind = (
            datasets
            if isinstance(item, h5py.Dataset)
            else groups
            if isinstance(item, h5py.Group)
            else other
        )
        kind.append(name)
    parts = [f"datasets {_names(datasets, limit)}", f"groups {_names(groups, limit)}"]
    if other:
        parts.append(f"links {_names(other, limit)}")
    return " and ".join(parts)


def _names(names: list[str], limit: int) -> str:
    shown = sorted(names)[:limit]
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"{shown}{more}"


@contextmanager
def open_h5(path: Path, what: str = "not a readable HDF5 file") -> Iterator[h5py.File]:
    """Open an HDF5 file read-only; any error inside the block becomes a :class:`ReadError`.

    h5py is imported here. The block's own :class:`ReadError` passes through; anything else
    (``OSError`` from HDF5, ``KeyError``, ``TypeError``, ``MemoryError``, ...) becomes
    ``ReadError(path, f"{what}: ...")``.
    """
    with parse_boundary(path, what):
        import h5py

        with h5py.File(path, "r") as f:
            yield f


def get_dataset(group: h5py.Group, key: str, path: str | os.PathLike[str]) -> h5py.Dataset:
    """The dataset ``key`` of ``group``, refusing links and data stored outside the file.

    Raises
    ------
    ReadError
        When ``key`` is missing, a soft or external link, a group, a virtual dataset or a
        dataset with external storage.
    """
    import h5py

    where = f"{group.name.rstrip('/')}/{key}".lstrip("/")
    if key not in group:
        raise ReadError(path, f"no dataset {where!r}")
    link = group.get(key, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise ReadError(path, f"{where!r} is a {type(link).__name__}, not a dataset")
    dataset = group[key]
    if not isinstance(dataset, h5py.Dataset):
        raise ReadError(path, f"{where!r} is a {type(dataset).__name__}, not a dataset")
    if dataset.is_virtual or dataset.external:
        raise ReadError(path, f"{where!r} refers to data outside the file; refusing to read it")
    return dataset


def read_array(
    dataset: h5py.Dataset,
    path: str | os.PathLike[str],
    *,
    what: str,
    kinds: str,
    ranks: tuple[int, ...],
) -> np.ndarray:
    """Check a dataset's dtype, rank and size against what the file stores, then read it.

    Parameters
    ----------
    dataset
        From :func:`get_dataset`.
    path
        The file, for messages.
    what
        The array's role (``"the k-space"``), for messages.
    kinds
        Accepted dtype kinds, NumPy's letters (``"c"``: complex; ``"iuf"``: real numbers).
    ranks
        Accepted numbers of dimensions.

    Raises
    ------
    ReadError
        On another dtype or rank, an empty array, more than :data:`MAX_BYTES`, or fewer bytes
        stored than an uncompressed array needs (truncated or never written).
    """
    check_dtype(dataset.dtype, path, kinds, what)
    shape = tuple(int(n) for n in dataset.shape)
    if len(shape) not in ranks:
        wanted = " or ".join(f"{r}-D" for r in ranks)
        raise ReadError(path, f"{what} must be {wanted}, got {len(shape)}-D {shape}")
    nbytes = math.prod(shape) * dataset.dtype.itemsize
    if nbytes == 0:
        raise ReadError(path, f"{what} is empty, shape {shape}")
    if nbytes > MAX_BYTES:
        raise ReadError(
            path,
            f"{what} {shape} needs {nbytes / 2**30:.1f} GiB, over the {MAX_BYTES >> 30} GiB limit",
        )
    stored = dataset.id.get_storage_size()
    filtered = dataset.id.get_create_plist().get_nfilters() > 0
    if stored == 0 or (not filtered and stored < nbytes):
        raise ReadError(
            path,
            f"{what} {shape} stores {stored} of its {nbytes} bytes (truncated or never written)",
        )
    return np.asarray(dataset[()])


def read_text(
    dataset: h5py.Dataset, path: str | os.PathLike[str], *, what: str, max_bytes: int
) -> str:
    """A scalar (or one-element) string dataset as text (UTF-8, undecodable bytes replaced).

    Raises
    ------
    ReadError
        When the dataset does not hold one string of at most ``max_bytes``.
    """
    if dataset.dtype.kind not in "SOU" or dataset.shape not in ((), (1,)):
        raise ReadError(
            path, f"{what} must be one string, got {dataset.dtype} of shape {dataset.shape}"
        )
    value = dataset[()] if dataset.shape == () else dataset[0]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        raise ReadError(path, f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_bytes:
        raise ReadError(path, f"{what} is {len(value)} characters long, over {max_bytes}")
    return value


def attributes(obj: h5py.HLObject) -> dict[str, Any]:
    """JSON-safe attributes of an HDF5 object, for ``meta.extra``.

    Strings (decoded; at most :data:`MAX_ATTRIBUTE_CHARS`), finite real numbers and short
    (<= 64 elements) numeric vectors are kept; anything else is skipped.
    """
    found: dict[str, Any] = {}
    for name in obj.attrs:
        try:
            if obj.attrs.get_id(name).get_storage_size() > MAX_ATTRIBUTE_BYTES:
                continue
            value = obj.attrs[name]
        except Exception:  # an attribute h5py cannot decode is not worth refusing a file over
            continue
        kept = _attribute(value)
        if kept is not None:
            found[str(name)] = kept
    return found


def _attribute(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value if len(value) <= MAX_ATTRIBUTE_CHARS else None
    array = np.asarray(value)
    if array.dtype.kind not in "biuf" or array.size > 64 or array.ndim > 1:
        return None
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        return None
    return array.tolist()
