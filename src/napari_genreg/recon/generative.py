r"""The generative reconstruction methods: ``vae-identity``, ``vae-diagonal``, ``vae-structured``
and the ``range`` and ``adapt`` baselines.

Each is a :class:`~napari_genreg.recon.methods.Method` whose ``solve`` prepares the problem for
a learned prior and runs a solver of :mod:`napari_genreg.solvers.alternating`:

* ``vae-<kind>``: :func:`~napari_genreg.solvers.alternating.alternating_minimisation` of

  .. math::

      \frac{1}{2\sigma^2}\|Ax - y\|^2 + \lambda\Big[\log\det\Sigma(z)
      + \tfrac12\|P x / c - G(z)\|^2_{\Sigma(z)^{-1}}\Big] + \tfrac12\|z\|^2

  with the VAE ``builtin:<kind>`` (:mod:`napari_genreg.models.checkpoint`), ``c`` the problem's
  intensity scale and ``P`` the removal of its smooth phase estimate. ``vae-identity`` uses the
  decoder's learned :math:`s^2 I` (with any model: every decoder has one).
* ``range`` (Bora et al., ICML 2017): :math:`x = c\,P^H G(z)`,
  :func:`~napari_genreg.solvers.alternating.latent_search` of
  :math:`\frac{1}{2\sigma^2}\|A x - y\|^2 + \frac{\lambda}{2}\|z\|^2` from the encoder's latent
  and two random ones, keeping the best (model ``builtin:identity``: the mean only).
* ``adapt`` (generator adaptation, in the spirit of Narnhofer et al. 2019):
  :func:`~napari_genreg.solvers.adaptation.generator_adaptation`: :math:`x = c\,P^H
  G_\theta(z)` minimising :math:`\frac{1}{2\sigma^2}\|A x - y\|^2 + \frac{\lambda}{2}
  \|z\|^2`, first over ``z`` from the encoder's latent (a latent search), then over ``z`` and
  the weights :math:`\theta` of the decoder's mean (trunk and mean head) of a **private deep
  copy** of the model, early-stopped on a held-out 5 % of the measured k-space (model
  ``builtin:identity``). The loaded model, which :func:`load_prior_model` shares between all
  methods, is never modified. The adapted weights are dropped at the end: the result carries
  the image and the latent ``z`` (:class:`~napari_genreg.recon.run.Result`), and that latent
  decodes to the image only through the adapted weights, so it is informative for the
  ``vae-*`` methods and ``range``, not here. Covariance inspection of an ``adapt`` result
  shows the model's :math:`s^2 I` (its ``identity`` head, which adaptation never touches and
  which does not depend on ``z``): meaningful covariance inspection is for ``vae-*``.

Practical points (``DESIGN.md``)
--------------------------------
Scale: the priors know magnitudes in [0, 1]. The solvers run on the normalised problem
:math:`y / c`, :math:`\sigma / c` with :math:`c` = ``problem.scale`` (the 99th percentile of the
zero-filled magnitude); the states are multiplied by :math:`c` on the way out, so images stay on
the input's scale. The objective is the same number in both units: the data term is invariant
(:math:`\|A(x/c) - y/c\|^2 / (\sigma/c)^2 = \|Ax - y\|^2 / \sigma^2`) and the prior's terms are
defined on the normalised image.

Phase: ``problem.phase()`` (a smooth estimate from the calibration region) is removed before the
prior sees the image; the x-step puts it back, since the prior's term pulls :math:`P x` towards
the real :math:`G(z)`.

Sizes: the models take sides that are multiples of ``f = 2**downsamplings`` (8). Other sizes are
**padded**, not refused: the image lives on the grid rounded up to multiples of ``f`` (at least
``f``), the forward operator becomes ``A C`` with ``C`` the centred crop
(:class:`~napari_genreg.physics.operators.Crop`, as for the wavelets), the padding is
unmeasured and filled by the prior, and the output is cropped back. The latent ``z`` belongs to
the padded grid: ``f`` times its spatial shape is the padded shape, centred on the output.

Automatic weight and iteration defaults
---------------------------------------
The Bayesian reading of the objective (maximum a posteriori under the learned prior with the true
noise level) gives ``lam = 1``. Measured on held-out data (``benchmarks/generative_lambda.py``,
``benchmarks/results/generative_lambda.md``: the three Colin27 sample slices, which the built-in
models never saw, under random 4x, radial 6x and Poisson 6x masks at relative noise 0.01 and
0.05; the x-step solved as below), ``lam = 1`` is too strong: for ``vae-structured`` and
``vae-diagonal`` it loses 0.8 to 1.8 dB to each setting's best weight at 5 % noise and 0.2 to
0.6 dB at 1 % (``vae-identity``: 0.2 to 0.5 dB at 5 %, at most 0.2 at 1 %). The methods use
a weight inversely proportional to the relative noise level,

.. math:: \lambda = c / \sigma_{rel}, \qquad \sigma_{rel} = \sigma / \text{scale},
          \qquad c = 0.005 \ (:data:`LAMBDA_NOISE_CONSTANT`),

about 0.38 at 1 % noise and 0.076 at 5 % (noise relative to the image maximum; the scale is a
lower percentile), and 1, the Bayesian weight, on noiseless data (where the noise floor
:data:`~napari_genreg.recon.problem.NOISE_FLOOR` applies). In the normalised x-step the prior's
weight is then :math:`\mu = \lambda\sigma_{rel}^2 = c\,\sigma_{rel}`, linear in the noise
like the classical rules of :mod:`~napari_genreg.recon.methods`. Mean PSNR over the 18
reconstructions (rule / best constant weight / ``lam = 1``): ``vae-structured`` 24.72 / 24.85
(0.1) / 24.16 dB, ``vae-diagonal`` 24.81 / 24.88 (0.05) / 24.00, ``vae-identity`` 23.42 / 23.49
(0.25) / 23.33. The rule was chosen when the x-step ran a fixed 6 CG iterations, where it led
``vae-diagonal``'s best constant by 0.05 dB; with the x-step solved, a constant near 0.1 does as
well or slightly better (``vae-diagonal`` by 0.07 dB, ``vae-structured`` by 0.13 dB, on one
subject) and the best weight per setting hardly moves with the noise (0.05 to 0.2). The rule is
kept: the data do not separate the two, and it keeps the Bayesian weight's limit on clean data.
Likely reasons the Bayesian weight is too strong: the joint minimisation over ``(x, z)`` with the
poster's :math:`\log\det\Sigma` (rather than the likelihood's
:math:`\tfrac12\log\det\Sigma`) favours latents with a small, over-confident covariance, and
the priors, trained on population templates, are smoother than one subject. ``range``'s weight
(on :math:`\tfrac12\|z\|^2` alone) barely matters (0.05 dB over 0.25 to 4): ``lam = 1``.

The x-step (:class:`GenerativeSettings`: ``cg_reduction``, ``cg_steps``): Jacobi-preconditioned
CG from the previous image until its residual has fallen to a tenth of the warm start's, at most
50 iterations. A fixed 6 iterations (until 2026-12-03) was enough for the diagonal prior but
left the structured prior's x-step unsolved (its precision, with off-diagonal weights up to 2.5
times the diagonal, is worse conditioned): 24.43 dB after 20 outer iterations, still rising at 60
(24.83; ``--rule --iterations 60`` with 6 CG iterations, results at commit 0d0a9c3), and
up to 1.2 dB below ``vae-diagonal`` on the 1-D random masks of the 24-slice comparison. The
tenfold reduction takes 21.5 CG iterations per x-step for ``vae-structured`` and 9.2 for
``vae-diagonal`` (mean over the 18 reconstructions of 60 outer iterations); a tighter
reduction cost more CG iterations for no gain in an unrecorded check.
``benchmarks/xstep_accuracy.py`` (``benchmarks/results/xstep_accuracy.md``) compares the two
x-steps on 1 and 8 coils, 128 and 256, 0.1 % and 1 % noise: after 20 outer iterations the
solved one is better for ``vae-structured`` in 7 of the 8 settings (+1.3 to +3.0 dB on one
coil, +0.1 to +0.6 dB on 8 coils; 0.4 dB worse on 8 coils at 128 and 0.1 % noise) and within
0.4 dB for ``vae-diagonal``. On multi-coil data the x-step keeps pixels that no coil sees at 0
(:attr:`NormalisedProblem.support`); without that, those pixels followed the prior's mean as the
latent drifted and the solved x-step's PSNR fell after 10 outer iterations (8 coils, 256: 35.4
dB at 10, 31.0 at 20, 26.8 at 40, in the benchmark's results at commit f260dc3; now 35.8 at 20,
35.9 at 40).

Iterations (:data:`DEFAULT_ITERATIONS`), from the time per outer iteration on 128 x 128 on one
CPU core (same results file) and the convergence of the mean PSNR: ``vae-structured`` 0.050 s
per iteration timed at ``lam = 1`` (2 decoder forward and backward passes at 0.019 s, the
x-step's CG, the objective; at the rule's smaller weights the x-step needs more CG iterations:
3.08 s per 60 iterations in the convergence runs), 20 iterations, 1 s (mean PSNR 24.72 dB at 20
iterations, 24.78 at 30, 24.87 at 60); ``vae-diagonal`` 0.037 s, 20 iterations (24.81; 24.89 at
60); ``vae-identity`` 0.056 s (closed-form x-step, 0.6 ms; measured on a slower day), 40
iterations, 2.4 s; ``range`` 0.082 s (three starts at once, the same day), 60 iterations, 5.1 s.
Two Adam steps per z-step match four per z-step at equal time.

``adapt`` (:data:`ADAPT_SETTINGS`, ``benchmarks/adapt_settings.py``,
``benchmarks/results/adapt_settings.md``; the same 18 held-out reconstructions): ``lam = 1``
like ``range`` (only :math:`\tfrac12\|z\|^2` is weighted), 30 iterations of latent search
from the encoder's latent at rate 0.1, then the decoder's weights at rate 0.001 with ``z``
fixed, ramped up over 20 iterations, 5 % of the measured k-space held out, patience 20; 100
iterations in all. Mean PSNR 23.95 dB at 100 iterations (23.91 at 120, 23.86 at 150; rate
0.0003: 23.89 / 23.93 / 23.90) against 22.53 for ``range`` and 23.42 for ``vae-identity``,
better in every setting (+0.2 to +0.9 dB over ``vae-identity``, most at 5 % noise). The
held-out residual stopped 6 of the 18 runs (after 81 to 90 iterations) before 150; in the
others it was still improving while the PSNR had peaked, hence the iteration limit as the
second guard. An iteration costs one decoder forward and backward pass with respect to the
weights: about 0.09 s at 128 x 128 on one heavily loaded core (load average 7 on 2 cores;
``range`` runs about twice as fast unloaded), 100 iterations about 9 s there.

Model override: :func:`use_model` (a context manager, used by the CLI's ``--model``) makes
every generative method inside it use another model directory;
:func:`generative_method` builds a method with its own model and settings.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from napari_genreg.models.checkpoint import FORMAT, ModelCard, load_model, resolve_model_dir
from napari_genreg.models.vae import VAE, Decoder
from napari_genreg.physics.operators import (
    CoilExpand,
    Compose,
    Crop,
    Diagonal,
    FFT2c,
    LinearOperator,
)
from napari_genreg.recon.methods import Method
from napari_genreg.recon.problem import Problem
from napari_genreg.regularizers.generative import GenerativeRegularizer
from napari_genreg.solvers.adaptation import generator_adaptation
from napari_genreg.solvers.alternating import (
    AlternatingState,
    alternating_minimisation,
    latent_search,
    shifted_fourier_solve,
)

__all__ = [
    "ADAPT_SETTINGS",
    "DEFAULT_ITERATIONS",
    "GENERATIVE_KINDS",
    "GENERATIVE_METHODS",
    "LAMBDA_NOISE_CONSTANT",
    "LAMBDA_RANGE",
    "RANGE_SETTINGS",
    "AdaptSettings",
    "GenerativeSettings",
    "GenerativeSolve",
    "NormalisedProblem",
    "automatic_lam",
    "clear_model_cache",
    "generative_method",
    "head_of",
    "load_prior_model",
    "model_override",
    "model_spec_of",
    "normalise",
    "padded_shape",
    "prior_size_notes",
    "use_model",
]

#: The solver families: the three covariance heads, the range and the adaptation baselines.
GENERATIVE_KINDS = ("identity", "diagonal", "structured", "range", "adapt")

#: ``c`` of the automatic rule ``lam = c / sigma_rel`` of the ``vae-*`` methods, with
#: ``sigma_rel = noise_sigma / scale`` (``benchmarks/results/generative_lambda.md``).
LAMBDA_NOISE_CONSTANT = 0.005
#: The automatic ``lam`` of ``range`` (the Bayesian weight of ``1/2 ||z||^2``; measured flat).
LAMBDA_RANGE = 1.0

_OVERRIDE: ContextVar[str | None] = ContextVar("napari_genreg_model_override", default=None)


@contextlib.contextmanager
def use_model(spec: str | os.PathLike[str] | None, *, check: bool = True) -> Iterator[None]:
    """Inside the block, every generative method uses the model ``spec`` (``None``: its own).

    ``spec`` is a model directory or ``builtin:<name>``; it is checked at once unless
    ``check=False`` (a caller that enters the block once per step of a run and checked the
    model before the first).

    Examples
    --------
    >>> with use_model(None):
    ...     pass
    """
    if spec is not None:
        spec = os.fspath(spec)
        if check:
            resolve_model_dir(spec)  # fail early for a missing directory
    token = _OVERRIDE.set(spec)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


_CACHE: dict[tuple, tuple[VAE, ModelCard]] = {}
_CACHE_LOCK = threading.Lock()


def load_prior_model(
    spec: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[VAE, ModelCard]:
    """:func:`~napari_genreg.models.checkpoint.load_model`, loaded once per device and cached.

    The cache key includes the modification times and sizes of the directory's ``config.json``
    and ``model.safetensors``, so a model saved again to the same folder is reloaded. The
    returned model is shared: callers must not modify it (the solvers never do).
    """
    directory = resolve_model_dir(spec)
    files = [directory / name for name in ("config.json", "model.safetensors")]
    for file in files:
        if not file.is_file():  # (its stat raised a bare "[Errno 2] No such file")
            raise FileNotFoundError(f"{directory} is no complete model: {file.name} is missing")
    stats = [file.stat() for file in files]
    key = (
        str(directory.resolve()),
        str(torch.device(device)),
        *((stat.st_mtime_ns, stat.st_size) for stat in stats),
    )
    with _CACHE_LOCK:  # workers of the viewer load from threads
        if key not in _CACHE:
            _CACHE[key] = load_model(directory, device=device)
        return _CACHE[key]


def prior_size_notes(names: Sequence[str], shape: Sequence[int]) -> list[str]:
    """One line per prior, among the models the methods ``names`` use now (the override of
    :func:`use_model` included), that was trained on images of another size than ``shape``:
    a convolutional prior runs at any size, but knows anatomy at its own field of view and
    pixel size."""
    from napari_genreg.models.checkpoint import FORMAT
    from napari_genreg.recon.run import get_method

    specs = set()
    for name in names:
        method = get_method(name)
        if method.model_format == FORMAT and hasattr(method.solve, "model_spec"):
            specs.add(method.solve.model_spec)
    notes = []
    for spec in sorted(specs):
        size = load_prior_model(spec, "cpu")[0].config.image_size
        if tuple(shape) != (size, size):
            notes.append(
                f"the prior {spec} was trained on {size}x{size} images, this input is "
                f"{shape[0]}x{shape[1]}: it knows anatomy at its own field of view and pixel size"
            )
    return notes


def clear_model_cache() -> None:
    """Forget every cached model."""
    _CACHE.clear()


@dataclass(frozen=True)
class GenerativeSettings:
    """Problem-independent settings of a generative method.

    Attributes
    ----------
    z_steps
        Adam steps on ``z`` per outer iteration (per iteration for ``range``: 1 always).
    cg_steps
        conjugate-gradient iterations per x-step at most, when it has no closed form.
    cg_reduction
        the x-step's CG stops earlier once its (preconditioned) residual is this fraction of
        the warm start's; ``None``: only ``cg_steps`` (or convergence to rounding) stops it.
    learning_rate
        Adam's initial step on ``z``.
    restarts
        extra random starting latents (the best start is kept).
    seed
        seed of the restarts' generator.
    """

    z_steps: int = 2
    cg_steps: int = 50
    cg_reduction: float | None = 0.1
    learning_rate: float = 0.05
    restarts: int = 0
    seed: int = 0


@dataclass(frozen=True)
class AdaptSettings(GenerativeSettings):
    """The settings of ``adapt`` (:func:`~napari_genreg.solvers.adaptation.generator_adaptation`).

    Attributes
    ----------
    learning_rate
        Adam's step on ``z`` during the latent search.
    restarts, seed
        extra random starts of the latent search; the seed also draws the hold-out set.
    search_iterations
        latent-search iterations before the decoder's weights move.
    weight_learning_rate
        Adam's step on the (copied) decoder weights.
    latent_learning_rate
        Adam's step on ``z`` during the adaptation (0: ``z`` stays where the search left it;
        a step of 0.01 was no better in a one-slice check).
    warmup
        adaptation iterations over which the steps ramp up linearly from zero (Adam's first
        steps otherwise throw the fit off).
    z_steps, cg_steps, cg_reduction
        inherited, unused.
    holdout_fraction
        fraction of the measured k-space locations held out for early stopping.
    patience
        adaptation iterations without a better held-out residual before stopping.
    """

    learning_rate: float = 0.1
    search_iterations: int = 30
    weight_learning_rate: float = 1e-3
    latent_learning_rate: float = 0.0
    holdout_fraction: float = 0.05
    patience: int = 20
    warmup: int = 20


class _DecoderMean(nn.Module):
    """:math:`G(z)` of a VAE decoder as a module of its own (the trunk and the mean head,
    shared with the decoder, not copied): what the adaptation copies and fine-tunes."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.trunk = decoder.trunk
        self.mean_head = decoder.mean_head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean_head(self.trunk(z))[:, 0]


def padded_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
    """``shape`` rounded up to multiples of ``factor`` (at least ``factor``)."""
    return tuple(max(factor, -(-int(n) // factor) * factor) for n in shape)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class NormalisedProblem:
    r"""A problem as the learned prior sees it: padded, normalised, with its phase.

    Attributes
    ----------
    op
        :math:`A C` (or ``A`` when no padding is needed): padded images ``(Hp, Wp)`` to
        measurements.
    y
        :math:`y / c`.
    noise_sigma
        :math:`\sigma / c`.
    scale
        :math:`c`, ``problem.scale``.
    crop
        ``C``: the centred crop from the padded grid to the problem's grid.
    phase
        the phase estimate on the padded grid (1 on the padding), complex ``(Hp, Wp)``.
    x0
        :math:`C^H A^H y / c`, complex ``(Hp, Wp)``.
    shifted_solve
        the exact x-step solver for single-coil Cartesian data, else ``None``.
    data_diagonal
        :math:`\operatorname{diag}(C^H A^H A C)`, real ``(Hp, Wp)``, or ``None`` when unknown.
    measured
        boolean ``(H, W)``: the sampled k-space locations (from ``A``'s mask), or ``None``
        when ``A`` is not ``M F`` or ``M F S``.
    support
        float ``(Hp, Wp)``, 0 where every coil's sensitivity is 0 (ESPIRiT's maps vanish
        outside the object, so the data say nothing there) and 1 elsewhere, the padding
        included; ``None`` when there is no such pixel (single coil, or maps everywhere).
        The x-step keeps the image at 0 outside it, as SENSE does.
    """

    op: LinearOperator
    y: torch.Tensor
    noise_sigma: float
    scale: float
    crop: Crop
    phase: torch.Tensor
    x0: torch.Tensor
    shifted_solve: object = field(repr=False)
    data_diagonal: torch.Tensor | None = field(repr=False)
    measured: torch.Tensor | None = field(default=None, repr=False)
    support: torch.Tensor | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """The padded shape ``(Hp, Wp)``."""
        return self.crop.in_shape

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """A padded normalised image back on the problem's grid and scale: :math:`c\\,C x`."""
        return self.crop(x) * self.scale


def _fourier_parts(op: LinearOperator) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(mask weights, maps or None)`` when ``op`` is ``M F`` or ``M F S``, else ``None``."""
    ops = getattr(op, "ops", ())
    if len(ops) >= 2 and isinstance(ops[0], Diagonal) and isinstance(ops[1], FFT2c):
        if len(ops) == 2:
            return ops[0].weights, None
        if len(ops) == 3 and isinstance(ops[2], CoilExpand):
            return ops[0].weights, ops[2].maps
    return None


def normalise(problem: Problem, factor: int) -> NormalisedProblem:
    """Pad ``problem`` to multiples of ``factor`` and normalise it by its scale.

    Parameters
    ----------
    problem
        the reconstruction problem.
    factor
        the model's ``2**downsamplings``.
    """
    shape = problem.shape
    padded = padded_shape(shape, factor)
    crop = Crop(padded, shape)
    op = problem.op if padded == shape else Compose((problem.op, crop))
    c = float(problem.scale)
    y = problem.y / c
    phase = crop.adjoint(problem.phase() - 1) + 1
    x0 = crop.adjoint(problem.zero_filled()) / c
    parts = _fourier_parts(problem.op)
    shifted = None
    diagonal = None
    measured = None
    support = None
    if parts is not None:
        weights, maps = parts
        fraction = weights.float().mean().to(problem.device)
        inner = (
            torch.ones(shape, device=problem.device)
            if maps is None
            else maps.abs().square().sum(dim=0).float()
        )
        diagonal = crop.adjoint(fraction * inner)
        if maps is not None and bool((inner == 0).any()):
            support = crop.adjoint((inner > 0).float() - 1) + 1  # 1 on the padding
        if maps is None and weights.ndim == 2:
            shifted = shifted_fourier_solve(weights.to(problem.device), padded)
        if weights.ndim <= 2:
            measured = torch.broadcast_to(weights != 0, y.shape[-2:]).to(problem.device)
    return NormalisedProblem(
        op, y, problem.noise_sigma / c, c, crop, phase, x0, shifted, diagonal, measured, support
    )


def model_override() -> str | None:
    """The model given to the enclosing :func:`use_model` block, or ``None``."""
    return _OVERRIDE.get()


def _effective(model: str) -> str:
    override = model_override()
    return model if override is None else override


@dataclass(frozen=True)
class GenerativeSolve:
    """The ``solve`` of a generative method: ``(problem, lam) -> iterator of states``.

    Attributes
    ----------
    kind
        one of :data:`GENERATIVE_KINDS`.
    model
        the default model: ``builtin:<name>`` or a directory (:func:`use_model` overrides it).
    settings
        :class:`GenerativeSettings`.
    """

    kind: str
    model: str
    settings: GenerativeSettings = GenerativeSettings()

    def __post_init__(self) -> None:
        if self.kind not in GENERATIVE_KINDS:
            raise ValueError(f"kind must be one of {GENERATIVE_KINDS}, got {self.kind!r}")

    @property
    def head(self) -> str:
        """The decoder head used: ``"identity"`` for ``identity``, ``range`` and ``adapt``."""
        return "configured" if self.kind in ("diagonal", "structured") else "identity"

    @property
    def model_spec(self) -> str:
        """The model actually used now (the override of :func:`use_model`, if any)."""
        return _effective(self.model)

    def prior(self, problem: Problem) -> tuple[GenerativeRegularizer, NormalisedProblem]:
        """The regulariser and the normalised problem (loads the model once per device)."""
        spec = self.model_spec
        model, card = load_prior_model(spec, problem.device)
        covariance = model.config.covariance
        if self.head == "configured" and covariance != self.kind:
            raise ValueError(
                f"vae-{self.kind} needs a model with a {self.kind} covariance; the model "
                f"{spec} has a {covariance} one (its mean and identity covariance serve "
                "vae-identity and range)"
            )
        if self.head == "configured" and card.metrics.get("stage") == 1:
            done = card.metrics.get("epochs_completed", "?")
            total = (card.training or {}).get("epochs", "?")
            raise ValueError(
                f"the {covariance} covariance head of the model {spec} was never trained: its "
                f"training stopped in stage 1 (epoch {done} of {total}); continue it with "
                "`napari-genreg train --resume` (its mean serves vae-identity and range)"
            )
        normalised = normalise(problem, model.config.factor)
        phase = normalised.phase.to(torch.complex64)
        prior = GenerativeRegularizer(model, phase, head=self.head)  # type: ignore[arg-type]
        return prior, normalised

    def __call__(self, problem: Problem, lam: float) -> Iterator[AlternatingState]:
        prior, normalised = self.prior(problem)
        s = self.settings
        z0 = prior.encode(normalised.x0)
        generator = torch.Generator().manual_seed(s.seed)
        if self.kind in ("range", "adapt"):
            starts = [z0]
            for _ in range(max(s.restarts, 0)):
                starts.append(torch.randn(z0.shape, generator=generator).to(z0))
        if self.kind == "adapt":
            a = s if isinstance(s, AdaptSettings) else AdaptSettings(**asdict(s))
            states = generator_adaptation(
                normalised.op,
                normalised.y,
                _DecoderMean(prior.model.decoder),
                prior.phase,
                torch.cat(starts),
                noise_sigma=normalised.noise_sigma,
                lam=lam,
                search_iterations=a.search_iterations,
                learning_rate=a.learning_rate,
                weight_learning_rate=a.weight_learning_rate,
                latent_learning_rate=a.latent_learning_rate,
                holdout_fraction=a.holdout_fraction,
                patience=a.patience,
                warmup=a.warmup,
                measured=normalised.measured,
                generator=generator,
            )
        elif self.kind == "range":
            states = latent_search(
                normalised.op,
                normalised.y,
                prior,
                torch.cat(starts),
                noise_sigma=normalised.noise_sigma,
                lam=lam,
                learning_rate=s.learning_rate,
            )
        else:
            states = alternating_minimisation(
                normalised.op,
                normalised.y,
                prior,
                normalised.x0,
                z0,
                noise_sigma=normalised.noise_sigma,
                lam=lam,
                z_steps=s.z_steps,
                cg_steps=s.cg_steps,
                cg_reduction=s.cg_reduction,
                learning_rate=s.learning_rate,
                shifted_solve=normalised.shifted_solve,  # type: ignore[arg-type]
                data_diagonal=normalised.data_diagonal,
                support=normalised.support,
                restarts=s.restarts,
                generator=generator,
            )
        dtype = problem.y.dtype
        for state in states:
            yield state._replace(x=normalised.output(state.x).to(dtype))


#: The range baseline's settings: one Adam step per iteration at rate 0.1, from the encoder's
#: latent and two random ones (Bora et al. restart from random latents only; the encoder's
#: start is better and the random ones cost a decoder pass each).
RANGE_SETTINGS = GenerativeSettings(learning_rate=0.1, restarts=2)


#: ``adapt``'s settings (``benchmarks/results/adapt_settings.md``).
ADAPT_SETTINGS = AdaptSettings()


def automatic_lam(kind: str, problem: Problem) -> float:
    """The automatic weight: ``LAMBDA_NOISE_CONSTANT / problem.noise_relative`` for the
    ``vae-*`` kinds (at most ``LAMBDA_NOISE_CONSTANT / NOISE_FLOOR = 1``, the Bayesian weight,
    on noiseless data), ``LAMBDA_RANGE`` for ``range``."""
    if kind in ("range", "adapt"):
        return LAMBDA_RANGE
    return LAMBDA_NOISE_CONSTANT / problem.noise_relative


def _auto_lam(kind: str):
    def rule(problem: Problem) -> float:
        return automatic_lam(kind, problem)

    rule.__doc__ = (
        f"lam = {LAMBDA_RANGE}"
        if kind in ("range", "adapt")
        else f"lam = {LAMBDA_NOISE_CONSTANT} / (noise_sigma / scale)"
    )
    return rule


_DESCRIPTIONS = {
    "identity": "VAE prior, identity covariance s^2 I (mean only), alternating minimisation",
    "diagonal": "VAE prior, per-pixel variance, alternating minimisation",
    "structured": "VAE prior with structured covariance (sparse Cholesky precision), "
    "alternating minimisation",
    "range": "range of a VAE decoder (Bora et al. 2017): latent search with restarts",
    "adapt": "generator adaptation (Narnhofer et al. 2019): latent search, then fine-tuning a "
    "copy of the decoder to the data, early-stopped on held-out k-space",
}

#: Default outer iterations (``benchmarks/results/generative_lambda.md``: time per iteration).
DEFAULT_ITERATIONS = {
    "identity": 40,
    "diagonal": 20,
    "structured": 20,
    "range": 60,
    "adapt": 100,
}


def generative_method(
    name: str,
    kind: str,
    model: str | os.PathLike[str] | None = None,
    *,
    settings: GenerativeSettings | None = None,
    iterations: int | None = None,
) -> Method:
    """A generative :class:`~napari_genreg.recon.methods.Method`.

    Parameters
    ----------
    name
        the method's name.
    kind
        ``"identity"``, ``"diagonal"``, ``"structured"``, ``"range"`` or ``"adapt"``.
    model
        the model: a directory or ``builtin:<name>`` (default ``builtin:<kind>``, and
        ``builtin:identity`` for ``range`` and ``adapt``). Loaded lazily, on first use, and
        cached.
    settings
        :class:`GenerativeSettings` (default: :data:`RANGE_SETTINGS` for ``range``,
        :data:`ADAPT_SETTINGS` (an :class:`AdaptSettings`) for ``adapt``, the class defaults
        for the others).
    iterations
        default outer iterations (default :data:`DEFAULT_ITERATIONS`).

    Examples
    --------
    >>> method = generative_method("vae-mine", "structured", "path/to/model")
    >>> method.name, method.has_lam
    ('vae-mine', True)
    """
    if kind not in GENERATIVE_KINDS:
        raise ValueError(f"kind must be one of {GENERATIVE_KINDS}, got {kind!r}")
    if model is None:
        model = f"builtin:{'identity' if kind in ('range', 'adapt') else kind}"
    if settings is None:
        settings = {"range": RANGE_SETTINGS, "adapt": ADAPT_SETTINGS}.get(
            kind, GenerativeSettings()
        )
    solve = GenerativeSolve(kind, os.fspath(model), settings)
    return Method(
        name,
        _DESCRIPTIONS[kind],
        DEFAULT_ITERATIONS[kind] if iterations is None else int(iterations),
        solve,
        _auto_lam(kind),
        model_format=FORMAT,
    )


def model_spec_of(method: Method) -> str | None:
    """The model a method loads now, the :func:`use_model` override or its own (a prior for the
    generative methods, the network for ``vn``); ``None`` for methods without a model."""
    if method.model_format is None:
        return None
    return str(method.solve.model_spec)  # type: ignore[attr-defined]  # GenerativeSolve, VNSolve


def head_of(method: Method) -> str | None:
    """The decoder head a generative method uses (``None`` for other methods)."""
    solve = method.solve
    return solve.head if isinstance(solve, GenerativeSolve) else None


GENERATIVE_METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        generative_method("vae-identity", "identity"),
        generative_method("vae-diagonal", "diagonal"),
        generative_method("vae-structured", "structured"),
        generative_method("range", "range"),
        generative_method("adapt", "adapt"),
    )
}
