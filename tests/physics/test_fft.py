"""The centred FFT (physics/fft.py): the sign-pattern shifts equal the roll-based definition."""

from __future__ import annotations

import pytest
import torch

from napari_genreg.physics.fft import fft2c, ifft2c

DIMS = (-2, -1)


def _reference(transform, x: torch.Tensor) -> torch.Tensor:
    shifted = torch.fft.ifftshift(x, dim=DIMS)
    return torch.fft.fftshift(transform(shifted, dim=DIMS, norm="ortho"), dim=DIMS)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("shape", [(4, 4), (2, 6, 8), (8, 12), (10, 6), (5, 8), (7, 7), (1, 9, 4)])
def test_fft2c_and_ifft2c_match_the_shift_definition(shape, dtype):
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    for ours, transform in ((fft2c, torch.fft.fft2), (ifft2c, torch.fft.ifft2)):
        expected = _reference(transform, x)
        assert torch.allclose(ours(x), expected, atol=tol * float(expected.abs().max()))
    torch.testing.assert_close(ifft2c(fft2c(x)), x, atol=tol * 10, rtol=tol * 10)


def test_the_input_is_not_modified_and_gradients_flow():
    x = torch.randn(6, 8, dtype=torch.complex64, generator=torch.Generator().manual_seed(1))
    copy = x.clone()
    fft2c(x)
    ifft2c(x)
    assert torch.equal(x, copy)
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fft2c(leaf).abs().square().sum(), leaf)
    torch.testing.assert_close(grad, 2 * x)  # unitary: d||Fx||^2/dx = 2x
