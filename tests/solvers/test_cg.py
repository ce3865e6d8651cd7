import itertools

import numpy as np
import pytest
import torch

from napari_genreg.physics.operators import masked_fourier
from napari_genreg.solvers import conjugate_gradient


def _hpd(n, gen, dtype=torch.complex128):
    real = torch.randn((n, n, 2), generator=gen, dtype=torch.float64)
    b = torch.view_as_complex(real).to(dtype)
    return b.conj().T @ b + 0.5 * torch.eye(n, dtype=dtype)


def test_cg_matches_a_dense_solve_and_reports_the_quadratic():
    gen = torch.Generator().manual_seed(0)
    n = 12
    matrix = _hpd(n, gen)
    rhs = torch.view_as_complex(torch.randn((n, 2), generator=gen, dtype=torch.float64))
    states = list(itertools.islice(conjugate_gradient(lambda v: matrix @ v, rhs), 40))
    x = states[-1].x
    expected = torch.linalg.solve(matrix, rhs)
    assert torch.allclose(x, expected, atol=1e-10)
    for state in states[:5]:
        quad = 0.5 * torch.vdot(state.x, matrix @ state.x).real - torch.vdot(state.x, rhs).real
        assert abs(float(quad) - state.objective) < 1e-9 * abs(float(quad))
    values = [s.objective for s in states]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values))
    assert [s.iteration for s in states[:3]] == [1, 2, 3]


def test_cg_warm_start_from_the_solution_stops_at_once():
    gen = torch.Generator().manual_seed(1)
    matrix = _hpd(6, gen)
    rhs = torch.view_as_complex(torch.randn((6, 2), generator=gen, dtype=torch.float64))
    solution = torch.linalg.solve(matrix, rhs)
    assert list(conjugate_gradient(lambda v: matrix @ v, rhs, solution)) == []


def test_cg_on_a_singular_normal_operator_converges_to_zero_filled_and_stops():
    # Single-coil Cartesian A^H A is a projection: CG from zero reaches A^H y in one step
    # and must stop there instead of amplifying rounding errors.
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(16, 16, generator=gen) < 0.3
    op = masked_fourier(mask)
    y = op(torch.view_as_complex(torch.randn((16, 16, 2), generator=gen)))
    states = list(itertools.islice(conjugate_gradient(op.normal, op.adjoint(y)), 50))
    assert len(states) <= 2
    assert torch.allclose(states[-1].x, op.adjoint(y), atol=1e-5)
    residual = 0.5 * float((op(states[-1].x) - y).abs().square().sum())
    offset_state = next(
        conjugate_gradient(op.normal, op.adjoint(y), offset=0.5 * float(y.abs().square().sum()))
    )
    assert abs(offset_state.objective - residual) < 1e-3 * max(1.0, np.abs(y.numpy()).max())


def test_cg_reduction_stops_once_the_residual_of_the_start_has_fallen_by_the_factor():
    gen = torch.Generator().manual_seed(3)
    n = 40
    matrix = _hpd(n, gen)
    rhs = torch.view_as_complex(torch.randn((n, 2), generator=gen, dtype=torch.float64))
    solution = torch.linalg.solve(matrix, rhs)
    # a warm start close to the solution: its residual is far below ||b||
    start = solution + 1e-3 * torch.view_as_complex(
        torch.randn((n, 2), generator=gen, dtype=torch.float64)
    )

    def residual(x):
        return float((rhs - matrix @ x).norm())

    full = list(itertools.islice(conjugate_gradient(lambda v: matrix @ v, rhs, start), 200))
    reduced = list(conjugate_gradient(lambda v: matrix @ v, rhs, start, reduction=0.1))
    assert 0 < len(reduced) < len(full)
    assert residual(reduced[-1].x) <= 0.1 * residual(start)
    # it stopped at the first iterate that met the factor, not later
    assert len(reduced) == 1 or residual(reduced[-2].x) > 0.1 * residual(start)
    # the same iterates as without the stopping rule
    assert torch.equal(reduced[-1].x, full[len(reduced) - 1].x)


@pytest.mark.parametrize("reduction", [0.0, 1.0, -0.1])
def test_cg_reduction_outside_0_1_is_refused(reduction):
    with pytest.raises(ValueError, match="reduction"):
        next(conjugate_gradient(lambda v: v, torch.ones(3), reduction=reduction))
