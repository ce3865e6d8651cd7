"""Saving and loading VAE checkpoints: safetensors weights plus a plain JSON configuration.

A model directory holds two files:

* ``model.safetensors``: the ``state_dict`` of the :class:`~napari_genreg.models.vae.VAE`, float32,
  in the `safetensors <https://github.com/huggingface/safetensors>`_ format (a JSON header and raw
  little-endian arrays: loading it cannot execute code). Its header metadata repeats the model
  configuration.
* ``config.json``: everything needed to rebuild the model and to know where it came from:

  ``format``, ``format_version``
      ``"napari-genreg-vae"``, 1.
  ``model``
      :meth:`VAEConfig.to_dict <napari_genreg.models.vae.VAEConfig.to_dict>`: architecture,
      covariance kind, stencil, training image size, widths, latent channels, bounds.
  ``accepted_sizes``
      the rule for the image sizes the model takes, in words.
  ``weights``
      file name, SHA-256, size in bytes, number of parameters.
  ``data_manifest_sha256``, ``command``, ``metrics``, ``training``
      provenance: the hash of the training data's manifest, the training command, the metrics
      (validation bits per dimension per epoch ...) and the training settings.
  ``software``
      versions of napari-genreg, torch and safetensors; ``created``: the date.

:func:`load_model` trusts nothing in the directory: it reads the JSON (size-limited), refuses
unknown formats, versions and architectures, checks the weights' SHA-256 against the config,
parses them with safetensors (never pickle), checks that the configuration stored in the weights
equals ``config.json``'s, and compares every tensor's name, shape and dtype with the model it
built; non-finite weights are refused too. Every refusal is a :class:`CheckpointError` (a
``ValueError``) that says what is wrong.

Both files are written atomically (a temporary file in the same folder, flushed and
``os.replace``-d), the weights first and ``config.json`` last: a reader sees either the old or the
new version of each file, and an interruption between the two replacements leaves a pair whose
checksum disagrees, which :func:`load_model` refuses rather than loading a mixture.

Built-in models: ``load_model("builtin:structured")`` (or ``identity``, ``diagonal``) reads the
folder ``napari_genreg/models/builtin/<name>/`` shipped with the package.

Variational networks (:mod:`napari_genreg.models.vn`) use the same two files and the same checks
with the format ``"napari-genreg-vn"`` and a :class:`~napari_genreg.models.vn.VNConfig`:
:func:`save_vn` and :func:`load_vn` (``load_vn("builtin:vn")`` reads the shipped one). Each
loader refuses the other's directories with a message that says which loader to use;
:func:`model_format` tells them apart without loading anything.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_genreg.models.vae import VAE, VAEConfig
from napari_genreg.models.vn import VariationalNetwork, VNConfig

__all__ = [
    "BUILTIN_DIR",
    "BUILTIN_MODELS",
    "BUILTIN_PREFIX",
    "BUILTIN_VN_MODELS",
    "CONFIG_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "VN_FORMAT",
    "WEIGHTS_NAME",
    "CheckpointError",
    "ModelCard",
    "atomic_write",
    "load_model",
    "load_vn",
    "model_format",
    "resolve_model_dir",
    "save_model",
    "save_vn",
    "sha256_bytes",
    "weights_metadata",
]

FORMAT = "napari-genreg-vae"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
BUILTIN_PREFIX = "builtin:"
#: The folder of the models shipped with the package, one sub-folder per model.
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
#: The names accepted after ``builtin:``.
BUILTIN_MODELS = ("identity", "diagonal", "structured")
#: The format of variational-network checkpoints (:func:`save_vn`, :func:`load_vn`).
VN_FORMAT = "napari-genreg-vn"
#: The built-in variational networks, also accepted after ``builtin:``.
BUILTIN_VN_MODELS = ("vn",)

_MAX_CONFIG_BYTES = 1 << 20
_MAX_WEIGHTS_BYTES = 1 << 30
_METADATA_KEY = "napari_genreg"


class CheckpointError(ValueError):
    """A model directory that cannot be loaded: missing, tampered, mismatched or unknown."""


@dataclass(frozen=True)
class ModelCard:
    """What ``config.json`` says about a loaded model.

    Attributes
    ----------
    path
        the model directory.
    config
        the model configuration (also ``model.config``).
    weights_sha256
        SHA-256 of ``model.safetensors`` (verified).
    accepted_sizes
        the image-size rule, in words.
    data_manifest_sha256, command
        provenance of the training run (``None`` when not recorded).
    metrics, training, software
        the recorded metrics, training settings and software versions.
    """

    path: Path
    config: VAEConfig | VNConfig
    weights_sha256: str
    accepted_sizes: str
    data_manifest_sha256: str | None = None
    command: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    software: dict[str, Any] = field(default_factory=dict)


def sha256_bytes(data: bytes) -> str:
    """The hexadecimal SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a flushed temporary file, then ``os.replace``.

    A concurrent reader, or a reader after a crash, sees either the previous file or the new
    one, never a partial file.
    """
    path = Path(path)
    # mkstemp creates the file private (0600); give it the permissions a plain open() would.
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _software() -> dict[str, str]:
    import safetensors

    from napari_genreg import __version__

    return {
        "napari_genreg": __version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
    }


def weights_metadata(config: VAEConfig | VNConfig) -> dict[str, str]:
    """The safetensors header metadata of a model's weights: its format and configuration.

    One key only: safetensors stores the metadata as a hash map, whose order is not fixed, so a
    single entry keeps the file's bytes (and its SHA-256) reproducible.
    """
    fmt = VN_FORMAT if isinstance(config, VNConfig) else FORMAT
    record = {"format": fmt, "model": config.to_dict()}
    return {_METADATA_KEY: json.dumps(record, sort_keys=True)}


def save_model(
    model: VAE,
    config: VAEConfig,
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    data_manifest_hash: str | None = None,
    command: str | None = None,
    training: Mapping[str, Any] | None = None,
) -> str:
    """Write ``model.safetensors`` and ``config.json`` to ``out_dir`` (created if needed).

    Parameters
    ----------
    model
        the VAE (its weights are copied to the CPU as float32 tensors).
    config
        its configuration; must equal ``model.config``.
    out_dir
        the model directory.
    metrics
        JSON-serialisable metrics (validation bits per dimension, history, ...).
    data_manifest_hash
        SHA-256 of the training data's manifest.
    command
        the training command line.
    training
        JSON-serialisable training settings.

    Returns
    -------
    The SHA-256 of the weights file written.

    Raises
    ------
    ValueError
        If ``config`` is not the model's configuration or a weight is not finite.
    """
    return _save(
        model,
        config,
        out_dir,
        metrics=metrics,
        data_manifest_hash=data_manifest_hash,
        command=command,
        training=training,
    )


def save_vn(
    model: VariationalNetwork,
    config: VNConfig,
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None = None,
    data_manifest_hash: str | None = None,
    command: str | None = None,
    training: Mapping[str, Any] | None = None,
) -> str:
    """Write a variational network's ``model.safetensors`` and ``config.json`` to ``out_dir``.

    As :func:`save_model`, with the format :data:`VN_FORMAT`.

    Returns
    -------
    The SHA-256 of the weights file written.

    Raises
    ------
    ValueError
        If ``config`` is not the model's configuration or a weight is not finite.
    """
    return _save(
        model,
        config,
        out_dir,
        metrics=metrics,
        data_manifest_hash=data_manifest_hash,
        command=command,
        training=training,
    )


def _save(
    model: VAE | VariationalNetwork,
    config: VAEConfig | VNConfig,
    out_dir: str | os.PathLike[str],
    *,
    metrics: Mapping[str, Any] | None,
    data_manifest_hash: str | None,
    command: str | None,
    training: Mapping[str, Any] | None,
) -> str:
    if config != model.config:
        raise ValueError("config must be the configuration the model was built with")
    from safetensors.torch import save

    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu", torch.float32).contiguous()
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"refusing to save non-finite weights in tensor {name!r}")
        tensors[name] = tensor.clone()
    data = save(tensors, metadata=weights_metadata(config))
    digest = sha256_bytes(data)
    record = {
        "format": VN_FORMAT if isinstance(config, VNConfig) else FORMAT,
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "accepted_sizes": config.accepted_sizes(),
        "weights": {
            "file": WEIGHTS_NAME,
            "sha256": digest,
            "bytes": len(data),
            "num_parameters": model.num_parameters(),
            "dtype": "float32",
        },
        "data_manifest_sha256": data_manifest_hash,
        "command": command,
        "metrics": dict(metrics or {}),
        "training": dict(training or {}),
        "software": _software(),
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, data)
    atomic_write(out / CONFIG_NAME, text.encode("utf-8"))
    return digest


def resolve_model_dir(source: str | os.PathLike[str]) -> Path:
    """The directory of a model: ``builtin:<name>`` or a path (a directory or its config.json).

    Raises
    ------
    CheckpointError
        For an unknown built-in name.
    FileNotFoundError
        If the directory or its ``config.json`` does not exist (for a built-in model: it is not
        installed).
    """
    text = os.fspath(source)
    if isinstance(text, str) and text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS + BUILTIN_VN_MODELS:
            raise CheckpointError(
                f"unknown built-in model {name!r}; choose one of "
                + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS + BUILTIN_VN_MODELS)
            )
        path = BUILTIN_DIR / name
        if not (path / CONFIG_NAME).is_file():
            command = "train-vn" if name in BUILTIN_VN_MODELS else "train"
            raise FileNotFoundError(
                f"the built-in model {text!r} is not installed (expected {path / CONFIG_NAME}); "
                f"train one with `napari-genreg {command} ... --out DIR` and load it from DIR"
            )
        return path
    path = Path(text)
    if path.is_file() and path.name == CONFIG_NAME:
        path = path.parent
    if path.is_file():
        raise FileNotFoundError(
            f"the model {path} is a file: give its folder, the one holding {CONFIG_NAME}"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path} is not a model directory: it has no {CONFIG_NAME}")
    return path


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(f"{path}: the {what} is {size} bytes, more than the limit {limit}")
    return path.read_bytes()


_LOADERS = {
    FORMAT: "a VAE prior (load_model; for the vae-*, range and adapt methods)",
    VN_FORMAT: "a variational network (load_vn; for the vn method)",
}


def _read_config(path: Path, expected: str = FORMAT) -> dict[str, Any]:
    raw = _read_limited(path, _MAX_CONFIG_BYTES, "configuration")

    def refuse_constant(name: str) -> float:
        raise CheckpointError(f"{path}: non-standard JSON constant {name}")

    try:
        record = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a valid JSON configuration ({exc})") from exc
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: the configuration must be a JSON object")
    found = record.get("format")
    if found != expected and found in _LOADERS:
        raise CheckpointError(
            f"{path}: this is {_LOADERS[found]} (format {found!r}), not {_LOADERS[expected]} "
            f"(format {expected!r})"
        )
    if found != expected:
        raise CheckpointError(
            f"{path}: not a napari-genreg model (format {found!r}, expected {expected!r})"
        )
    version = record.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported format version {version!r}; this version of napari-genreg "
            f"reads version {FORMAT_VERSION}"
        )
    return record


def _check_tensors(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], where: Path
) -> None:
    expected = model.state_dict()
    for name in expected:
        if name not in tensors:
            raise CheckpointError(f"{where}: tensor {name!r} is missing from the weights file")
    for name in tensors:
        if name not in expected:
            raise CheckpointError(f"{where}: unexpected tensor {name!r} in the weights file")
    for name, want in expected.items():  # in the model's order: the first mismatch is reported
        tensor = tensors[name]
        if tuple(tensor.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {tuple(tensor.shape)}, but the model built "
                f"from {CONFIG_NAME} expects {tuple(want.shape)}"
            )
        if tensor.dtype != want.dtype:
            raise CheckpointError(
                f"{where}: tensor {name!r} has dtype {tensor.dtype}, expected {want.dtype}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{where}: tensor {name!r} holds NaN or infinite values")


def load_model(
    source: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[VAE, ModelCard]:
    """Load a model directory written by :func:`save_model`, verifying everything first.

    Parameters
    ----------
    source
        a model directory (or its ``config.json``), or ``builtin:<name>`` with ``<name>`` in
        :data:`BUILTIN_MODELS`.
    device
        where to put the model.

    Returns
    -------
    ``(model, card)``: the VAE in eval mode on ``device``, and what its config says.

    Raises
    ------
    CheckpointError
        (a ``ValueError``) for an unknown format, version or architecture, a weights file whose
        SHA-256 differs from the recorded one ("checksum"), a file that is not safetensors, a
        configuration that differs from the one stored with the weights, a tensor of the wrong
        name, shape or dtype, or non-finite weights.
    FileNotFoundError
        If the directory, its config or its weights are missing.
    """
    return _load(source, device, FORMAT, VAEConfig, VAE)  # type: ignore[return-value]


def load_vn(
    source: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[VariationalNetwork, ModelCard]:
    """Load a variational network written by :func:`save_vn`, verifying everything first.

    Parameters
    ----------
    source
        a model directory (or its ``config.json``), or ``builtin:vn``.
    device
        where to put the model.

    Returns
    -------
    ``(model, card)``: the network in eval mode on ``device``, and what its config says.

    Raises
    ------
    CheckpointError
        As :func:`load_model` (a VAE directory is refused with a message saying so).
    FileNotFoundError
        If the directory, its config or its weights are missing.
    """
    return _load(source, device, VN_FORMAT, VNConfig, VariationalNetwork)  # type: ignore[return-value]


def model_format(source: str | os.PathLike[str]) -> str:
    """The ``format`` a model directory's ``config.json`` declares (:data:`FORMAT` for VAE
    priors, :data:`VN_FORMAT` for variational networks); nothing else is checked or loaded.

    Raises
    ------
    CheckpointError
        If the configuration is not a JSON object with a string ``format``.
    FileNotFoundError
        If the directory or its ``config.json`` does not exist.
    """
    path = resolve_model_dir(source) / CONFIG_NAME
    try:
        record = json.loads(_read_limited(path, _MAX_CONFIG_BYTES, "configuration"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a valid JSON configuration ({exc})") from exc
    found = record.get("format") if isinstance(record, dict) else None
    if not isinstance(found, str):
        raise CheckpointError(f"{path}: the configuration declares no format")
    return found


def _load(
    source: str | os.PathLike[str],
    device: str | torch.device,
    fmt: str,
    config_type: type[VAEConfig] | type[VNConfig],
    model_type: type[VAE] | type[VariationalNetwork],
) -> tuple[torch.nn.Module, ModelCard]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = resolve_model_dir(source)
    config_path = directory / CONFIG_NAME
    record = _read_config(config_path, fmt)
    try:
        config = config_type.from_dict(record.get("model"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from exc
    weights = record.get("weights")
    if not isinstance(weights, dict) or weights.get("file") != WEIGHTS_NAME:
        raise CheckpointError(f"{config_path}: 'weights.file' must be {WEIGHTS_NAME!r}")
    recorded = weights.get("sha256")
    if not isinstance(recorded, str) or not re.fullmatch(r"[0-9a-f]{64}", recorded):
        raise CheckpointError(f"{config_path}: 'weights.sha256' is not a SHA-256 hex digest")
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{directory}: the weights file {WEIGHTS_NAME} is missing")
    data = _read_limited(weights_path, _MAX_WEIGHTS_BYTES, "weights file")
    digest = sha256_bytes(data)
    if digest != recorded:
        raise CheckpointError(
            f"{weights_path}: checksum mismatch (SHA-256 {digest}, {CONFIG_NAME} records "
            f"{recorded}): the weights were modified, corrupted, or written by an interrupted "
            "save; refusing to load them"
        )
    try:
        tensors = load(data)
        metadata = _metadata(data)
    except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path}: not a valid safetensors file ({exc})") from exc
    if metadata.get(_METADATA_KEY) != weights_metadata(config)[_METADATA_KEY]:
        raise CheckpointError(
            f"{config_path}: the model configuration does not match the one stored with the "
            f"weights in {WEIGHTS_NAME} (was {CONFIG_NAME} edited?)"
        )
    model = model_type(config)  # type: ignore[arg-type]
    _check_tensors(model, tensors, weights_path)
    model.load_state_dict(tensors, strict=True)
    model.to(device)
    model.eval()
    card = ModelCard(
        path=directory,
        config=config,
        weights_sha256=digest,
        accepted_sizes=str(record.get("accepted_sizes", config.accepted_sizes())),
        data_manifest_sha256=record.get("data_manifest_sha256"),
        command=record.get("command"),
        metrics=dict(record.get("metrics") or {}),
        training=dict(record.get("training") or {}),
        software=dict(record.get("software") or {}),
    )
    return model, card


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (its JSON header, already validated)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length].decode("utf-8"))
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("the safetensors metadata is not an object")
    return {str(k): str(v) for k, v in metadata.items()}
