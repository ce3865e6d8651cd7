r"""Training the Variational Network end to end for one sampling setting.

``napari-genreg train-vn --data DIR --out MODEL_DIR [--mask random] [--acceleration 4]
[--center-fraction 0.08] [--noise-sigma 0.01] [--size N] [--epochs N] [--steps-per-epoch S]
[--batch-size B] [--lr LR] [--stages T] [--filters N] [--kernel-size K] [--seed S]
[--device auto] [--max-minutes M]``

:func:`train_vn` is a generator of :class:`VNEpochState` (one per epoch, after validation and,
when it improved, the checkpoint), like :func:`napari_genreg.training.train.train`.

Training pairs (:func:`simulate_pairs`)
    Every image ``x`` of the training split (magnitudes in [0, 1], randomly flipped) gets a
    fresh mask of the configured kind, acceleration and centre fraction and fresh
    circularly-symmetric complex Gaussian noise, both seeded by ``(--seed, epoch, index)``:
    :math:`y = M (F x + n)`, :math:`n \sim \mathcal{CN}(0, (\sigma \max x)^2)` with ``F`` the
    orthonormal centred FFT (so ``sigma`` is the noise level of the image on [0, 1], as
    ``napari-genreg reconstruct --noise-sigma``). Then, exactly as
    :mod:`napari_genreg.recon.learned` prepares a :class:`~napari_genreg.recon.problem.Problem`:
    the scale :math:`c` = :func:`~napari_genreg.models.vn.intensity_scale` of :math:`A^H y` (the
    99th percentile of the zero-filled magnitude, ``Problem.scale``), the phase estimate
    :math:`P` of :func:`~napari_genreg.physics.phase.lowres_phase` from the calibration region
    (``Problem.phase``), and the network's operator :math:`A P` with data :math:`y / c`.
Loss
    The mean squared error of the complex image, :math:`\operatorname{mean}|P\,\mathrm{VN}(y/c)
    - x / c|^2`, in normalised units; Adam with a constant learning rate, gradients clipped to
    norm 1.
Validation
    After each epoch: the mean PSNR (data range: the reference maximum, as
    :func:`napari_genreg.metrics.psnr`) of the magnitude :math:`|c P\,\mathrm{VN}(y/c)|`
    against ``x`` on a fixed subset of the validation split (:attr:`VNTrainConfig.val_images`
    images evenly spaced through it, masks and noise seeded per image), beside the zero-filled
    PSNR of the same data. The best epoch's weights are kept: ``MODEL_DIR`` holds a loadable
    model (:func:`napari_genreg.models.checkpoint.save_vn`) after the first epoch and is only
    replaced by a better one.
Time budget
    ``--max-minutes M`` ends the run after the step that passes ``M`` minutes (that last,
    partial epoch is validated and may be kept).
Randomness
    Explicit generators only (initial weights, shuffling, flips, masks, noise), seeded from
    ``--seed`` and a label; the global RNGs are neither used nor changed. CPU runs repeat
    bit for bit with the same threads; CUDA's ``grid_sample`` backward is not deterministic.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # torch is imported lazily: the CLI builds its parser without it
    import torch

    from napari_genreg.models.vn import VariationalNetwork, VNConfig
    from napari_genreg.physics.operators import LinearOperator

__all__ = [
    "TrainingPairs",
    "VNEpochState",
    "VNTrainConfig",
    "add_train_vn_arguments",
    "config_from_args",
    "run_train_vn",
    "simulate_pairs",
    "train_vn",
]


def _check_int(value: object, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_float(value: object, name: str, low: float, *, strict: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not ok or not math.isfinite(value) or value < low or (strict and value == low):  # type: ignore[arg-type]
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class VNTrainConfig:
    """The settings of one run of ``napari-genreg train-vn``.

    Parameters
    ----------
    data
        the prepared-data folder (``train.npy``, ``val.npy``, ``manifest.json``).
    out
        the model directory (the best epoch's model).
    mask, acceleration, center_fraction
        the sampling setting (:func:`napari_genreg.physics.masks.make_mask`).
    noise_sigma
        complex k-space noise level relative to the image maximum (images in [0, 1]).
    size
        the image side the data were prepared at (checked).
    epochs
        number of epochs.
    steps_per_epoch
        optimisation steps per epoch (``None``: one pass over the training split).
    batch_size
        images per step.
    lr
        Adam's learning rate.
    stages, filters, kernel_size
        the network (:class:`~napari_genreg.models.vn.VNConfig`).
    seed
        seeds every generator of the run.
    device
        ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    max_minutes
        stop after this much wall time (``None``: no limit).
    val_images
        validation images (evenly spaced through the split; all of them when fewer).
    command
        the command line recorded in the checkpoint; default :meth:`command_line`.
    """

    data: Path
    out: Path
    mask: str = "random"
    acceleration: float = 4.0
    center_fraction: float = 0.08
    noise_sigma: float = 0.01
    size: int = 128
    epochs: int = 20
    steps_per_epoch: int | None = None
    batch_size: int = 4
    lr: float = 1e-3
    stages: int = 8
    filters: int = 24
    kernel_size: int = 7
    seed: int = 0
    device: str = "auto"
    max_minutes: float | None = None
    val_images: int = 64
    command: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        from napari_genreg.physics.masks import MASKS

        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {self.mask!r}")
        _check_float(self.acceleration, "acceleration", 1.0, strict=False)
        _check_float(self.center_fraction, "center_fraction", 0.0, strict=False)
        _check_float(self.noise_sigma, "noise_sigma", 0.0, strict=False)
        _check_float(self.lr, "lr", 0.0, strict=True)
        for name in ("size", "epochs", "batch_size", "val_images"):
            _check_int(getattr(self, name), name, 1)
        _check_int(self.seed, "seed", 0)
        if self.steps_per_epoch is not None:
            _check_int(self.steps_per_epoch, "steps_per_epoch", 1)
        if self.max_minutes is not None:
            _check_float(self.max_minutes, "max_minutes", 0.0, strict=True)
        self.vn_config()  # validates the network settings

    def vn_config(self) -> VNConfig:
        """The network this run trains."""
        from napari_genreg.models.vn import VNConfig

        return VNConfig(stages=self.stages, filters=self.filters, kernel_size=self.kernel_size)

    def command_line(self) -> str:
        """The command that repeats this run (every flag spelled out)."""
        flags: dict[str, object] = {
            "--data": self.data,
            "--mask": self.mask,
            "--acceleration": self.acceleration,
            "--center-fraction": self.center_fraction,
            "--noise-sigma": self.noise_sigma,
            "--size": self.size,
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--lr": self.lr,
            "--stages": self.stages,
            "--filters": self.filters,
            "--kernel-size": self.kernel_size,
            "--seed": self.seed,
            "--device": self.device,
            "--val-images": self.val_images,
        }
        if self.steps_per_epoch is not None:
            flags["--steps-per-epoch"] = self.steps_per_epoch
        if self.max_minutes is not None:
            flags["--max-minutes"] = self.max_minutes
        flags["--out"] = self.out
        words = ["napari-genreg", "train-vn"]
        for flag, value in flags.items():
            words += [flag, str(value)]
        return shlex.join(words)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        record = asdict(self)
        record["data"] = str(self.data)
        record["out"] = str(self.out)
        return record


@dataclass(frozen=True)
class VNEpochState:
    """What :func:`train_vn` yields after each epoch.

    Attributes
    ----------
    epoch
        1-based epoch number.
    train_loss
        mean training loss of the epoch (normalised units, see the module docstring).
    val_psnr
        mean validation PSNR of the network, dB.
    val_psnr_zero_filled
        mean validation PSNR of the zero-filled images of the same data, dB.
    best
        True when this epoch's weights were saved (its PSNR is the best so far).
    seconds
        wall time of the epoch, validation included.
    images_per_second
        training throughput.
    elapsed
        wall time since the start of the run.
    """

    epoch: int
    train_loss: float
    val_psnr: float
    val_psnr_zero_filled: float
    best: bool
    seconds: float
    images_per_second: float
    elapsed: float


class TrainingPairs(NamedTuple):
    """A batch of simulated measurements, prepared as the network sees them.

    Attributes
    ----------
    y
        :math:`y / c`, complex ``(B, H, W)``.
    op
        :math:`A P = M F P`: ``(B, H, W)`` images to ``(B, H, W)`` k-space.
    phase
        :math:`P`, unit-modulus complex ``(B, H, W)``.
    scale
        :math:`c`, ``(B,)``.
    target
        :math:`x`, float ``(B, H, W)`` on [0, 1] (not normalised).
    """

    y: torch.Tensor
    op: LinearOperator
    phase: torch.Tensor
    scale: torch.Tensor
    target: torch.Tensor


def simulate_pairs(
    images: torch.Tensor, config: VNTrainConfig, seeds: Sequence[int]
) -> TrainingPairs:
    """Undersampled noisy k-space of ``images`` and what the network needs of it.

    Parameters
    ----------
    images
        float ``(B, H, W)`` magnitudes in [0, 1], on the training device.
    config
        the sampling setting (mask, acceleration, centre fraction, noise level).
    seeds
        one per image: seeds its mask (``make_mask``'s seed) and its noise.
    """
    import torch

    from napari_genreg.models.vn import intensity_scale
    from napari_genreg.physics.espirit import centred_fully_sampled_box
    from napari_genreg.physics.fft import fft2c, ifft2c
    from napari_genreg.physics.masks import make_mask
    from napari_genreg.physics.noise import complex_gaussian
    from napari_genreg.physics.operators import Diagonal, FFT2c
    from napari_genreg.physics.phase import lowres_phase

    device = images.device
    b, h, w = images.shape
    x = images.to(torch.complex64)
    masks, noise, sizes = [], [], []
    peaks = images.flatten(1).amax(dim=1).cpu()
    for k, seed in enumerate(seeds):
        mask = make_mask(
            config.mask,
            (h, w),
            acceleration=config.acceleration,
            center_fraction=config.center_fraction,
            seed=int(seed),
        )
        box = centred_fully_sampled_box(mask)
        sizes.append((max(box[0], 2), max(box[1], 2)))
        masks.append(torch.from_numpy(mask))
        generator = torch.Generator().manual_seed(_seed(int(seed), "noise"))
        sigma = config.noise_sigma * float(peaks[k])
        noise.append(complex_gaussian((h, w), sigma, generator=generator))
    mask_t = torch.stack(masks).to(device)
    y = (fft2c(x) + torch.stack(noise).to(device)) * mask_t
    phase = torch.stack([lowres_phase(y[k], sizes[k]) for k in range(b)])
    scale = intensity_scale(ifft2c(y)).clamp_min(1e-8)
    op = Diagonal(mask_t) @ FFT2c() @ Diagonal(phase)
    return TrainingPairs(y / scale[:, None, None], op, phase, scale, images)


def _psnr(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """PSNR per image, ``(B,)``, data range the reference maximum (as ``metrics.psnr``)."""
    import torch

    mse = (reference - image).square().flatten(1).mean(dim=1).double()
    peak = reference.flatten(1).amax(dim=1).double()
    return 10.0 * torch.log10(peak.square() / mse.clamp_min(1e-30))


def _seed(seed: int, *labels: object) -> int:
    from napari_genreg.training.train import derived_seed

    return derived_seed(seed, *labels)


def _generator(seed: int, *labels: object) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(_seed(seed, *labels))


def _load_split(folder: Path, split: str, size: int) -> torch.Tensor:
    import torch

    from napari_genreg.training.data import SliceDataset, verify_split

    dataset = SliceDataset(folder, split, augment=False)  # type: ignore[arg-type]
    if len(dataset) == 0:
        raise ValueError(f"{folder}: the {split} split is empty")
    verify_split(folder, dataset.manifest, split)
    if dataset.manifest.size != size:
        raise ValueError(
            f"the data in {folder} are {dataset.manifest.size} x {dataset.manifest.size}, but "
            f"--size is {size}: prepare the data at the training size"
        )
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def _flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random vertical and horizontal flips, one draw per image and axis."""
    import torch

    flips = torch.rand((images.shape[0], 2), generator=generator) < 0.5
    out = images.clone()
    for k, (vertical, horizontal) in enumerate(flips.tolist()):
        dims = [d for d, flip in ((-2, vertical), (-1, horizontal)) if flip]
        if dims:
            out[k] = torch.flip(images[k], dims)
    return out


def _batches(n: int, batch: int, seed: int) -> Iterator[list[int]]:
    """Batches of indices from successive seeded permutations of ``range(n)``, forever."""
    import torch

    buffer: list[int] = []
    for rounds in range(1 << 62):
        buffer += torch.randperm(n, generator=_generator(seed, "shuffle", rounds)).tolist()
        while len(buffer) >= batch:
            yield buffer[:batch]
            buffer = buffer[batch:]


def _loss(model: VariationalNetwork, pairs: TrainingPairs) -> torch.Tensor:
    output = model(pairs.y, pairs.op) * pairs.phase
    target = pairs.target / pairs.scale[:, None, None]
    return (output - target).abs().square().mean()


def _validate(
    model: VariationalNetwork, images: torch.Tensor, config: VNTrainConfig
) -> tuple[float, float]:
    """Mean PSNR of the network and of zero filling on the validation images."""
    import torch

    model.eval()
    psnr, psnr_zero = [], []
    with torch.no_grad():
        for start in range(0, images.shape[0], config.batch_size):
            chunk = images[start : start + config.batch_size]
            seeds = [_seed(config.seed, "validation", start + k) for k in range(chunk.shape[0])]
            pairs = simulate_pairs(chunk, config, seeds)
            c = pairs.scale[:, None, None]
            x = (model(pairs.y, pairs.op) * pairs.phase).abs() * c
            zero = pairs.op.adjoint(pairs.y).abs() * c
            psnr.append(_psnr(chunk, x))
            psnr_zero.append(_psnr(chunk, zero))
    model.train()
    return float(torch.cat(psnr).mean()), float(torch.cat(psnr_zero).mean())


def train_vn(config: VNTrainConfig) -> Iterator[VNEpochState]:
    """Train a :class:`~napari_genreg.models.vn.VariationalNetwork`, one state per epoch.

    Raises
    ------
    ValueError
        If ``config.out`` already holds a model, or the data do not match ``size``.
    FileNotFoundError
        If the data folder has no manifest (it was not prepared, or preparation did not finish).
    FloatingPointError
        If the training loss stops being finite.
    """
    import torch

    from napari_genreg.models.checkpoint import CONFIG_NAME, save_vn
    from napari_genreg.models.vn import VariationalNetwork
    from napari_genreg.training.data import MANIFEST_NAME
    from napari_genreg.training.sources import file_sha256
    from napari_genreg.training.train import _resolve_device

    if (config.out / CONFIG_NAME).is_file():
        raise ValueError(f"{config.out} already holds a model; choose another --out")
    device = _resolve_device(config.device, 0, False)
    train_images = _load_split(config.data, "train", config.size).to(device)
    val_all = _load_split(config.data, "val", config.size)
    count = min(config.val_images, val_all.shape[0])
    picks = torch.linspace(0, val_all.shape[0] - 1, count).round().long()
    val_images = val_all[picks].to(device)
    manifest_sha256 = file_sha256(config.data / MANIFEST_NAME)

    vn_config = config.vn_config()
    model = VariationalNetwork(vn_config, _generator(config.seed, "init")).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    n = train_images.shape[0]
    batch = min(config.batch_size, n)
    steps = config.steps_per_epoch or max(1, n // batch)
    stream = _batches(n, batch, config.seed)
    flips = _generator(config.seed, "flip")
    history: list[dict[str, Any]] = []
    best = -math.inf
    start_run = time.perf_counter()
    budget = None if config.max_minutes is None else 60.0 * config.max_minutes
    zero_filled_psnr: float | None = None
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        total, seen, out_of_time = torch.zeros((), device=device), 0, False
        for step in range(steps):
            indices = next(stream)
            images = _flip(train_images[indices], flips)
            seeds = [_seed(config.seed, "pair", epoch, step, k) for k in range(len(indices))]
            loss = _loss(model, simulate_pairs(images, config, seeds))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.detach() * len(indices)
            seen += len(indices)
            if budget is not None and time.perf_counter() - start_run > budget:
                out_of_time = True
                break
        train_seconds = time.perf_counter() - start
        train_loss = float(total) / seen
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"the training loss of epoch {epoch} is not finite")
        val_psnr, zero_filled_psnr = _validate(model, val_images, config)
        improved = val_psnr > best
        elapsed = time.perf_counter() - start_run
        state = VNEpochState(
            epoch=epoch,
            train_loss=train_loss,
            val_psnr=val_psnr,
            val_psnr_zero_filled=zero_filled_psnr,
            best=improved,
            seconds=time.perf_counter() - start,
            images_per_second=seen / max(train_seconds, 1e-9),
            elapsed=elapsed,
        )
        history.append({**asdict(state), "steps": step + 1})
        if improved:
            best = val_psnr
            metrics = {
                "val_psnr": val_psnr,
                "val_psnr_zero_filled": zero_filled_psnr,
                "val_images": count,
                "best_epoch": epoch,
                "epochs_completed": epoch,
                "wall_seconds": elapsed,
                "device": str(device),
                "history": history,
            }
            save_vn(
                model,
                vn_config,
                config.out,
                metrics=metrics,
                data_manifest_hash=manifest_sha256,
                command=config.command or config.command_line(),
                training={**config.to_dict(), "device_used": str(device)},
            )
        yield state
        if out_of_time:
            break
    if best > -math.inf and history[-1]["best"] is False:
        _record_history(config.out, history, time.perf_counter() - start_run)


def _record_history(out: Path, history: list[dict[str, Any]], elapsed: float) -> None:
    """Rewrite the saved model's metrics with the whole history (the weights stay)."""
    import json

    from napari_genreg.models.checkpoint import CONFIG_NAME, atomic_write

    path = out / CONFIG_NAME
    record = json.loads(path.read_text(encoding="utf-8"))
    record["metrics"]["history"] = history
    record["metrics"]["epochs_completed"] = history[-1]["epoch"]
    record["metrics"]["wall_seconds"] = elapsed
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    atomic_write(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_train_vn_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``napari-genreg train-vn`` to ``parser`` (imports nothing heavy)."""
    defaults = {f: getattr(VNTrainConfig, f) for f in ("epochs", "batch_size", "lr", "stages")}
    parser.add_argument("--data", required=True, help="prepared-data folder (train.npy, val.npy)")
    parser.add_argument("--out", required=True, help="model directory (the best epoch's model)")
    parser.add_argument("--mask", default="random", help="sampling mask kind (default random)")
    parser.add_argument("--acceleration", type=float, default=4.0, help="default 4")
    parser.add_argument(
        "--center-fraction", type=float, default=0.08, help="fully sampled centre (default 0.08)"
    )
    parser.add_argument(
        "--noise-sigma",
        type=float,
        default=0.01,
        help="std of the complex k-space noise relative to the image maximum (default 0.01)",
    )
    parser.add_argument(
        "--size", type=int, default=None, help="image side, checked (default: the prepared data's)"
    )
    parser.add_argument(
        "--epochs", type=int, default=defaults["epochs"], help="default %(default)s"
    )
    parser.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="optimisation steps per epoch (default: one pass over the training split)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults["batch_size"], help="default %(default)s"
    )
    parser.add_argument(
        "--lr", type=float, default=defaults["lr"], help="Adam learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--stages",
        type=int,
        default=defaults["stages"],
        help="unrolled steps (default %(default)s)",
    )
    parser.add_argument("--filters", type=int, default=24, help="filters per stage (default 24)")
    parser.add_argument("--kernel-size", type=int, default=7, help="filter side (default 7)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)"
    )
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="stop after this much wall time"
    )
    parser.add_argument("--val-images", type=int, default=64, help="validation images (default 64)")


def config_from_args(args: argparse.Namespace) -> VNTrainConfig:
    """The :class:`VNTrainConfig` of parsed ``napari-genreg train-vn`` flags."""
    from napari_genreg.training.data import prepared_size

    return VNTrainConfig(
        data=Path(args.data),
        out=Path(args.out),
        mask=args.mask,
        acceleration=args.acceleration,
        center_fraction=args.center_fraction,
        noise_sigma=args.noise_sigma,
        size=args.size if args.size is not None else prepared_size(args.data),
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        stages=args.stages,
        filters=args.filters,
        kernel_size=args.kernel_size,
        seed=args.seed,
        device=args.device,
        max_minutes=args.max_minutes,
        val_images=args.val_images,
    )


def run_train_vn(args: argparse.Namespace) -> int:
    """Run ``napari-genreg train-vn``: one line per epoch on stderr.

    Returns 0 when done, 130 when interrupted (``--out`` keeps the best epoch so far), 2 when
    the loss stops being finite. Invalid settings raise ``ValueError`` (or ``OSError``).
    """
    config = config_from_args(args)
    last: VNEpochState | None = None
    try:
        for state in train_vn(config):
            last = state
            print(
                f"epoch {state.epoch}/{config.epochs}: train loss {state.train_loss:.3e}, "
                f"validation PSNR {state.val_psnr:.2f} dB (zero-filled "
                f"{state.val_psnr_zero_filled:.2f} dB){' *' if state.best else ''}, "
                f"{state.seconds:.1f} s, {state.images_per_second:.1f} images/s",
                file=sys.stderr,
                flush=True,
            )
    except KeyboardInterrupt:
        done = "no epoch" if last is None else "the best epoch so far"
        print(f"napari-genreg train-vn: interrupted; {config.out} holds {done}", file=sys.stderr)
        return 130
    except FloatingPointError as exc:
        kept = "no epoch" if last is None else "the best finite epoch"
        print(
            f"napari-genreg train-vn: error: {exc}; {config.out} holds {kept} (try a smaller --lr)",
            file=sys.stderr,
        )
        return 2
    print(f"napari-genreg train-vn: wrote {config.out}", file=sys.stderr)
    return 0
