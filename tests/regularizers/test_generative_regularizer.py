"""The generative regulariser, checked against dense linear algebra on small images."""

from __future__ import annotations

import pytest
import torch

from napari_genreg.models.vae import VAE, VAEConfig
from napari_genreg.regularizers.generative import GenerativeRegularizer, precision_diagonal

SIZE = 16


def _model(kind: str, seed: int = 0) -> VAE:
    config = VAEConfig(covariance=kind, stencil=3, image_size=SIZE, base_channels=4, max_channels=8)
    model = VAE(config, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # a covariance head with correlations, not the quiet initial one
        head = model.decoder.covariance_head
        if head is not None:
            gen = torch.Generator().manual_seed(seed + 1)
            for p in head.parameters():
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return model


def _phase(seed: int = 0) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing="ij")
    return torch.polar(torch.ones(SIZE, SIZE), 0.8 * x - 0.5 * y * y + 0.1 * seed)


def _complex(gen: torch.Generator) -> torch.Tensor:
    real = torch.rand(SIZE, SIZE, generator=gen)
    return torch.complex(real, torch.randn(SIZE, SIZE, generator=gen))


@pytest.fixture(params=["identity", "diagonal", "structured"])
def prior(request) -> GenerativeRegularizer:
    return GenerativeRegularizer(_model(request.param), _phase())


def test_value_is_logdet_plus_half_mahalanobis_of_both_parts_plus_half_latent(prior):
    gen = torch.Generator().manual_seed(3)
    x = _complex(gen)
    z = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=gen)
    with torch.no_grad():
        mean, covariance = prior.model.decode(z)
    sigma = covariance.dense()[0].double()
    u = (x * prior.phase.conj()).reshape(-1)
    r = u - mean[0].reshape(-1).double()
    precision = torch.linalg.inv(sigma)
    mahalanobis = r.real.double() @ precision @ r.real.double()
    mahalanobis = mahalanobis + r.imag.double() @ precision @ r.imag.double()
    expected = torch.logdet(sigma) + 0.5 * mahalanobis + 0.5 * z.double().square().sum()
    value = prior.value(x, z)
    assert value.shape == (1,) and value.dtype == torch.float64
    assert float(value[0]) == pytest.approx(float(expected), rel=1e-4, abs=1e-2)


def test_x_step_quantities_match_dense_matrices(prior):
    gen = torch.Generator().manual_seed(4)
    v = _complex(gen)
    z = torch.randn(1, 4, 2, 2, generator=gen)
    with torch.no_grad():
        decoded = prior.decode(z)
        sigma = decoded.covariance.dense()[0].double()
        precision = torch.linalg.inv(sigma).to(torch.complex128)
        p = prior.phase.reshape(-1).to(torch.complex128)
        # P^H Sigma^-1 P v with P = diag(conj(p))
        expected = p * (precision @ (p.conj() * v.reshape(-1).to(torch.complex128)))
        got = prior.precision(decoded, v).reshape(-1)
        assert torch.allclose(got.to(torch.complex128), expected, rtol=1e-3, atol=1e-3)
        rhs = p * (precision @ decoded.mean[0].reshape(-1).to(torch.complex128))
        assert torch.allclose(
            prior.prior_rhs(decoded).reshape(-1).to(torch.complex128), rhs, rtol=1e-3, atol=1e-3
        )
        diagonal = torch.diagonal(torch.linalg.inv(sigma)).reshape(SIZE, SIZE)
        assert torch.allclose(prior.precision_diagonal(decoded).double(), diagonal, rtol=1e-3)
        variance = prior.constant_variance(decoded)
        if prior.kind == "identity":
            assert variance == pytest.approx(float(sigma[0, 0]), rel=1e-5)
        else:
            assert variance is None


def test_precision_diagonal_counts_only_neighbours_inside_the_image():
    prior = GenerativeRegularizer(_model("structured", seed=5), _phase())
    with torch.no_grad():
        _, covariance = prior.model.decode(torch.randn(2, 4, 2, 2))
    factor = covariance.dense_factor().double()
    expected = factor.square().sum(dim=-1).reshape(2, SIZE, SIZE)
    assert torch.allclose(precision_diagonal(covariance).double(), expected, rtol=1e-5)


def test_phase_removal_and_restoration_round_trip(prior):
    x = _complex(torch.Generator().manual_seed(6))
    assert torch.allclose(prior.restore_phase(prior.remove_phase(x)), x, atol=1e-6)
    real = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    back = prior.remove_phase(prior.restore_phase(real))
    assert torch.allclose(back.imag, torch.zeros(1), atol=1e-6)


def test_imaginary_part_after_phase_removal_is_penalised(prior):
    z = torch.zeros(1, 4, 2, 2)
    with torch.no_grad():
        mean = prior.decode(z).mean[0]
    on_phase = prior.restore_phase(mean)
    off_phase = prior.restore_phase(mean + 0.1j)
    assert float(prior.value(off_phase, z)[0]) > float(prior.value(on_phase, z)[0])


def test_encode_and_decode_shapes_and_the_model_is_left_alone(prior):
    before = {k: v.clone() for k, v in prior.model.state_dict().items()}
    flags = [p.requires_grad for p in prior.model.parameters()]
    z = prior.encode(torch.rand(SIZE, SIZE))
    assert z.shape == (1, *prior.latent_shape) == (1, 4, 2, 2)
    z = z.requires_grad_(True)
    loss = prior.terms(_complex(torch.Generator().manual_seed(8)), z).value().sum()
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in prior.model.parameters())
    assert [p.requires_grad for p in prior.model.parameters()] == flags
    after = prior.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_inputs_are_refused():
    model = _model("diagonal")
    with pytest.raises(ValueError, match="multiples of 8"):
        GenerativeRegularizer(model, torch.ones(12, 16, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex"):
        GenerativeRegularizer(model, torch.ones(16, 16))
    with pytest.raises(ValueError, match="head"):
        GenerativeRegularizer(model, _phase(), head="full")  # type: ignore[arg-type]
