"""Validation NLL of the shipped priors, and a figure of their samples and covariance columns.

For each builtin model (identity, diagonal, structured): the negative ELBO in bits per pixel
(an upper bound on -log2 p(x) / N for the continuous density on [0, 1]; one latent sample per
image from a fixed seed, no augmentation) over the whole validation split — the Colin27
subject, held out from training by volume. The poster's claim to check:
structured < diagonal < identity.

Data: ``python tools/fetch_builtin_data.py --dest .cache-builtin`` then
``napari-genreg prepare-data --out .cache-builtin/dataset128 --builtin-dir .cache-builtin``.

Run: ``python benchmarks/prior_nll.py --data .cache-builtin/dataset128``; writes
``benchmarks/results/prior_nll.{json,md}`` and ``docs/images/prior_samples.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_genreg.models.checkpoint import load_model
from napari_genreg.models.covariance import split_signs
from napari_genreg.training.losses import bits_per_dim, elbo_terms

RESULTS = Path(__file__).parent / "results"
FIGURE = Path(__file__).parents[1] / "docs" / "images" / "prior_samples.png"
KINDS = ("identity", "diagonal", "structured")
WINDOW = 15  # pixels shown around the pixel whose covariance column is drawn


@torch.no_grad()
def validation_bits_per_dim(model, images: np.ndarray, *, batch: int = 32, seed: int = 0):
    """Mean and standard deviation over images of the negative ELBO in bits per pixel."""
    gen = torch.Generator().manual_seed(seed)
    values = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start : start + batch].astype(np.float32))
        shape = (len(x), *model.latent_shape(tuple(x.shape[-2:])))
        out = model(x, eps=torch.randn(shape, generator=gen))
        terms = elbo_terms(x, out)
        values.append(bits_per_dim(terms.negative_elbo(), x.shape[-1] * x.shape[-2]))
    values = torch.cat(values).numpy()
    return float(values.mean()), float(values.std()), len(values)


@torch.no_grad()
def figure(models: dict, images: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [len(images) // 5, len(images) // 2, 4 * len(images) // 5]
    pixel = (64, 52)
    rows = len(picks)
    cols = 2 + 2 * len(models)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.0 * rows), layout="constrained")
    gen = torch.Generator().manual_seed(1)
    for r, index in enumerate(picks):
        x = torch.from_numpy(images[index : index + 1].astype(np.float32))
        axes[r, 0].imshow(x[0], cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title("validation image" if r == 0 else "", fontsize=8)
        for c, (kind, model) in enumerate(models.items()):
            mu, _ = model.encode(x[:, None])
            mean, cov = model.decode(mu)
            if c == 0:
                axes[r, 1].imshow(mean[0], cmap="gray", vmin=0, vmax=1)
                axes[r, 1].set_title("G(z), z = encoder mean" if r == 0 else "", fontsize=8)
            sample = mean + cov.sample(1, gen)[0]
            axes[r, 2 + 2 * c].imshow(sample[0], cmap="gray", vmin=0, vmax=1)
            axes[r, 2 + 2 * c].set_title(f"{kind}: a sample" if r == 0 else "", fontsize=8)
            column = cov.column(pixel)[0]
            half = WINDOW // 2
            window = column[
                pixel[0] - half : pixel[0] + half + 1, pixel[1] - half : pixel[1] + half + 1
            ]
            positive, negative = split_signs(window)
            # a square-root display, so the weaker off-centre terms stay visible
            top = float(window.abs().max()) or 1.0
            rgb = torch.stack((positive / top, torch.zeros_like(window), negative / top), -1)
            axes[r, 3 + 2 * c].imshow(rgb.clamp(0, 1).sqrt().numpy())
            axes[r, 3 + 2 * c].set_title(
                f"{kind}: covariance around\nthe centre, {WINDOW}x{WINDOW} (red +, blue -)"
                if r == 0
                else "",
                fontsize=7,
            )
    for ax in axes.flat:
        ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="prepared-data folder (val.npy)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = np.load(Path(args.data) / "val.npy", mmap_mode="r")
    models, rows = {}, []
    for kind in KINDS:
        model, card = load_model(f"builtin:{kind}")
        model.eval()
        models[kind] = model
        start = time.perf_counter()
        mean, std, n = validation_bits_per_dim(model, np.asarray(images))
        rows.append(
            {
                "model": kind,
                "bits_per_dim": mean,
                "std_over_images": std,
                "images": n,
                "seconds": time.perf_counter() - start,
                "weights_sha256": card.weights_sha256,
            }
        )
    figure(models, np.asarray(images), FIGURE)
    manifest = json.loads((Path(args.data) / "manifest.json").read_text())
    lines = [
        "# Validation NLL of the shipped priors (negative ELBO, bits per pixel)",
        "",
        f"Command: `python benchmarks/prior_nll.py --data {args.data}`  ",
        f"Date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}; torch {torch.__version__}, 1 thread.  ",
        f"Validation split: {len(images)} slices of the held-out subject (data content sha256 "
        f"`{manifest.get('content_sha256', '?')[:16]}...`); one latent sample per image (seed 0); "
        "an upper bound on -log2 p(x)/N for the density on [0, 1] (add 8 for 8-bit data); "
        "lower is better.",
        "",
        "| model | bits/dim (mean) | std over images | images |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['bits_per_dim']:.4f} | {r['std_over_images']:.4f} | {r['images']} |"
        for r in rows
    ]
    order = sorted(rows, key=lambda r: r["bits_per_dim"])
    lines += ["", "Order (best first): " + " < ".join(r["model"] for r in order), ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "prior_nll.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "prior_nll.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
