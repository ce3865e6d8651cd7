"""Conjugate gradients for Hermitian positive (semi-)definite systems."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from napari_genreg.solvers.state import SolverState


def conjugate_gradient(
    normal: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    x0: torch.Tensor | None = None,
    *,
    offset: float = 0.0,
    rtol: float | None = None,
    reduction: float | None = None,
) -> Iterator[SolverState]:
    """Solve ``N x = b`` by conjugate gradients, yielding a state per iteration.

    The objective reported is the quadratic whose minimiser is the solution,
    ``f(x) = 1/2 x^H N x - Re(x^H b) + offset``; with ``N = A^H A``, ``b = A^H y`` and
    ``offset = ||y||^2 / 2`` it is ``1/2 ||A x - y||^2``. It is computed from the residual
    ``r = b - N x`` at no extra cost: ``f = -1/2 Re(x^H (b + r)) + offset``.

    Parameters
    ----------
    normal
        ``x -> N x`` with ``N`` Hermitian positive semi-definite (any callable).
    rhs
        ``b``, shape of ``x``.
    x0
        Warm start (default zeros).
    rtol
        Converged when ``||r|| <= rtol ||b||``: CG then returns, because further steps would
        only amplify rounding errors (on a singular ``N``, such as ``A^H A`` with undersampling,
        they diverge). Default: 10 times the machine epsilon of ``b``'s dtype.
    reduction
        Also converged when ``||r|| <= reduction ||r_0||``, the residual of the start: for an
        inexact solve from a warm start, whose residual may already be far below ``||b||``.

    Yields
    ------
    SolverState
        Stops by itself only at convergence; otherwise the caller stops.
    """
    if reduction is not None and not 0.0 < reduction < 1.0:
        raise ValueError(f"reduction must lie in (0, 1), got {reduction}")
    if rtol is None:
        rtol = 10 * torch.finfo(rhs.dtype).eps
    threshold = rtol**2 * float(torch.vdot(rhs.flatten(), rhs.flatten()).real)
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - normal(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = torch.vdot(r.flatten(), r.flatten()).real
    if reduction is not None:
        threshold = max(threshold, reduction**2 * float(rr))
    iteration = 0
    while True:
        if float(rr) <= threshold:
            return
        q = normal(p)
        pq = torch.vdot(p.flatten(), q.flatten()).real
        if float(pq) <= 0.0:
            return  # p is in N's null space: nothing left to reduce
        alpha = rr / pq
        x = x + alpha * p
        r = r - alpha * q
        rr_new = torch.vdot(r.flatten(), r.flatten()).real
        p = r + (rr_new / rr) * p
        rr = rr_new
        iteration += 1
        value = -0.5 * torch.vdot(x.flatten(), (rhs + r).flatten()).real + offset
        yield SolverState(iteration, x, float(value))
