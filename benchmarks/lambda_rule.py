"""Measure the constant of the automatic weight rule ``lam = c / sigma`` for TV and wavelets.

For each constant ``c`` on a grid, reconstruct a set of slices under several masks and noise
levels and record PSNR/SSIM; the chosen constant maximises the mean PSNR over *all* settings
(one rule for every setting, not one per setting), and the table shows how far each setting's
own best constant is from it, i.e. what a per-setting tuning would gain.

Images: the three shipped Colin27 slices (128x128) and eight slices of nibabel's bundled EPI
test volume (``example4d.nii.gz``, another contrast and resolution), none of them a test image.

Run: ``python benchmarks/lambda_rule.py`` (about 10 minutes on 2 CPU cores); writes
``benchmarks/results/lambda_rule.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_genreg.io import simulate_kspace
from napari_genreg.physics.masks import make_mask
from napari_genreg.recon import build_problem, reconstruct
from napari_genreg.recon import methods as recon_methods
from napari_genreg.samples import load_stack

RESULTS = Path(__file__).parent / "results"
GRIDS = {
    "tv": [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0],
    "wavelet": [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0],
}
MASKS = [("random", 4), ("random", 8), ("radial", 6), ("poisson", 6)]
NOISE = [0.01, 0.05]


def calibration_images() -> list[tuple[str, np.ndarray]]:
    import nibabel as nib
    import nibabel.testing

    images = [(f"colin27-{i}", im) for i, im in enumerate(load_stack("brain"))]
    epi = np.asanyarray(nib.load(Path(nibabel.testing.data_path) / "example4d.nii.gz").dataobj)
    for z in range(6, 22, 2):
        sl = np.rot90(epi[:, :, z, 0].astype(np.float32))
        images.append((f"epi-{z}", sl / np.percentile(sl, 99.9)))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    parser.add_argument(
        "--methods",
        default="tv,wavelet",
        help="methods to (re)measure; rows of other methods already in the results are kept",
    )
    args = parser.parse_args()
    methods = args.methods.split(",")
    images = calibration_images()
    if args.quick:
        images = images[:1] + images[3:4]
    out = RESULTS / "lambda_rule.json"
    rows = (
        [r for r in json.loads(out.read_text()) if r["method"] not in methods]
        if (out.exists() and not args.quick)
        else []
    )
    start = time.perf_counter()
    for method in methods:
        for mask_name, acc in MASKS:
            for sigma in NOISE:
                for label, image in images:
                    mask = make_mask(mask_name, image.shape, acceleration=acc, seed=0)
                    data = simulate_kspace(image[None], noise_sigma=sigma, seed=1, source=label)
                    problem = build_problem(data, mask)
                    for c in GRIDS[method]:
                        recon_methods.LAMBDA_CONSTANTS[method] = c
                        result = reconstruct(problem, method)
                        rows.append(
                            {
                                "method": method,
                                "mask": f"{mask_name} {acc}x",
                                "sigma": sigma,
                                "image": label,
                                "c": c,
                                "psnr": result.metrics.psnr,
                                "ssim": result.metrics.ssim,
                            }
                        )
        print(f"{method} done after {time.perf_counter() - start:.0f} s", flush=True)
    if args.quick:
        print(summarise(rows))
        return
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "lambda_rule.md").write_text(summarise(rows))
    print(summarise(rows))


def summarise(rows: list[dict]) -> str:
    lines = [
        "# Automatic weight rule lam = c / sigma: mean PSNR (dB) over images",
        "",
        "Command: `python benchmarks/lambda_rule.py`. Images: 3 Colin27 slices (the shipped",
        "sample) and 8 slices of nibabel's example4d EPI volume; masks seed 0, noise seed 1;",
        "default iterations of each method.",
        "",
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        grid = sorted({r["c"] for r in mine})
        overall = {c: np.mean([r["psnr"] for r in mine if r["c"] == c]) for c in grid}
        best = max(overall, key=overall.get)
        lines += [
            f"## {method}: chosen c = {best} (mean PSNR {overall[best]:.2f} dB over all settings)",
            "",
            "| setting | " + " | ".join(f"c={c}" for c in grid) + " | loss vs own best |",
            "|---|" + "---|" * (len(grid) + 1),
        ]
        for setting in dict.fromkeys((r["mask"], r["sigma"]) for r in mine):
            sel = [r for r in mine if (r["mask"], r["sigma"]) == setting]
            means = {c: np.mean([r["psnr"] for r in sel if r["c"] == c]) for c in grid}
            loss = max(means.values()) - means[best]
            cells = " | ".join(f"{means[c]:.2f}" for c in grid)
            lines.append(f"| {setting[0]}, sigma {setting[1]} | {cells} | {loss:.2f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
