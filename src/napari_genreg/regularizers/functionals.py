"""Convex functions with their values, proximal maps and proximal maps of their conjugates.

Each is an immutable value. The prox of the conjugate follows from Moreau's identity and is what
the primal-dual solver needs; the prox itself is what FISTA needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class SquaredDistance:
    """``f(u) = w/2 ||u - y||^2``.

    ``f*(p) = 1/(2w) ||p||^2 + Re<p, y>``, so ``prox_{s f*}(p) = (p - s y) / (1 + s / w)``.
    """

    y: torch.Tensor
    weight: float = 1.0

    def value(self, u: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.weight * (u - self.y).abs().square().sum()

    def prox_conj(self, p: torch.Tensor, step: float) -> torch.Tensor:
        return (p - step * self.y) / (1.0 + step / self.weight)


@dataclass(frozen=True, eq=False)
class GroupL1:
    """``f(u) = w sum_g ||u_g||_2``: an l1 norm of (complex) entries or of groups of them.

    ``group_dim=None`` takes each complex entry as a group (``sum |u_i|``, the anisotropic case);
    ``group_dim=-3`` groups the gradient components of ``FiniteDifference`` (isotropic TV).
    ``prox_{s f}`` is group soft-thresholding at ``s w`` and ``prox_{s f*}`` the projection onto
    the ball of radius ``w`` in the dual norm, for every step ``s``.
    """

    weight: float
    group_dim: int | None = None

    def _magnitude(self, u: torch.Tensor) -> torch.Tensor:
        if self.group_dim is None:
            return u.abs()
        return u.abs().square().sum(dim=self.group_dim, keepdim=True).sqrt()

    def value(self, u: torch.Tensor) -> torch.Tensor:
        mag = self._magnitude(u)
        return self.weight * mag.sum()

    def prox(self, v: torch.Tensor, step: float) -> torch.Tensor:
        mag = self._magnitude(v)
        shrink = (1.0 - step * self.weight / mag.clamp_min(torch.finfo(mag.dtype).tiny)).clamp_min(
            0.0
        )
        return v * shrink

    def prox_conj(self, p: torch.Tensor, step: float) -> torch.Tensor:
        if self.weight == 0:
            return torch.zeros_like(p)
        return p / (self._magnitude(p) / self.weight).clamp_min(1.0)
