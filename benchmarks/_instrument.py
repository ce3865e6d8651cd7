"""Instruments shared by the benchmarks (they patch the package's functions for one process)."""

from __future__ import annotations


class CGCounter:
    """Counts the x-steps' conjugate-gradient solves and their iterations (wraps the function
    the alternating solver calls)."""

    def __init__(self) -> None:
        import napari_genreg.solvers.alternating as alternating

        self.solves = self.iterations = 0
        wrapped = alternating.conjugate_gradient

        def counting(*args, **kwargs):
            self.solves += 1
            for state in wrapped(*args, **kwargs):
                self.iterations += 1
                yield state

        alternating.conjugate_gradient = counting

    def take(self) -> float | None:
        """Mean iterations per solve since the last call (``None`` without a solve)."""
        mean = self.iterations / self.solves if self.solves else None
        self.solves = self.iterations = 0
        return mean
