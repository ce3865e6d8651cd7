"""Measure the weight ``lam`` and the iteration defaults of the generative methods.

The objective ``1/(2 sigma^2) ||Ax - y||^2 + lam [log det Sigma(z) + 1/2 ||Px/c - G(z)||^2_Sigma^-1]
+ 1/2 ||z||^2`` is the negative log posterior under the learned prior at ``lam = 1`` (with the true
noise level), so ``lam = 1`` is the rule a Bayesian would choose without any tuning. This script
checks it: for each weight on a grid it reconstructs the three shipped Colin27 slices (the
validation subject of the built-in models: never trained on) under random 4x, radial 6x and
Poisson-disc 6x masks at relative noise 0.01 and 0.05, and records PSNR/SSIM (and the PSNR after
fewer iterations, for the iteration default). Candidate rules, one for all settings, are compared
by their mean PSNR over all settings: ``lam = c`` and ``lam = c * 0.01 / sigma_rel``; the table
shows what a per-setting tuning would gain. ``--rule`` then measures the automatic rule the
methods ship with (``napari_genreg.recon.generative.automatic_lam``). Zero-filling and TV (its
automatic weight) are the references.

It also times one outer iteration on 128 x 128 (one thread) and splits it into the decoder's
forward and backward passes (the z-step), the x-step (closed form or CG) and the objective.

Run (the results file lists the commands that produced it, about 16 minutes in all on one core):
``python benchmarks/generative_lambda.py --methods vae-structured,vae-diagonal,vae-identity,range``,
``... --methods vae-structured,vae-diagonal,vae-identity --lams 0.05,0.1,0.2`` and
``... --methods vae-structured,vae-diagonal,vae-identity,range --rule``; writes
``benchmarks/results/generative_lambda.json`` and ``.md`` (rows of methods and weights not
re-measured are kept; ``--report-only`` rewrites the ``.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _instrument import CGCounter
from _machine import RESULTS, command_line, machine_info, machine_line, pin_threads

LAMS = [0.25, 0.5, 1.0, 2.0, 4.0]
MASKS = [("random", 4), ("radial", 6), ("poisson", 6)]
NOISE = [0.01, 0.05]
CHECKPOINTS = [5, 10, 15, 20, 25, 30, 40]


def _problem(image, mask_name: str, acc: int, sigma: float):
    from napari_genreg.io import simulate_kspace
    from napari_genreg.physics.masks import make_mask
    from napari_genreg.recon import build_problem

    mask = make_mask(mask_name, image.shape, acceleration=acc, seed=0)
    data = simulate_kspace(image[None], noise_sigma=sigma, seed=1, source="colin27")
    return build_problem(data, mask)


def sweep(
    methods: list[str], iterations: int | None, lams: list[float | None], quick: bool = False
) -> list[dict]:
    from napari_genreg.metrics import evaluate
    from napari_genreg.recon import get_method, iterate, reconstruct, resolve_lam
    from napari_genreg.recon.generative import model_spec_of
    from napari_genreg.samples import load_stack

    rows = []
    cg = CGCounter()
    images = list(load_stack("brain"))[: 1 if quick else None]
    start = time.perf_counter()
    for mask_name, acc in MASKS[: 1 if quick else None]:
        for sigma in NOISE:
            for index, image in enumerate(images):
                problem = _problem(image, mask_name, acc, sigma)
                base = {"mask": f"{mask_name} {acc}x", "sigma": sigma, "image": index}
                for name in ("zero-filled", "tv"):
                    r = reconstruct(problem, name)
                    rows.append(
                        {
                            **base,
                            "method": name,
                            "lam": r.lam,
                            "psnr": r.metrics.psnr,
                            "ssim": r.metrics.ssim,
                            "seconds": r.seconds,
                        }
                    )
                for name in methods:
                    n = iterations or get_method(name).default_iterations
                    marks = sorted({c for c in CHECKPOINTS if c < n} | {n})
                    for lam in lams:
                        curve = {}
                        cg.take()
                        t0 = time.perf_counter()
                        used = resolve_lam(get_method(name), problem, lam)
                        for state in iterate(problem, name, lam=used, iterations=n):
                            if state.iteration in marks:
                                m = evaluate(problem.reference, problem.magnitude(state.x))
                                curve[state.iteration] = (m.psnr, m.ssim)
                        seconds = time.perf_counter() - t0
                        psnr, ssim = curve[n]
                        rows.append(
                            {
                                **base,
                                "method": name,
                                "lam": used,
                                "rule": lam is None,
                                "psnr": psnr,
                                "ssim": ssim,
                                "seconds": seconds,
                                "iterations": n,
                                "model": model_spec_of(get_method(name)),
                                "psnr_at": {str(k): v[0] for k, v in curve.items()},
                                "ssim_at": {str(k): v[1] for k, v in curve.items()},
                                "cg_per_x_step": cg.take(),
                            }
                        )
                print(
                    f"{base['mask']} sigma {sigma} image {index}: "
                    f"{time.perf_counter() - start:.0f} s",
                    flush=True,
                )
    return rows


def timing(name: str, repeats: int = 20) -> dict:
    """Seconds per outer iteration on 128 x 128 (Poisson 6x, sigma 0.01) and its parts."""
    import itertools

    import torch

    from napari_genreg.recon import get_method
    from napari_genreg.samples import load_stack
    from napari_genreg.solvers.alternating import x_step

    problem = _problem(load_stack("brain")[1], "poisson", 6, 0.01)
    method = get_method(name)
    solve = method.solve
    t0 = time.perf_counter()
    states = solve(problem, 1.0)
    first = next(states)
    t1 = time.perf_counter()
    list(itertools.islice(states, repeats))
    t2 = time.perf_counter()
    out = {
        "method": name,
        "setup_and_first_iteration_s": t1 - t0,
        "per_iteration_s": (t2 - t1) / repeats,
    }
    prior, normalised = solve.prior(problem)
    z = first.z.clone().requires_grad_(True)
    x = normalised.x0
    rounds = 10

    def clock(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(rounds):
            fn()
        return (time.perf_counter() - t) / rounds

    if name == "range":
        starts = 1 + solve.settings.restarts

        def forward_backward() -> None:
            mean = prior.decode_mean(z.expand(starts, -1, -1, -1))
            residual = normalised.op(prior.restore_phase(mean)) - normalised.y
            torch.autograd.grad(residual.abs().square().sum(), z)

        out["starts"] = starts
        out["decoder_mean_all_starts_forward_backward_s"] = clock(forward_backward)
        out["operator_normal_s"] = clock(lambda: normalised.op.normal(x))
        return out

    def forward() -> None:
        with torch.no_grad():
            prior.decode(z)

    def forward_backward() -> None:
        decoded = prior.decode(z)
        torch.autograd.grad(prior.terms(x, z, decoded).value().sum(), z)

    with torch.no_grad():
        decoded = prior.decode(z)
    mu = normalised.noise_sigma**2
    settings = solve.settings

    def step() -> None:
        with torch.no_grad():
            x_step(
                normalised.op,
                normalised.y,
                prior,
                decoded,
                mu,
                x,
                steps=settings.cg_steps,
                reduction=settings.cg_reduction,
                shifted_solve=normalised.shifted_solve,
                data_diagonal=normalised.data_diagonal,
            )

    def objective() -> None:
        with torch.no_grad():
            (normalised.op(x) - normalised.y).abs().square().sum()
            prior.terms(x, z, decoded)

    out.update(
        {
            "z_steps": settings.z_steps,
            "cg_steps": settings.cg_steps,
            "cg_reduction": settings.cg_reduction,
            "decoder_forward_s": clock(forward),
            "decoder_forward_backward_s": clock(forward_backward),
            "x_step_s": clock(step),
            "x_step_kind": "closed form (FFT)"
            if prior.constant_variance(decoded) is not None
            else _cg_label(settings.cg_steps, settings.cg_reduction),
            "objective_s": clock(objective),
            "operator_normal_s": clock(lambda: normalised.op.normal(x)),
        }
    )
    return out


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1.0)


def _cg_label(steps: int, reduction: float | None) -> str:
    if reduction is None:
        return f"{steps} CG iterations, Jacobi"
    return f"Jacobi-preconditioned CG until its residual falls to {reduction:g} x, at most {steps}"


def _at(row: dict, n: int, key: str = "psnr") -> float:
    """``row``'s PSNR (or SSIM) after ``n`` iterations (rows that ran longer record it); NaN
    for a row that did not record ``n`` (a shorter run)."""
    if row["iterations"] == n:
        return row[key]
    return row.get(f"{key}_at", {}).get(str(n), float("nan"))


def rule_table(mine: list[dict], settings: list[tuple]) -> list[str]:
    """Mean PSNR of candidate rules: ``lam = c`` and ``lam = c * 0.01 / sigma_rel``."""
    import numpy as np

    lams = sorted({r["lam"] for r in mine})

    def mean_for(rule) -> float | None:
        values = []
        for setting in settings:
            want = rule(setting[1])
            sel = [
                r["psnr"]
                for r in mine
                if (r["mask"], r["sigma"]) == setting and _close(r["lam"], want)
            ]
            if not sel:
                return None
            values.append(np.mean(sel))
        return float(np.mean(values))

    rows = []
    for c in lams:
        constant = mean_for(lambda sigma, c=c: c)
        adaptive = mean_for(lambda sigma, c=c: c * 0.01 / sigma)
        rows.append((c, constant, adaptive))
    cells = [
        f"| {c:g} | {'' if a is None else f'{a:.2f}'} | {'' if b is None else f'{b:.2f}'} |"
        for c, a, b in rows
    ]
    return [
        "Candidate rules (mean PSNR over all settings; empty where a weight was not measured):",
        "",
        "| c | lam = c | lam = c * 0.01 / sigma_rel |",
        "|---|---|---|",
        *cells,
        "",
    ]


def summarise(rows: list[dict], timings: list[dict], runs: list[dict]) -> str:
    import numpy as np

    lines = [
        "# Generative methods: the weight lam and the iteration defaults",
        "",
        "Commands (in order; each replaces the rows of the methods and weights it measured, "
        "the timings of its methods, and the zero-filled and TV references):",
        "",
        *(f"- `{run['command']}` ({machine_line(run['machine'])})" for run in runs),
        "",
        "Images: the 3 shipped Colin27 slices (128 x 128; the held-out validation subject of the",
        "built-in models); masks seed 0, noise seed 1 (relative to the image maximum); default",
        "iterations of each method unless stated. Mean PSNR (dB) over the images.",
        "",
    ]
    settings = list(dict.fromkeys((r["mask"], r["sigma"]) for r in rows))
    refs = {}
    for name in ("zero-filled", "tv"):
        refs[name] = {
            s: np.mean(
                [r["psnr"] for r in rows if r["method"] == name and (r["mask"], r["sigma"]) == s]
            )
            for s in settings
        }
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in refs]
    for method in methods:
        auto = [r for r in rows if r["method"] == method and r.get("rule")]
        mine = [r for r in rows if r["method"] == method and not r.get("rule")]
        lams = sorted({r["lam"] for r in mine})
        overall = {lam: np.mean([r["psnr"] for r in mine if r["lam"] == lam]) for lam in lams}
        ssim = {lam: np.mean([r["ssim"] for r in mine if r["lam"] == lam]) for lam in lams}
        best = max(overall, key=overall.get)
        n = mine[0]["iterations"]
        rule = f"; automatic rule: {np.mean([_at(r, n) for r in auto]):.2f} dB" if auto else ""
        lines += [
            f"## {method}: best single lam = {best} (mean PSNR {overall[best]:.2f} dB; "
            f"lam = 1: {overall.get(1.0, float('nan')):.2f} dB{rule}), {n} iterations",
            "",
            "| setting | zero-filled | TV | "
            + " | ".join(f"lam={lam:g}" for lam in lams)
            + " | loss of lam=1 vs own best | automatic rule (its mean lam) | its loss |",
            "|---|---|---|" + "---|" * (len(lams) + 3),
        ]
        for setting in settings:
            sel = [r for r in mine if (r["mask"], r["sigma"]) == setting]
            if not sel:
                continue
            means = {lam: np.mean([r["psnr"] for r in sel if r["lam"] == lam]) for lam in lams}
            cells = " | ".join(f"{means[lam]:.2f}" for lam in lams)
            loss = max(means.values()) - means.get(1.0, np.nan)
            chosen = [r for r in auto if (r["mask"], r["sigma"]) == setting]
            if chosen:
                value = np.mean([_at(r, n) for r in chosen])
                used = np.mean([r["lam"] for r in chosen])
                tail = f"{value:.2f} ({used:.3g}) | {max(means.values()) - value:.2f}"
            else:
                tail = " | "
            lines.append(
                f"| {setting[0]}, sigma {setting[1]} | {refs['zero-filled'][setting]:.2f} "
                f"| {refs['tv'][setting]:.2f} | {cells} | {loss:.2f} | {tail} |"
            )
        auto_ssim = f"{np.mean([_at(r, n, 'ssim') for r in auto]):.4f}" if auto else ""
        lines += [
            "| mean SSIM | | | "
            + " | ".join(f"{ssim[lam]:.4f}" for lam in lams)
            + f" | | {auto_ssim} | |",
            "",
        ]
        lines += rule_table(mine, settings)
        ones = auto or [r for r in mine if r["lam"] == 1.0 and "psnr_at" in r]
        label = "the automatic rule" if auto else "lam = 1"
        if ones:
            marks = sorted({int(k) for r in ones for k in r["psnr_at"]})
            curve = {k: np.mean([r["psnr_at"][str(k)] for r in ones]) for k in marks}
            seconds = np.mean([r["seconds"] for r in ones])
            runs_to = max(r["iterations"] for r in ones)
            solves = [r["cg_per_x_step"] for r in ones if r.get("cg_per_x_step") is not None]
            cg_note = f"; {np.mean(solves):.1f} CG iterations per x-step" if solves else ""
            lines += [
                f"Convergence with {label} (mean PSNR over all settings after k iterations; "
                f"{seconds:.2f} s per reconstruction of {runs_to} iterations{cg_note}):",
                "",
                "| k | " + " | ".join(str(k) for k in marks) + " |",
                "|---|" + "---|" * len(marks),
                "| PSNR | " + " | ".join(f"{curve[k]:.2f}" for k in marks) + " |",
                "",
            ]
    if timings:
        lines += [
            "## Time per outer iteration, 128 x 128, Poisson 6x (seconds, median of 10 calls)",
            "",
            "| method | per iteration | setup + first | decoder forward | forward + backward "
            "| x-step | objective | A^H A |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in timings:
            fb = t.get(
                "decoder_forward_backward_s",
                t.get("decoder_mean_all_starts_forward_backward_s", float("nan")),
            )
            lines.append(
                f"| {t['method']} | {t['per_iteration_s']:.3f} "
                f"| {t['setup_and_first_iteration_s']:.3f} "
                f"| {t.get('decoder_forward_s', float('nan')):.4f} | {fb:.4f} "
                f"| {t.get('x_step_s', float('nan')):.4f} "
                f"| {t.get('objective_s', float('nan')):.4f} | {t['operator_normal_s']:.5f} |"
            )
        lines += [
            "",
            "An outer iteration of vae-* costs `z_steps` decoder forward + backward passes (the "
            "z-step), one x-step and one objective; range costs one forward + backward of the "
            "mean decoder for all its starts at once (the encoder's latent and two random ones).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="vae-structured", help="comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=None, help="default: per method")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--model", default=None, help="another model for every method")
    parser.add_argument("--quick", action="store_true", help="a smoke run; writes nothing")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the .md from the .json; run nothing"
    )
    parser.add_argument(
        "--rule",
        action="store_true",
        help="measure only the automatic rule (rows of fixed weights are kept)",
    )
    parser.add_argument(
        "--lams",
        default=",".join(str(lam) for lam in LAMS),
        help="comma-separated weights; rows of other weights already in the results are kept",
    )
    args = parser.parse_args()
    pin_threads(args.threads)
    from napari_genreg.recon.generative import use_model

    with use_model(args.model):
        run(args)


def run(args: argparse.Namespace) -> None:
    methods = [m for m in args.methods.split(",") if m]
    lams: list[float | None] = [None] if args.rule else []
    lams += [float(v) for v in args.lams.split(",") if v and not args.rule]
    info = machine_info()
    command = command_line()
    out = RESULTS / "generative_lambda.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    if args.report_only:
        text = summarise(previous["rows"], previous["timings"], previous["runs"])
        (RESULTS / "generative_lambda.md").write_text(text)
        print(text)
        return
    keep = [
        r
        for r in previous.get("rows", [])
        if not (
            r["method"] in methods
            and ((r.get("rule") and None in lams) or (not r.get("rule") and r["lam"] in lams))
        )
    ]
    keep_t = [t for t in previous.get("timings", []) if t["method"] not in methods]
    timings = keep_t + [timing(m) for m in methods]
    for t in timings[len(keep_t) :]:
        print(json.dumps(t), flush=True)
    if args.quick:
        rows = sweep(methods, args.iterations, lams, quick=True)
        print(summarise(rows, timings, [{"command": command, "machine": info}]))
        return
    if args.timing_only:
        rows = previous.get("rows", [])
    else:
        fresh = sweep(methods, args.iterations, lams)
        refs = [r for r in fresh if r["method"] in ("zero-filled", "tv")]
        keep = [r for r in keep if r["method"] not in ("zero-filled", "tv")]
        rows = refs + keep + [r for r in fresh if r["method"] not in ("zero-filled", "tv")]
    RESULTS.mkdir(exist_ok=True)
    runs = [
        *previous.get("runs", []),
        {"command": command, "machine": info, "methods": methods, "lams": lams},
    ]
    record = {"runs": runs, "rows": rows, "timings": timings}
    out.write_text(json.dumps(record, indent=1) + "\n")
    text = summarise(rows, timings, runs)
    (RESULTS / "generative_lambda.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
