"""How much negative covariance the shipped structured prior has around its pixels.

Reconstructs the demo slice (the shipped sample's middle slice, Poisson 4x, noise 0.01, the
settings of the README's walk-through) with ``vae-structured`` and inspects the covariance
column at every 12th pixel (a 10 x 10 grid): the largest negative entry (what the inspector's
blue layer shows) against the largest entry of the column.

Run: ``python benchmarks/covariance_signs.py``; writes
``benchmarks/results/covariance_signs.{json,md}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import RESULTS, command_line, machine_info, machine_line

NAME = "covariance_signs"


def main() -> None:
    import numpy as np
    import torch

    from napari_genreg.io import simulate_kspace
    from napari_genreg.physics.masks import make_mask
    from napari_genreg.recon import build_problem, reconstruct
    from napari_genreg.recon.covariance import inspect_covariance
    from napari_genreg.recon.generative import load_prior_model
    from napari_genreg.samples import load_stack

    info = machine_info()
    image = load_stack("brain")[1]
    data = simulate_kspace(image[None], noise_sigma=0.01, seed=1, source="sample:brain")
    problem = build_problem(data, make_mask("poisson", image.shape, acceleration=4, seed=0))
    result = reconstruct(problem, "vae-structured")
    model, _ = load_prior_model(result.model)
    rows = []
    for row in range(8, 128, 12):
        for col in range(8, 128, 12):
            view = inspect_covariance(
                model,
                result.latent,
                (row, col),
                generator=torch.Generator().manual_seed(0),
                samples=0,
                scale=problem.scale,
                variance=False,
            )
            rows.append(
                {
                    "pixel": [row, col],
                    "largest_negative": float(view.negative.max()),
                    "largest_entry": float(np.abs(view.column).max()),
                }
            )
    negative = max(r["largest_negative"] for r in rows)
    largest = max(r["largest_entry"] for r in rows)
    with_negative = sum(r["largest_negative"] > 0 for r in rows)
    out = {"command": command_line(), "machine": info, "rows": rows}
    (RESULTS / f"{NAME}.json").write_text(json.dumps(out, indent=1))
    text = "\n".join(
        [
            "# Negative covariance of the shipped structured prior",
            "",
            f"Command: `{command_line()}` ({machine_line(info)})",
            "",
            "The demo slice (sample middle slice, Poisson 4x, noise 0.01), vae-structured with its "
            f"defaults (PSNR {result.metrics.psnr:.2f} dB); the covariance column at "
            f"{len(rows)} pixels (every 12th row and column).",
            "",
            f"- pixels whose column has any negative entry: {with_negative} of {len(rows)}",
            f"- largest negative entry over all columns: {negative:.3g}",
            f"- largest entry over all columns: {largest:.3g}",
            "",
        ]
    )
    (RESULTS / f"{NAME}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
