"""The poster's comparison on the validation split of the built-in data.

Every method of the comparison reconstructs the same slices under the same sampling and noise:

* methods: zero-filled, tv, wavelet, range, adapt, vn, vae-identity, vae-diagonal,
  vae-structured (each with its automatic weight and default iterations: nothing is tuned here);
* masks: 1-D ``random`` 4x and 8x, ``radial`` 6x, ``poisson`` 6x (default centre fractions:
  0.08 for random 4x, the vn's training setting, 0.0625 for random 8x);
* noise: sigma 0.01 and 0.05, relative to the image maximum (``simulate_kspace``);
* slices: ``--slices`` slices evenly spaced through ``val.npy`` of the prepared data
  (``napari-genreg prepare-data``: the Colin27 volume, in its three orientations; no model
  was trained on it). Masks and noise are seeded per slice, the same for every method.

It writes ``benchmarks/results/comparison.json`` (one row per reconstruction) and
``comparison.md``: the PSNR/SSIM table (mean and standard deviation over slices), the
generalisation experiment (the vn, trained for random 4x at sigma 0.01 only, against
vae-structured on every setting) and the covariance experiment (identity vs diagonal vs
structured: means and paired wins per slice).

Run: ``python benchmarks/comparison.py --data .cache-builtin/dataset128 --slices 24
--workers 2`` (``--device cuda`` on a GPU; ``--report-only`` rewrites the ``.md`` from the
``.json``). Rows already in the ``.json`` for the same (method, setting, slice) are kept unless
``--fresh``, so an interrupted run resumes; ``--redo tv`` measures one method's rows again
(after a change of its defaults) and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import RESULTS, command_line, machine_info, machine_line

METHODS = [
    "zero-filled",
    "tv",
    "wavelet",
    "range",
    "adapt",
    "vn",
    "vae-identity",
    "vae-diagonal",
    "vae-structured",
]
MASKS = [("random", 4), ("random", 8), ("radial", 6), ("poisson", 6)]
NOISE = [0.01, 0.05]
#: The vn's training setting (its model card): 1-D random 4x, centre 0.08, sigma 0.01.
VN_SETTING = ("random 4x", 0.01)


def slice_indices(count: int, total: int) -> list[int]:
    """``count`` indices evenly spaced through ``range(total)`` (ends included)."""
    import numpy as np

    if count >= total:
        return list(range(total))
    return sorted({round(float(v)) for v in np.linspace(0, total - 1, count)})


def _problem(image, mask_name: str, acc: int, sigma: float, index: int, device: str):
    from napari_genreg.io import simulate_kspace
    from napari_genreg.physics.masks import make_mask
    from napari_genreg.recon import build_problem

    mask = make_mask(mask_name, image.shape, acceleration=acc, seed=1000 + index)
    data = simulate_kspace(image[None], noise_sigma=sigma, seed=2000 + index, source="val")
    return build_problem(data, mask, device=device)


def _work(job: dict) -> list[dict]:
    """Reconstruct the slices of one worker; returns its rows (runs in a worker process)."""
    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    from napari_genreg.recon import reconstruct

    images = np.load(Path(job["data"]) / "val.npy", mmap_mode="r")
    done = {tuple(k) for k in job["done"]}
    partial = Path(job["partial"])
    rows = []
    for index in job["indices"]:
        image = np.asarray(images[index], dtype=np.float32)
        for mask_name, acc in MASKS:
            for sigma in NOISE:
                setting = f"{mask_name} {acc}x"
                problem = None
                for name in job["methods"]:
                    if (name, setting, sigma, index) in done:
                        continue
                    if problem is None:
                        problem = _problem(image, mask_name, acc, sigma, index, job["device"])
                    r = reconstruct(problem, name)
                    rows.append(
                        {
                            "method": name,
                            "mask": setting,
                            "sigma": sigma,
                            "slice": index,
                            "psnr": r.metrics.psnr,
                            "ssim": r.metrics.ssim,
                            "nmse": r.metrics.nmse,
                            "lam": r.lam,
                            "iterations": r.iterations,
                            "seconds": r.seconds,
                        }
                    )
        partial.write_text(json.dumps(rows))  # survives an interrupted run
        print(f"[{os.getpid()}] slice {index} done", flush=True)
    return rows


def _key(row: dict) -> tuple:
    return (row["method"], row["mask"], row["sigma"], row["slice"])


def _mean_std(values) -> tuple[float, float]:
    import numpy as np

    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def summarise(rows: list[dict], runs: list[dict]) -> str:
    import numpy as np

    settings = [(f"{m} {a}x", s) for m, a in MASKS for s in NOISE]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    slices = sorted({r["slice"] for r in rows})

    def cell(method, setting, key):
        return [
            r[key] for r in rows if r["method"] == method and (r["mask"], r["sigma"]) == setting
        ]

    lines = [
        "# The comparison: methods x masks x noise on the validation split",
        "",
        "Commands:",
        "",
        *(
            f"- `{run['command']}` ("
            + "; ".join(
                part
                for part in (
                    machine_line(run["machine"]) if "machine" in run else "",
                    run.get("note", ""),
                )
                if part
            )
            + ")"
            for run in runs
        ),
        "",
        f"Slices: {len(slices)} of the validation split (`val.npy` of `prepare-data`: the "
        "Colin27 volume in three orientations, never trained on), evenly spaced, indices "
        f"{', '.join(map(str, slices))}. Each method uses its automatic weight and default "
        "iterations; nothing was tuned on these slices. Noise sigma relative to the image "
        "maximum. Caveat: the automatic weight of the vae-* methods was measured on three "
        "slices of the same subject (benchmarks/results/generative_lambda.md), and the "
        "structured prior's off-diagonal bound was chosen by its validation bound on this "
        "subject (README, Generative priors).",
        "",
    ]
    for key, label, fmt in (
        ("psnr", "PSNR (dB)", "{:.2f} ± {:.2f}"),
        ("ssim", "SSIM", "{:.3f} ± {:.3f}"),
    ):
        lines += [
            f"## {label}: mean ± standard deviation over slices",
            "",
            "| method | " + " | ".join(f"{m}, σ {s}" for m, s in settings) + " | mean |",
            "|---|" + "---|" * (len(settings) + 1),
        ]
        for method in methods:
            cells, means = [], []
            for setting in settings:
                values = cell(method, setting, key)
                if values:
                    mean, std = _mean_std(values)
                    cells.append(fmt.format(mean, std))
                    means.append(mean)
                else:
                    cells.append("")
            overall = f"{np.mean(means):.{2 if key == 'psnr' else 3}f}" if means else ""
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {overall} |")
        lines.append("")
    seconds = {m: np.median([r["seconds"] for r in rows if r["method"] == m]) for m in methods}
    lines += [
        "Median seconds per reconstruction: "
        + ", ".join(f"{m} {seconds[m]:.2f}" for m in methods)
        + ".",
        "",
    ]

    def paired(a: str, b: str, setting) -> tuple[float, int, int] | None:
        x = {
            r["slice"]: r["psnr"]
            for r in rows
            if r["method"] == a and (r["mask"], r["sigma"]) == setting
        }
        y = {
            r["slice"]: r["psnr"]
            for r in rows
            if r["method"] == b and (r["mask"], r["sigma"]) == setting
        }
        common = sorted(set(x) & set(y))
        if not common:
            return None
        diff = np.array([x[i] - y[i] for i in common])
        return float(diff.mean()), int((diff > 0).sum()), len(common)

    if "vn" in methods and "vae-structured" in methods:
        lines += [
            "## Generalisation: vn (trained for random 4x, σ 0.01) vs vae-structured",
            "",
            "PSNR difference vae-structured − vn (dB, mean over slices) and the number of slices "
            "where vae-structured is better. The vn's own setting is marked *.",
            "",
            "| setting | vn | vae-structured | difference | vae-structured better |",
            "|---|---|---|---|---|",
        ]
        for setting in settings:
            p = paired("vae-structured", "vn", setting)
            if p is None:
                continue
            mark = " *" if setting == VN_SETTING else ""
            vn = np.mean(cell("vn", setting, "psnr"))
            vs = np.mean(cell("vae-structured", setting, "psnr"))
            lines.append(
                f"| {setting[0]}, σ {setting[1]}{mark} | {vn:.2f} | {vs:.2f} | {p[0]:+.2f} "
                f"| {p[1]}/{p[2]} |"
            )
        lines.append("")
    kinds = [m for m in ("vae-identity", "vae-diagonal", "vae-structured") if m in methods]
    if len(kinds) == 3:
        lines += [
            "## The covariance experiment: identity vs diagonal vs structured",
            "",
            "Mean PSNR per setting, and paired comparisons over all reconstructions "
            "(settings × slices).",
            "",
            "| setting | " + " | ".join(kinds) + " |",
            "|---|" + "---|" * len(kinds),
        ]
        for setting in settings:
            means = [np.mean(cell(k, setting, "psnr")) for k in kinds]
            lines.append(
                f"| {setting[0]}, σ {setting[1]} | " + " | ".join(f"{v:.2f}" for v in means) + " |"
            )
        lines.append("")
        for a, b in (
            ("vae-structured", "vae-diagonal"),
            ("vae-structured", "vae-identity"),
            ("vae-diagonal", "vae-identity"),
        ):
            diffs, wins, total = [], 0, 0
            for setting in settings:
                p = paired(a, b, setting)
                if p is not None:
                    n = p[2]
                    diffs.append(p[0] * n)
                    wins += p[1]
                    total += n
            if total:
                lines.append(
                    f"- {a} − {b}: {sum(diffs) / total:+.2f} dB on average; {a} better in "
                    f"{wins} of {total} reconstructions."
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=".cache-builtin/dataset128", help="prepared data folder")
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--workers", type=int, default=1, help="processes (slices are split)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(RESULTS / "comparison.json"))
    parser.add_argument("--fresh", action="store_true", help="forget rows already measured")
    parser.add_argument(
        "--redo",
        default="",
        help="comma-separated methods whose rows are forgotten and measured again (after a "
        "change of their defaults); the other methods' rows are kept",
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.exists() and not args.fresh else {}
    rows, runs = previous.get("rows", []), previous.get("runs", [])
    redo = {m for m in args.redo.split(",") if m}
    rows = [r for r in rows if r["method"] not in redo]
    parts = sorted(out.parent.glob(out.stem + ".part*.json"))
    if parts:  # rows of an interrupted run
        seen = {_key(r) for r in rows}
        for part in parts:
            rows += [r for r in json.loads(part.read_text()) if _key(r) not in seen]
        out.write_text(json.dumps({"rows": rows, "runs": runs}, indent=1))
        for part in parts:
            part.unlink()
    if not args.report_only:
        import multiprocessing as mp

        import numpy as np

        total = np.load(Path(args.data) / "val.npy", mmap_mode="r").shape[0]
        indices = slice_indices(args.slices, total)
        methods = [m for m in args.methods.split(",") if m]
        done = [_key(r) for r in rows]
        jobs = [
            {
                "data": args.data,
                "indices": indices[w :: args.workers],
                "methods": methods,
                "device": args.device,
                "threads": args.threads,
                "done": done,
                "partial": str(out.parent / f"{out.stem}.part{w}.json"),
            }
            for w in range(args.workers)
        ]
        start = time.perf_counter()
        info = machine_info()
        if args.workers == 1:
            new = _work(jobs[0])
        else:
            with mp.get_context("spawn").Pool(args.workers) as pool:
                new = [row for part in pool.map(_work, jobs) for row in part]
        rows = rows + new
        info["device"] = args.device
        if args.device.startswith("cuda"):
            import torch

            info["device"] = f"{args.device} ({torch.cuda.get_device_name(args.device)})"
        info["workers"] = args.workers
        info["wall_seconds"] = round(time.perf_counter() - start, 1)
        runs = [*runs, {"command": command_line(), "machine": info}]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "runs": runs}, indent=1))
    for part in out.parent.glob(out.stem + ".part*.json"):
        part.unlink()
    text = summarise(rows, runs)
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
