r"""Alternating minimisation for latent-variable priors, and the latent search of range priors.

:func:`alternating_minimisation` minimises, over an image :math:`x` and a latent :math:`z`,

.. math::

    J(x, z) = \frac{1}{2\sigma^2} \|A x - y\|^2
            + \lambda \Big[\log\det\Sigma(z) + \tfrac12 \|P x - G(z)\|^2_{\Sigma(z)^{-1}}\Big]
            + \tfrac12 \|z\|^2

(the generative regulariser of :mod:`napari_genreg.regularizers.generative`; at
:math:`\lambda = 1` this is :math:`\frac{1}{2\sigma^2}\|Ax - y\|^2 + R(x)` jointly in ``z``: the
maximum a posteriori estimate under the learned prior; for other :math:`\lambda` the weight
tempers the decoder's likelihood :math:`p(x \mid z)` and leaves the latent's standard normal
prior as it is, as in ``DESIGN.md``'s z-step). Each iteration is

* **x-step** (``z`` fixed), with :math:`\mu = \lambda\sigma^2`:
  :math:`(A^H A + \mu P^H \Sigma^{-1} P)\, x = A^H y + \mu P^H \Sigma^{-1} G(z)`, symmetric
  positive definite. With :math:`\Sigma = s^2 I` (then :math:`P^H\Sigma^{-1}P = I / s^2`, since
  ``P`` is a unitary diagonal) and a single-coil Cartesian ``A = M F`` (optionally composed with
  a zero-padding crop ``C``), the matrix is :math:`C^H F^H M F C + (\mu / s^2) I`, diagonal in
  k-space on the measured grid and a multiple of the identity on the padding: solved exactly
  (:func:`shifted_fourier_solve`). Otherwise warm-started conjugate gradients, with a Jacobi
  (diagonal) preconditioner when the caller gives ``diag(A^H A)``, for at most ``cg_steps``
  iterations or until the residual has fallen to ``cg_reduction`` times the warm start's. An
  x-step that would raise the subproblem's value (rounding, at convergence) is discarded.
* **z-step** (``x`` fixed): ``z_steps`` Adam steps on
  :math:`\lambda[\log\det\Sigma(z) + \tfrac12\|Px - G(z)\|^2_{\Sigma^{-1}}] + \tfrac12\|z\|^2`
  through the decoder. The gradient is taken with respect to ``z`` only
  (``torch.autograd.grad``): the model's parameters receive no gradient and are never changed.
  The best latent visited (the current one included) is kept, so the step never raises the
  objective; when no step improved, the learning rate is halved.

Hence :math:`J` is non-increasing over the iterations. The decoder's forward pass at the kept
latent is reused (with its graph) by the next x-step and z-step, so an iteration costs
``z_steps`` decoder forward and backward passes, the CG iterations (or one FFT pair) and one
application of ``A`` for the objective.

:func:`latent_search` is the range prior of Bora et al. (ICML 2017): ``x = P^H G(z)`` only,
minimising :math:`\frac{1}{2\sigma^2}\|A P^H G(z) - y\|^2 + \frac{\lambda}{2}\|z\|^2` by Adam
from several starting latents at once (a batch), keeping the best.

Both are generators of :class:`AlternatingState` that never stop by themselves; the caller
stops. Everything is in the units the caller passes (the reconstruction methods pass images
normalised to about [0, 1]).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from napari_genreg.physics.fft import fft2c, ifft2c
from napari_genreg.physics.operators import Crop, LinearOperator
from napari_genreg.solvers.cg import conjugate_gradient

__all__ = [
    "AlternatingState",
    "LatentPrior",
    "alternating_minimisation",
    "latent_search",
    "shifted_fourier_solve",
    "x_step",
]


class AlternatingState(NamedTuple):
    """One iteration of :func:`alternating_minimisation` or :func:`latent_search`.

    Attributes
    ----------
    iteration
        1 after the first update.
    x
        The current image, complex ``(H, W)`` (a tensor the solver no longer modifies).
    objective
        :math:`J(x, z)` in the units the solver was given.
    z
        The current latent, ``(1, c, h, w)``.
    """

    iteration: int
    x: Tensor
    objective: float
    z: Tensor


class LatentPrior(Protocol):
    """What the solvers need from a latent-variable prior (satisfied by
    :class:`~napari_genreg.regularizers.generative.GenerativeRegularizer`)."""

    def decode(self, z: Tensor) -> Any:
        """``(mean, covariance)`` of ``z``, differentiable with respect to ``z``."""
        ...

    def decode_mean(self, z: Tensor) -> Tensor:
        """Only the mean ``G(z)``, ``(B, H, W)``."""
        ...

    def terms(self, x: Tensor, z: Tensor, decoded: Any = None) -> Any:
        """``(logdet, mahalanobis, latent)`` at ``(x, z)``, each ``(B,)``."""
        ...

    def precision(self, decoded: Any, v: Tensor) -> Tensor:
        """``P^H Sigma^-1 P v``."""
        ...

    def prior_rhs(self, decoded: Any) -> Tensor:
        """``P^H Sigma^-1 G(z)``."""
        ...

    def precision_diagonal(self, decoded: Any) -> Tensor:
        """The diagonal of ``Sigma^-1``, real ``(H, W)``."""
        ...

    def constant_variance(self, decoded: Any) -> float | None:
        """``s^2`` when ``Sigma = s^2 I``, else ``None``."""
        ...

    def restore_phase(self, u: Tensor) -> Tensor:
        """``P^H u``."""
        ...


# --------------------------------------------------------------------------------------------
# The x-step
# --------------------------------------------------------------------------------------------


def shifted_fourier_solve(
    mask: Tensor, padded_shape: tuple[int, int] | None = None
) -> Callable[[Tensor, float], Tensor]:
    r"""The exact solver of :math:`(C^H F^H M F C + t I)\, v = b` for ``t > 0``.

    ``F`` is the centred orthonormal FFT, ``M`` the 0/1 sampling ``mask`` ``(h, w)`` and ``C``
    the centred crop from ``padded_shape`` to ``(h, w)`` (the identity when ``None``). On the
    measured grid :math:`v = F^H (F b) / (M + t)`; on the padding :math:`v = b / t`.

    Returns
    -------
    ``solve(b, t)`` with ``b`` complex of shape ``padded_shape``.
    """
    m = mask.to(torch.float32) if mask.dtype == torch.bool else mask
    shape = (int(m.shape[-2]), int(m.shape[-1]))
    crop = None if padded_shape in (None, shape) else Crop(tuple(padded_shape), shape)

    def solve(b: Tensor, t: float) -> Tensor:
        if not t > 0:
            raise ValueError(f"the shift must be positive, got {t}")
        weights = m.to(b.device) + t
        if crop is None:
            return ifft2c(fft2c(b) / weights)
        inner = crop(b)
        solution = ifft2c(fft2c(inner) / weights)
        return b / t + crop.adjoint(solution - inner / t)

    return solve


def x_step(
    op: LinearOperator,
    y: Tensor,
    prior: LatentPrior,
    decoded: Any,
    mu: float,
    x: Tensor,
    *,
    steps: int,
    reduction: float | None = None,
    shifted_solve: Callable[[Tensor, float], Tensor] | None = None,
    data_diagonal: Tensor | None = None,
    adjoint_y: Tensor | None = None,
    support: Tensor | None = None,
) -> Tensor:
    r"""Solve (or improve on ``x`` towards) the x-step's normal equations.

    .. math:: (A^H A + \mu P^H \Sigma^{-1} P)\, x = A^H y + \mu P^H \Sigma^{-1} G(z)

    Parameters
    ----------
    op
        ``A``, taking images of the shape of ``x``.
    y
        the measurements.
    prior
        the latent prior; ``decoded`` its decoder output at the current ``z`` (batch 1).
    mu
        :math:`\mu = \lambda\sigma^2 \ge 0`.
    x
        the warm start, complex ``(H, W)``.
    steps
        conjugate-gradient iterations at most (ignored by the closed form).
    reduction
        CG stops earlier once its residual is ``reduction`` times that of the warm start (both
        preconditioned when ``data_diagonal`` is given); ``None``: only at convergence to
        rounding (:func:`~napari_genreg.solvers.cg.conjugate_gradient`).
    shifted_solve
        :func:`shifted_fourier_solve` of ``A`` when ``A`` is single-coil Cartesian: used when
        the covariance is :math:`s^2 I` and ``mu > 0`` (exact solution).
    data_diagonal
        :math:`\operatorname{diag}(A^H A)`, real ``(H, W)`` or a scalar: turns on the Jacobi
        preconditioner :math:`D = \operatorname{diag}(A^H A) + \mu\operatorname{diag}
        \Sigma^{-1}` (CG on :math:`D^{-1/2} N D^{-1/2}`).
    adjoint_y
        :math:`A^H y` if already computed (it does not change between x-steps).
    support
        real ``(H, W)`` of 0 and 1: the image is kept at 0 where it is 0 (pixels no
        measurement sees, such as those where every coil sensitivity vanishes: there the
        prior alone would set them, :math:`x = G(z)`). The normal equations are solved on the
        support (CG on :math:`S N S`); ``None``: everywhere.

    Returns
    -------
    the new image, complex ``(H, W)``.
    """
    if adjoint_y is None:
        adjoint_y = op.adjoint(y)
    rhs = adjoint_y + mu * prior.prior_rhs(decoded).to(x.dtype)
    variance = prior.constant_variance(decoded)
    if shifted_solve is not None and variance is not None and mu > 0:
        return shifted_solve(rhs, mu / variance).to(x.dtype)

    def everywhere(v: Tensor) -> Tensor:
        return torch.add(op.normal(v), prior.precision(decoded, v).to(v.dtype), alpha=mu)

    def on_support(v: Tensor) -> Tensor:
        return everywhere(v * support) * support

    normal = everywhere
    if support is not None:  # the iterates stay 0 outside: S N S, S b and S x0
        normal, rhs, x = on_support, rhs * support, x * support

    if data_diagonal is None:
        states = conjugate_gradient(normal, rhs, x, reduction=reduction)
        out = x
        for state in itertools.islice(states, steps):
            out = state.x
        return out
    d = data_diagonal + mu * prior.precision_diagonal(decoded).to(x.real.dtype)
    d = torch.as_tensor(d, device=x.device).clamp_min(torch.finfo(x.real.dtype).tiny)
    # D^{-1/2} in x's complex dtype: complex-by-complex multiplies take the fast path
    inverse_root = d.rsqrt().to(x.dtype)

    def scaled(w: Tensor) -> Tensor:
        return normal(w * inverse_root) * inverse_root

    out = x / inverse_root
    states = conjugate_gradient(scaled, rhs * inverse_root, out, reduction=reduction)
    for state in itertools.islice(states, steps):
        out = state.x
    return out * inverse_root


# --------------------------------------------------------------------------------------------
# Adam on the latent
# --------------------------------------------------------------------------------------------


@dataclass
class _Adam:
    """Adam (Kingma and Ba 2015) on one tensor, with bias correction; private mutable state."""

    learning_rate: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: Tensor | None = field(default=None, repr=False)
    v: Tensor | None = field(default=None, repr=False)

    def step(self, z: Tensor, grad: Tensor) -> Tensor:
        if self.m is None or self.v is None:
            self.m, self.v = torch.zeros_like(z), torch.zeros_like(z)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad.square()
        m_hat = self.m / (1 - self.beta1**self.t)
        v_hat = self.v / (1 - self.beta2**self.t)
        return z - self.learning_rate * m_hat / (v_hat.sqrt() + self.eps)


def _check_positive_int(value: object, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_inputs(noise_sigma: float, lam: float, learning_rate: float) -> None:
    if not (math.isfinite(noise_sigma) and noise_sigma > 0):
        raise ValueError(f"noise_sigma must be positive, got {noise_sigma}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite non-negative number, got {lam}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")


# --------------------------------------------------------------------------------------------
# Alternating minimisation
# --------------------------------------------------------------------------------------------


class _Evaluated(NamedTuple):
    """A latent with its decoder output (graph kept) and the z-step loss at some x."""

    z: Tensor  # leaf requiring grad
    decoded: Any
    loss: Tensor  # scalar float64, with graph to z


def alternating_minimisation(
    op: LinearOperator,
    y: Tensor,
    prior: LatentPrior,
    x0: Tensor,
    z0: Tensor,
    *,
    noise_sigma: float,
    lam: float,
    z_steps: int = 5,
    cg_steps: int = 5,
    cg_reduction: float | None = None,
    learning_rate: float = 0.05,
    shifted_solve: Callable[[Tensor, float], Tensor] | None = None,
    data_diagonal: Tensor | None = None,
    support: Tensor | None = None,
    restarts: int = 0,
    generator: torch.Generator | None = None,
) -> Iterator[AlternatingState]:
    r"""Minimise :math:`J(x, z)` (module docstring) by alternating x- and z-steps.

    Parameters
    ----------
    op
        ``A``: images ``(H, W)`` (the prior's shape) to measurements of the shape of ``y``.
    y
        measurements.
    prior
        the latent prior (:class:`LatentPrior`).
    x0
        the initial image, complex ``(H, W)`` (for example :math:`A^H y`).
    z0
        the initial latent ``(1, c, h, w)`` (for example the encoder's mean of ``|x0|``).
    noise_sigma
        :math:`\sigma > 0`, in the units of ``y``.
    lam
        :math:`\lambda \ge 0`.
    z_steps
        Adam steps per z-step.
    cg_steps, cg_reduction
        conjugate-gradient iterations per x-step at most (when there is no closed form), and
        the fraction of the warm start's residual at which it stops earlier (``reduction`` of
        :func:`x_step`; ``None``: only ``cg_steps`` and convergence to rounding stop it).
    learning_rate
        Adam's initial step on ``z``.
    shifted_solve, data_diagonal, support
        see :func:`x_step`.
    restarts
        extra starting latents :math:`z \sim \mathcal N(0, I)` drawn from ``generator``; the
        start with the lowest :math:`J` after one x-step is kept (``z0`` competes too).
    generator
        the random generator of the restarts (required when ``restarts > 0``).

    Yields
    ------
    AlternatingState
        after each x-step and z-step, with the non-increasing objective :math:`J`.
    """
    _check_inputs(noise_sigma, lam, learning_rate)
    _check_positive_int(z_steps, "z_steps")
    _check_positive_int(cg_steps, "cg_steps")
    if cg_reduction is not None and not 0.0 < cg_reduction < 1.0:
        raise ValueError(f"cg_reduction must lie in (0, 1), got {cg_reduction}")
    _check_positive_int(restarts, "restarts", 0)
    if restarts and generator is None:
        raise ValueError("random restarts need an explicit torch.Generator")
    mu = lam * noise_sigma**2
    data_weight = 0.5 / noise_sigma**2
    adjoint_y = op.adjoint(y)  # the same in every x-step

    def data_term(v: Tensor) -> float:
        return data_weight * float((op(v) - y).abs().double().square().sum())

    def evaluate(z: Tensor, v: Tensor, decoded: Any = None) -> _Evaluated:
        if decoded is None:
            z = z.detach().requires_grad_(True)
            decoded = prior.decode(z)
        t = prior.terms(v, z, decoded)
        loss = lam * (t.logdet + 0.5 * t.mahalanobis) + 0.5 * t.latent
        return _Evaluated(z, decoded, loss.sum())

    def detached(decoded: Any) -> Any:
        return type(decoded)(*(_detach(part) for part in decoded))

    def step_x(frozen: Any, v: Tensor) -> Tensor:
        return x_step(
            op,
            y,
            prior,
            frozen,
            mu,
            v,
            steps=cg_steps,
            reduction=cg_reduction,
            shifted_solve=shifted_solve,
            data_diagonal=data_diagonal,
            adjoint_y=adjoint_y,
            support=support,
        )

    x = x0.detach().clone()
    candidates = [z0.detach()]
    if restarts:
        device = z0.device
        for _ in range(restarts):
            noise = torch.randn(z0.shape, generator=generator, dtype=z0.dtype, device="cpu")
            candidates.append(noise.to(device))
    # Each value is computed once: the data term of the kept x is carried along, and the
    # z-step's loss at the kept (z, x) (with its graph) is the x-subproblem's value there.
    best: tuple[float, _Evaluated, Tensor, float] | None = None
    for z in candidates:
        current = evaluate(z, x)
        frozen = detached(current.decoded)
        with torch.no_grad():
            v = step_x(frozen, x)
        candidate = evaluate(current.z, v, current.decoded)
        data_v = data_term(v)
        value = data_v + float(candidate.loss.detach())
        if best is None or value < best[0]:
            best = (value, candidate, v, data_v)
    assert best is not None
    _, current, x, data_x = best
    adam = _Adam(learning_rate)
    iteration = 0
    first = True
    while True:
        if not first:
            # x-step, kept only if it lowers the x-subproblem (it does, up to rounding)
            frozen = detached(current.decoded)
            with torch.no_grad():
                v = step_x(frozen, x)
            candidate = evaluate(current.z, v, current.decoded)
            data_v = data_term(v)
            if data_v + float(candidate.loss.detach()) <= data_x + float(current.loss.detach()):
                x, data_x, current = v, data_v, candidate
        first = False
        # z-step: Adam from the current latent, keeping the best one visited
        best_eval = current
        evaluated = current
        z = current.z.detach()
        for _ in range(z_steps):
            (grad,) = torch.autograd.grad(evaluated.loss, evaluated.z, retain_graph=True)
            z = adam.step(z, grad)
            evaluated = evaluate(z, x)
            if float(evaluated.loss.detach()) < float(best_eval.loss.detach()):
                best_eval = evaluated
        if best_eval is current:
            adam.learning_rate *= 0.5
        current = best_eval
        iteration += 1
        objective = data_x + float(current.loss.detach())
        yield AlternatingState(iteration, x, objective, current.z.detach())


def _detach(value: Any) -> Any:
    """Detach a tensor, or every tensor field of a frozen covariance dataclass."""
    if isinstance(value, Tensor):
        return value.detach()
    fields_ = getattr(value, "__dataclass_fields__", None)
    if fields_ is None:
        return value
    kwargs = {
        name: _detach(getattr(value, name)) for name, f in fields_.items() if f.init is not False
    }
    return type(value)(**kwargs)


# --------------------------------------------------------------------------------------------
# The range prior (Bora et al. 2017)
# --------------------------------------------------------------------------------------------


def latent_search(
    op: LinearOperator,
    y: Tensor,
    prior: LatentPrior,
    z0: Tensor,
    *,
    noise_sigma: float,
    lam: float = 1.0,
    learning_rate: float = 0.05,
) -> Iterator[AlternatingState]:
    r"""The range prior: minimise :math:`\frac{1}{2\sigma^2}\|A P^H G(z) - y\|^2 +
    \frac{\lambda}{2}\|z\|^2` over ``z`` by Adam, from every start in ``z0`` at once.

    The starts are a batch (Adam is elementwise, so this is exactly independent runs). Each
    iteration evaluates every start's objective at its current latent, keeps the best pair
    seen over all starts and iterations, yields it, then takes one Adam step on every start.

    Parameters
    ----------
    op
        ``A``, taking images ``(..., H, W)`` (leading batch axes broadcast).
    y
        measurements.
    prior
        the latent prior: :meth:`LatentPrior.decode_mean` and ``restore_phase`` are used.
    z0
        starting latents ``(S, c, h, w)``, ``S >= 1`` (random restarts).
    noise_sigma, lam, learning_rate
        :math:`\sigma > 0`, :math:`\lambda \ge 0`, Adam's step.

    Yields
    ------
    AlternatingState
        the best ``x = P^H G(z)`` so far, its objective (non-increasing) and its ``z``
        ``(1, c, h, w)``.
    """
    _check_inputs(noise_sigma, lam, learning_rate)
    data_weight = 0.5 / noise_sigma**2
    z = z0.detach()
    adam = _Adam(learning_rate)
    best: tuple[float, Tensor, Tensor] | None = None
    iteration = 0
    while True:
        leaf = z.detach().requires_grad_(True)
        image = prior.restore_phase(prior.decode_mean(leaf))  # (S, H, W)
        residual = op(image.to(y.dtype)) - y
        data = torch.view_as_real(residual).double().square()
        data = data.reshape(z.shape[0], -1).sum(dim=1)
        losses = data_weight * data + 0.5 * lam * leaf.double().square().sum(dim=(1, 2, 3))
        (grad,) = torch.autograd.grad(losses.sum(), leaf)
        values = losses.detach()
        index = int(torch.argmin(values))
        if best is None or float(values[index]) < best[0]:
            best = (float(values[index]), image[index].detach(), leaf[index : index + 1].detach())
        iteration += 1
        yield AlternatingState(iteration, best[1], best[0], best[2])
        z = adam.step(z, grad)
