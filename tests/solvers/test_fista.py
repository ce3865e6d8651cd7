import itertools

import torch

from napari_genreg.physics.operators import FFT2c, masked_fourier
from napari_genreg.regularizers.functionals import GroupL1
from napari_genreg.solvers import fista


def _complex(shape, gen):
    return torch.view_as_complex(torch.randn((*shape, 2), generator=gen, dtype=torch.float64))


def test_fista_with_a_unitary_operator_reaches_the_closed_form_lasso_solution():
    # min 1/2 ||F x - y||^2 + mu ||x||_1 with F unitary: x* = soft(F^H y, mu).
    gen = torch.Generator().manual_seed(0)
    y = _complex((8, 8), gen)
    mu = 0.3
    g = GroupL1(mu)
    op = FFT2c()
    states = list(itertools.islice(fista(op, y, g.prox, g.value, torch.zeros_like(y), step=1.0), 5))
    expected = g.prox(op.adjoint(y), 1.0)
    assert torch.allclose(states[-1].x, expected, atol=1e-12)


def test_fista_solution_is_a_fixed_point_of_the_proximal_gradient_map_and_objective_drops():
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(16, 16, generator=gen) < 0.4
    op = masked_fourier(mask)
    y = op(_complex((16, 16), gen))
    g = GroupL1(0.05)
    states = list(
        itertools.islice(fista(op, y, g.prox, g.value, op.adjoint(y), step=1.0, scale=2.0), 3000)
    )
    x = states[-1].x
    step = g.prox(x - op.adjoint(op(x) - y), 1.0)
    assert float((step - x).norm()) < 1e-6 * float(x.norm())
    expected = 2.0 * float(0.5 * (op(x) - y).abs().square().sum() + g.value(x))
    assert abs(states[-1].objective - expected) < 1e-9 * expected
    assert states[-1].objective < states[0].objective
