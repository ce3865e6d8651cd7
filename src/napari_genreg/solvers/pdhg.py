"""The primal-dual hybrid gradient method (Chambolle & Pock 2011)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import torch

from napari_genreg.physics.operators import LinearOperator
from napari_genreg.solvers.state import SolverState


class ConvexTerm(Protocol):
    """A convex function ``f`` known through its value and the prox of its conjugate."""

    def value(self, u: torch.Tensor) -> torch.Tensor:
        """``f(u)`` as a 0-d tensor."""

    def prox_conj(self, p: torch.Tensor, step: float) -> torch.Tensor:
        """``prox_{step f*}(p)``."""


def pdhg(
    terms: Sequence[tuple[LinearOperator, ConvexTerm]],
    x0: torch.Tensor,
    *,
    tau: float,
    sigma: float,
    scale: float = 1.0,
) -> Iterator[SolverState]:
    """Minimise ``F(x) = sum_i f_i(K_i x)`` by PDHG with over-relaxation ``theta = 1``.

    ``p_i <- prox_{sigma f_i*}(p_i + sigma K_i xbar)``,
    ``x+ = x - tau sum_i K_i^H p_i``, ``xbar = 2 x+ - x``.

    Converges when ``tau * sigma * ||K||^2 < 1`` with ``||K||^2 <= sum_i ||K_i||^2``.
    ``K_i xbar`` is formed from ``K_i x+`` and ``K_i x`` by linearity, so an iteration costs one
    forward and one adjoint application of each ``K_i`` and the objective at ``x+`` comes for
    free.

    Parameters
    ----------
    terms
        ``(K_i, f_i)`` pairs; each ``f_i`` has ``value`` and ``prox_conj`` (:class:`ConvexTerm`).
    x0
        Initial image.
    tau, sigma
        Primal and dual step sizes.
    scale
        The objective is reported as ``scale * F(x)``.
    """
    x = x0.clone()
    kx = [op(x) for op, _ in terms]
    duals = [torch.zeros_like(u) for u in kx]
    kbar = kx
    iteration = 0
    while True:
        duals = [
            f.prox_conj(p + sigma * u, sigma)
            for (_, f), p, u in zip(terms, duals, kbar, strict=True)
        ]
        grad = terms[0][0].adjoint(duals[0])
        for (op, _), p in zip(terms[1:], duals[1:], strict=True):
            grad = grad + op.adjoint(p)
        x = x - tau * grad
        kx_new = [op(x) for op, _ in terms]
        kbar = [2 * new - old for new, old in zip(kx_new, kx, strict=True)]
        kx = kx_new
        iteration += 1
        value = sum(f.value(u) for (_, f), u in zip(terms, kx, strict=True))
        yield SolverState(iteration, x, scale * float(value))
