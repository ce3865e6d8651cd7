"""Alternating minimisation and the latent search, on small problems with random-weight VAEs."""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from napari_genreg.models.vae import VAE, VAEConfig
from napari_genreg.physics.coils import synthetic_maps
from napari_genreg.physics.operators import Compose, Crop, masked_fourier, sense
from napari_genreg.regularizers.generative import GenerativeRegularizer
from napari_genreg.solvers.alternating import (
    AlternatingState,
    alternating_minimisation,
    latent_search,
    shifted_fourier_solve,
    x_step,
)

SIZE = 24


def _model(kind: str, seed: int = 0, size: int = SIZE) -> VAE:
    config = VAEConfig(covariance=kind, stencil=3, image_size=size, base_channels=4, max_channels=8)
    model = VAE(config, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        head = model.decoder.covariance_head
        if head is not None:
            gen = torch.Generator().manual_seed(seed + 1)
            for p in head.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def _phase(size: int = SIZE) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.polar(torch.ones(size, size), 0.7 * x + 0.4 * y * y)


def _image(size: int = SIZE) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((x / 0.8) ** 2 + (y / 0.7) ** 2 < 1).float() * (0.6 + 0.3 * x)
    return (disc * _phase(size)).to(torch.complex64)


def _mask(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=gen) < 0.35
    mask[shape[0] // 2 - 3 : shape[0] // 2 + 3, shape[1] // 2 - 3 : shape[1] // 2 + 3] = True
    return mask


def _noisy(op, x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    clean = op(x)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.complex(
        torch.randn(clean.shape, generator=gen), torch.randn(clean.shape, generator=gen)
    )
    return op(op.adjoint(clean + sigma / 2**0.5 * noise.to(clean.dtype)))  # keep zeros unsampled


@pytest.mark.parametrize("padding", [False, True])
def test_closed_form_x_step_equals_conjugate_gradients(padding):
    shape = (20, 18) if padding else (SIZE, SIZE)
    mask = _mask(shape)
    op = masked_fourier(mask)
    if padding:
        op = Compose((op, Crop((SIZE, SIZE), shape)))
    x_true = _image()
    if padding:
        x_true = Crop((SIZE, SIZE), shape).adjoint(Crop((SIZE, SIZE), shape)(x_true))
    y = _noisy(op, x_true, 0.02)
    prior = GenerativeRegularizer(_model("identity"), _phase())
    with torch.no_grad():
        decoded = prior.decode(torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1)))
        mu = 1.0 * 0.02**2
        start = torch.zeros(SIZE, SIZE, dtype=torch.complex64)
        solve = shifted_fourier_solve(mask, (SIZE, SIZE) if padding else None)
        exact = x_step(op, y, prior, decoded, mu, start, steps=1, shifted_solve=solve)
        cg = x_step(op, y, prior, decoded, mu, start, steps=400)
        assert torch.allclose(exact, cg, rtol=1e-4, atol=1e-4 * float(exact.abs().max()))
        # and it solves the normal equations
        variance = prior.constant_variance(decoded)
        rhs = op.adjoint(y) + mu * prior.prior_rhs(decoded)
        residual = op.normal(exact) + mu / variance * exact - rhs
        assert float(residual.norm() / rhs.norm()) < 1e-5


class _SenseXStep(NamedTuple):
    """An x-step problem: 4-coil SENSE, a random prior's decoder output, its right-hand side."""

    op: Any
    y: torch.Tensor
    prior: GenerativeRegularizer
    decoded: Any
    mu: float
    rhs: torch.Tensor
    data_diagonal: torch.Tensor

    def solve(self, steps: int, jacobi: bool = True, **kwargs) -> torch.Tensor:
        diagonal = self.data_diagonal if jacobi else None
        start = self.op.adjoint(self.y)
        with torch.no_grad():
            return x_step(
                self.op,
                self.y,
                self.prior,
                self.decoded,
                self.mu,
                start,
                steps=steps,
                data_diagonal=diagonal,
                **kwargs,
            )

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``b - N x`` of the normal equations."""
        with torch.no_grad():
            return self.rhs - self.op.normal(x) - self.mu * self.prior.precision(self.decoded, x)


def _sense_x_step(kind: str, mu: float) -> _SenseXStep:
    maps = synthetic_maps(4, (SIZE, SIZE)).to(torch.complex64)
    mask = _mask((SIZE, SIZE), seed=2)
    op = sense(maps, mask)
    y = _noisy(op, _image(), 0.02, seed=3)
    prior = GenerativeRegularizer(_model(kind, seed=4), _phase())
    with torch.no_grad():
        decoded = prior.decode(torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(5)))
        rhs = op.adjoint(y) + mu * prior.prior_rhs(decoded)
    diagonal = mask.float().mean() * maps.abs().square().sum(dim=0)
    return _SenseXStep(op, y, prior, decoded, mu, rhs, diagonal)


@pytest.mark.parametrize("kind", ["diagonal", "structured"])
@pytest.mark.parametrize("jacobi", [False, True])
def test_x_step_solves_its_normal_equations_with_sense(kind, jacobi):
    problem = _sense_x_step(kind, mu=2.0 * 0.02**2)
    x = problem.solve(steps=300, jacobi=jacobi)
    assert float(problem.residual(x).norm() / problem.rhs.norm()) < 1e-4


def test_jacobi_preconditioning_helps_a_structured_covariance():
    problem = _sense_x_step("structured", mu=0.02**2)
    plain = problem.residual(problem.solve(steps=8, jacobi=False)).norm()
    jacobi = problem.residual(problem.solve(steps=8)).norm()
    assert float(jacobi) < float(plain)


def test_x_step_reduction_stops_once_its_preconditioned_residual_has_fallen_by_the_factor():
    problem = _sense_x_step("structured", mu=0.02**2)
    with torch.no_grad():
        root = (
            problem.data_diagonal + problem.mu * problem.prior.precision_diagonal(problem.decoded)
        ).rsqrt()

    def scaled(x):  # the residual CG sees: D^{-1/2} (b - N x)
        return float((problem.residual(x) * root).norm())

    start = problem.op.adjoint(problem.y)
    reduced = problem.solve(steps=200, reduction=0.1)
    capped = problem.solve(steps=1, reduction=0.1)
    full = problem.solve(steps=200)
    assert scaled(reduced) <= 0.1 * 1.01 * scaled(start)
    assert scaled(full) < 0.01 * scaled(reduced)  # it stopped early
    assert scaled(capped) > 0.1 * scaled(start)  # steps still caps it
    # at the first iterate that met the factor (CG's recursive residual may differ from the
    # true one in the last digits, hence one iterate either side)
    first = next(k for k in range(1, 200) if scaled(problem.solve(steps=k)) <= 0.1 * scaled(start))
    assert first > 2
    assert any(torch.equal(reduced, problem.solve(steps=k)) for k in (first - 1, first, first + 1))


@pytest.mark.parametrize("jacobi", [False, True])
def test_x_step_on_a_support_solves_there_and_keeps_zero_outside(jacobi):
    problem = _sense_x_step("structured", mu=2.0 * 0.02**2)
    support = torch.ones(SIZE, SIZE)
    support[:4] = 0  # a band no measurement is allowed to fill
    support[:, -3:] = 0
    x = problem.solve(steps=300, jacobi=jacobi, support=support)
    assert torch.all(x[support == 0] == 0)
    # the normal equations restricted to the support: S (b - N S x) = 0
    residual = problem.residual(x) * support
    assert float(residual.norm() / (problem.rhs * support).norm()) < 1e-4
    # and it differs from the solve everywhere, which does fill the band
    free = problem.solve(steps=300, jacobi=jacobi)
    assert float(free[support == 0].abs().max()) > 0


def test_x_step_reduction_without_a_preconditioner():
    problem = _sense_x_step("structured", mu=0.02**2)
    start = problem.op.adjoint(problem.y)
    reduced = problem.solve(steps=200, jacobi=False, reduction=0.1)
    full = problem.solve(steps=200, jacobi=False)
    before = float(problem.residual(start).norm())
    assert float(problem.residual(reduced).norm()) <= 0.1 * 1.01 * before
    assert float(problem.residual(full).norm()) < 0.01 * float(problem.residual(reduced).norm())


def _run(kind: str, *, coils: int = 1, iterations: int = 8, **kwargs) -> list[AlternatingState]:
    mask = _mask((SIZE, SIZE), seed=6)
    if coils == 1:
        op = masked_fourier(mask)
        diagonal = mask.float().mean() * torch.ones(SIZE, SIZE)
        solve = shifted_fourier_solve(mask)
    else:
        maps = synthetic_maps(coils, (SIZE, SIZE)).to(torch.complex64)
        op = sense(maps, mask)
        diagonal = mask.float().mean() * maps.abs().square().sum(dim=0)
        solve = None
    sigma = 0.02
    y = _noisy(op, _image(), sigma, seed=7)
    prior = GenerativeRegularizer(_model(kind, seed=8), _phase())
    x0 = op.adjoint(y)
    z0 = prior.encode(x0)
    states = alternating_minimisation(
        op, y, prior, x0, z0, noise_sigma=sigma, lam=1.0, shifted_solve=solve,
        data_diagonal=diagonal, **kwargs,
    )  # fmt: skip
    return list(itertools.islice(states, iterations))


@pytest.mark.parametrize(
    ("kind", "coils"), [("identity", 1), ("diagonal", 1), ("structured", 1), ("structured", 3)]
)
def test_objective_is_non_increasing(kind, coils):
    states = _run(kind, coils=coils)
    assert [s.iteration for s in states] == list(range(1, 9))
    values = np.array([s.objective for s in states])
    assert np.all(np.isfinite(values))
    assert np.all(np.diff(values) <= 1e-9 * np.abs(values[:-1]))
    assert values[-1] < values[0]
    assert states[-1].z.shape == (1, 4, 3, 3) and not states[-1].z.requires_grad
    assert states[-1].x.shape == (SIZE, SIZE) and states[-1].x.is_complex()


def test_reported_objective_is_the_joint_objective():
    mask = _mask((SIZE, SIZE), seed=6)
    op = masked_fourier(mask)
    sigma, lam = 0.02, 0.7
    y = _noisy(op, _image(), sigma, seed=7)
    prior = GenerativeRegularizer(_model("structured", seed=8), _phase())
    x0 = op.adjoint(y)
    states = alternating_minimisation(
        op, y, prior, x0, prior.encode(x0), noise_sigma=sigma, lam=lam, cg_steps=3
    )
    state = next(itertools.islice(states, 2, None))
    with torch.no_grad():
        t = prior.terms(state.x, state.z)
        data = float((op(state.x) - y).abs().double().square().sum()) / (2 * sigma**2)
        expected = data + lam * float(t.logdet + 0.5 * t.mahalanobis) + 0.5 * float(t.latent)
    assert state.objective == pytest.approx(expected, rel=1e-6)


def test_restarts_keep_the_best_start_and_are_reproducible():
    gen = torch.Generator().manual_seed(9)
    a = _run("diagonal", iterations=3, restarts=3, generator=gen)
    b = _run("diagonal", iterations=3, restarts=3, generator=torch.Generator().manual_seed(9))
    plain = _run("diagonal", iterations=3)
    assert [s.objective for s in a] == [s.objective for s in b]
    assert a[0].objective <= plain[0].objective + 1e-9 * abs(plain[0].objective)
    with pytest.raises(ValueError, match="Generator"):
        _run("diagonal", iterations=1, restarts=2)


@pytest.mark.parametrize("kind", ["identity", "structured"])
def test_z_step_never_touches_the_model(kind):
    model = _model(kind, seed=10)
    frozen = next(model.decoder.mean_head.parameters())
    frozen.requires_grad_(False)  # a flag set by someone else must stay as it is
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    mask = _mask((SIZE, SIZE))
    op = masked_fourier(mask)
    y = _noisy(op, _image(), 0.02)
    prior = GenerativeRegularizer(model, _phase())
    x0 = op.adjoint(y)
    states = alternating_minimisation(op, y, prior, x0, prior.encode(x0), noise_sigma=0.02, lam=1.0)
    list(itertools.islice(states, 3))
    search = latent_search(op, y, prior, torch.zeros(2, 4, 3, 3), noise_sigma=0.02)
    list(itertools.islice(search, 3))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training == training


def _range_problem():
    mask = _mask((SIZE, SIZE), seed=11)
    op = masked_fourier(mask)
    prior = GenerativeRegularizer(_model("identity", seed=12), _phase())
    z_true = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        y = op(prior.restore_phase(prior.decode_mean(z_true)[0]))
    return op, y, prior, z_true


def test_latent_search_keeps_the_best_restart():
    op, y, prior, z_true = _range_problem()
    gen = torch.Generator().manual_seed(14)
    starts = torch.cat([torch.randn(1, 4, 3, 3, generator=gen), z_true, 3 + z_true])
    states = list(itertools.islice(latent_search(op, y, prior, starts, noise_sigma=0.05), 6))
    first = states[0]
    assert torch.equal(first.z, z_true)  # the true latent fits the data exactly
    assert first.objective == pytest.approx(0.5 * float(z_true.double().square().sum()), rel=1e-4)
    values = [s.objective for s in states]
    assert all(b <= a for a, b in itertools.pairwise(values))
    # the batch runs each start independently: its best equals the best of separate runs
    separate = [
        list(itertools.islice(latent_search(op, y, prior, s[None], noise_sigma=0.05), 6))
        for s in starts
    ]
    best_separate = min(run[-1].objective for run in separate)
    assert values[-1] == pytest.approx(best_separate, rel=1e-5)


def test_inputs_are_checked():
    op, y, prior, z_true = _range_problem()
    with pytest.raises(ValueError, match="noise_sigma"):
        next(latent_search(op, y, prior, z_true, noise_sigma=0.0))
    with pytest.raises(ValueError, match="lam"):
        next(latent_search(op, y, prior, z_true, noise_sigma=0.1, lam=-1.0))
    with pytest.raises(ValueError, match="shift"):
        shifted_fourier_solve(torch.ones(4, 4, dtype=torch.bool))(torch.zeros(4, 4), 0.0)
    x0 = op.adjoint(y)
    with pytest.raises(ValueError, match="z_steps"):
        next(
            alternating_minimisation(op, y, prior, x0, z_true, noise_sigma=0.1, lam=1.0, z_steps=0)
        )
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="cg_reduction"):
            next(
                alternating_minimisation(
                    op, y, prior, x0, z_true, noise_sigma=0.1, lam=1.0, cg_reduction=bad
                )
            )
