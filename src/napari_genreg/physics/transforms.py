"""Sparsifying transforms used by the classical regularisers, as linear operators.

``FiniteDifference``: forward differences with periodic boundaries (as sigpy's
``FiniteDifference``), ``(..., H, W) -> (..., 2, H, W)``, ``||D||^2 <= 8``.

``Wavelet``: an orthonormal 2-D discrete wavelet transform from the PyTorch Wavelet Toolbox
(``ptwt``, Wolter et al.), with QR-orthogonalised boundary filters so the transform is unitary on
images whose sides are divisible by ``2**level``. Real filters, so it acts on the real and imaginary
parts alike and extends to complex images linearly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from napari_genreg.physics.operators import LinearOperator


@dataclass(frozen=True, eq=False)
class FiniteDifference(LinearOperator):
    """Periodic forward differences along the last two axes.

    ``(D x)[..., 0, i, j] = x[i+1, j] - x[i, j]`` and ``(D x)[..., 1, i, j] = x[i, j+1] - x[i, j]``
    (indices modulo the size). ``D^H`` is the negative periodic divergence.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dy = torch.roll(x, -1, dims=-2) - x
        dx = torch.roll(x, -1, dims=-1) - x
        return torch.stack((dy, dx), dim=-3)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        dy, dx = y.unbind(dim=-3)
        return (torch.roll(dy, 1, dims=-2) - dy) + (torch.roll(dx, 1, dims=-1) - dx)


def wavelet_levels(shape: tuple[int, int], *, max_level: int = 4, min_size: int = 8) -> int:
    """The number of decomposition levels for an image of ``shape``.

    The largest ``L <= max_level`` such that both sides are divisible by ``2**L`` and the coarsest
    band is at least ``min_size`` pixels on each side (0 when none is).
    """
    level = 0
    h, w = shape
    while level < max_level and h % 2 == 0 and w % 2 == 0 and min(h, w) // 2 >= min_size:
        h, w, level = h // 2, w // 2, level + 1
    return level


@dataclass(frozen=True, eq=False)
class Wavelet(LinearOperator):
    """Orthonormal 2-D wavelet transform, ``(..., H, W) -> (..., H * W)`` coefficients.

    The coefficients are flattened into one axis, ordered as ``ptwt`` returns them: the coarsest
    approximation band first (``approx_size`` entries), then the detail bands from coarse to fine.
    ``W^H W = W W^H = I``, so the adjoint is the inverse transform.

    Parameters
    ----------
    shape
        ``(H, W)``, both divisible by ``2**level``.
    wavelet
        A PyWavelets name of an orthogonal wavelet (default ``"db4"``).
    level
        Decomposition levels (default: :func:`wavelet_levels`).
    """

    shape: tuple[int, int]
    wavelet: str = "db4"
    level: int = field(default=-1)

    def __post_init__(self) -> None:
        level = wavelet_levels(self.shape) if self.level < 0 else self.level
        if level < 1 or any(s % 2**level for s in self.shape):
            raise ValueError(
                f"a {level}-level wavelet transform needs sides divisible by {2 ** max(level, 1)}, "
                f"got {self.shape}; pad the image first"
            )
        object.__setattr__(self, "level", level)

    def _transforms(self, like: torch.Tensor):
        return _ptwt_transforms(self.wavelet, self.level, self.shape, like.dtype, like.device)

    @property
    def approx_size(self) -> int:
        """Number of coefficients in the coarsest approximation band."""
        return (self.shape[0] >> self.level) * (self.shape[1] >> self.level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-2]
        parts = _real_parts(x.reshape(-1, *self.shape))
        dec, _ = self._transforms(parts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # ptwt's sparse-tensor notices
            coeffs = dec(parts)
        flat = [coeffs[0].flatten(1)]
        for detail in coeffs[1:]:
            flat.extend(band.flatten(1) for band in detail)
        out = torch.cat(flat, dim=1)
        return _from_real_parts(out, x).reshape(*batch, -1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        import ptwt.constants

        batch = y.shape[:-1]
        parts = _real_parts(y.reshape(-1, y.shape[-1]))
        h, w = self.shape
        sizes = [(h >> self.level, w >> self.level)]
        sizes += [(h >> lv, w >> lv) for lv in range(self.level, 0, -1)]
        n = parts.shape[0]
        start = sizes[0][0] * sizes[0][1]
        coeffs: list = [parts[:, :start].reshape(n, *sizes[0])]
        for bh, bw in sizes[1:]:
            bands = []
            for _ in range(3):
                bands.append(parts[:, start : start + bh * bw].reshape(n, bh, bw))
                start += bh * bw
            coeffs.append(ptwt.constants.WaveletDetailTuple2d(*bands))
        _, rec = self._transforms(parts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            img = rec(coeffs)
        return _from_real_parts(img, y).reshape(*batch, h, w)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to(self, device: torch.device | str) -> Wavelet:
        # the matrices are built per dtype and device on first use
        return self


@lru_cache(maxsize=16)
def _ptwt_transforms(
    wavelet: str,
    level: int,
    shape: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
):
    """ptwt's matrix transforms, shared by every operator of one wavelet, level, shape, dtype and
    device: they build their sparse matrices on first use (seconds at 256x256) for the dtype
    and device of that input, and keep them."""
    import ptwt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dec = ptwt.MatrixWavedec2(wavelet, level=level, orthogonalization="qr")
        rec = ptwt.MatrixWaverec2(wavelet, orthogonalization="qr")
    return dec, rec


def _real_parts(x: torch.Tensor) -> torch.Tensor:
    """Stack real and imaginary parts along the batch axis (a real input passes through)."""
    if x.is_complex():
        return torch.cat((x.real, x.imag), dim=0)
    return x


def _from_real_parts(parts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.is_complex():
        re, im = parts.chunk(2, dim=0)
        return torch.complex(re, im)
    return parts
