"""Anisotropic TV reconstruction: napari_genreg's PDHG against sigpy's TotalVariationRecon.

Both minimise the same objective on the same data,

    1/2 ||M F x - y||^2 + lam sum |(G x)_i|,

with ``G`` the periodic forward differences and ``|.|`` the modulus of each complex entry
(anisotropic TV, sigpy's ``TotalVariationRecon``). The data: the shipped brain sample at 128
and 256 pixels square, single-coil k-space with complex Gaussian noise of 0.01 (relative to the
image maximum, seed 0), undersampled 4x by a Poisson-disc and a 1-D random line mask (seed 0).

- ``ours``: :func:`napari_genreg.solvers.pdhg` on ``(masked_fourier(mask), SquaredDistance(y))``
  and ``(GRADIENT, tv_norm(lam, isotropic=False))`` with the step rule of the shipped ``tv``
  method, ``tau = sigma = 0.99 / sqrt(||A||^2 + 8)`` with ``||A|| = 1``.
- ``sigpy``: ``sigpy.mri.app.TotalVariationRecon(y[None], ones, lam)`` (one coil of unit
  sensitivity); its PDHG takes ``sigma = 1`` and ``tau = 1 / lambda_max`` from 30 power
  iterations, which the user pays before the first iteration, so they count in its time.
- ``shipped`` (for information): ``napari_genreg.recon.reconstruct(problem, "tv", lam=...)``,
  the isotropic TV the package ships, with the same weight (``lam / noise_sigma**2`` in its units).
- ``ours_sigpy_steps`` (for information): ``ours`` with sigpy's step split, ``sigma = 1`` and
  ``tau = 1/9``, which separates the effect of the step sizes from that of the implementation.

Each iteration is timed on its own (PSNR is computed between iterations, outside the clock). A
reference run of ``--iterations`` iterations gives each solver's final PSNR; the target is the
lower of the two anisotropic finals minus 0.1 dB, and each solver's time to target is the
wall time of the iterations up to the first one that reaches it (best of ``--repeats`` runs,
solvers interleaved). torch, numpy and numba are limited to ``--threads`` threads.

Run: ``.venv/bin/python benchmarks/tv_vs_sigpy.py`` (about 2 minutes on 2 cores); writes
``benchmarks/results/tv_vs_sigpy.json`` and ``.md``. ``--quick`` is a smoke run writing
``tv_vs_sigpy_quick.*``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import _machine

# numpy, torch, sigpy and napari_genreg are imported inside the functions, after main() has
# pinned the thread pools (_machine.pin_threads).

NAME = "tv_vs_sigpy"
NOISE = 0.01
ACCELERATION = 4
TARGET_MARGIN_DB = 0.1
SOLVERS = ("ours", "sigpy", "shipped", "ours_sigpy_steps")


@dataclass
class Trace:
    """One run of one solver.

    Attributes
    ----------
    setup_s
        One-off work before the first iteration (sigpy: the whole constructor).
    power_s
        Of ``setup_s``, sigpy's power iteration for its step size (0 for ours).
    seconds
        Cumulative wall time after each iteration, setup excluded.
    psnr
        PSNR (dB) after each iteration; empty when not recorded.
    """

    setup_s: float
    power_s: float
    seconds: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)

    @property
    def per_iteration(self) -> list[float]:
        return [b - a for a, b in zip([0.0, *self.seconds[:-1]], self.seconds, strict=True)]


def make_problem(size: int, mask_name: str):
    """The reconstruction problem: brain sample, noise 0.01, 4x mask, one coil."""
    from napari_genreg.io import simulate_kspace
    from napari_genreg.physics.masks import make_mask
    from napari_genreg.recon import build_problem
    from napari_genreg.samples import load_image

    image = load_image("brain", size)
    data = simulate_kspace(image, noise_sigma=NOISE, seed=0, source=f"brain {size}")
    mask = make_mask(mask_name, (size, size), acceleration=ACCELERATION, seed=0)
    return build_problem(data, mask)


def _drive(
    step: Callable[[], None],
    image: Callable[[], object],
    iterations: int,
    reference,
    record: bool,
    trace: Trace,
) -> Trace:
    from napari_genreg.metrics import psnr

    total = 0.0
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        total += time.perf_counter() - start
        trace.seconds.append(total)
        if record:
            trace.psnr.append(psnr(reference, image()))
    return trace


def run_ours(
    problem, lam: float, iterations: int, record: bool, *, sigpy_steps: bool = False
) -> Trace:
    """Anisotropic TV by our PDHG, built from the library's pieces (see the module docstring).

    With ``sigpy_steps`` the steps are sigpy's split, ``sigma = 1`` and ``tau = 1 / (1 + 8)``
    (the bound that its power iteration estimates), instead of ``tau = sigma``.
    """
    from napari_genreg.physics.operators import masked_fourier
    from napari_genreg.regularizers.functionals import SquaredDistance
    from napari_genreg.regularizers.tv import GRADIENT, GRADIENT_NORM_SQUARED, tv_norm
    from napari_genreg.solvers import pdhg

    start = time.perf_counter()
    op = masked_fourier(problem.mask)
    step = 0.99 / (1.0 + GRADIENT_NORM_SQUARED) ** 0.5  # ||A||^2 = 1 for one coil
    tau, sigma = (1.0 / (1.0 + GRADIENT_NORM_SQUARED), 1.0) if sigpy_steps else (step, step)
    terms = [(op, SquaredDistance(problem.y)), (GRADIENT, tv_norm(lam, isotropic=False))]
    states = pdhg(terms, op.adjoint(problem.y), tau=tau, sigma=sigma)
    trace = Trace(time.perf_counter() - start, 0.0)
    current = []

    def advance() -> None:
        current[:] = [next(states)]

    return _drive(
        advance, lambda: current[0].x.abs().numpy(), iterations, problem.reference, record, trace
    )


def run_sigpy(problem, lam: float, iterations: int, record: bool) -> Trace:
    """sigpy's TotalVariationRecon, one iteration at a time as ``App.run`` does it."""
    import numpy as np
    import sigpy.app
    import sigpy.mri

    y = problem.y.cpu().numpy()[np.newaxis]  # (1, H, W): one coil
    maps = np.ones_like(y)
    power = []
    max_eig_run = sigpy.app.MaxEig.run

    def timed_run(self):
        start = time.perf_counter()
        out = max_eig_run(self)
        power.append(time.perf_counter() - start)
        return out

    # sigpy draws the power iteration's start vector from numpy's global RNG: seed it for
    # repeatable step sizes and put the caller's state back afterwards.
    rng_state = np.random.get_state()  # noqa: NPY002
    np.random.seed(0)  # noqa: NPY002
    sigpy.app.MaxEig.run = timed_run
    try:
        start = time.perf_counter()
        app = sigpy.mri.app.TotalVariationRecon(y, maps, lam, max_iter=iterations, show_pbar=False)
        setup = time.perf_counter() - start
    finally:
        sigpy.app.MaxEig.run = max_eig_run
        np.random.set_state(rng_state)  # noqa: NPY002
    trace = Trace(setup, sum(power))

    def advance() -> None:  # the body of sigpy.app.App.run, without the progress bar
        app._pre_update()
        app.alg.update()
        app._post_update()

    return _drive(advance, lambda: np.abs(app.x), iterations, problem.reference, record, trace)


def run_shipped(problem, lam: float, iterations: int, record: bool) -> Trace:
    """The shipped isotropic TV, ``recon.reconstruct``; its callback time is taken off."""
    from napari_genreg.metrics import psnr
    from napari_genreg.recon import reconstruct

    trace = Trace(0.0, 0.0)
    paused = 0.0
    start = time.perf_counter()

    def on_state(state) -> None:
        nonlocal paused
        enter = time.perf_counter()
        trace.seconds.append(enter - start - paused)
        if record:
            trace.psnr.append(psnr(problem.reference, state.x.abs().numpy()))
        paused += time.perf_counter() - enter

    reconstruct(
        problem, "tv", lam=lam / problem.noise_sigma**2, iterations=iterations, on_state=on_state
    )
    return trace


def run_ours_sigpy_steps(problem, lam: float, iterations: int, record: bool) -> Trace:
    return run_ours(problem, lam, iterations, record, sigpy_steps=True)


RUNNERS = {
    "ours": run_ours,
    "sigpy": run_sigpy,
    "shipped": run_shipped,
    "ours_sigpy_steps": run_ours_sigpy_steps,
}


ALTERNATIVE = "alternative: "


def breakdown(problem, lam: float, seconds: float = 4.0) -> dict[str, float]:
    """Median microseconds of each piece of one iteration of ours, each timed on its own.

    The pieces are called in turn, round after round, so that the machine's load affects all
    of them alike. Entries starting with :data:`ALTERNATIVE` time a formula that gives the same
    result as the piece above it without a complex ``abs`` (a ``hypot`` per entry) or a division
    by a real tensor promoted to complex; they are checked against the library's result.
    """
    import torch

    from napari_genreg.physics.operators import masked_fourier
    from napari_genreg.regularizers.functionals import SquaredDistance
    from napari_genreg.regularizers.tv import GRADIENT, tv_norm
    from napari_genreg.solvers import pdhg

    op = masked_fourier(problem.mask)
    data, prior = SquaredDistance(problem.y), tv_norm(lam, isotropic=False)
    states = pdhg([(op, data), (GRADIENT, prior)], op.adjoint(problem.y), tau=0.33, sigma=0.33)
    for _ in range(10):
        x = next(states).x
    k, g = op(x), GRADIENT(x)

    def projection(p):  # prox_conj of lam * sum |p_i|: p * lam / max(lam, |p|)
        scale = lam * torch.rsqrt((p.real.square() + p.imag.square()).clamp_min(lam * lam))
        return torch.view_as_complex(torch.view_as_real(p) * scale.unsqueeze(-1))

    def data_value(u):
        return 0.5 * torch.view_as_real(u - problem.y).square().sum()

    def tv_value(u):
        return lam * (u.real.square() + u.imag.square()).sqrt().sum()

    checks = [
        (projection(g), prior.prox_conj(g, 0.33)),
        (data_value(k), data.value(k)),
        (tv_value(g), prior.value(g)),
    ]
    for alternative, library in checks:  # the same result, not a timing check
        torch.testing.assert_close(alternative, library, rtol=1e-4, atol=1e-6)
    pieces = {
        "whole iteration": lambda: next(states),
        "A x (masked_fourier forward)": lambda: op(x),
        "A^H p (adjoint)": lambda: op.adjoint(k),
        "D x (finite differences)": lambda: GRADIENT(x),
        "D^H q": lambda: GRADIENT.adjoint(g),
        "prox_conj, data term": lambda: data.prox_conj(k, 0.33),
        "prox_conj, TV term (l1 ball projection)": lambda: prior.prox_conj(g, 0.33),
        ALTERNATIVE + "p * lam * rsqrt(max(lam^2, re^2 + im^2))": lambda: projection(g),
        "objective, data term": lambda: data.value(k),
        ALTERNATIVE + "view_as_real(u - y).square().sum()": lambda: data_value(k),
        "objective, TV term": lambda: prior.value(g),
        ALTERNATIVE + "sqrt(re^2 + im^2).sum()": lambda: tv_value(g),
        "vector updates (p + s u, 2 new - old, x - t grad)": lambda: (
            k + 0.33 * k,
            g + 0.33 * g,
            2 * k - k,
            2 * g - g,
            x - 0.33 * x,
            k + g[0],
        ),
    }
    timed, _ = _machine.round_robin(pieces, seconds, warmup=5)
    return {name: 1e6 * median for name, (median, _) in timed.items()}


def first_reaching(psnrs: list[float], target: float) -> int | None:
    """1-based iteration at which ``psnrs`` first reaches ``target`` (None if never)."""
    return next((i + 1 for i, value in enumerate(psnrs) if value >= target), None)


def curve_points(n: int) -> list[int]:
    """Iterations kept in the JSON curves: all up to 20, every 5th to 100, every 25th after."""
    keep = [*range(1, min(n, 20) + 1), *range(25, min(n, 100) + 1, 5), *range(125, n + 1, 25)]
    return sorted({*keep, n})


def bench_case(size: int, mask_name: str, lam: float, iterations: int, repeats: int) -> dict:
    problem = make_problem(size, mask_name)
    for name in SOLVERS:  # warm up: numba compiles sigpy's soft threshold, FFT plans are made
        RUNNERS[name](problem, lam, 3, record=False)

    reference = {}
    for name in SOLVERS:
        reference[name] = RUNNERS[name](problem, lam, iterations, record=True)
    finals = {name: trace.psnr[-1] for name, trace in reference.items()}
    target = min(finals["ours"], finals["sigpy"]) - TARGET_MARGIN_DB
    reach = {name: first_reaching(trace.psnr, target) for name, trace in reference.items()}

    runs = {name: [trace] for name, trace in reference.items()}
    for r in range(1, repeats):
        order = SOLVERS[r % len(SOLVERS) :] + SOLVERS[: r % len(SOLVERS)]
        for name in order:  # the solvers are deterministic: run each to its target only
            runs[name].append(RUNNERS[name](problem, lam, reach[name] or 5, record=False))

    solvers = {}
    for name, traces in runs.items():
        k = reach[name]
        per_iteration = [t for trace in traces for t in trace.per_iteration]
        to_target = None if k is None else [t.power_s + t.seconds[k - 1] for t in traces]
        kept = curve_points(iterations)
        ref = reference[name]
        solvers[name] = {
            "final_psnr_db": finals[name],
            "iterations_to_target": k,
            "seconds_to_target_best": None if to_target is None else min(to_target),
            "seconds_to_target_runs": to_target,
            "iteration_ms_median": 1e3 * statistics.median(per_iteration),
            "setup_s_best": min(t.setup_s for t in traces),
            "power_iteration_s_best": min(t.power_s for t in traces),
            "reference_run_s": ref.seconds[-1],
            "curve": {
                "iteration": kept,
                "seconds": [round(ref.seconds[i - 1], 6) for i in kept],
                "psnr_db": [round(ref.psnr[i - 1], 4) for i in kept],
            },
        }
    return {
        "size": size,
        "mask": f"{mask_name} {ACCELERATION}x",
        "achieved_acceleration": float(problem.mask.size / problem.mask.sum()),
        "noise_sigma_absolute": problem.noise_sigma,
        "zero_filled_psnr_db": _zero_filled_psnr(problem),
        "target_psnr_db": target,
        "solvers": solvers,
        "ours_breakdown_us": breakdown(problem, lam),
    }


def _zero_filled_psnr(problem) -> float:
    from napari_genreg.metrics import psnr

    return psnr(problem.reference, problem.zero_filled().abs().numpy())


def _s(value: float | None, digits: int = 3) -> str:
    return "not reached" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "## Anisotropic TV: napari_genreg PDHG vs sigpy `TotalVariationRecon`",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {_machine.machine_line(result['machine'])}, "
        f"at end {result['load_average_end'][0]:.2f}.  ",
        f"Threads: torch, numpy/BLAS and numba limited to {s['threads']}.  ",
        f"Problem: brain sample, one coil, noise {NOISE} (relative), weight lam = mu = "
        f"{s['lam']} on images in [0, 1], masks seed 0; reference run {s['iterations']} "
        f"iterations; target = lower final PSNR of ours/sigpy - {TARGET_MARGIN_DB} dB; "
        f"times best of {s['repeats']} (solvers interleaved). sigpy's time includes its power "
        "iteration (30 iterations for the step size).",
        "",
        "| size | mask | target PSNR (dB) | ours: iterations | ours: time (s) "
        "| sigpy: iterations | sigpy: time (s) | sigpy: of which power iteration (s) "
        "| sigpy time / ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        ours, sp = case["solvers"]["ours"], case["solvers"]["sigpy"]
        ratio = (
            "n/a"
            if ours["seconds_to_target_best"] is None or sp["seconds_to_target_best"] is None
            else f"{sp['seconds_to_target_best'] / ours['seconds_to_target_best']:.2f}"
        )
        lines.append(
            f"| {case['size']} | {case['mask']} | {case['target_psnr_db']:.2f} "
            f"| {ours['iterations_to_target']} | {_s(ours['seconds_to_target_best'])} "
            f"| {sp['iterations_to_target']} | {_s(sp['seconds_to_target_best'])} "
            f"| {sp['power_iteration_s_best']:.3f} | {ratio} |"
        )
    lines += [
        "",
        "Per iteration (median over all timed iterations) and final PSNR after the reference "
        'run; `shipped` is `recon.reconstruct(problem, "tv")`, isotropic TV with the same '
        "weight, for information (its time to the same target in the last columns); the last "
        "column runs ours with sigpy's step split (sigma = 1, tau = 1/9) instead of "
        "tau = sigma = 0.99/3.",
        "",
        "| size | mask | zero-filled PSNR (dB) | ours: ms/iter | sigpy: ms/iter "
        "| shipped: ms/iter | ours: final PSNR | sigpy: final PSNR | shipped: final PSNR "
        "| shipped: iterations to target | shipped: time to target (s) "
        "| ours with sigpy's steps: iterations to target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        o, sp, sh, os_ = (case["solvers"][n] for n in SOLVERS)
        lines.append(
            f"| {case['size']} | {case['mask']} | {case['zero_filled_psnr_db']:.2f} "
            f"| {o['iteration_ms_median']:.2f} | {sp['iteration_ms_median']:.2f} "
            f"| {sh['iteration_ms_median']:.2f} | {o['final_psnr_db']:.2f} "
            f"| {sp['final_psnr_db']:.2f} | {sh['final_psnr_db']:.2f} "
            f"| {sh['iterations_to_target'] or 'not reached'} "
            f"| {_s(sh['seconds_to_target_best'])} "
            f"| {os_['iterations_to_target'] or 'not reached'} |"
        )
    cases = result["cases"]
    lines += [
        "",
        "Where one iteration of ours goes: each piece timed on its own (microseconds, median, "
        "pieces called in turn); the objective is evaluated at every iteration by "
        "`solvers.pdhg`. `alternative:` rows time a formula giving the same result as the row "
        "above (checked) without complex `abs` or complex division.",
        "",
        "| piece | " + " | ".join(f"{c['size']} {c['mask']}" for c in cases) + " |",
        "|---" * (len(cases) + 1) + "|",
    ]
    for piece in cases[0]["ours_breakdown_us"]:
        values = " | ".join(f"{c['ours_breakdown_us'][piece]:.0f}" for c in cases)
        lines.append(f"| {piece} | {values} |")
    sums = [
        sum(
            v
            for k, v in c["ours_breakdown_us"].items()
            if k != "whole iteration" and not k.startswith(ALTERNATIVE)
        )
        for c in cases
    ]
    lines.append(
        "| sum of the pieces (no alternatives) | " + " | ".join(f"{v:.0f}" for v in sums) + " |"
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 px, Poisson, 60 iterations")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch and numpy")
    parser.add_argument("--iterations", type=int, default=1000, help="reference run length")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (best is kept)")
    parser.add_argument("--lam", type=float, default=0.01, help="TV weight (images in [0, 1])")
    args = parser.parse_args()
    _machine.pin_threads(args.threads)

    cases = [(size, mask) for size in (128, 256) for mask in ("poisson", "random")]
    if args.quick:
        cases, args.iterations, args.repeats = [(128, "poisson")], 60, 2
    machine = _machine.machine_info()
    command = _machine.command_line()
    results = []
    start = time.perf_counter()
    for size, mask in cases:
        results.append(bench_case(size, mask, args.lam, args.iterations, args.repeats))
        print(f"{size} {mask}: done after {time.perf_counter() - start:.0f} s", flush=True)
    result = {
        "benchmark": NAME,
        "command": command,
        "machine": machine,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "wall_time_s": time.perf_counter() - start,
        "settings": {
            "threads": args.threads,
            "iterations": args.iterations,
            "repeats": args.repeats,
            "lam": args.lam,
            "noise_relative": NOISE,
            "acceleration": ACCELERATION,
            "target_margin_db": TARGET_MARGIN_DB,
        },
        "cases": results,
    }
    stem = NAME + ("_quick" if args.quick else "")
    _machine.publish(stem, result, markdown(result))


if __name__ == "__main__":
    main()
