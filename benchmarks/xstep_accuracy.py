"""How accurately to solve the x-step: PSNR against outer iterations, single- and multi-coil.

The x-step of ``vae-diagonal`` and ``vae-structured`` is a conjugate-gradient solve
(``GenerativeSettings``): a fixed ``cg_steps`` iterations from the previous image (6 here, the
default until 2026-12-03), or CG until its residual has fallen to ``cg_reduction`` times the
warm start's (0.1, at most 50 iterations: the default now). This records, for both, the PSNR
after 5, 10, 20 and 40 outer iterations and the mean CG iterations per x-step on the shipped
Colin27 sample (never trained on), random 1-D 4x mask (seed 0), automatic lam, on

- single-coil k-space (``simulate_kspace``), and
- 8-coil k-space (``synthetic_maps``, ``simulate_multicoil``, SENSE),

at 128 x 128 and 256 x 256 and complex Gaussian noise of 0.1 % and 1 % of the image maximum
(seed 1). The question it answers: does solving the x-step more accurately help, and does the
reconstruction hold its PSNR over more outer iterations (the joint objective over ``(x, z)`` is
only a proxy for the error)?

Run: ``.venv/bin/python benchmarks/xstep_accuracy.py`` (about 5 minutes on 2 cores); writes
``benchmarks/results/xstep_accuracy.json`` and ``.md``. ``--quick`` (128 only, 10 iterations)
only prints.
"""

from __future__ import annotations

import argparse
import itertools
import time

import _machine
from _instrument import CGCounter

NAME = "xstep_accuracy"
MARKS = (5, 10, 20, 40)
SETTINGS = {"6 CG iterations": (6, None), "CG to a tenfold reduction (<= 50)": (50, 0.1)}


def _problems(size: int, relative_noise: float):
    import numpy as np
    import torch

    from napari_genreg.io import KSpaceData, Metadata, simulate_kspace
    from napari_genreg.physics.coils import simulate_multicoil, synthetic_maps
    from napari_genreg.physics.masks import make_mask
    from napari_genreg.recon import build_problem
    from napari_genreg.samples import load_image

    image = load_image("brain", size)
    mask = make_mask("random", image.shape, acceleration=4, seed=0)
    single = simulate_kspace(image[None], noise_sigma=relative_noise, seed=1, source="colin27")
    sigma = relative_noise * float(image.max())
    maps = synthetic_maps(8, image.shape)
    clean = simulate_multicoil(torch.from_numpy(image).to(torch.complex64), maps).numpy()
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)
    kspace = (clean + sigma * noise / np.sqrt(2)).astype(np.complex64)
    multi = KSpaceData(
        kspace[None], image[None], None, Metadata("colin27, 8 coils", image.shape, sigma)
    )
    return {"1 coil": build_problem(single, mask), "8 coils": build_problem(multi, mask)}


def measure(quick: bool) -> list[dict]:
    from napari_genreg.metrics import evaluate
    from napari_genreg.recon import resolve_lam
    from napari_genreg.recon.generative import GenerativeSettings, generative_method

    cg = CGCounter()
    marks = (5, 10) if quick else MARKS
    rows = []
    for size, noise in itertools.product((128,) if quick else (128, 256), (0.001, 0.01)):
        for coils, problem in _problems(size, noise).items():
            for kind, (label, (steps, reduction)) in itertools.product(
                ("structured", "diagonal"), SETTINGS.items()
            ):
                settings = GenerativeSettings(cg_steps=steps, cg_reduction=reduction)
                method = generative_method(f"vae-{kind}", kind, settings=settings)
                lam = resolve_lam(method, problem, None)
                cg.take()
                psnr = {}
                start = time.perf_counter()
                for state in itertools.islice(method.solve(problem, lam), max(marks)):
                    if state.iteration in marks:
                        image = problem.magnitude(state.x)
                        psnr[state.iteration] = evaluate(problem.reference, image).psnr
                row = {
                    "size": size,
                    "noise": noise,
                    "coils": coils,
                    "method": f"vae-{kind}",
                    "x_step": label,
                    "lam": lam,
                    "psnr_at": {str(k): round(v, 2) for k, v in psnr.items()},
                    "cg_per_x_step": round(cg.take() or 0.0, 1),
                    "seconds": round(time.perf_counter() - start, 2),
                }
                print(row, flush=True)
                rows.append(row)
    return rows


def _default_x_step() -> str:
    from napari_genreg.recon.generative import GenerativeSettings

    default = GenerativeSettings()
    for label, (steps, reduction) in SETTINGS.items():
        if (default.cg_steps, default.cg_reduction) == (steps, reduction):
            return label
    return f"cg_steps={default.cg_steps}, cg_reduction={default.cg_reduction}"


def markdown(result: dict) -> str:
    rows = result["rows"]
    marks = sorted({int(k) for r in rows for k in r["psnr_at"]})
    lines = [
        "# How accurately to solve the x-step",
        "",
        f"Machine: {_machine.machine_line(result['machine'])}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "The shipped Colin27 sample (never trained on), random 1-D 4x mask (seed 0), complex "
        "Gaussian noise relative to the image maximum (seed 1), automatic lam; 1 coil "
        "(`simulate_kspace`) or 8 synthetic coils (SENSE). PSNR (dB) after k outer iterations; "
        "CG iterations per x-step (mean over the run); seconds for the run on this machine. "
        f"The methods' default x-step: {result['default_x_step']}.",
        "",
        "| size | noise | coils | method | x-step | "
        + " | ".join(f"k={k}" for k in marks)
        + " | CG per x-step | s |",
        "|---|---|---|---|---|" + "---|" * (len(marks) + 2),
    ]
    for r in rows:
        cells = " | ".join(f"{r['psnr_at'].get(str(k), float('nan')):.2f}" for k in marks)
        lines.append(
            f"| {r['size']} | {100 * r['noise']:g} % | {r['coils']} | {r['method']} | "
            f"{r['x_step']} | {cells} | {r['cg_per_x_step']} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 only, 10 iterations; prints")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    _machine.pin_threads(args.threads)
    result = {
        "benchmark": NAME,
        "command": _machine.command_line(),
        "machine": _machine.machine_info(),
        "rows": measure(args.quick),
        "default_x_step": _default_x_step(),
    }
    _machine.publish(NAME, result, markdown(result), record=not args.quick)


if __name__ == "__main__":
    main()
