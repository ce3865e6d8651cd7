import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

from napari_genreg.physics.operators import Identity
from napari_genreg.physics.transforms import FiniteDifference
from napari_genreg.regularizers.functionals import GroupL1, SquaredDistance
from napari_genreg.solvers import pdhg


def _dense(op, shape):
    """The matrix of a real-linear operator on real images of ``shape``."""
    n = int(np.prod(shape))
    columns = []
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1
        columns.append(op(e.reshape(shape)).flatten().numpy())
    return np.stack(columns, axis=1)


def test_anisotropic_tv_denoising_matches_a_dense_bounded_least_squares_dual():
    # min_x 1/2||x - y||^2 + mu ||D x||_1 has the dual min_{|q|<=mu} 1/2||y - D^T q||^2,
    # x* = y - D^T q*; scipy's bounded least squares solves the dual exactly.
    rng = np.random.default_rng(0)
    shape = (6, 5)
    y = np.zeros(shape)
    y[:, 2:] = 1.0
    y += 0.2 * rng.standard_normal(shape)
    mu = 0.15
    D = _dense(FiniteDifference(), shape)
    dual = lsq_linear(D.T, y.flatten(), bounds=(-mu, mu), method="bvls", tol=1e-14)
    expected = y.flatten() - D.T @ dual.x

    yt = torch.from_numpy(y)
    terms = [(Identity(), SquaredDistance(yt)), (FiniteDifference(), GroupL1(mu))]
    step = 0.99 / np.sqrt(1 + 8)
    states = list(itertools.islice(pdhg(terms, yt, tau=step, sigma=step), 4000))
    np.testing.assert_allclose(states[-1].x.flatten().numpy(), expected, atol=1e-6)
    optimum = 0.5 * np.sum((expected - y.flatten()) ** 2) + mu * np.abs(D @ expected).sum()
    assert states[-1].objective == pytest.approx(optimum, rel=1e-8)
    assert states[-1].objective < states[0].objective


def test_pdhg_reports_the_scaled_objective_at_the_current_iterate():
    gen = torch.Generator().manual_seed(3)
    y = torch.view_as_complex(torch.randn((8, 8, 2), generator=gen, dtype=torch.float64))
    terms = [(Identity(), SquaredDistance(y)), (FiniteDifference(), GroupL1(0.1, group_dim=-3))]
    for state in itertools.islice(pdhg(terms, y, tau=0.3, sigma=0.3, scale=5.0), 4):
        x = state.x
        value = 0.5 * (x - y).abs().square().sum() + GroupL1(0.1, -3).value(FiniteDifference()(x))
        assert state.objective == pytest.approx(5.0 * float(value), rel=1e-12)
