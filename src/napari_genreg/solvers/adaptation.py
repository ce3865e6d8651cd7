r"""Generator adaptation: latent search, then fine-tuning a *copy* of the generator's weights.

In the spirit of Narnhofer et al. 2019 ("Inverse GANs for accelerated MRI reconstruction"),
:func:`generator_adaptation` reconstructs :math:`x = P^H G_\theta(z)` from measurements
:math:`y = A x + n` with a generator :math:`G_\theta` (the mean of a VAE decoder) whose weights
:math:`\theta` are allowed to leave the learned prior, within limits set by early stopping:

.. math::

    J(\theta, z) = \frac{1}{2\sigma^2}\|A P^H G_\theta(z) - y\|^2 + \frac{\lambda}{2}\|z\|^2 .

``A`` maps images ``(H, W)`` to k-space ``(..., H, W)`` (any leading coil axes), ``P`` removes
the smooth phase :math:`p` (:math:`P^H u = p\,u`), :math:`G_\theta` maps latents
``(B, c, h, w)`` to real images ``(B, H, W)``.

Validation split. A seeded random fraction ``holdout_fraction`` of the *measured* k-space
locations (all coils of a location together) is held out: ``V``; the fit uses the rest,
``T``. When the sampling is a set of full lines (Cartesian undersampling) whole lines are
held out, since a location between measured neighbours on its own line is much easier to
predict than the unmeasured lines are (:func:`holdout_split`). With :math:`M_T, M_V` the 0/1
masks of the two sets,

.. math::

    J_T(\theta, z) = \frac{1}{2\sigma^2}\|M_T(A P^H G_\theta(z) - y)\|^2
                   + \frac{\lambda}{2}\|z\|^2, \qquad
    E_V(\theta, z) = \|M_V(A P^H G_\theta(z) - y)\|^2 .

1. **Latent search** (``search_iterations`` iterations): :math:`\theta = \theta_0` fixed,
   :func:`~napari_genreg.solvers.alternating.latent_search` of :math:`J_T` over ``z`` (Adam at
   ``learning_rate``, from every start in ``z0``), keeping the best latent :math:`z_0^*`.
2. **Adaptation**: Adam on :math:`(\theta, z)` jointly, from :math:`(\theta_0, z_0^*)`,
   minimising :math:`J_T` (rates ``weight_learning_rate`` for :math:`\theta` and
   ``latent_learning_rate`` for ``z``; 0 keeps ``z`` fixed), on a deep copy of the generator
   made after the latent search: the caller's module is never modified (no parameter,
   gradient, flag or mode). The rates ramp up linearly over the first ``warmup`` iterations:
   Adam's first steps move every weight by about its full rate whatever its gradient, which
   otherwise throws the fit far off before it improves.

Early stopping. Each adaptation iterate is scored by its held-out residual :math:`E_V`, which
the fit never sees; the best-scored iterate so far is kept (the latent-search result
:math:`(\theta_0, z_0^*)` competes too, so adaptation can only be accepted where it predicts
unseen measurements better), and the run **stops** (the generator returns) when :math:`E_V` has
not improved for ``patience`` iterations after the warm-up (during it, while the weights start
to move, :math:`E_V` typically rises before it falls). The residual on ``V`` keeps falling as
long as the generator learns the image, and rises once it fits the noise of ``T`` (or
aliasing); the rule needs no noise level and no reference image, so it applies alike across
masks, accelerations and noise levels. It is not a guarantee: ``V`` lies on the sampled
locations, while the error that matters is also on the unsampled ones, so it tends to stop
late (``benchmarks/results/adapt_settings.md``: an iteration limit is the second guard).
With ``holdout_fraction = 0`` every measurement is fitted and the score is :math:`J` itself
(then ``patience`` applies to the training objective).

Every yielded state is the best-scored one so far (what a caller gets by stopping there), so a
caller that stops at an iteration limit before early stopping still receives the best held-out
state; its objective is the **full** :math:`J` (all measurements, held-out ones included) in
the units of ``y`` and ``noise_sigma``. During the latent search "best" means lowest
:math:`J_T`. The adapted weights are discarded when the generator ends: the state carries the
image and its latent, and the latent decodes to that image only through the adapted weights.

Cost per iteration: one forward and backward pass of the generator (latent search: with
respect to ``z`` only; adaptation: also the weights) and one application of ``A`` and
:math:`A^H`.

Examples
--------
>>> import itertools, torch
>>> from torch import nn
>>> from napari_genreg.physics.operators import Compose, Diagonal, FFT2c
>>> g = torch.Generator().manual_seed(0)
>>> decoder = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(2, 1, 3, padding=1),
...                         nn.Flatten(0, 1))
>>> mask = torch.rand(16, 16, generator=g) < 0.5
>>> op = Compose((Diagonal(mask), FFT2c()))
>>> y = op(torch.rand(16, 16, generator=g).to(torch.complex64))
>>> states = generator_adaptation(op, y, decoder, torch.ones(16, 16, dtype=torch.complex64),
...     torch.zeros(1, 2, 4, 4), noise_sigma=0.1, lam=1.0, search_iterations=3,
...     generator=torch.Generator().manual_seed(0))
>>> [s.iteration for s in itertools.islice(states, 5)]
[1, 2, 3, 4, 5]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from napari_genreg.physics.operators import Diagonal, LinearOperator
from napari_genreg.solvers.alternating import AlternatingState, latent_search

__all__ = ["HoldoutSplit", "generator_adaptation", "holdout_split"]


class HoldoutSplit(NamedTuple):
    """The split of the measured k-space locations into a fitting and a validation set.

    Attributes
    ----------
    train
        float 0/1 weights of the fitted locations, ``(H, W)`` (broadcast over coils).
    holdout
        float 0/1 weights of the held-out locations, ``(H, W)``; all zero when nothing is held
        out.
    """

    train: Tensor
    holdout: Tensor


def holdout_split(
    measured: Tensor, fraction: float, generator: torch.Generator | None
) -> HoldoutSplit:
    """Hold out ``round(fraction * n)`` of the ``n`` measured locations, drawn at random.

    Parameters
    ----------
    measured
        boolean ``(H, W)``: the measured k-space locations.
    fraction
        in ``[0, 0.5]``; at least one location is held out when ``fraction > 0``, and at
        least one is always fitted.
    generator
        the random generator of the draw (required when ``fraction > 0``); the global RNG is
        not used.
    """
    if not (math.isfinite(fraction) and 0.0 <= fraction <= 0.5):
        raise ValueError(f"holdout_fraction must lie in [0, 0.5], got {fraction}")
    measured = measured.to(torch.bool)
    if measured.ndim != 2:
        raise ValueError(f"measured must have shape (H, W), got {tuple(measured.shape)}")
    # The units drawn: whole lines when the mask is a set of full lines (Cartesian
    # undersampling), else single locations.
    rows, cols = measured.any(dim=1), measured.any(dim=0)
    if bool((measured == cols[None, :]).all()) and not bool(cols.all()):
        units, expand = cols, lambda chosen: chosen[None, :].expand_as(measured)
    elif bool((measured == rows[:, None]).all()) and not bool(rows.all()):
        units, expand = rows, lambda chosen: chosen[:, None].expand_as(measured)
    else:
        units, expand = measured.reshape(-1), lambda chosen: chosen.reshape(measured.shape)
    n = int(units.sum())
    count = 0 if fraction == 0 else min(max(1, round(fraction * n)), n - 1)
    chosen = torch.zeros_like(units)
    if count > 0:
        if generator is None:
            raise ValueError("a hold-out set needs an explicit torch.Generator")
        indices = torch.nonzero(units.cpu()).reshape(-1)
        picked = indices[torch.randperm(n, generator=generator)[:count]].to(units.device)
        chosen[picked] = True
    holdout = expand(chosen) & measured
    train = measured & ~holdout
    return HoldoutSplit(train.float(), holdout.float())


@dataclass(frozen=True)
class _Range:
    """What :func:`latent_search` needs from a prior: the generator's mean and the phase."""

    decoder: nn.Module
    phase: Tensor

    def decode_mean(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def restore_phase(self, u: Tensor) -> Tensor:
        return u.to(self.phase.dtype) * self.phase


def _check(value: float, name: str, *, positive: bool = True) -> None:
    ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise ValueError(
            f"{name} must be {'positive' if positive else 'non-negative'}, got {value}"
        )


def generator_adaptation(
    op: LinearOperator,
    y: Tensor,
    decoder: nn.Module,
    phase: Tensor,
    z0: Tensor,
    *,
    noise_sigma: float,
    lam: float = 1.0,
    search_iterations: int = 30,
    learning_rate: float = 0.1,
    weight_learning_rate: float = 1e-4,
    latent_learning_rate: float = 0.01,
    holdout_fraction: float = 0.05,
    patience: int = 20,
    warmup: int = 20,
    measured: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[AlternatingState]:
    r"""Latent search, then adaptation of a copy of ``decoder`` with early stopping (module
    docstring).

    Parameters
    ----------
    op
        ``A``: complex images ``(H, W)`` (and batches ``(B, H, W)``) to measurements of the
        shape of ``y``.
    y
        measurements ``(..., H', W')``, zero where not measured.
    decoder
        :math:`G_\theta`: latents ``(B, c, h, w)`` to real images ``(B, H, W)``. Never
        modified: phase 2 adapts a deep copy.
    phase
        :math:`p`, complex unit-modulus ``(H, W)``.
    z0
        starting latents ``(S, c, h, w)`` of the latent search (the best one is adapted).
    noise_sigma
        :math:`\sigma > 0`, in the units of ``y``.
    lam
        :math:`\lambda \ge 0`, the weight of :math:`\tfrac12\|z\|^2`.
    search_iterations
        iterations of the latent search (``>= 1``) before the weights move.
    learning_rate
        Adam's step on ``z`` during the latent search.
    weight_learning_rate
        Adam's step on the generator's weights.
    latent_learning_rate
        Adam's step on ``z`` during adaptation (``>= 0``; 0 keeps ``z`` fixed).
    holdout_fraction
        the fraction of measured locations held out for early stopping, in ``[0, 0.5]``.
    patience
        adaptation iterations (after the warm-up) without a better held-out residual before
        the generator stops.
    warmup
        adaptation iterations over which the Adam rates ramp up linearly.
    measured
        boolean ``(H', W')``: the measured k-space locations (default: where any coil of ``y``
        is non-zero).
    generator
        the random generator of the hold-out draw (required when ``holdout_fraction > 0``).

    Yields
    ------
    AlternatingState
        the best state so far: ``x`` complex ``(H, W)``, the full objective :math:`J`, ``z``
        ``(1, c, h, w)``. The generator returns after early stopping.
    """
    _check(noise_sigma, "noise_sigma")
    _check(lam, "lam", positive=False)
    _check(learning_rate, "learning_rate")
    _check(weight_learning_rate, "weight_learning_rate")
    _check(latent_learning_rate, "latent_learning_rate", positive=False)
    integers = (
        (search_iterations, "search_iterations"),
        (patience, "patience"),
        (warmup, "warmup"),
    )
    for value, name in integers:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if measured is None:
        nonzero = y != 0
        measured = nonzero.reshape(-1, *y.shape[-2:]).any(dim=0)
    split = holdout_split(measured.to(y.device), holdout_fraction, generator)
    train = split.train.to(y.device)
    holdout = split.holdout.to(y.device)
    validating = bool(holdout.any())
    data_weight = 0.5 / noise_sigma**2
    phase = phase.detach()

    def full_objective(x: Tensor, z: Tensor) -> float:
        with torch.no_grad():
            residual = (op(x.to(y.dtype)) - y).abs().double().square().sum()
            return data_weight * float(residual) + 0.5 * lam * float(z.double().square().sum())

    # Phase 1: latent search on the fitted locations, with the caller's module (gradients with
    # respect to z only: latent_search never touches the module's parameters).
    search = latent_search(
        Diagonal(train) @ op,
        y * train,
        _Range(decoder, phase),
        z0,
        noise_sigma=noise_sigma,
        lam=lam,
        learning_rate=learning_rate,
    )
    state = None
    for state in search:
        yield state._replace(objective=full_objective(state.x, state.z))
        if state.iteration >= search_iterations:
            break
    assert state is not None
    iteration = state.iteration

    # Phase 2: Adam on a private copy of the weights and on z.
    adapted = copy.deepcopy(decoder)
    weights = [p for p in adapted.parameters() if p.is_floating_point()]
    for p in weights:
        p.requires_grad_(True)
    z = state.z.detach().clone().requires_grad_(True)
    optimiser = torch.optim.Adam(
        [
            {"params": weights, "lr": weight_learning_rate},
            {"params": [z], "lr": latent_learning_rate},
        ]
    )

    def evaluate() -> tuple[Tensor, Tensor, float, float]:
        """Image, training loss (with graph), full objective and score at the current (θ, z)."""
        image = (adapted(z).to(phase.dtype) * phase)[0]
        squared = (op(image.to(y.dtype)) - y).abs().square()
        fit = squared * train
        latent = 0.5 * lam * z.double().square().sum()
        loss = data_weight * fit.double().sum() + latent
        with torch.no_grad():
            held = float((squared * holdout).double().sum())
            objective = float(loss.detach()) + data_weight * held
        score = held if validating else float(loss.detach())
        return image.detach(), loss, objective, score

    image, loss, objective, best_score = evaluate()
    best = state._replace(objective=objective)
    rates = [group["lr"] for group in optimiser.param_groups]
    stale = 0
    step = 0
    while stale < patience:
        step += 1
        for group, rate in zip(optimiser.param_groups, rates, strict=True):
            group["lr"] = rate * min(1.0, step / warmup)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        image, loss, objective, score = evaluate()
        iteration += 1
        if score < best_score:
            best_score = score
            best = AlternatingState(iteration, image, objective, z.detach().clone())
            stale = 0
        elif step > warmup:
            stale += 1
        yield best._replace(iteration=iteration)
