"""ESPIRiT coil maps: napari_genreg's ``espirit_maps`` against sigpy's ``EspiritCalib``.

The data: the shipped brain sample (128 and 256 pixels square) times a smooth phase
``exp(i (0.8 x + 0.5 y^2))`` on ``[-1, 1]^2``, with 8 and 16 coils from
:func:`napari_genreg.physics.coils.synthetic_maps`, fully sampled, plus complex Gaussian noise of
standard deviation 1e-3 per k-space sample (seed 0; the image maximum is 1). Both methods get
the same k-space and the same settings: a centred 24 x 24 calibration block, 6 x 6 kernels,
singular value threshold 0.02, eigenvalue crop 0.95.

- ``ours``: :func:`napari_genreg.physics.espirit.espirit_maps` (eigendecomposition of
  ``A^H A``, the image-space operator evaluated from its ``(2k-1)^2`` Fourier coefficients,
  batched ``torch.linalg.eigh`` per pixel, virtual-body-coil phase).
- ``sigpy``: ``sigpy.mri.app.EspiritCalib(...).run()`` with its default 100 power iterations
  per pixel (SVD of the calibration matrix, one full-size inverse FFT per kernel). Also timed
  once with 300 power iterations, which the agreement needs outside the object, where the gap
  between the two largest eigenvalues is small.

Times are wall times of the whole call (best and median of ``--repeats`` runs, ours and sigpy
interleaved, after one warm-up of each); torch, numpy/BLAS and numba are limited to
``--threads`` threads. Accuracy: the maps are defined up to one phase per pixel, so errors are
``max_c |m_c - t_c e^{i phi}|`` with ``phi`` the phase of ``sum_c m_c conj(t_c)``, reported as
the maximum over the object (``|image| > 10 %`` of its maximum, eroded by 3 pixels) against the
true maps, and over all pixels that both methods keep for ours against sigpy.

Run: ``.venv/bin/python benchmarks/espirit.py`` (about a minute on 2 cores); writes
``benchmarks/results/espirit.json`` and ``.md``. ``--quick`` is a smoke run (128 px only, one
repeat) that prints its table and writes nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import _machine

NAME = "espirit"
CASES = ((128, 8), (256, 16))
NOISE = 1e-3
CALIBRATION = 24
KERNEL = 6
THRESHOLD = 0.02
CROP = 0.95
SIGPY_CONVERGED_ITERATIONS = 300


def make_data(size: int, coils: int):
    """(image, true maps, noisy fully sampled k-space), complex64, on the CPU."""
    import torch

    from napari_genreg.physics.coils import simulate_multicoil, synthetic_maps
    from napari_genreg.samples import load_image

    magnitude = torch.from_numpy(load_image("brain", size))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    image = torch.polar(magnitude, 0.8 * xx + 0.5 * yy**2)
    truth = synthetic_maps(coils, (size, size))
    gen = torch.Generator().manual_seed(0)
    noise = torch.view_as_complex(torch.randn((coils, size, size, 2), generator=gen))
    kspace = simulate_multicoil(image, truth) + noise * (NOISE / math.sqrt(2))
    return image, truth, kspace


def run_ours(kspace):
    from napari_genreg.physics.espirit import espirit_maps

    return espirit_maps(
        kspace, (CALIBRATION, CALIBRATION), kernel=KERNEL, threshold=THRESHOLD, crop=CROP
    )


def run_sigpy(kspace, iterations: int = 100):
    import numpy as np
    import sigpy.mri.app
    import torch

    maps = sigpy.mri.app.EspiritCalib(
        kspace.numpy(),
        calib_width=CALIBRATION,
        thresh=THRESHOLD,
        kernel_width=KERNEL,
        crop=CROP,
        max_iter=iterations,
        show_pbar=False,
    ).run()
    return torch.from_numpy(np.asarray(maps)).to(kspace.dtype)


def ours_breakdown(kspace) -> dict[str, float]:
    """Seconds of each step of ours, each timed once on its own."""
    import torch

    from napari_genreg.physics import espirit

    h, w = kspace.shape[-2:]
    y0, x0 = h // 2 - CALIBRATION // 2, w // 2 - CALIBRATION // 2
    calib = kspace[:, y0 : y0 + CALIBRATION, x0 : x0 + CALIBRATION]
    out = {}
    start = time.perf_counter()
    kernels = espirit.signal_kernels(calib, KERNEL, THRESHOLD)
    out["kernels (A^H A, eigh)"] = time.perf_counter() - start
    start = time.perf_counter()
    gram = espirit.image_space_operator(kernels, (h, w))
    out["image-space operator G (all pixels)"] = time.perf_counter() - start
    start = time.perf_counter()
    torch.linalg.eigh(gram)
    out["per-pixel eigh (all pixels)"] = time.perf_counter() - start
    out["kernels kept"] = len(kernels)
    return out


def _timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def _inner_support(image, erosion: int = 3):
    import torch

    support = image.abs() > 0.1 * image.abs().max()
    size = 2 * erosion + 1
    pooled = torch.nn.functional.avg_pool2d(support[None].float(), size, 1, erosion)[0]
    return pooled > 0.999


def _phase_free_error(maps, truth):
    phase = (maps * truth.conj()).sum(0)
    phase = phase / phase.abs().clamp_min(1e-12)
    return (maps - truth * phase).abs().amax(dim=0)


def accuracy(image, truth, ours, theirs, converged) -> dict[str, float]:
    import torch

    from napari_genreg.physics.coils import rss

    inner = _inner_support(image)
    kept_ours, kept_theirs = rss(ours, dim=0) > 0.5, rss(theirs, dim=0) > 0.5
    both = kept_ours & kept_theirs
    both_converged = kept_ours & (rss(converged, dim=0) > 0.5)
    ours_vs_sigpy = _phase_free_error(ours, theirs)[both]
    return {
        "object_pixels": int(inner.sum()),
        "ours_vs_truth_max_in_object": float(_phase_free_error(ours, truth)[inner].max()),
        "sigpy_vs_truth_max_in_object": float(_phase_free_error(theirs, truth)[inner].max()),
        "ours_rss_max_deviation_in_object": float((rss(ours, dim=0)[inner] - 1).abs().max()),
        "kept_pixels_ours": int(kept_ours.sum()),
        "kept_pixels_sigpy": int(kept_theirs.sum()),
        "kept_pixels_disagreeing": int((kept_ours != kept_theirs).sum()),
        "ours_vs_sigpy_max_in_object": float(_phase_free_error(ours, theirs)[inner].max()),
        "ours_vs_sigpy_max_where_both_kept": float(ours_vs_sigpy.max()),
        "ours_vs_sigpy_p99_where_both_kept": float(torch.quantile(ours_vs_sigpy, 0.99)),
        f"ours_vs_sigpy_{SIGPY_CONVERGED_ITERATIONS}_iterations_max_where_both_kept": float(
            _phase_free_error(ours, converged)[both_converged].max()
        ),
    }


def bench_case(size: int, coils: int, repeats: int) -> dict:
    import torch

    image, truth, kspace = make_data(size, coils)
    ours, theirs = run_ours(kspace), run_sigpy(kspace)  # warm-up (numba compiles in sigpy)
    times: dict[str, list[float]] = {"ours": [], "sigpy": []}
    for r in range(repeats):
        order = ("ours", "sigpy") if r % 2 == 0 else ("sigpy", "ours")
        for name in order:
            fn = (lambda: run_ours(kspace)) if name == "ours" else (lambda: run_sigpy(kspace))
            times[name].append(_timed(fn))
    start = time.perf_counter()
    converged = run_sigpy(kspace, SIGPY_CONVERGED_ITERATIONS)
    converged_s = time.perf_counter() - start
    result = {
        "size": size,
        "coils": coils,
        "seconds": {
            name: {"best": min(t), "median": statistics.median(t), "runs": t}
            for name, t in times.items()
        },
        f"sigpy_{SIGPY_CONVERGED_ITERATIONS}_iterations_seconds": converged_s,
        "ours_breakdown_s": ours_breakdown(kspace),
        "accuracy": accuracy(image, truth, ours, theirs, converged),
    }
    if torch.cuda.is_available():
        on_gpu = kspace.cuda()
        run_ours(on_gpu)
        gpu = [_timed(lambda: run_ours(on_gpu), torch.cuda.synchronize) for _ in range(repeats)]
        result["ours_cuda_seconds"] = {"best": min(gpu), "median": statistics.median(gpu)}
        result["cuda_device"] = torch.cuda.get_device_name()
    return result


def markdown(result: dict) -> str:
    s = result["settings"]
    k = SIGPY_CONVERGED_ITERATIONS
    lines = [
        "## ESPIRiT coil maps: napari_genreg `espirit_maps` vs sigpy `EspiritCalib`",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {_machine.machine_line(result['machine'])}, "
        f"at end {result['load_average_end'][0]:.2f}.  ",
        f"Threads: torch, numpy/BLAS and numba limited to {s['threads']}.  ",
        f"Data: brain sample times a smooth phase, `synthetic_maps` coils, fully sampled, noise "
        f"{NOISE} per sample (seed 0). Both: calibration {CALIBRATION}x{CALIBRATION}, kernel "
        f"{KERNEL}, threshold {THRESHOLD}, crop {CROP}; sigpy with its default 100 power "
        f"iterations. Times: whole call, best (median) of {s['repeats']}, interleaved.",
        "",
        f"| size | coils | ours (s) | sigpy (s) | sigpy / ours | sigpy, {k} power iterations (s) |",
        "|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        ours, sp = case["seconds"]["ours"], case["seconds"]["sigpy"]
        lines.append(
            f"| {case['size']} | {case['coils']} | {ours['best']:.3f} ({ours['median']:.3f}) "
            f"| {sp['best']:.3f} ({sp['median']:.3f}) | {sp['best'] / ours['best']:.1f} "
            f"| {case[f'sigpy_{k}_iterations_seconds']:.3f} |"
        )
    if any("ours_cuda_seconds" in c for c in result["cases"]):
        lines += ["", "| size | coils | ours on CUDA (s, best) | device |", "|---|---|---|---|"]
        for case in result["cases"]:
            if "ours_cuda_seconds" in case:
                lines.append(
                    f"| {case['size']} | {case['coils']} "
                    f"| {case['ours_cuda_seconds']['best']:.4f} | {case['cuda_device']} |"
                )
    lines += [
        "",
        "Accuracy: `max_c |m_c - t_c e^{i phi}|` after removing the best phase per pixel; "
        "'object' = |image| > 10 % of max, eroded by 3 pixels; 'both kept' = pixels where both "
        "maps are non-zero.",
        "",
        "| size | coils | ours vs truth (object) | sigpy vs truth (object) "
        "| ours vs sigpy (object) | ours vs sigpy (both kept: max / 99 %) "
        f"| ours vs sigpy {k} it. (both kept, max) | kept pixels ours / sigpy / differing "
        "| ours: max abs(rss - 1) in object |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        a = case["accuracy"]
        lines.append(
            f"| {case['size']} | {case['coils']} | {a['ours_vs_truth_max_in_object']:.4f} "
            f"| {a['sigpy_vs_truth_max_in_object']:.4f} "
            f"| {a['ours_vs_sigpy_max_in_object']:.1e} "
            f"| {a['ours_vs_sigpy_max_where_both_kept']:.1e} / "
            f"{a['ours_vs_sigpy_p99_where_both_kept']:.1e} "
            f"| {a[f'ours_vs_sigpy_{k}_iterations_max_where_both_kept']:.1e} "
            f"| {a['kept_pixels_ours']} / {a['kept_pixels_sigpy']} / "
            f"{a['kept_pixels_disagreeing']} | {a['ours_rss_max_deviation_in_object']:.1e} |"
        )
    lines += [
        "",
        "Where the time of ours goes (seconds, each step timed once on its own; the shipped "
        "function evaluates G and its eigendecomposition in blocks of rows).",
        "",
        "| step | " + " | ".join(f"{c['size']} / {c['coils']}" for c in result["cases"]) + " |",
        "|---" * (len(result["cases"]) + 1) + "|",
    ]
    for step in result["cases"][0]["ours_breakdown_s"]:
        values = result["cases"][0]["ours_breakdown_s"][step]
        fmt = "{}" if isinstance(values, int) else "{:.3f}"
        row = " | ".join(fmt.format(c["ours_breakdown_s"][step]) for c in result["cases"])
        lines.append(f"| {step} | {row} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 px, one repeat, no files")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and numpy")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best is kept)")
    args = parser.parse_args()
    _machine.pin_threads(args.threads)

    cases = CASES[:1] if args.quick else CASES
    repeats = 1 if args.quick else args.repeats
    machine = _machine.machine_info()
    command = _machine.command_line()
    results = []
    start = time.perf_counter()
    for size, coils in cases:
        results.append(bench_case(size, coils, repeats))
        print(f"{size} px, {coils} coils: done after {time.perf_counter() - start:.0f} s")
    result = {
        "benchmark": NAME,
        "command": command,
        "machine": machine,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "wall_time_s": time.perf_counter() - start,
        "settings": {
            "threads": args.threads,
            "repeats": repeats,
            "noise_per_sample": NOISE,
            "calibration": CALIBRATION,
            "kernel": KERNEL,
            "threshold": THRESHOLD,
            "crop": CROP,
            "sigpy_power_iterations": 100,
        },
        "cases": results,
    }
    _machine.publish(NAME, result, markdown(result), record=not args.quick)


if __name__ == "__main__":
    main()
