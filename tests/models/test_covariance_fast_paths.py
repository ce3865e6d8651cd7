"""The untracked (no-autograd) paths of StructuredCovariance equal the differentiable ones."""

from __future__ import annotations

import pytest
import torch

from napari_genreg.models.covariance import StructuredCovariance
from napari_genreg.regularizers.generative import precision_diagonal


def _covariance(k: int, h: int, w: int, requires_grad: bool = False) -> StructuredCovariance:
    gen = torch.Generator().manual_seed(k * 100 + h * 10 + w)
    m = (k * k - 1) // 2
    log_diagonal = 0.3 * torch.randn(2, h, w, generator=gen)
    off = (0.2 * torch.randn(2, m, h, w, generator=gen)).requires_grad_(requires_grad)
    return StructuredCovariance(log_diagonal, off, k)


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 2), (9, 7), (16, 16)])
def test_factor_factor_t_precision_without_autograd_match_with(k, shape):
    fast = _covariance(k, *shape)
    tracked = _covariance(k, *shape, requires_grad=True)
    v = torch.randn(3, 2, *shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        untracked = [fast.factor(v), fast.factor_t(v), fast.precision(v), fast.precision(v.real)]
    reference = [
        tracked.factor(v),
        tracked.factor_t(v),
        tracked.precision(v),
        tracked.precision(v.real),
    ]
    for a, b in zip(untracked, reference, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)
    dense = fast.dense_factor().double()  # L, (B, N, N)
    flat = v.real[0].reshape(2, -1, 1).double()
    torch.testing.assert_close(
        untracked[3][0].reshape(2, -1, 1).double(), dense @ (dense.mT @ flat), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (9, 7)])
def test_precision_diagonal_without_autograd_matches_the_dense_factor(k, shape):
    fast = _covariance(k, *shape)
    with torch.no_grad():
        diagonal = precision_diagonal(fast)
    dense = fast.dense_factor()
    expected = dense.square().sum(dim=-1).reshape(2, *shape)
    torch.testing.assert_close(diagonal, expected, rtol=1e-5, atol=1e-6)
    tracked = precision_diagonal(_covariance(k, *shape, requires_grad=True))
    torch.testing.assert_close(diagonal, tracked.detach(), rtol=1e-6, atol=1e-7)
