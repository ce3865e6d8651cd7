"""Writers for reconstructed magnitudes, with the settings that produced them.

Formats, chosen by the extension of the target:

``.npy``
    float32 array as given, ``(H, W)`` or ``(N, H, W)``; the settings in a JSON sidecar next
    to it, ``<name>.json`` (``recon.npy`` -> ``recon.json``). A ``.json`` of that name beside
    no ``.npy`` of its name is someone else's file: the write is refused.
``.nii`` / ``.nii.gz``
    float32 NIfTI-1, identity affine (1 mm voxels, RAS), laid out so that
    :func:`~napari_genreg.io.images.read_nifti` gives back the same ``(N, H, W)`` slices (see
    its display convention). The settings JSON is stored whole in a header extension of code
    6 (comment) and, truncated to 80 characters, in ``descrip``.
``.h5``
    HDF5 dataset ``reconstruction`` (float32, as given; the name fastMRI's reconstruction files
    use) with the settings JSON in its file attribute ``settings``.

Every write is atomic: the file is written to a temporary file in the same folder, flushed to
disk and moved over the target with :func:`os.replace`, so an interrupted write leaves either
the old file or the new one, never half a file. h5py and nibabel are imported when used.
"""

from __future__ import annotations

import dataclasses
import enum
import gzip
import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._common import match_extension, parse_boundary
from .errors import ReadError, WriteError
from .records import KSpaceData

#: Code of a NIfTI header extension that holds a comment (the settings JSON).
NIFTI_COMMENT_CODE = 6
#: Length of the NIfTI ``descrip`` header field.
NIFTI_DESCRIP_LENGTH = 80
#: Name of the HDF5 dataset holding the magnitudes.
H5_DATASET = "reconstruction"

_Fill = Callable[[Path], None]


def check_target(path: str | os.PathLike[str]) -> str:
    """Whether :func:`write` can write ``path``, as far as can be told before there is
    anything to write (the command line asks before it computes); its extension.

    Raises
    ------
    WriteError
        On an unsupported extension, a missing folder, a folder where the file would be, or
        a ``.json`` beside a new ``.npy`` (its sidecar would replace someone else's file).
    """
    path = Path(path)
    ext = match_extension(path, WRITERS)
    if ext is None:
        raise WriteError(
            path, f"unsupported file type; supported: {', '.join(SUPPORTED_WRITE_EXTENSIONS)}"
        )
    if not path.parent.is_dir():
        raise WriteError(path, f"the folder {path.parent} does not exist")
    if path.is_dir():
        raise WriteError(path, "is a folder")
    sidecar = sidecar_path(path)
    if ext == ".npy" and sidecar.exists() and not path.exists():
        # a .json beside no .npy of that name is no sidecar of ours: someone else's file
        raise WriteError(
            path,
            f"{sidecar.name} exists beside it and would be replaced by the settings; choose "
            "another name",
        )
    return ext


def write(
    path: str | os.PathLike[str], magnitudes: np.ndarray, *, settings: Mapping[str, Any]
) -> Path:
    """Write magnitudes and their settings atomically; the format follows the extension.

    Parameters
    ----------
    path
        Target file: ``.npy``, ``.nii``, ``.nii.gz`` or ``.h5`` (case-insensitive). An existing
        file is replaced only once the new one is complete.
    magnitudes
        Real array ``(H, W)`` or ``(N, H, W)``, finite; stored as float32.
    settings
        What produced the result (method, weights, mask, seed, ...): a mapping that JSON can
        encode. NumPy scalars and arrays, paths, enums and dataclasses are converted.

    Returns
    -------
    Path
        The written file (for ``.npy`` the sidecar ``<name>.json`` is written too).

    Raises
    ------
    WriteError
        On an unsupported extension (the message lists the supported ones), magnitudes that
        are complex, empty, of another rank or not finite, settings JSON cannot encode, a
        missing folder, or any I/O error. The target is then left as it was.
    """
    path = Path(path)
    ext = check_target(path)
    array = _check_magnitudes(magnitudes, path)
    text = settings_json(settings, path)
    try:
        WRITERS[ext](path, array, text)
    except WriteError:
        raise
    except Exception as exc:
        raise WriteError(path, f"could not be written: {type(exc).__name__}: {exc}") from exc
    return path


def stored_settings(
    path: str | os.PathLike[str], record: KSpaceData | None = None
) -> dict[str, Any] | None:
    """The settings :func:`write` stored with ``path``, or ``None`` for a file without them.

    An HDF5 file is not opened here (HDF5 files are read in a child process,
    :func:`~napari_genreg.io.read_isolated`): its settings are taken from ``record``, the
    record read from it, or are ``None`` without one.
    """
    from .isolated import is_hdf5_path

    if is_hdf5_path(path):
        text = None if record is None else record.meta.extra.get("settings")
        try:
            settings = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            return None
    else:
        try:
            settings = read_settings(path)
        except ReadError:
            return None
    return settings if isinstance(settings, dict) else None


def read_settings(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings stored by :func:`write` in a ``.npy`` (sidecar), NIfTI or ``.h5`` file.

    Parameters
    ----------
    path
        A file written by :func:`write`.

    Returns
    -------
    dict

    Raises
    ------
    ReadError
        When the file or its settings are missing, unreadable or not a JSON object.
    """
    path = Path(path)
    ext = match_extension(path, WRITERS)
    if ext is None:
        raise ReadError(
            path, f"unsupported file type; supported: {', '.join(SUPPORTED_WRITE_EXTENSIONS)}"
        )
    if not path.exists():
        raise ReadError(path, "no such file")
    with parse_boundary(path, "the settings could not be read"):
        if ext == ".npy":
            sidecar = sidecar_path(path)
            if not sidecar.exists():
                raise ReadError(path, f"no settings sidecar {sidecar.name}")
            text = sidecar.read_text(encoding="utf-8")
        elif ext in (".nii", ".nii.gz"):
            text = _nifti_settings(path)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                if "settings" not in f.attrs:
                    raise ReadError(path, "the file has no 'settings' attribute")
                text = f.attrs["settings"]
            if isinstance(text, bytes):
                text = text.decode("utf-8")
        settings = json.loads(text)
        if not isinstance(settings, dict):
            kind = type(settings).__name__
            raise ReadError(path, f"the settings are a JSON {kind}, not an object")
        return settings


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar of a ``.npy`` file: ``recon.npy`` -> ``recon.json``."""
    return path.with_name(path.name[: -len(".npy")] + ".json")


def settings_json(settings: Mapping[str, Any], path: str | os.PathLike[str]) -> str:
    """Encode settings as JSON (sorted keys); :class:`WriteError` naming ``path`` if impossible."""
    if not isinstance(settings, Mapping):
        raise WriteError(path, f"settings must be a mapping, got {type(settings).__name__}")
    try:
        return json.dumps(dict(settings), sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise WriteError(path, f"the settings cannot be encoded as JSON: {exc}") from exc


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_magnitudes(magnitudes: np.ndarray, path: Path) -> np.ndarray:
    array = np.asarray(magnitudes)
    if array.dtype.names is not None or array.dtype.kind not in "iuf":
        hint = "; pass np.abs(x)" if array.dtype.kind == "c" else ""
        raise WriteError(path, f"magnitudes must be real numbers, got dtype {array.dtype}{hint}")
    if array.ndim not in (2, 3):
        raise WriteError(path, f"magnitudes must have shape (H, W) or (N, H, W), got {array.shape}")
    if array.size == 0:
        raise WriteError(path, f"magnitudes are empty, shape {array.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise WriteError(path, "magnitudes contain NaN or infinite values (in float32)")
    return array


# --------------------------------------------------------------------------------------------
# formats


def _write_npy(path: Path, array: np.ndarray, text: str) -> None:
    sidecar = sidecar_path(path)

    def fill_array(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, array, allow_pickle=False)

    def fill_sidecar(tmp: Path) -> None:
        tmp.write_text(text + "\n", encoding="utf-8")

    replace_atomically([(path, fill_array), (sidecar, fill_sidecar)])


def _write_nifti(path: Path, array: np.ndarray, text: str) -> None:
    import nibabel as nib

    slices = array if array.ndim == 3 else array[np.newaxis]
    # inverse of read_nifti's display convention: ras[c, Y-1-r, k] = slices[k, r, c]
    ras = np.ascontiguousarray(slices.transpose(2, 1, 0)[:, ::-1, :])
    image = nib.Nifti1Image(ras, affine=np.eye(4))
    image.header.set_data_dtype(np.float32)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = text[:NIFTI_DESCRIP_LENGTH].encode("ascii", "replace")
    image.header.extensions.append(
        nib.nifti1.Nifti1Extension(NIFTI_COMMENT_CODE, text.encode("utf-8"))
    )
    data = image.to_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    replace_atomically([(path, lambda tmp: tmp.write_bytes(data))])


def _write_h5(path: Path, array: np.ndarray, text: str) -> None:
    import h5py

    def fill(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(H5_DATASET, data=array)
            f.attrs["settings"] = text

    replace_atomically([(path, fill)])


def _nifti_settings(path: Path) -> str:
    from .images import load_nifti_image

    header = load_nifti_image(path).header
    for extension in header.extensions:
        if extension.get_code() == NIFTI_COMMENT_CODE:
            content = extension.get_content()
            return content.decode("utf-8") if isinstance(content, bytes) else str(content)
    descrip = bytes(header["descrip"]).decode("ascii", "replace").rstrip("\x00")
    if descrip.startswith("{"):
        return descrip  # short settings fit in descrip whole; json.loads judges
    raise ReadError(path, "the NIfTI header holds no settings (no comment extension)")


#: Extension -> writer ``(path, float32 array, settings JSON) -> None``.
WRITERS: dict[str, Callable[[Path, np.ndarray, str], None]] = {
    ".npy": _write_npy,
    ".nii": _write_nifti,
    ".nii.gz": _write_nifti,
    ".h5": _write_h5,
}
SUPPORTED_WRITE_EXTENSIONS: tuple[str, ...] = tuple(WRITERS)


# --------------------------------------------------------------------------------------------
# atomic replacement


def replace_atomically(targets: Sequence[tuple[Path, _Fill]]) -> None:
    """Write each target through a temporary file in its folder, then move them all in place.

    Each ``fill(tmp)`` writes the complete content to ``tmp`` (an empty file created for it).
    Only when every fill has succeeded and been flushed to disk are the temporary files moved
    over their targets with :func:`os.replace` (atomic on POSIX and Windows). On any failure
    the temporary files are removed and the targets are untouched.
    """
    temps: list[Path] = []
    try:
        for target, fill in targets:
            tmp = _reserve_temp(target)
            temps.append(tmp)
            fill(tmp)
            _fsync(tmp)
        for (target, _), tmp in zip(targets, temps, strict=True):
            os.replace(tmp, target)
        for folder in {target.parent for target, _ in targets}:
            _fsync_folder(folder)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _reserve_temp(target: Path) -> Path:
    """Create an empty, uniquely named hidden file next to ``target`` (mode 0666 & ~umask)."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)
    return tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
