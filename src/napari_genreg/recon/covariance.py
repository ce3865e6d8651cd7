r"""Inspecting the learned covariance around a pixel, at the latent a reconstruction reached.

The poster's "visualisation of learned positive and negative covariance": at the latent
:math:`z^*` of a generative reconstruction, the decoder's covariance :math:`\Sigma(z^*)` says how
every pixel co-varies with a chosen one. :func:`inspect_covariance` returns it as a typed
:class:`CovarianceView`, in the reconstruction's intensity units: the model works on images
normalised by the problem's scale ``c`` (:mod:`napari_genreg.recon.generative`), so the image
:math:`x = c\,u` with :math:`u \sim \mathcal N(G(z), \Sigma(z))` has

* mean :math:`c\,G(z)` and samples :math:`c\,(G(z) + L^{-T}\varepsilon)` (multiplied by ``c``);
* covariance column :math:`c^2 \Sigma e_p`, its positive and negative parts, and variance
  :math:`c^2 \operatorname{diag}\Sigma` (multiplied by ``c**2``);
* correlation :math:`\Sigma_{ip} / \sqrt{\Sigma_{ii}\Sigma_{pp}}` (unitless, unchanged).

These describe the phase-removed magnitude image (the prior's variable). The maps live on the
model's grid (the padded grid of the reconstruction); :meth:`CovarianceView.cropped` brings them
to the reconstruction's size and :meth:`CovarianceView.window` cuts a window around the pixel.

Examples
--------
>>> import torch
>>> from napari_genreg.models.vae import VAE, VAEConfig
>>> model = VAE(VAEConfig(covariance="structured", image_size=32, base_channels=4))
>>> view = inspect_covariance(model, torch.zeros(4, 4, 4), (10, 12), generator=torch.Generator())
>>> view.column.shape, view.samples.shape
((32, 32), (4, 32, 32))
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from napari_genreg.models.covariance import Covariance, split_signs
from napari_genreg.models.vae import VAE

__all__ = ["CovarianceView", "clear_covariance_cache", "covariance_figure", "inspect_covariance"]

_MAPS = ("mean", "column", "positive", "negative", "correlation", "variance")


@dataclass
class _AtLatent:
    """What does not depend on the pixel: the decoder's output and (once asked for) the exact
    variance map."""

    model: weakref.ref
    mean: torch.Tensor
    covariance: Covariance
    variance: torch.Tensor | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def exact_variance(self) -> torch.Tensor:
        with self.lock:  # a warm-up and a click may ask at once: compute it once
            if self.variance is None:
                with torch.no_grad():
                    self.variance = self.covariance.variance()
            return self.variance


#: The latents inspected last, newest at the end (a click on another pixel of the same
#: reconstruction reuses the decoder's output and the variance map: the expensive part).
_AT_LATENT: OrderedDict[tuple, _AtLatent] = OrderedDict()
_AT_LATENT_SIZE = 4
#: Guards :data:`_AT_LATENT` (the viewer inspects from worker threads).
_AT_LATENT_LOCK = threading.Lock()


def clear_covariance_cache() -> None:
    """Forget the decoder outputs and variance maps kept for the latents inspected last."""
    with _AT_LATENT_LOCK:
        _AT_LATENT.clear()


def _at_latent(model: VAE, latent: torch.Tensor, head: str) -> _AtLatent:
    """The decoder's mean and covariance at ``latent`` (and its variance map), cached.

    The key holds the latent's values and the model's identity, device, dtype and the version
    counters of its parameters (an in-place change of the weights makes a new entry).
    """
    parameters = list(model.parameters())
    key = (
        id(model),
        head,
        str(parameters[0].device),
        parameters[0].dtype,
        tuple(int(p._version) for p in parameters),
        tuple(latent.shape),
        latent.detach().cpu().numpy().tobytes(),
    )
    with _AT_LATENT_LOCK:
        entry = _AT_LATENT.get(key)
        if entry is not None and entry.model() is model:
            _AT_LATENT.move_to_end(key)
            return entry
    with torch.no_grad():
        mean, covariance = model.decoder(model._check_latent(latent), head)
    entry = _AtLatent(weakref.ref(model), mean, covariance)
    with _AT_LATENT_LOCK:
        first = _AT_LATENT.get(key)  # another thread may have been first
        if first is not None and first.model() is model:
            entry = first
        else:  # none, or a dead model's whose id this model now has: replace it
            _AT_LATENT[key] = entry
        _AT_LATENT.move_to_end(key)
        while len(_AT_LATENT) > _AT_LATENT_SIZE:
            _AT_LATENT.popitem(last=False)
    return entry


@dataclass(frozen=True)
class CovarianceView:
    """The covariance of the image around one pixel, in the reconstruction's units.

    Attributes
    ----------
    pixel
        ``(row, col)`` in the maps' coordinates.
    mean
        :math:`c\\,G(z)`, float32 ``(H, W)``.
    column
        :math:`c^2 \\Sigma e_p`: the covariance of every pixel with ``pixel``, ``(H, W)``.
    positive, negative
        ``max(column, 0)`` and ``max(-column, 0)`` (``column = positive - negative``).
    correlation
        :math:`\\Sigma_{ip} / \\sqrt{\\Sigma_{ii}\\Sigma_{pp}}` in [-1, 1], ``(H, W)``;
        ``None`` when the inspection skipped the variance map.
    variance
        :math:`c^2 \\operatorname{diag}\\Sigma`, ``(H, W)``, or ``None`` (likewise).
    samples
        ``n`` draws :math:`c\\,(G(z) + L^{-T}\\varepsilon)`, ``(n, H, W)``.
    scale
        ``c``.
    """

    pixel: tuple[int, int]
    mean: np.ndarray
    column: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    correlation: np.ndarray | None
    variance: np.ndarray | None
    samples: np.ndarray
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the maps."""
        return (int(self.column.shape[0]), int(self.column.shape[1]))

    def arrays(self) -> dict[str, np.ndarray]:
        """The maps and the samples by name (what the CLI writes as ``<name>.npy``); the
        correlation and the variance only when computed."""
        names = (*_MAPS, "samples")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def _cut(self, rows: slice, cols: slice) -> CovarianceView:
        maps = {
            name: None if m is None else np.ascontiguousarray(m[rows, cols])
            for name in _MAPS
            for m in (getattr(self, name),)
        }
        samples = np.ascontiguousarray(self.samples[:, rows, cols])
        pixel = (self.pixel[0] - rows.start, self.pixel[1] - cols.start)
        return replace(self, pixel=pixel, samples=samples, **maps)

    def cropped(self, size: tuple[int, int]) -> CovarianceView:
        """The centred ``size`` block (the convention of the reconstruction's crop:
        the centre ``n // 2`` goes to ``m // 2``), the pixel moved with it.

        Raises
        ------
        ValueError
            If the pixel falls outside the block or ``size`` is larger than the maps.
        """
        h, w = self.shape
        sh, sw = int(size[0]), int(size[1])
        if not (0 < sh <= h and 0 < sw <= w):
            raise ValueError(f"cannot crop {h} x {w} maps to {sh} x {sw}")
        y0, x0 = h // 2 - sh // 2, w // 2 - sw // 2
        if not (y0 <= self.pixel[0] < y0 + sh and x0 <= self.pixel[1] < x0 + sw):
            raise ValueError(f"pixel {self.pixel} lies outside the centred {sh} x {sw} block")
        return self._cut(slice(y0, y0 + sh), slice(x0, x0 + sw))

    def window(self, size: int) -> CovarianceView:
        """A ``size x size`` window around the pixel (the pixel at its centre, or the window
        shifted to stay inside the maps near a border; the whole side when ``size`` exceeds it).
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"the window must be a positive integer, got {size!r}")
        starts = []
        for p, n in zip(self.pixel, self.shape, strict=True):
            w = min(size, n)
            starts.append((min(max(p - size // 2, 0), n - w), w))
        (r0, hr), (c0, wc) = starts
        return self._cut(slice(r0, r0 + hr), slice(c0, c0 + wc))


def inspect_covariance(
    model: VAE,
    z: torch.Tensor | np.ndarray,
    pixel: tuple[int, int],
    *,
    generator: torch.Generator,
    samples: int = 4,
    scale: float = 1.0,
    head: Literal["configured", "identity"] = "configured",
    variance: bool = True,
) -> CovarianceView:
    r"""The decoder's covariance at ``z`` around ``pixel``, scaled to the reconstruction's units.

    Parameters
    ----------
    model
        the VAE (not modified).
    z
        the latent, ``(c, h, w)`` or ``(1, c, h, w)`` (for example ``Result.latent``).
    pixel
        ``(row, col)`` on the model's grid ``(f h, f w)``.
    generator
        the random generator of the samples (on the model's device).
    samples
        number of samples ``n >= 0``.
    scale
        ``c``: the problem's intensity scale the reconstruction was normalised by.
    head
        ``"configured"`` or ``"identity"`` (for ``vae-identity`` and ``range``).
    variance
        compute the exact variance map and the correlation (``False``: both ``None``; the
        map costs :math:`O(H W^3)`, about 10 columns at 128 x 128 and 25 at 256 x 256, once
        per latent).

    Returns
    -------
    :class:`CovarianceView` with maps ``(f h, f w)``: column :math:`c^2\Sigma e_p` (one pair of
    triangular solves for the structured covariance), its signs, the exact variance and the
    correlation, and ``samples`` draws :math:`c(G + L^{-T}\varepsilon)`.

    Notes
    -----
    The decoder's output and the exact variance map depend on ``z`` only: they are kept for
    the last few latents inspected, so another pixel of the same reconstruction costs only the
    column and the samples (``benchmarks/results/covariance_latency.md``).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be positive, got {scale}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"samples must be a non-negative integer, got {samples!r}")
    parameter = next(model.parameters())
    latent = torch.as_tensor(z).to(device=parameter.device, dtype=parameter.dtype)
    if latent.ndim == 3:
        latent = latent[None]
    if latent.ndim != 4 or latent.shape[0] != 1:
        raise ValueError(f"z must have shape (c, h, w) or (1, c, h, w), got {tuple(latent.shape)}")
    model._check_latent(latent)
    if head not in ("configured", "identity"):
        raise ValueError(f"head must be 'configured' or 'identity', got {head!r}")
    at_latent = _at_latent(model, latent, head)
    mean, covariance = at_latent.mean, at_latent.covariance
    with torch.no_grad():
        row, col = int(pixel[0]), int(pixel[1])
        column = covariance.column((row, col))[0]
        variance_map = correlation = None
        if variance:
            variance_map = at_latent.exact_variance()[0]
            # rho_i = Sigma_ip / sqrt(Sigma_pp Sigma_ii), Sigma_pp from the column (rho_p = 1)
            at_p = column[row, col]
            own = variance_map.clone()
            own[row, col] = at_p
            correlation = column / torch.sqrt(at_p * own)
        if samples:
            draws = mean[None] + covariance.sample(samples, generator)
            draws = draws[:, 0]
        else:
            draws = mean.new_zeros((0, *mean.shape[-2:]))
    c = float(scale)
    column = c * c * column
    positive, negative = split_signs(column)

    def array(t: torch.Tensor) -> np.ndarray:
        return t.detach().float().cpu().numpy()

    return CovarianceView(
        pixel=(row, col),
        mean=array(c * mean[0]),
        column=array(column),
        positive=array(positive),
        negative=array(negative),
        correlation=None if correlation is None else array(correlation),
        variance=None if variance_map is None else array(c * c * variance_map),
        samples=array(c * draws),
        scale=c,
    )


def covariance_figure(
    path: str | Path,
    view: CovarianceView,
    background: np.ndarray,
    *,
    title: str = "",
) -> Path:
    """Save a PNG: the positive part in red and the negative part in blue over ``background``
    (the reconstruction, grey), the pixel marked, beside the correlation map (when computed).

    Each overlay's opacity is its value over the largest off-pixel magnitude of the column, so
    the neighbourhood stays visible next to the (much larger) variance at the pixel itself.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if background.shape != view.shape:
        raise ValueError(
            f"the background {background.shape} and the maps {view.shape} differ in shape"
        )
    off = np.abs(view.column).copy()
    off[view.pixel] = 0.0
    top = float(off.max()) or float(np.abs(view.column).max()) or 1.0
    panels = 1 if view.correlation is None else 2
    fig, axes = plt.subplots(
        1, panels, figsize=(5 * panels, 5), constrained_layout=True, squeeze=False
    )
    axes = axes[0]
    ax = axes[0]
    ax.imshow(background, cmap="gray")
    for part, colour in ((view.positive, (1.0, 0.0, 0.0)), (view.negative, (0.0, 0.3, 1.0))):
        rgba = np.zeros((*view.shape, 4), dtype=np.float32)
        rgba[..., :3] = colour
        rgba[..., 3] = np.clip(part / top, 0.0, 1.0)
        ax.imshow(rgba)
    ax.plot(view.pixel[1], view.pixel[0], marker="+", color="yellow", markersize=14, mew=2)
    ax.set_title("covariance: positive (red), negative (blue)")
    ax.axis("off")
    if view.correlation is not None:
        im = axes[1].imshow(view.correlation, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        axes[1].plot(view.pixel[1], view.pixel[0], marker="+", color="k", markersize=14, mew=2)
        axes[1].set_title("correlation with the pixel")
        axes[1].axis("off")
        fig.colorbar(im, ax=axes[1], shrink=0.8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
