"""Tables and figures of a comparison (matplotlib, off-screen)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def metrics_markdown(records: Sequence[Mapping[str, Any]], mask_label: str) -> str:
    """A Markdown table: one row per regulariser with mean PSNR/SSIM/NMSE over slices (``n/a``
    without a reference; ``—`` for the weight of a method that has none)."""
    lines = [
        f"Mask: {mask_label}",
        "",
        "| regulariser | slices | PSNR (dB) | SSIM | NMSE | lam | seconds/slice |",
        "|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(r["regularizer"] for r in records))
    for name in names:
        rows = [r for r in records if r["regularizer"] == name]

        def mean(key: str, rows=rows, missing: str = "n/a") -> str:
            values = [r[key] for r in rows if r[key] is not None]
            if not values:
                return missing
            if len(values) == 1:
                return f"{values[0]:.4g}"
            return f"{np.mean(values):.4g} ± {np.std(values):.2g}"

        lines.append(
            f"| {name} | {len(rows)} | {mean('psnr')} | {mean('ssim')} | {mean('nmse')} "
            f"| {mean('lam', missing='—')} | {mean('seconds')} |"
        )
    return "\n".join(lines) + "\n"


def comparison_figure(
    path: str | Path,
    results: Mapping[str, Any],
    reference: np.ndarray | None,
    mask: np.ndarray,
    *,
    title: str = "",
) -> Path:
    """Reconstructions side by side (top row) with their error maps (bottom row).

    ``results`` maps a name to an object with ``image`` (``(H, W)`` magnitude) and ``metrics``
    (or ``None``). The mask and the reference lead the rows; error maps share one colour scale.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(results)
    columns = len(names) + 1
    rows = 2 if reference is not None else 1
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.6 * columns, 3.0 * rows), squeeze=False, layout="constrained"
    )
    vmax = (
        float(reference.max())
        if reference is not None
        else max(float(results[n].image.max()) for n in names)
    )
    axes[0, 0].imshow(
        reference if reference is not None else mask,
        cmap="gray",
        vmin=0,
        vmax=vmax if reference is not None else 1,
    )
    axes[0, 0].set_title("reference" if reference is not None else "mask", fontsize=9)
    if reference is not None:
        axes[1, 0].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[1, 0].set_title("mask", fontsize=9)
        errors = {n: np.abs(results[n].image - reference) for n in names}
        emax = max(float(np.percentile(e, 99.5)) for e in errors.values()) or 1.0
    for col, name in enumerate(names, start=1):
        result = results[name]
        axes[0, col].imshow(result.image, cmap="gray", vmin=0, vmax=vmax)
        label = name
        if result.metrics is not None:
            label += f"\n{result.metrics.psnr:.2f} dB, SSIM {result.metrics.ssim:.3f}"
        axes[0, col].set_title(label, fontsize=9)
        if reference is not None:
            axes[1, col].imshow(errors[name], cmap="inferno", vmin=0, vmax=emax)
            axes[1, col].set_title(f"|error| (0..{emax:.3g})", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
