"""Iterative solvers as generators of small frozen states.

Each solver yields a :class:`SolverState` after every iteration and never decides when to stop:
the caller (the CLI, the GUI worker, a test) stops by no longer asking for the next state, so
progress bars, live previews and cancellation all live outside the numerics.
"""

from napari_genreg.solvers.adaptation import generator_adaptation
from napari_genreg.solvers.cg import conjugate_gradient
from napari_genreg.solvers.fista import fista
from napari_genreg.solvers.pdhg import pdhg
from napari_genreg.solvers.state import SolverState

__all__ = ["SolverState", "conjugate_gradient", "fista", "generator_adaptation", "pdhg"]
