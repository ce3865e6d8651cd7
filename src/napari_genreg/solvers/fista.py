"""FISTA (Beck & Teboulle 2009) for ``min_x 1/2 ||A x - y||^2 + g(x)``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from napari_genreg.physics.operators import LinearOperator
from napari_genreg.solvers.state import SolverState


def fista(
    op: LinearOperator,
    y: torch.Tensor,
    prox_g: Callable[[torch.Tensor, float], torch.Tensor],
    value_g: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    *,
    step: float,
    scale: float = 1.0,
) -> Iterator[SolverState]:
    """Accelerated proximal gradient on ``F(x) = 1/2 ||A x - y||^2 + g(x)``.

    ``z_k = x_k + (t_{k-1} - 1) / t_k (x_k - x_{k-1})``,
    ``x_{k+1} = prox_{step g}(z_k - step A^H (A z_k - y))``.

    ``A z_k`` is formed from ``A x_k`` and ``A x_{k-1}`` by linearity, so an iteration costs one
    forward and one adjoint application and the objective at ``x_{k+1}`` comes for free.

    Parameters
    ----------
    op
        ``A``.
    y
        Measurements, shape of ``A x``.
    prox_g
        ``(v, step) -> argmin_x g(x) + ||x - v||^2 / (2 step)``.
    value_g
        ``x -> g(x)`` (a 0-d tensor).
    x0
        Initial image.
    step
        At most ``1 / ||A||^2``.
    scale
        The objective is reported as ``scale * F(x)``.
    """
    x = x0.clone()
    ax = op(x)
    x_prev, ax_prev = x, ax
    t = 1.0
    iteration = 0
    while True:
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = (t - 1.0) / t_next
        z = x + beta * (x - x_prev)
        az = ax + beta * (ax - ax_prev)
        x_prev, ax_prev = x, ax
        x = prox_g(z - step * op.adjoint(az - y), step)
        ax = op(x)
        t = t_next
        iteration += 1
        value = 0.5 * (ax - y).abs().square().sum() + value_g(x)
        yield SolverState(iteration, x, scale * float(value))
