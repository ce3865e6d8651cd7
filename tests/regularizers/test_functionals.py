import numpy as np
import pytest
import torch

from napari_genreg.physics.transforms import Wavelet
from napari_genreg.regularizers.functionals import GroupL1, SquaredDistance
from napari_genreg.regularizers.tv import total_variation
from napari_genreg.regularizers.wavelet import WaveletL1, cycle_spinning


def _complex(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.view_as_complex(torch.randn((*shape, 2), generator=gen, dtype=torch.float64))


def test_group_l1_prox_is_complex_soft_thresholding():
    v = torch.tensor([3 + 4j, 0.1 + 0j, -2j], dtype=torch.complex128)
    got = GroupL1(1.0).prox(v, 2.0)
    expected = torch.tensor([(3 + 4j) * (1 - 2 / 5), 0, 0], dtype=torch.complex128)
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("group_dim", [None, -3])
@pytest.mark.parametrize("step", [0.3, 2.0])
def test_moreau_identity_links_prox_and_prox_of_the_conjugate(group_dim, step):
    # prox_{s f}(v) + s prox_{f*/s}(v / s) = v
    f = GroupL1(0.7, group_dim)
    v = _complex((2, 5, 4))
    lhs = f.prox(v, step) + step * f.prox_conj(v / step, 1.0 / step)
    assert torch.allclose(lhs, v, atol=1e-12)


@pytest.mark.parametrize("group_dim", [None, -3])
def test_prox_minimises_its_objective(group_dim):
    f = GroupL1(0.4, group_dim)
    v = _complex((2, 4, 3), seed=1)
    step = 0.8
    p = f.prox(v, step)

    def objective(x):
        return float(f.value(x) + (x - v).abs().square().sum() / (2 * step))

    best = objective(p)
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        direction = torch.view_as_complex(
            torch.randn((2, 4, 3, 2), generator=gen, dtype=torch.float64)
        )
        assert objective(p + 1e-3 * direction) >= best - 1e-12


def test_squared_distance_prox_conj_is_the_closed_form():
    y = _complex((3, 3))
    p = _complex((3, 3), seed=4)
    f = SquaredDistance(y, weight=2.0)
    s = 0.7
    # prox_{s f*}(p) = argmin_q  |q|^2/(2w) + Re<q, y> + |q - p|^2/(2s)
    expected = (p - s * y) / (1 + s / 2.0)
    assert torch.allclose(f.prox_conj(p, s), expected)
    assert float(f.value(y)) == 0.0


def test_total_variation_of_simple_images():
    step = torch.zeros(4, 6, dtype=torch.complex128)
    step[:, 3:] = 2.0
    # periodic differences: two vertical edges (at 2->3 and the wrap 5->0) of height 2, 4 rows.
    assert float(total_variation(step)) == pytest.approx(16.0)
    assert float(total_variation(torch.ones(5, 5, dtype=torch.complex64))) == 0.0
    diag = torch.zeros(4, 4, dtype=torch.float64)
    diag[1, 1] = 1.0
    aniso = float(total_variation(diag, isotropic=False))
    iso = float(total_variation(diag, isotropic=True))
    assert aniso == pytest.approx(4.0) and iso == pytest.approx(2 + np.sqrt(2))


def test_wavelet_is_unitary_and_wavelet_l1_prox_keeps_the_approximation():
    shape = (32, 32)
    x = _complex(shape, seed=5)
    w = Wavelet(shape)
    c = w(x)
    assert c.shape == (32 * 32,)
    assert torch.allclose(c.norm(), x.norm())
    assert torch.allclose(w.adjoint(c), x, atol=1e-12)
    prior = WaveletL1(shape, weight=0.5)
    p = prior.prox(x, 1.0)
    cp = w(p)
    n = w.approx_size
    assert torch.allclose(cp[:n], c[:n], atol=1e-12)
    assert torch.allclose(cp[n:], GroupL1(0.5).prox(c[n:], 1.0), atol=1e-12)
    assert float(prior.value(x)) == pytest.approx(0.5 * float(c[n:].abs().sum()))


def test_cycle_spinning_applies_the_prox_at_the_generators_shifts():
    shape = (32, 32)
    x = _complex(shape, seed=6)
    prior = WaveletL1(shape, weight=0.3)
    spun = cycle_spinning(prior.prox, 8, torch.Generator().manual_seed(4))
    draws = torch.Generator().manual_seed(4)
    seen = set()
    for _ in range(6):
        dy, dx = (int(k) for k in torch.randint(0, 8, (2,), generator=draws))
        seen.add((dy, dx))
        expected = torch.roll(
            prior.prox(torch.roll(x, (dy, dx), (-2, -1)), 0.7), (-dy, -dx), (-2, -1)
        )
        torch.testing.assert_close(spun(x, 0.7), expected)
    assert len(seen) > 1  # the alignment changes from call to call
    # period 1: no shift, the plain proximal map
    unshifted = cycle_spinning(prior.prox, 1, torch.Generator())
    torch.testing.assert_close(unshifted(x, 0.7), prior.prox(x, 0.7))


def test_wavelet_refuses_sizes_it_cannot_transform():
    with pytest.raises(ValueError, match="divisible"):
        Wavelet((30, 32), level=2)
