"""How much negative covariance the shipped structured prior has around its pixels.

Reconstructs the demo slice (the shipped sample's middle slice, Poisson 4x, noise 0.01, the
settings of the README's walk-through) with ``vae-structured`` and inspects the covariance
column at every 12th pixel (a 10 x 10 grid): the largest negative entry (what the inspector's
blue layer shows) against the largest entry of the column.

Then why, from the residuals ``x - G(z)`` (``z`` drawn from the encoder's posterior) of 200
training slices, the dependence the covariance head is trained to describe: the head's learned
off-diagonal weights at that latent (relative to the diagonal, averaged over the pixels, per
stencil offset) against the least-squares regression of a residual pixel on the same
neighbours, and the residuals' correlation at horizontal and vertical lags 1 to 5, over the
whole image and across edges.

Run: ``python benchmarks/covariance_signs.py [--data .cache-builtin/dataset128]``; writes
``benchmarks/results/covariance_signs.{json,md}`` (the residual part needs the prepared data).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import command_line, machine_info, machine_line, publish

NAME = "covariance_signs"


def main() -> None:
    import argparse

    import numpy as np
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=".cache-builtin/dataset128", help="prepared data folder")
    args = parser.parse_args()

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
                    # the inspector's blue layer against its red one
                    "negative_over_positive": float(view.negative.sum() / view.positive.sum()),
                }
            )
    weights, used = _relative_weights(model, result.latent)
    lags = _residual_statistics(model, Path(args.data) / "train.npy")
    growth = _solve_growth(model, Path(args.data) / "val.npy")
    out = {
        "command": command_line(),
        "machine": info,
        "rows": rows,
        "model": result.model,
        "off_diagonal_bound": model.config.off_diagonal_bound,
        "relative_weights": weights,
        "mean_sum_of_magnitudes": used,
        "residuals": lags,
        "solve_growth": growth,
    }
    text = _report(result, rows, weights, used, model.config.off_diagonal_bound, lags, growth, info)
    publish(NAME, out, text)


def _relative_weights(model, latent) -> tuple[list[dict], float]:
    """Per stencil offset, the mean over pixels of off-diagonal weight / diagonal at ``latent``;
    and the mean over pixels of the sum of their magnitudes (what the bound limits)."""
    import torch

    from napari_genreg.models.covariance import stencil_offsets

    with torch.no_grad():
        _, covariance = model.decode(torch.as_tensor(latent)[None])
    relative = covariance.off_diagonal[0] / torch.exp(covariance.log_diagonal[0])[None]
    weights = [
        {"offset": list(offset), "mean": float(relative[m].mean())}
        for m, offset in enumerate(stencil_offsets(covariance.stencil))
    ]
    return weights, float(relative.abs().sum(dim=0).mean())


def _residual_statistics(model, path: Path, count: int = 200) -> dict:
    """What the covariance head is trained to describe: the residuals ``x - G(z)``, ``z`` from
    the posterior, of ``count`` slices. Their correlation at lags 1-5 over the whole image and
    across edges (pairs of pixels on either side of one of the 10 % strongest steps of the
    object along the lag's direction), and their least-squares regression on the stencil's
    neighbours over the object's pixels."""
    import numpy as np
    import torch

    from napari_genreg.models.covariance import stencil_offsets

    images = np.load(path, mmap_mode="r")
    step = max(1, len(images) // count)
    x = torch.as_tensor(np.asarray(images[::step][:count], dtype=np.float32))[:, None]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator)
        mean, _ = model.decode(z)
    image = x[:, 0].numpy()
    r = image - mean.numpy()
    inside = image > 0.1

    def pairs(axis: int, k: int, at: np.ndarray | None = None) -> float:
        """Correlation of ``r`` at ``p`` and ``p + k`` along ``axis`` (``at``: where ``p``
        may be)."""
        n = r.shape[axis]
        a = r.take(range(n - k), axis=axis)
        b = r.take(range(k, n), axis=axis)
        if at is None:
            return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
        return float(np.corrcoef(a[at], b[at])[0, 1])

    def across_edges(axis: int, k: int) -> float:
        """Pairs ``(p - ceil(k/2), p + floor(k/2))`` around a strong step between ``p - 1``
        and ``p``."""
        step = np.abs(np.diff(image, axis=axis, prepend=image.take([0], axis=axis)))
        edge = step > np.percentile(step[inside], 90)
        lo = (k + 1) // 2
        n = r.shape[axis]
        return pairs(axis, k, edge.take(range(lo, lo + n - k), axis=axis))

    stats: dict = {
        name: [pairs(axis, k) for k in range(1, 6)]
        for name, axis in (("horizontal", 2), ("vertical", 1))
    }
    for name, axis in (("across_edges_horizontal", 2), ("across_edges_vertical", 1)):
        stats[name] = [across_edges(axis, k) for k in range(1, 6)]
    # the conditional mean the factor expresses: a pixel from its neighbours in the stencil
    offsets = stencil_offsets(model.config.stencil)
    margin = model.config.stencil // 2
    where = inside.copy()
    where[:, :margin] = where[:, -margin:] = False
    where[:, :, :margin] = where[:, :, -margin:] = False
    neighbours = np.stack(
        [np.roll(r, (-dy, -dx), axis=(1, 2))[where] for dy, dx in offsets], axis=-1
    )
    coef, *_ = np.linalg.lstsq(neighbours, r[where], rcond=None)
    explained = 1 - np.var(r[where] - neighbours @ coef) / np.var(r[where])
    stats["regression"] = {
        "offsets": [list(o) for o in offsets],
        "coefficients": [float(c) for c in coef],
        "sum_of_magnitudes": float(np.abs(coef).sum()),
        "explained_variance": float(explained),
        "pixels": int(where.sum()),
    }
    return stats


def _solve_growth(model, path: Path, count: int = 14) -> dict:
    """The growth of the triangular solves (what ``StructuredCovariance`` checks against
    ``SOLVE_GROWTH_LIMIT``): ``max|x| min L_ii / max|e|`` for ``x = L^-1 e`` and ``L^-T x`` of
    the unit vector at every 12th object pixel, and for ``L^-T eps`` (4 samples), at the
    encoder's mean latent of ``count`` validation slices (held-out subject)."""
    import numpy as np
    import torch

    images = np.load(path, mmap_mode="r")
    step = max(1, len(images) // count)
    growths = []

    def growth(e, x, covariance) -> list[float]:
        return covariance.growth(e, x).flatten().tolist()

    with torch.no_grad():
        for image in images[::step][:count]:
            x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
            mu, _ = model.encode(x)
            _, covariance = model.decode(mu)
            h, w = image.shape
            for row in range(8, h, 12):
                for col in range(8, w, 12):
                    if image[row, col] < 0.1:
                        continue
                    e = torch.zeros(1, h, w)
                    e[0, row, col] = 1.0
                    half = covariance.solve_factor(e)
                    growths += growth(e, half, covariance)
                    growths += growth(half, covariance.solve_factor_t(half), covariance)
            eps = torch.randn(4, 1, h, w, generator=torch.Generator().manual_seed(0))
            growths += growth(eps, covariance.solve_factor_t(eps), covariance)
    return {
        "slices": min(count, len(images[::step])),
        "solves": len(growths),
        "median": float(np.median(growths)),
        "largest": float(max(growths)),
    }


def _report(result, rows, weights, used, alpha, lags, growth, info) -> str:
    import numpy as np

    negative = max(r["largest_negative"] for r in rows)
    largest = max(r["largest_entry"] for r in rows)
    with_negative = sum(r["largest_negative"] > 0 for r in rows)
    ratios = [r["negative_over_positive"] for r in rows]
    budget = sum(abs(w["mean"]) for w in weights)
    reg = lags["regression"]
    return "\n".join(
        [
            "# Negative covariance of the shipped structured prior",
            "",
            f"Command: `{command_line()}` ({machine_line(info)})",
            "",
            f"Model `{result.model}` (off-diagonal bound {alpha:g}). The demo slice (sample "
            "middle slice, Poisson 4x, noise 0.01), vae-structured with its defaults (PSNR "
            f"{result.metrics.psnr:.2f} dB); the covariance column at {len(rows)} pixels (every "
            "12th row and column).",
            "",
            f"- pixels whose column has any negative entry: {with_negative} of {len(rows)}",
            f"- largest negative entry over all columns: {negative:.3g}",
            f"- largest entry over all columns: {largest:.3g}",
            "- negative part over positive part of a column (sums; the inspector's blue layer "
            f"against its red one): median {np.median(ratios):.3g}, largest {max(ratios):.3g}",
            f"- growth of the triangular solves on {growth['slices']} validation slices "
            f"({growth['solves']} solves: unit vectors at object pixels, both factors, and "
            f"samples): median {growth['median']:.3g}, largest {growth['largest']:.3g} (the "
            "solves raise above 1e4; a bound below 1 guarantees at most 1 / (1 - bound) in the "
            "forward solve)",
            "",
            "Why. A Gaussian with precision L L^T (L lower triangular, raster order) predicts each "
            "pixel from the pixels after it; for a stationary field that is the same as from the "
            "pixels before it, with coefficient -(weight / diagonal) on the neighbour at each "
            "stencil offset (row, column). The head's coefficients at that latent (mean over "
            "pixels) against the least-squares regression of the training residuals x - G(z) "
            f"(200 training slices, z drawn from the posterior; {reg['pixels']} object "
            f"pixels, {reg['explained_variance']:.0%} of their variance explained by the "
            "neighbours):",
            "",
            "| offset | head: -(weight / diagonal) | residuals: least squares |",
            "|---|---|---|",
            *(
                f"| {tuple(w['offset'])} | {-w['mean']:+.3f} | {c:+.3f} |"
                for w, c in zip(weights, reg["coefficients"], strict=True)
            ),
            f"| sum of magnitudes | {budget:.2f} | {reg['sum_of_magnitudes']:.2f} |",
            "",
            f"The head bounds each pixel's sum of magnitudes below {alpha:g} (below 1: every row "
            "of L diagonally dominant, the triangular solves stable by construction); at that "
            f"latent it uses {used:.2f} on average over the pixels. The residuals' own regression "
            f"needs {reg['sum_of_magnitudes']:.2f}, with negative coefficients beside the "
            "positive ones.",
            "",
            "Correlation of the residuals, over the whole image and across edges (the pixels of "
            "a pair on either side of one of the 10 % strongest steps of the object along the "
            "lag):",
            "",
            "| lag | 1 | 2 | 3 | 4 | 5 |",
            "|---|---|---|---|---|---|",
            *(
                f"| {label} | " + " | ".join(f"{v:+.3f}" for v in lags[key]) + " |"
                for label, key in (
                    ("horizontal", "horizontal"),
                    ("vertical", "vertical"),
                    ("horizontal, across edges", "across_edges_horizontal"),
                    ("vertical, across edges", "across_edges_vertical"),
                )
            ),
            "",
        ]
    )


if __name__ == "__main__":
    main()
