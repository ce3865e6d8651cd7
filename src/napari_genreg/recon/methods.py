"""The reconstruction methods, one registry, one contract.

Every method minimises (or, for ``zero-filled``, stands in for)

    1/(2 sigma^2) ||A x - y||^2 + lam R(x)

and is a :class:`Method`: a name, a default number of iterations, an automatic ``lam`` rule
and a ``solve`` that returns a generator of :class:`~napari_genreg.solvers.SolverState` whose
objective is in exactly these units. Solvers work internally on the equivalent
``1/2 ||A x - y||^2 + mu R(x)`` with ``mu = sigma^2 lam`` and report the objective scaled back.

Automatic weights (see ``benchmarks/lambda_rule.py`` for the measurement behind the constants):
``mu = c_R * sigma``, i.e. ``lam = c_R / sigma``, with ``sigma`` the problem's noise level
(never below :data:`~napari_genreg.recon.problem.NOISE_FLOOR` times the image scale). Both TV and
the wavelet l1 norm are 1-homogeneous, so a weight proportional to the noise standard deviation
keeps the balance between data and prior fixed as the image is rescaled, and as the noise grows
the prior's share grows with it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from napari_genreg.physics.operators import Compose, Crop
from napari_genreg.recon.problem import Problem
from napari_genreg.regularizers.functionals import SquaredDistance
from napari_genreg.regularizers.tv import GRADIENT, GRADIENT_NORM_SQUARED, tv_norm
from napari_genreg.regularizers.wavelet import WaveletL1, cycle_spinning
from napari_genreg.solvers import SolverState, conjugate_gradient, fista, pdhg

#: ``c_R`` of the automatic rule ``lam = c_R / sigma`` (measured: benchmarks/lambda_rule.py).
LAMBDA_CONSTANTS = {"tv": 0.5, "wavelet": 0.1}

Solve = Callable[[Problem, float], Iterator[SolverState]]


@dataclass(frozen=True)
class Method:
    """A reconstruction method.

    Attributes
    ----------
    name
        The CLI name.
    description
        One line for help texts and the GUI.
    default_iterations
        Iterations when the caller gives none.
    solve
        ``(problem, lam) -> iterator of states``; never stops by itself (except methods with a
        closed form, which yield once).
    auto_lam
        ``problem -> lam``, or ``None`` for methods without a regularisation weight.
    model_iterations
        ``() -> iterations`` for a method whose default depends on the model in use (``vn``:
        the stages of the network that :func:`~napari_genreg.recon.generative.use_model`
        selects), else ``None``.
    objective
        What the states' ``objective`` is: ``"objective"``, or for a method that minimises no
        fixed objective what it reports instead (``vn``: ``"data term"``).
    model_format
        The checkpoint ``format`` of the model the method loads (a ``--model`` folder must
        declare it), or ``None`` for methods without a model.
    """

    name: str
    description: str
    default_iterations: int
    solve: Solve
    auto_lam: Callable[[Problem], float] | None = None
    model_iterations: Callable[[], int] | None = None
    objective: str = "objective"
    model_format: str | None = None

    @property
    def has_lam(self) -> bool:
        return self.auto_lam is not None

    def planned_iterations(self) -> int:
        """The iterations to run when the caller gives none, for the model in use now."""
        if self.model_iterations is None:
            return self.default_iterations
        return self.model_iterations()


def _data_scale(problem: Problem) -> float:
    return 1.0 / problem.noise_sigma**2


def _op_norm_squared(problem: Problem) -> float:
    """An upper bound on ``||A||^2``: 1 for one coil, ``max_pixel sum_c |s_c|^2`` for SENSE."""
    if problem.maps is None:
        return 1.0
    return float(problem.maps.abs().square().sum(dim=0).max())


def _zero_filled(problem: Problem, lam: float) -> Iterator[SolverState]:
    x = problem.zero_filled()
    value = 0.5 * (problem.op(x) - problem.y).abs().square().sum()
    yield SolverState(1, x, _data_scale(problem) * float(value))


def _least_squares(problem: Problem, lam: float) -> Iterator[SolverState]:
    rhs = problem.zero_filled()
    offset = 0.5 * float(problem.y.abs().square().sum())
    scale = _data_scale(problem)
    for state in conjugate_gradient(problem.op.normal, rhs, offset=offset):
        yield state._replace(objective=scale * state.objective)


def _tv(problem: Problem, lam: float) -> Iterator[SolverState]:
    mu = lam * problem.noise_sigma**2
    lipschitz = (_op_norm_squared(problem) + GRADIENT_NORM_SQUARED) ** 0.5
    step = 0.99 / lipschitz
    terms = [(problem.op, SquaredDistance(problem.y)), (GRADIENT, tv_norm(mu))]
    yield from pdhg(terms, problem.zero_filled(), tau=step, sigma=step, scale=_data_scale(problem))


#: PDHG iterations of ``tv``: 0.09 dB short of 3000 iterations on average (0.42 at worst) over
#: 6 validation slices x 8 settings, with the automatic weight; 200 stopped 0.77 dB short on
#: average, 3.5 at worst (benchmarks/baseline_convergence.py).
TV_ITERATIONS = 1000

WAVELET_BLOCK = 16  # images are padded to a multiple of 2**4: four decomposition levels
#: Seed of the wavelet's random shifts (:func:`~napari_genreg.regularizers.wavelet.cycle_spinning`):
#: the same problem gives the same reconstruction.
WAVELET_SEED = 0


def _wavelet(problem: Problem, lam: float) -> Iterator[SolverState]:
    mu = lam * problem.noise_sigma**2
    h, w = problem.shape
    padded = (-(-h // WAVELET_BLOCK) * WAVELET_BLOCK, -(-w // WAVELET_BLOCK) * WAVELET_BLOCK)
    crop = Crop(padded, (h, w))
    op = Compose((problem.op, crop)) if padded != (h, w) else problem.op
    prior = WaveletL1(padded, mu)
    x0 = crop.adjoint(problem.zero_filled())
    shifts = torch.Generator().manual_seed(WAVELET_SEED)
    states = fista(
        op,
        problem.y,
        cycle_spinning(prior.prox, WAVELET_BLOCK, shifts),
        prior.value,  # reported at the unshifted grid: not exactly what the shifts minimise
        x0,
        step=1.0 / _op_norm_squared(problem),
        scale=_data_scale(problem),
    )
    for state in states:
        yield state._replace(x=crop(state.x))


def _constant_rule(name: str) -> Callable[[Problem], float]:
    def rule(problem: Problem) -> float:
        return LAMBDA_CONSTANTS[name] / problem.noise_sigma

    rule.__doc__ = f"lam = {LAMBDA_CONSTANTS[name]} / sigma"
    return rule


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("zero-filled", "inverse FFT of the zero-filled k-space (A^H y)", 1, _zero_filled),
        Method(
            "least-squares",
            "least squares by conjugate gradients (CG-SENSE for several coils)",
            20,
            _least_squares,
        ),
        Method(
            "tv",
            "isotropic total variation, primal-dual hybrid gradient",
            TV_ITERATIONS,
            _tv,
            _constant_rule("tv"),
        ),
        Method(
            "wavelet",
            "l1 norm of Daubechies-4 wavelet details at random shifts (cycle spinning), FISTA",
            100,
            _wavelet,
            _constant_rule("wavelet"),
        ),
    )
}

# The generative methods (vae-identity, vae-diagonal, vae-structured, range) join the registry
# here: their module builds on Method, so it is imported once everything above exists.
from napari_genreg.recon.generative import GENERATIVE_METHODS  # noqa: E402

METHODS.update(GENERATIVE_METHODS)

# The learned baseline ``vn`` (a variational network, napari_genreg.recon.learned) joins last.
from napari_genreg.recon.learned import LEARNED_METHODS  # noqa: E402

METHODS.update(LEARNED_METHODS)
