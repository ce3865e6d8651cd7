"""Shared operator tests, parametrised over the one registry of operators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_genreg.physics import operators as ops
from napari_genreg.physics.fft import fft2c, ifft2c
from napari_genreg.physics.registry import OPERATOR_EXAMPLES

DTYPES = [torch.complex64, torch.complex128]
TOL = {torch.complex64: 1e-5, torch.complex128: 1e-12}


def _randn(shape, dtype, gen):
    real = torch.randn((*shape, 2), generator=gen, dtype=torch.float64)
    return torch.view_as_complex(real).to(dtype)


def _example(name, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    example = OPERATOR_EXAMPLES[name](dtype, gen)
    x = _randn(example.ishape, dtype, gen)
    y_shape = example.op(x).shape
    y = _randn(tuple(y_shape), dtype, gen)
    return example.op, x, y, gen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPERATOR_EXAMPLES))
def test_adjoint_dot_product_scaled_by_norms(name, dtype):
    # <A x, y> = <x, A^H y>, relative to ||A x|| ||y|| (ODL's norm-scaled test).
    op, x, y, _ = _example(name, dtype)
    ax, ahy = op(x), op.adjoint(y)
    assert ahy.shape == x.shape and ahy.dtype == dtype and ax.dtype == dtype
    lhs = torch.vdot(ax.flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), ahy.flatten())
    scale = float(ax.norm() * y.norm())
    assert abs(complex(lhs - rhs)) <= TOL[dtype] * scale


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPERATOR_EXAMPLES))
def test_linearity(name, dtype):
    op, x, _, gen = _example(name, dtype)
    x2 = _randn(tuple(x.shape), dtype, gen)
    a, b = complex(1.5, -0.25), complex(-0.5, 2.0)
    lhs = op(a * x + b * x2)
    rhs = a * op(x) + b * op(x2)
    assert torch.allclose(lhs, rhs, rtol=0, atol=TOL[dtype] * 10 * float(rhs.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPERATOR_EXAMPLES))
def test_normal_is_adjoint_after_forward(name, dtype):
    op, x, _, _ = _example(name, dtype)
    expected = op.adjoint(op(x))
    got = op.normal(x)
    assert torch.allclose(got, expected, rtol=0, atol=TOL[dtype] * 10 * float(expected.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPERATOR_EXAMPLES))
def test_adjoint_operator_view(name, dtype):
    op, x, y, _ = _example(name, dtype)
    assert torch.equal(op.H(y), op.adjoint(y))
    assert torch.equal(op.H.adjoint(x), op(x))
    assert op.H.H is op


@pytest.mark.parametrize("dtype", DTYPES)
def test_fft_is_unitary_and_matches_numpy(dtype):
    gen = torch.Generator().manual_seed(1)
    x = _randn((3, 16, 11), dtype, gen)
    k = fft2c(x)
    assert torch.allclose(k.norm(), x.norm(), rtol=TOL[dtype] * 10)
    assert torch.allclose(ifft2c(k), x, atol=TOL[dtype] * 10)
    xn = x.numpy()
    ref = np.fft.fftshift(
        np.fft.fft2(np.fft.ifftshift(xn, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)
    )
    np.testing.assert_allclose(k.numpy(), ref, atol=TOL[dtype] * 10)


def test_fft_puts_dc_at_the_centre():
    x = torch.ones(8, 7, dtype=torch.complex128)
    k = fft2c(x)
    assert abs(complex(k[4, 3]) - np.sqrt(56)) < 1e-12
    assert float(k.abs().sum() - k[4, 3].abs()) < 1e-9


def test_sense_with_one_unit_coil_equals_masked_fourier():
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(12, 12, generator=gen) > 0.5
    x = _randn((12, 12), torch.complex128, gen)
    maps = torch.ones(1, 12, 12, dtype=torch.complex128)
    np.testing.assert_allclose(
        ops.sense(maps, mask)(x)[0].numpy(), ops.masked_fourier(mask)(x).numpy(), atol=1e-12
    )


def test_operators_are_immutable_values():
    mask = torch.ones(4, 4, dtype=torch.bool)
    op = ops.masked_fourier(mask)
    mask[0, 0] = False  # changing the caller's array does not change the operator
    x = torch.ones(4, 4, dtype=torch.complex64)
    assert torch.allclose(op.normal(x), x)
    with pytest.raises(AttributeError):
        op.ops = ()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4), dtype=bool), "samples nothing"),
        (np.ones((4,), dtype=bool), "2-D"),
        (np.full((4, 4), 0.5), "only 0 and 1"),
    ],
)
def test_bad_masks_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        ops.masked_fourier(bad)


def test_sense_refuses_mismatched_mask():
    maps = torch.ones(2, 8, 8, dtype=torch.complex64)
    with pytest.raises(ValueError, match="does not match"):
        ops.sense(maps, np.ones((8, 6), dtype=bool))


def test_operator_norm_of_masked_fourier_is_one():
    mask = np.zeros((16, 16), dtype=bool)
    mask[:, ::3] = True
    x0 = torch.zeros(16, 16, dtype=torch.complex128)
    norm = ops.operator_norm(
        ops.masked_fourier(mask), x0, generator=torch.Generator().manual_seed(0)
    )
    assert abs(norm - 1.0) < 1e-6
