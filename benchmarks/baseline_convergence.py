"""How far the classical baselines' default iterations stop from convergence, and whether it
matters for the image.

``tv`` (PDHG) and ``wavelet`` (Daubechies-4 l1 at random shifts, FISTA) run a fixed number of
iterations by default. This runs each on validation slices (the comparison's data, masks,
seeds and noise: every setting of ``benchmarks/comparison.py``) at several iteration counts
with its automatic weight, and reports the PSNR against the longest run and the objective's
distance from it: how far from the minimiser a count stops, and whether the minimiser itself is
the better image. It chose ``tv``'s default (:data:`napari_genreg.recon.methods.TV_ITERATIONS`).

Run: ``python benchmarks/baseline_convergence.py`` (about 6 minutes on one CPU thread); writes
``benchmarks/results/baseline_convergence.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import command_line, machine_info, machine_line, publish

NAME = "baseline_convergence"
#: Iteration counts per method; the last is the reference.
RUNS = {"tv": (200, 500, 1000, 3000), "wavelet": (100, 300, 1500)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=".cache-builtin/dataset128", help="prepared data folder")
    parser.add_argument("--slices", type=int, default=6, help="evenly spaced validation slices")
    args = parser.parse_args()

    import numpy as np

    from comparison import MASKS, NOISE, _problem, slice_indices
    from napari_genreg.recon import reconstruct

    info = machine_info()
    images = np.load(Path(args.data) / "val.npy", mmap_mode="r")
    indices = slice_indices(args.slices, len(images))
    rows = []
    for index in indices:
        image = np.asarray(images[index], dtype=np.float32)
        for (mask, acc), sigma in itertools.product(MASKS, NOISE):
            problem = _problem(image, mask, acc, sigma, index, "cpu")
            for name, counts in RUNS.items():
                results = {n: reconstruct(problem, name, iterations=n) for n in counts}
                final = results[counts[-1]].objectives[-1]
                for n, r in results.items():
                    rows.append(
                        {
                            "method": name,
                            "slice": index,
                            "setting": f"{mask} {acc}x, σ {sigma}",
                            "iterations": n,
                            "psnr": r.metrics.psnr,
                            "objective_gap": (r.objectives[-1] - final) / abs(final),
                        }
                    )
            print(f"slice {index} {mask} {acc}x sigma {sigma} done", flush=True)
    publish(NAME, {"command": command_line(), "machine": info, "rows": rows}, _report(rows, info))


def _report(rows: list[dict], info: dict) -> str:
    import numpy as np

    lines = [
        "# Convergence of the classical baselines at their iteration counts",
        "",
        f"Command: `{command_line()}` ({machine_line(info)})",
        "",
        "Validation slices (the comparison's problems: its masks, seeds and noise), each method "
        "with its automatic weight. PSNR in dB against the reference (the method's longest run); "
        "gap = (objective - reference objective) / |reference objective|.",
        "",
        "| method | iterations | mean PSNR | PSNR - reference PSNR (min / mean / max) "
        "| median gap |",
        "|---|---|---|---|---|",
    ]
    for name, counts in RUNS.items():
        last = {
            (r["slice"], r["setting"]): r["psnr"]
            for r in rows
            if r["method"] == name and r["iterations"] == counts[-1]
        }
        for n in counts:
            mine = [r for r in rows if r["method"] == name and r["iterations"] == n]
            diff = np.array([r["psnr"] - last[(r["slice"], r["setting"])] for r in mine])
            psnr = np.mean([r["psnr"] for r in mine])
            gap = np.median([r["objective_gap"] for r in mine])
            lines.append(
                f"| {name} | {n} | {psnr:.2f} | {diff.min():+.2f} / {diff.mean():+.2f} / "
                f"{diff.max():+.2f} | {gap:.2e} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
