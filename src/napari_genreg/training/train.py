r"""Training the VAE: a generator of epoch states, staged like Dorta et al., seeded, resumable, DDP.

``napari-genreg train --data DIR --covariance identity|diagonal|structured [--stencil 5]
[--size 128] [--epochs N] [--stage-epochs K] [--batch-size B] [--kl-weight BETA] [--lr LR]
[--seed S] [--device auto] [--workers W] [--resume] [--init-from MODEL_DIR] --out MODEL_DIR``

:func:`train` is a generator: it yields one frozen :class:`EpochState` per epoch (after that
epoch's checkpoint is on disk), so the command line (:func:`run_train`, with a tqdm bar), a GUI
worker and the tests drive the same loop, and stopping early is just not asking for the next
epoch.

Stages (:mod:`napari_genreg.training.losses`)
    Epochs ``1..K`` (``K = --stage-epochs``, default two thirds of ``--epochs``) train the encoder
    and the mean with a learned identity covariance, loss ``(NLL + beta KL) / N``; epochs
    ``K+1..N`` freeze them and train the covariance head by its Gaussian NLL. A fresh Adam
    optimiser (constant learning rate) starts with each stage. ``--init-from MODEL_DIR`` takes
    stage 1 from a trained model instead (``K`` defaults to 0 then): the three heads of a family
    can share one stage 1, trained once (for example as the ``identity`` model).
Validation
    After every epoch: the negative ELBO (``beta = 1``, one latent sample with noise fixed per
    validation image, so the figure does not depend on batch size or process count) of the
    validation split in bits per dimension (an upper bound on ``-log2 p(x) / N``; continuous
    density on the [0, 1] scale, no 8-bit discretisation term), with the stage's covariance.
Checkpoints
    After every epoch rank 0 writes ``MODEL_DIR/model.safetensors`` and ``config.json``
    (:func:`napari_genreg.models.checkpoint.save_model`: a loadable model at every epoch, with the
    metrics history), then ``training_state.safetensors`` (the Adam moments and step counts, by
    parameter name) and ``training_state.json`` (epoch, stage, settings, the weights' SHA-256).
    Each file is replaced atomically. No file is a pickle. ``--resume`` continues after the last
    complete epoch, refusing a state that does not match the weights or the settings.
Randomness
    Only explicit ``torch.Generator`` objects, seeded from ``--seed`` and a label: initial weights;
    shuffling (per epoch); augmentation (per epoch and item, in the dataset); latent noise (per
    epoch and item, :func:`latent_noise`; per item for validation). A resumed run reproduces the
    uninterrupted one exactly, and the global RNG is neither used nor changed. What an image sees
    does not depend on the batch it lands in, so ``P`` processes with batch ``B`` follow the
    single-process run with batch ``P B`` up to rounding. Bit-for-bit reproducibility holds on
    the CPU with the same threads and processes; CUDA convolutions are not deterministic by
    default.
Distributed training
    Under ``torchrun --nproc_per_node P`` (detected from ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``)
    the same command runs with PyTorch's ``DistributedDataParallel``: the gloo backend on the CPU,
    NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``). A ``DistributedSampler`` shards each
    epoch; ``--batch-size`` is per process (the effective batch is ``P`` times larger); losses and
    validation sums are all-reduced; only rank 0 writes files and prints. Every rank reads the
    checkpoint on ``--resume`` (a shared file system is assumed across nodes).

Data
    :func:`open_data` is the one place that knows the prepared-data folder
    (:func:`napari_genreg.training.data.prepare_dataset`: ``train.npy``, ``val.npy``,
    ``manifest.json``, whose SHA-256 goes into the model's config): a
    :class:`~napari_genreg.training.data.SliceDataset` per split, items float32 ``(1, S, S)`` in
    [0, 1]; the training split is augmented, seeded per item by ``(--seed, epoch, index)``, so the
    result does not depend on ``--workers``.

Examples
--------
>>> config = TrainConfig(data="prepared", out="models/structured", covariance="structured")
>>> for state in train(config):  # doctest: +SKIP
...     print(state.epoch, state.stage, state.val_bits_per_dim)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: the CLI builds its parser without it
    import torch
    from torch.utils.data import Dataset

    from napari_genreg.models.vae import VAE, VAEConfig

__all__ = [
    "BITS_CONVENTION",
    "STATE_JSON_NAME",
    "STATE_WEIGHTS_NAME",
    "EpochState",
    "PreparedData",
    "TrainConfig",
    "add_train_arguments",
    "config_from_args",
    "derived_seed",
    "latent_noise",
    "main",
    "open_data",
    "run_train",
    "train",
]

STATE_WEIGHTS_NAME = "training_state.safetensors"
STATE_JSON_NAME = "training_state.json"
_STATE_FORMAT = "napari-genreg-training-state"
_STATE_VERSION = 1
_COVARIANCES = ("identity", "diagonal", "structured")
#: Settings that must be equal for ``--resume`` (the others may change between runs).
_RESUME_KEYS = (
    "covariance",
    "stencil",
    "size",
    "epochs",
    "mean_epochs",
    "init_from",
    "batch_size",
    "lr",
    "kl_weight",
    "seed",
    "base_channels",
    "latent_channels",
    "off_diagonal_bound",
)
BITS_CONVENTION = (
    "negative ELBO (KL weight 1, one latent sample) / (N ln 2): an upper bound on -log2 p(x) per "
    "pixel, continuous density of images on the [0, 1] scale, no discretisation term (add 8 to "
    "compare with 8-bit benchmarks)"
)


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def _int_in(value: object, name: str, low: int, high: int | None = None) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):  # type: ignore[operator]
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one training run (the flags of ``napari-genreg train``).

    Parameters
    ----------
    data
        the prepared-data folder (``train.npy``, ``val.npy``, ``manifest.json``).
    out
        the model directory: checkpoints and the final model.
    covariance
        ``"identity"``, ``"diagonal"`` or ``"structured"``.
    stencil
        3, 5 or 7: the structured head's stencil.
    off_diagonal_bound
        the structured head's bound on each row's off-diagonal magnitudes, relative to its
        diagonal (:class:`~napari_genreg.models.vae.VAEConfig`; below 1 the factor is diagonally
        dominant).
    size
        the image side the data were prepared at (and the model's ``image_size``).
    epochs
        total epochs, both stages.
    stage_epochs
        epochs of stage 1 (encoder and mean); ``None``: ``round(2 epochs / 3)``, at least 1 and
        leaving at least one covariance epoch (0 with ``init_from``). The rest train the
        covariance head.
    batch_size
        images per optimisation step and process.
    lr
        Adam's learning rate, both stages.
    kl_weight
        :math:`\\beta` of the KL term in stage 1.
    seed
        seeds every generator of the run.
    device
        ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    workers
        ``DataLoader`` worker processes (0: load in the training process).
    resume
        continue the run in ``out`` after its last complete epoch.
    init_from
        a trained model directory (any covariance head, same architecture and image size) whose
        encoder, trunk, mean and identity scale start this run; stage 1 is then skipped unless
        ``stage_epochs`` says otherwise. Trains the three heads of a family on one shared
        stage 1, at a third of the cost.
    base_channels, latent_channels
        model width and latent channels (:class:`~napari_genreg.models.vae.VAEConfig`).
    command
        the command line recorded in the checkpoint; default :meth:`command_line`.
    """

    data: Path
    out: Path
    covariance: str = "structured"
    stencil: int = 5
    off_diagonal_bound: float = 0.9
    size: int = 128
    epochs: int = 30
    stage_epochs: int | None = None
    batch_size: int = 16
    lr: float = 1e-3
    kl_weight: float = 1.0
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    resume: bool = False
    init_from: Path | None = None
    base_channels: int = 16
    latent_channels: int = 4
    command: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.init_from is not None:
            object.__setattr__(self, "init_from", Path(self.init_from))
        if self.covariance not in _COVARIANCES:
            raise ValueError(
                f"covariance must be one of {', '.join(_COVARIANCES)}, got {self.covariance!r}"
            )
        if self.stencil not in (3, 5, 7) or isinstance(self.stencil, bool):
            raise ValueError(f"stencil must be 3, 5 or 7, got {self.stencil!r}")
        _int_in(self.size, "size", 8)
        _int_in(self.epochs, "epochs", 1)
        _int_in(self.batch_size, "batch_size", 1)
        _int_in(self.seed, "seed", 0)
        _int_in(self.workers, "workers", 0, 64)
        if self.stage_epochs is not None:
            low = 0 if self.init_from is not None else 1
            _int_in(self.stage_epochs, "stage_epochs", low, self.epochs)
        for name, low in (("lr", "a positive"), ("kl_weight", "a non-negative")):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (value > 0 if name == "lr" else value >= 0)
            ):
                raise ValueError(f"{name} must be {low} number, got {value!r}")
        if self.covariance != "identity" and self.mean_epochs >= self.epochs:
            raise ValueError(
                f"a {self.covariance} model needs at least one epoch for its covariance head: "
                f"epochs ({self.epochs}) must exceed the stage-1 epochs ({self.mean_epochs})"
            )
        self.vae_config()  # validates the model settings (size divisible by 8, ...)

    @property
    def mean_epochs(self) -> int:
        """Epochs of stage 1 (encoder and mean), resolved from ``stage_epochs``."""
        if self.stage_epochs is not None:
            return self.stage_epochs
        if self.init_from is not None:
            return 0
        return max(1, min(self.epochs - 1, round(2 * self.epochs / 3)))

    def stage_of(self, epoch: int) -> int:
        """The stage (1 or 2) of the 1-based ``epoch``."""
        return 1 if epoch <= self.mean_epochs else 2

    def vae_config(self) -> VAEConfig:
        """The model configuration this run trains."""
        from napari_genreg.models.vae import VAEConfig

        return VAEConfig(
            covariance=self.covariance,
            stencil=self.stencil,
            image_size=self.size,
            base_channels=self.base_channels,
            latent_channels=self.latent_channels,
            off_diagonal_bound=self.off_diagonal_bound,
        )

    def command_line(self, world_size: int = 1) -> str:
        """The full command that repeats this run from scratch (every flag spelled out).

        ``napari-genreg train ...``; with ``world_size > 1``, ``torchrun --nproc_per_node=P -m
        napari_genreg.training.train ...``. Non-default model widths have no flag and are noted
        in a trailing comment.
        """
        if world_size > 1:
            words = [
                "torchrun",
                f"--nproc_per_node={world_size}",
                "-m",
                "napari_genreg.training.train",
            ]
        else:
            words = ["napari-genreg", "train"]
        flags = {
            "--data": self.data,
            "--covariance": self.covariance,
            "--stencil": self.stencil,
            "--off-diagonal-bound": self.off_diagonal_bound,
            "--size": self.size,
            "--epochs": self.epochs,
            "--stage-epochs": self.mean_epochs,
            "--batch-size": self.batch_size,
            "--kl-weight": self.kl_weight,
            "--lr": self.lr,
            "--seed": self.seed,
            "--device": self.device,
            "--workers": self.workers,
        }
        if self.init_from is not None:
            flags["--init-from"] = self.init_from
        flags["--out"] = self.out
        for flag, value in flags.items():
            words += [flag, str(value)]
        text = shlex.join(words)
        defaults = TrainConfig(data=".", out=".")
        widths = ("base_channels", "latent_channels")
        if any(getattr(self, k) != getattr(defaults, k) for k in widths):
            text += "  # " + ", ".join(f"{k}={getattr(self, k)}" for k in widths)
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, with the resolved ``mean_epochs``."""
        record = asdict(self)
        record["data"] = str(self.data)
        record["out"] = str(self.out)
        record["init_from"] = None if self.init_from is None else str(self.init_from)
        record["mean_epochs"] = self.mean_epochs
        return record


@dataclass(frozen=True)
class EpochState:
    """What :func:`train` yields after each epoch (its checkpoint already written).

    Attributes
    ----------
    epoch
        1-based epoch number (of ``TrainConfig.epochs``).
    stage
        1 (encoder and mean) or 2 (covariance head).
    train_loss
        the stage's training objective in nats per pixel, averaged over the epoch's images
        (all processes); stage 1 includes ``kl_weight`` times the KL term.
    val_bits_per_dim
        the validation negative ELBO in bits per pixel (see :data:`BITS_CONVENTION`).
    seconds
        wall time of the epoch: training and validation.
    images_per_second
        training images per second over all processes.
    """

    epoch: int
    stage: int
    train_loss: float
    val_bits_per_dim: float
    seconds: float
    images_per_second: float


# --------------------------------------------------------------------------------------------
# Data: the one coupling to the prepared-data folder
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    """The datasets of a prepared-data folder.

    Attributes
    ----------
    train, val
        ``Dataset`` objects whose items are float32 tensors ``(1, S, S)`` in [0, 1].
    image_size
        ``S``.
    manifest_sha256
        SHA-256 of the file ``manifest.json`` (which records the SHA-256 of each array).
    """

    train: Dataset
    val: Dataset
    image_size: int
    manifest_sha256: str


def open_data(folder: str | os.PathLike[str], seed: int) -> PreparedData:
    """Open the training and validation splits of a prepared-data folder.

    The training split is augmented (the default
    :class:`~napari_genreg.training.data.Augmentation`, seeded per item by ``(seed, epoch,
    index)``: the loop calls ``set_epoch`` before each epoch); the validation split is not.

    Parameters
    ----------
    folder
        written by :func:`napari_genreg.training.data.prepare_dataset`: ``train.npy``,
        ``val.npy`` and ``manifest.json``.
    seed
        the seed of the training split's augmentation.

    Raises
    ------
    FileNotFoundError
        If the folder has no manifest (not prepared, or preparation did not finish).
    ValueError
        If the manifest or the arrays are not readable, an array is not the one the manifest
        describes (its SHA-256), or a split is empty.
    """
    from napari_genreg.training.data import MANIFEST_NAME, SliceDataset, verify_split
    from napari_genreg.training.sources import file_sha256

    folder = Path(folder)
    train_set = SliceDataset(folder, "train", seed=seed)
    val_set = SliceDataset(folder, "val", augment=False)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(
            f"{folder}: training needs both splits; it has {len(train_set)} training and "
            f"{len(val_set)} validation slices"
        )
    for split in ("train", "val"):
        verify_split(folder, train_set.manifest, split)
    digest = file_sha256(folder / MANIFEST_NAME)
    return PreparedData(train_set, val_set, train_set.manifest.size, digest)


# --------------------------------------------------------------------------------------------
# Processes and devices
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Processes:
    world_size: int
    rank: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _resolve_device(name: str, local_rank: int, distributed: bool) -> torch.device:
    import torch

    name = name.lower()
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "cpu"
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda, cuda:N or mps")
    if (kind == "cuda" and not cuda) or (kind == "mps" and not mps):
        raise ValueError(f"device {name!r} is not available on this machine")
    if distributed and kind == "mps":
        raise ValueError("distributed training runs on the CPU (gloo) or CUDA (NCCL), not mps")
    if kind == "cuda" and distributed:
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _start_processes(device: str) -> _Processes:
    """Read torchrun's environment; join the process group when there are several processes."""
    import torch

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = _resolve_device(device, local_rank, world_size > 1)
    if world_size > 1:
        import torch.distributed as dist

        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return _Processes(world_size, rank, local_rank, resolved)


def _stop_processes(processes: _Processes) -> None:
    if processes.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _all_reduce_sum(values: list[float], processes: _Processes) -> list[float]:
    import torch

    if not processes.distributed:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=processes.device)
    dist.all_reduce(t)
    return [float(v) for v in t.cpu()]


def _barrier(processes: _Processes) -> None:
    if processes.distributed:
        import torch.distributed as dist

        dist.barrier()


def derived_seed(seed: int, *labels: object) -> int:
    """A 63-bit seed derived from ``seed`` and labels (SHA-256): independent streams per purpose."""
    text = ":".join(str(part) for part in (seed, *labels))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _generator(seed: int, *labels: object) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(derived_seed(seed, *labels))


# --------------------------------------------------------------------------------------------
# Training state (optimiser) on disk
# --------------------------------------------------------------------------------------------


def _save_state(
    out: Path,
    optimizer: torch.optim.Optimizer,
    names: list[str],
    *,
    epoch: int,
    stage: int,
    weights_sha256: str,
    settings: dict[str, Any],
    world_size: int,
) -> None:
    from safetensors.torch import save

    from napari_genreg.models.checkpoint import atomic_write

    tensors = {}
    state = optimizer.state_dict()["state"]
    for index, name in enumerate(names):
        for key, value in state.get(index, {}).items():
            tensors[f"{name}/{key}"] = value.detach().cpu().contiguous().clone()
    atomic_write(out / STATE_WEIGHTS_NAME, save(tensors, metadata={"format": _STATE_FORMAT}))
    record = {
        "format": _STATE_FORMAT,
        "format_version": _STATE_VERSION,
        "epoch": epoch,
        "stage": stage,
        "optimizer": "Adam",
        "parameters": names,
        "weights_sha256": weights_sha256,
        "world_size": world_size,
        "settings": settings,
    }
    atomic_write(out / STATE_JSON_NAME, (json.dumps(record, indent=2) + "\n").encode())


def _read_state(out: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        record = json.loads((out / STATE_JSON_NAME).read_text())
        tensors = load((out / STATE_WEIGHTS_NAME).read_bytes())
    except FileNotFoundError as exc:
        raise ValueError(f"cannot resume from {out}: {exc.filename} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError) as exc:
        raise ValueError(f"cannot resume from {out}: unreadable training state ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != _STATE_FORMAT:
        raise ValueError(f"cannot resume from {out}: {STATE_JSON_NAME} is not a training state")
    if record.get("format_version") != _STATE_VERSION:
        raise ValueError(
            f"cannot resume from {out}: training-state version {record.get('format_version')!r}"
        )
    return record, tensors


def _load_optimizer(
    optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for index, name in enumerate(names):
        entries = {
            key.split("/", 1)[1]: value
            for key, value in tensors.items()
            if key.split("/", 1)[0] == name
        }
        if entries:
            state[index] = entries
    known = set(names)
    stray = sorted({key.split("/", 1)[0] for key in tensors} - known)
    if stray:
        raise ValueError(f"the saved optimiser state names unknown parameters: {stray[:3]}")
    param_groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class _Indexed:
    """A dataset's items with their indices: ``(index, item)``, so the noise can follow the item."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, self.dataset[index]


def latent_noise(
    seed: int, label: object, indices: Sequence[int], shape: tuple[int, ...]
) -> torch.Tensor:
    """Standard normal latent noise for the items ``indices``, one seeded stream per item.

    Item ``i`` gets ``randn(shape)`` from a generator seeded with
    ``derived_seed(seed, "noise", label, i)``: the noise an image sees does not depend on the
    batch it lands in, on the batch size or on the number of processes. ``label`` is the epoch
    for training and ``"validation"`` for the validation split.

    Returns
    -------
    tensor ``(len(indices), *shape)``, float32 on the CPU.
    """
    import torch

    generator = torch.Generator()
    out = torch.empty((len(indices), *shape))
    for k, index in enumerate(indices):
        generator.manual_seed(derived_seed(seed, "noise", label, int(index)))
        out[k] = torch.randn(shape, generator=generator)
    return out


@dataclass
class _Stage:
    number: int
    names: list[str]
    optimizer: torch.optim.Optimizer
    module: torch.nn.Module  # the model, or its DDP wrapper


def _begin_stage(model: VAE, stage: int, lr: float, processes: _Processes) -> _Stage:
    import torch

    from napari_genreg.training.losses import set_stage

    chosen = set_stage(model, stage)
    optimizer = torch.optim.Adam([p for _, p in chosen], lr=lr)
    module: torch.nn.Module = model
    if processes.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [processes.device.index] if processes.device.type == "cuda" else None
        module = DistributedDataParallel(model, device_ids=ids)
    return _Stage(stage, [n for n, _ in chosen], optimizer, module)


def _train_epoch(
    stage: _Stage,
    model: VAE,
    data: PreparedData,
    config: TrainConfig,
    epoch: int,
    processes: _Processes,
) -> tuple[float, int, float]:
    """One pass over the training split; returns (mean loss, images over all ranks, seconds)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from napari_genreg.training.losses import stage_loss

    sampler = DistributedSampler(
        data.train,
        num_replicas=processes.world_size,
        rank=processes.rank,
        shuffle=True,
        seed=derived_seed(config.seed, "shuffle") % (1 << 31),
    )
    sampler.set_epoch(epoch)
    data.train.set_epoch(epoch)  # the augmentation of this epoch
    loader = DataLoader(
        _Indexed(data.train),
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        pin_memory=processes.device.type == "cuda",
        # the loader draws its workers' base seed from this, not from the global RNG
        generator=_generator(config.seed, "loader", epoch, processes.rank),
    )
    head = "identity" if stage.number == 1 else "configured"
    latent = model.latent_shape((data.image_size, data.image_size))
    model.train()
    total, count = 0.0, 0
    start = time.perf_counter()
    for indices, batch in loader:
        x = batch.to(processes.device, non_blocking=True)
        eps = latent_noise(config.seed, epoch, indices.tolist(), latent)
        output = stage.module(x, eps.to(processes.device), head)
        loss = stage_loss(x, output, stage.number, config.kl_weight)
        stage.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stage.optimizer.step()
        total += float(loss.detach()) * x.shape[0]
        count += x.shape[0]
    seconds = time.perf_counter() - start
    total, count_all = _all_reduce_sum([total, float(count)], processes)
    if not math.isfinite(total) or count_all == 0:
        raise FloatingPointError(f"the training loss of epoch {epoch} is not finite")
    return total / count_all, int(count_all), seconds


def _validate(
    model: VAE, data: PreparedData, config: TrainConfig, stage: int, processes: _Processes
) -> float:
    """Negative ELBO of the validation split in bits per pixel (the stage's covariance)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from napari_genreg.training.losses import bits_per_dim, elbo_terms

    latent = model.latent_shape((data.image_size, data.image_size))
    indices = list(range(processes.rank, len(data.val), processes.world_size))
    loader = DataLoader(
        Subset(_Indexed(data.val), indices),
        batch_size=config.batch_size,
        generator=_generator(config.seed, "loader", "validation"),
    )
    head = "identity" if stage == 1 else "configured"
    model.eval()
    total = 0.0
    with torch.no_grad():
        for items, batch in loader:
            x = batch.to(processes.device)
            eps = latent_noise(config.seed, "validation", items.tolist(), latent)
            eps = eps.to(processes.device)
            terms = elbo_terms(x, model(x, eps, head))
            pixels = x.shape[-2] * x.shape[-1]
            total += float(bits_per_dim(terms.negative_elbo(1.0), pixels).sum())
    total, count = _all_reduce_sum([total, float(len(indices))], processes)
    return total / count


def _initialise_from(model: VAE, source: Path) -> dict[str, Any]:
    """Copy everything but the covariance head from the model in ``source``; return provenance."""
    from dataclasses import replace

    from napari_genreg.models.checkpoint import load_model

    donor, card = load_model(source)
    own = model.config
    head_settings = {
        "covariance": own.covariance,
        "stencil": own.stencil,
        "off_diagonal_bound": own.off_diagonal_bound,
    }
    if replace(card.config, **head_settings) != own:
        raise ValueError(
            f"--init-from {source}: its architecture differs from this run's ({card.config} vs "
            f"{own}); only the covariance head (kind, stencil, off-diagonal bound) may differ"
        )
    head = "decoder.covariance_head."
    tensors = {k: v for k, v in donor.state_dict().items() if not k.startswith(head)}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(not k.startswith(head) for k in missing):
        raise ValueError(f"--init-from {source}: the weights do not fit ({missing}, {unexpected})")
    return {
        "path": str(source),
        "weights_sha256": card.weights_sha256,
        "covariance": card.config.covariance,
        "data_manifest_sha256": card.data_manifest_sha256,
        "val_bits_per_dim": card.metrics.get("val_bits_per_dim"),
    }


def _check_resume(config: TrainConfig, record: dict[str, Any], world_size: int) -> None:
    # runs saved before the bound was a setting had the default
    saved = {"off_diagonal_bound": 0.9, **(record.get("settings") or {})}
    current = config.to_dict()
    differ = [k for k in _RESUME_KEYS if saved.get(k) != current.get(k)]
    if differ:
        details = ", ".join(f"{k}: saved {saved.get(k)!r}, now {current.get(k)!r}" for k in differ)
        raise ValueError(f"--resume needs the settings of the saved run; these differ: {details}")
    if record.get("world_size") != world_size:
        raise ValueError(
            f"--resume needs the same number of processes as the saved run "
            f"({record.get('world_size')}), got {world_size}"
        )


def train(config: TrainConfig) -> Iterator[EpochState]:
    """Train a VAE, yielding an :class:`EpochState` after each epoch's checkpoint.

    Parameters
    ----------
    config
        the run's settings. Under ``torchrun`` every process calls this with the same config.

    Yields
    ------
    EpochState
        one per epoch, from the first epoch not yet done (after ``--resume``) to the last.

    Raises
    ------
    ValueError
        If ``config.out`` already holds a model and ``resume`` is not set; if the data do not
        match ``size``; if a resumed state does not match the weights or the settings.
    FileNotFoundError
        If the data folder has no manifest (it was not prepared, or preparation did not finish).
    """
    processes = _start_processes(config.device)
    try:
        yield from _run(config, processes)
    finally:
        _stop_processes(processes)


def _run(config: TrainConfig, processes: _Processes) -> Iterator[EpochState]:
    from napari_genreg.models.checkpoint import CONFIG_NAME, load_model, save_model
    from napari_genreg.models.vae import VAE

    data = open_data(config.data, config.seed)
    if data.image_size != config.size:
        raise ValueError(
            f"the data in {config.data} are {data.image_size} x {data.image_size}, but --size is "
            f"{config.size}: prepare the data at the training size"
        )
    if len(data.train) < processes.world_size:
        raise ValueError("fewer training images than processes")
    vae_config = config.vae_config()
    model = VAE(vae_config, generator=_generator(config.seed, "init"))
    settings = config.to_dict()
    history: list[dict[str, Any]] = []
    initialised: dict[str, Any] | None = None
    done, saved_stage, saved_tensors, saved_names = 0, 0, None, None
    existing = (config.out / CONFIG_NAME).is_file()
    if existing and not config.resume:
        raise ValueError(
            f"{config.out} already holds a model; pass --resume to continue its training or "
            "choose another --out"
        )
    if existing:
        loaded, card = load_model(config.out)
        if card.config != vae_config:
            raise ValueError(f"--resume: the model in {config.out} has another configuration")
        record, saved_tensors = _read_state(config.out)
        if record.get("weights_sha256") != card.weights_sha256:
            raise ValueError(
                f"--resume: the training state in {config.out} does not belong to its weights "
                "(the run was interrupted while writing a checkpoint); start again"
            )
        if card.data_manifest_sha256 != data.manifest_sha256:
            raise ValueError(f"--resume: the data in {config.data} differ from the saved run's")
        _check_resume(config, record, processes.world_size)
        model.load_state_dict(loaded.state_dict())
        done, saved_stage = int(record["epoch"]), int(record["stage"])
        saved_names = list(record.get("parameters") or [])
        history = list(card.metrics.get("history") or [])[:done]
        initialised = card.training.get("initialised_from")
        del loaded
    elif config.init_from is not None:
        initialised = _initialise_from(model, config.init_from)
    model.to(processes.device)
    if processes.main:
        config.out.mkdir(parents=True, exist_ok=True)
    stage: _Stage | None = None
    for epoch in range(done + 1, config.epochs + 1):
        number = config.stage_of(epoch)
        if stage is None or stage.number != number:
            stage = _begin_stage(model, number, config.lr, processes)
            if saved_tensors is not None and number == saved_stage:
                if saved_names != stage.names:
                    raise ValueError("--resume: the saved optimiser state has other parameters")
                _load_optimizer(stage.optimizer, stage.names, saved_tensors)
            saved_tensors = None
        start = time.perf_counter()
        loss, images, train_seconds = _train_epoch(stage, model, data, config, epoch, processes)
        val_bits = _validate(model, data, config, number, processes)
        state = EpochState(
            epoch=epoch,
            stage=number,
            train_loss=loss,
            val_bits_per_dim=val_bits,
            seconds=time.perf_counter() - start,
            images_per_second=images / max(train_seconds, 1e-9),
        )
        history.append(asdict(state))
        if processes.main:
            metrics = {
                "epochs_completed": epoch,
                "stage": number,
                "val_bits_per_dim": val_bits,
                "bits_per_dim_convention": BITS_CONVENTION,
                "history": history,
            }
            digest = save_model(
                model,
                vae_config,
                config.out,
                metrics=metrics,
                data_manifest_hash=data.manifest_sha256,
                command=config.command or config.command_line(processes.world_size),
                training={
                    **settings,
                    "world_size": processes.world_size,
                    "initialised_from": initialised,
                },
            )
            _save_state(
                config.out,
                stage.optimizer,
                stage.names,
                epoch=epoch,
                stage=number,
                weights_sha256=digest,
                settings=settings,
                world_size=processes.world_size,
            )
        _barrier(processes)
        yield state


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``napari-genreg train`` to ``parser`` (imports nothing heavy)."""
    parser.add_argument("--data", required=True, help="prepared-data folder (train.npy, val.npy)")
    parser.add_argument(
        "--covariance", required=True, choices=_COVARIANCES, help="the covariance head"
    )
    parser.add_argument(
        "--stencil",
        type=int,
        default=TrainConfig.stencil,
        choices=(3, 5, 7),
        help="structured stencil (default %(default)s)",
    )
    parser.add_argument(
        "--off-diagonal-bound",
        type=float,
        default=0.9,
        help="structured head: bound on a row's off-diagonal weights relative to its diagonal "
        "(default 0.9: diagonally dominant, stable solves by construction; up to 4, checked)",
    )
    parser.add_argument(
        "--size", type=int, default=None, help="image side, checked (default: the prepared data's)"
    )
    parser.add_argument("--epochs", type=int, default=30, help="total epochs (default 30)")
    parser.add_argument(
        "--stage-epochs",
        type=int,
        default=None,
        help="epochs of stage 1 (encoder and mean); the rest train the covariance head "
        "(default: two thirds of --epochs)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="images per step and process (default 16)"
    )
    parser.add_argument("--kl-weight", type=float, default=1.0, help="beta (default 1)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)"
    )
    parser.add_argument("--workers", type=int, default=0, help="data-loader workers (default 0)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out after its last complete epoch (same settings; starts "
        "afresh when --out holds no checkpoint)",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="MODEL_DIR",
        help="start from the encoder and mean of a trained model (same architecture and size, "
        "any covariance head) and skip stage 1 unless --stage-epochs is given",
    )
    parser.add_argument("--out", required=True, help="model directory (checkpoints, final model)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``napari-genreg train`` flags."""
    from napari_genreg.training.data import prepared_size

    return TrainConfig(
        data=Path(args.data),
        out=Path(args.out),
        covariance=args.covariance,
        stencil=args.stencil,
        off_diagonal_bound=args.off_diagonal_bound,
        size=args.size if args.size is not None else prepared_size(args.data),
        epochs=args.epochs,
        stage_epochs=args.stage_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        kl_weight=args.kl_weight,
        seed=args.seed,
        device=args.device,
        workers=args.workers,
        resume=args.resume,
        init_from=None if args.init_from is None else Path(args.init_from),
    )


def _unused_flags(config: TrainConfig) -> list[str]:
    """A note for the structured head's settings given with another head (they change nothing)."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    given = [
        flag
        for flag, name in (("--stencil", "stencil"), ("--off-diagonal-bound", "off_diagonal_bound"))
        if getattr(config, name) != defaults[name]
    ]
    if config.covariance == "structured" or not given:
        return []
    flags = " and ".join(given)
    head = config.covariance
    return [f"{flags} unused with --covariance {head} (settings of the structured head)"]


def run_train(args: argparse.Namespace) -> int:
    """Run ``napari-genreg train`` from parsed flags: a tqdm bar over epochs, one line each.

    Returns 0 when every epoch is done, 130 when interrupted (the last complete epoch's checkpoint
    stays valid: continue with ``--resume``), 2 when the loss stops being finite. Invalid
    settings and data raise ``ValueError`` (or ``OSError``), as the other commands do.
    """
    from tqdm import tqdm

    config = config_from_args(args)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        for note in _unused_flags(config):
            print(f"napari-genreg: {note}", file=sys.stderr)
    last: EpochState | None = None
    with tqdm(total=config.epochs, unit="epoch", file=sys.stderr, disable=not main_process) as bar:
        try:
            for state in train(config):
                last = state
                bar.n = state.epoch
                bar.set_postfix(
                    stage=state.stage,
                    loss=f"{state.train_loss:.4f}",
                    bpd=f"{state.val_bits_per_dim:.4f}",
                )
                if main_process:
                    bar.write(
                        f"epoch {state.epoch}/{config.epochs} stage {state.stage}: train loss "
                        f"{state.train_loss:.4f} nats/pixel, validation "
                        f"{state.val_bits_per_dim:.4f} bits/dim (negative ELBO, upper bound), "
                        f"{state.seconds:.1f} s, {state.images_per_second:.1f} images/s",
                        file=sys.stderr,
                    )
        except KeyboardInterrupt:
            if main_process:
                done = "no epoch" if last is None else f"epoch {last.epoch}"
                print(
                    f"napari-genreg train: interrupted; {config.out} holds {done} "
                    "complete: continue with --resume",
                    file=sys.stderr,
                )
            return 130
        except FloatingPointError as exc:
            if main_process:
                from napari_genreg.models.checkpoint import CONFIG_NAME

                saved = (config.out / CONFIG_NAME).is_file()
                kept = "keeps the last finite epoch" if saved else "holds no epoch"
                print(
                    f"napari-genreg train: error: {exc}; {config.out} {kept} (try a smaller --lr)",
                    file=sys.stderr,
                )
            return 2
    if main_process and last is None and config.resume:
        print(
            f"napari-genreg train: {config.out} holds all {config.epochs} epochs already: "
            "nothing to do (a longer run is a new run, with --init-from)",
            file=sys.stderr,
        )
    elif main_process:
        print(f"napari-genreg train: wrote {config.out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m napari_genreg.training.train``: the ``train`` command on its own (torchrun)."""
    parser = argparse.ArgumentParser(
        prog="python -m napari_genreg.training.train",
        description="Train a VAE prior with a covariance head (runs under torchrun too).",
    )
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_train(args)
    except (ValueError, OSError) as exc:
        print(f"napari-genreg train: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
