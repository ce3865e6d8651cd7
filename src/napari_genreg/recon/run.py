"""Driving a method: weights, iteration limits, errors that name the problem, results."""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_genreg.metrics import Metrics, evaluate
from napari_genreg.recon.generative import model_spec_of
from napari_genreg.recon.methods import METHODS, Method
from napari_genreg.recon.problem import Problem
from napari_genreg.solvers import SolverState


class ReconstructionError(RuntimeError):
    """A reconstruction could not run or diverged; the message says why."""


def get_method(name: str) -> Method:
    """The registered method called ``name`` (a clear error listing the valid names)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown regulariser {name!r}; choose from {', '.join(METHODS)}"
        ) from None


def check_model(model: str | os.PathLike[str], names: Sequence[str]) -> None:
    """Check, before any work, that the ``--model`` folder ``model`` suits the methods ``names``.

    Reads the folder's ``config.json`` only, and needs it whatever the methods (a folder that
    is not a model is an error even when only methods without a model, ``tv``, ..., would
    run, which then ignore it); every method that loads one must accept the folder's format
    (a VAE prior for ``vae-*``, ``range`` and ``adapt``, a variational network for ``vn``).
    The covariance a ``vae-*`` method needs is checked when its model is loaded.

    Raises
    ------
    FileNotFoundError
        When the folder or its ``config.json`` does not exist.
    napari_genreg.models.checkpoint.CheckpointError
        When the configuration is unreadable, or the folder holds the other kind of model (the
        message names the methods it cannot serve).
    """
    from napari_genreg.models.checkpoint import FORMAT, VN_FORMAT, CheckpointError, model_format

    kinds = {FORMAT: "a VAE prior", VN_FORMAT: "a variational network"}
    found = model_format(model)
    methods = [get_method(name) for name in names]
    wrong = [m for m in methods if m.model_format is not None and m.model_format != found]
    if wrong:
        needed = " or ".join(sorted({kinds.get(m.model_format, m.model_format) for m in wrong}))
        raise CheckpointError(
            f"the model {os.fspath(model)} is {kinds.get(found, repr(found))}, but "
            f"{', '.join(m.name for m in wrong)} need{'s' if len(wrong) == 1 else ''} {needed}: "
            "run them apart, or without a model folder"
        )


def resolve_lam(method: Method, problem: Problem, lam: float | None) -> float:
    """``lam`` as given (checked) or from the method's automatic rule (0 where it has none)."""
    if lam is None:
        return method.auto_lam(problem) if method.auto_lam is not None else 0.0
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite non-negative number, got {lam}")
    return float(lam)


def iterate(
    problem: Problem,
    name: str,
    *,
    lam: float | None = None,
    iterations: int | None = None,
) -> Iterator[SolverState]:
    """The states of method ``name`` on ``problem``, at most ``iterations`` of them.

    The caller may stop earlier (cancellation is simply not asking for the next state). Errors
    in the numerics are re-raised as :class:`ReconstructionError` with the method, the
    iteration and the cause (a non-finite objective, running out of device memory).
    """
    method = get_method(name)
    n = method.planned_iterations() if iterations is None else int(iterations)
    if n < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    weight = resolve_lam(method, problem, lam)
    iteration = 0
    try:
        for state in itertools.islice(method.solve(problem, weight), n):
            iteration = state.iteration
            if not math.isfinite(state.objective):
                raise ReconstructionError(
                    f"{name}: the objective became {state.objective} at iteration "
                    f"{state.iteration}; check the input for extreme values or lower lam"
                )
            yield state
    except torch.OutOfMemoryError as exc:
        raise ReconstructionError(
            f"{name}: ran out of memory on {problem.device} at iteration {iteration} "
            f"({problem.shape[0]}x{problem.shape[1]}); try a smaller input or --device cpu"
        ) from exc


@dataclass(frozen=True)
class Result:
    """A finished reconstruction of one slice.

    Attributes
    ----------
    name
        The method.
    image
        float32 ``(H, W)``: the magnitude, on the input's intensity scale, cropped to the
        problem's recon size.
    lam
        The weight used (0 for methods without one).
    iterations
        Iterations run.
    seconds
        Wall time of the iterations.
    objectives
        The objective after each iteration.
    metrics
        Against the problem's reference, or ``None`` without one.
    latent
        float32 ``(c, h, w)``: the latent ``z`` of the final state for the generative methods
        (on the padded grid: ``f`` times its spatial shape, centred on ``image``), else ``None``.
    model
        The model the method loaded (``builtin:<name>`` or a directory): the prior of a
        generative method, the network of ``vn``; ``None`` for methods without one.
    """

    name: str
    image: np.ndarray
    lam: float
    iterations: int
    seconds: float
    objectives: tuple[float, ...] = field(repr=False)
    metrics: Metrics | None
    latent: np.ndarray | None = field(default=None, repr=False)
    model: str | None = None


def run(
    problem: Problem,
    name: str,
    *,
    lam: float | None = None,
    iterations: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Generator[SolverState, None, Result]:
    """Yield the states of method ``name`` like :func:`iterate`, and *return* the finished
    :class:`Result` (``StopIteration.value``; ``result = yield from run(...)``).

    The one place where a run becomes a result, shared by :func:`reconstruct` (the CLI) and the
    napari worker, which forwards each state as a progress event and may stop early.
    """
    method = get_method(name)
    weight = resolve_lam(method, problem, lam)
    objectives = []
    state = None
    start = clock()
    for state in iterate(problem, name, lam=weight, iterations=iterations):
        objectives.append(state.objective)
        yield state
    if state is None:
        raise ReconstructionError(f"{name}: the solver produced no iterate")
    if problem.device.type == "cuda":
        torch.cuda.synchronize(problem.device)
    seconds = clock() - start
    image = problem.magnitude(state.x)
    metrics = None if problem.reference is None else evaluate(problem.reference, image)
    z = getattr(state, "z", None)
    latent = None if z is None else z.detach().float().cpu().numpy().reshape(z.shape[-3:])
    return Result(
        name,
        image,
        weight,
        state.iteration,
        seconds,
        tuple(objectives),
        metrics,
        latent,
        model_spec_of(method),
    )


def reconstruct(
    problem: Problem,
    name: str,
    *,
    lam: float | None = None,
    iterations: int | None = None,
    on_state: Callable[[SolverState], None] | None = None,
) -> Result:
    """Run method ``name`` to its iteration limit and collect the :class:`Result`.

    ``on_state`` is called with every state (for progress bars); to stop early or preview
    iterates, drive :func:`run` or :func:`iterate` instead.
    """
    runner = run(problem, name, lam=lam, iterations=iterations)
    while True:
        try:
            state = next(runner)
        except StopIteration as finished:
            return finished.value
        if on_state is not None:
            on_state(state)
