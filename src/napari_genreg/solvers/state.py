"""The state every solver yields."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SolverState(NamedTuple):
    """One iteration of a solver.

    Attributes
    ----------
    iteration
        1 after the first update.
    x
        The current image (a tensor the solver no longer modifies).
    objective
        The objective at ``x``, in the units the solver was given.
    """

    iteration: int
    x: torch.Tensor
    objective: float
