"""The variational network: boundary, activations, filters, gradients, any operator, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from napari_genreg.models.checkpoint import (
    CONFIG_NAME,
    FORMAT,
    VN_FORMAT,
    WEIGHTS_NAME,
    CheckpointError,
    load_model,
    load_vn,
    model_format,
    save_vn,
)
from napari_genreg.models.vn import (
    VariationalNetwork,
    VNConfig,
    VNStage,
    channels_to_complex,
    complex_to_channels,
    intensity_scale,
)
from napari_genreg.physics.coils import synthetic_maps
from napari_genreg.physics.masks import make_mask
from napari_genreg.physics.operators import masked_fourier, sense

SMALL = VNConfig(stages=3, filters=4, kernel_size=5)


def _complex(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))


def test_config_round_trip_and_validation():
    assert VNConfig.from_dict(SMALL.to_dict()) == SMALL
    assert SMALL.to_dict()["architecture"] == "vn-rbf-v1"
    with pytest.raises(ValueError, match="architecture"):
        VNConfig.from_dict({**SMALL.to_dict(), "architecture": "unet"})
    with pytest.raises(ValueError, match="unknown fields"):
        VNConfig.from_dict({**SMALL.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="odd"):
        VNConfig(kernel_size=4)
    with pytest.raises(ValueError, match="stages"):
        VNConfig(stages=0)


def test_complex_channels_boundary_round_trips():
    x = _complex((2, 5, 7))
    u = complex_to_channels(x)
    assert u.shape == (2, 2, 5, 7) and u.dtype == torch.float32
    torch.testing.assert_close(u[:, 0], x.real)
    torch.testing.assert_close(u[:, 1], x.imag)
    torch.testing.assert_close(channels_to_complex(u), x)
    with pytest.raises(ValueError, match="complex images"):
        complex_to_channels(x.real)
    with pytest.raises(ValueError, match="real channels"):
        channels_to_complex(u[:, :1])


def test_filters_are_zero_mean_and_unit_norm():
    kernels = VNStage(SMALL).kernels().detach()
    assert kernels.shape == (4, 2, 5, 5)
    torch.testing.assert_close(kernels.sum(dim=(2, 3)), torch.zeros(4, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(kernels.flatten(1).norm(dim=1), torch.ones(4))


def test_activation_is_the_radial_basis_sum():
    stage = VNStage(SMALL)
    with torch.no_grad():
        stage.rbf_weights.copy_(torch.randn(stage.rbf_weights.shape, generator=torch.Generator()))
    z = torch.linspace(-1.6, 1.6, 2001).view(1, 1, 1, -1).expand(1, 4, 1, -1).contiguous()
    gamma = SMALL.rbf_width
    gauss = torch.exp(-0.5 * ((z[..., None] - stage.centres) / gamma) ** 2)
    direct = (gauss * stage.rbf_weights.view(1, 4, 1, 1, -1)).sum(-1)
    scale = float(stage.rbf_weights.detach().abs().max())
    with torch.no_grad():
        torch.testing.assert_close(stage.activation(z), direct, atol=1e-3 * scale, rtol=0)
        assert torch.all(stage.activation(torch.full((1, 4, 2, 2), 5.0)) == 0)


def test_activation_starts_linear():
    stage = VNStage(SMALL)
    z = torch.linspace(-0.9, 0.9, 101).view(1, 1, 1, -1).expand(1, 4, 1, -1).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(stage.activation(z), SMALL.init_slope * z, atol=2e-4, rtol=0)


def test_the_transposed_convolution_is_the_adjoint():
    kernels = VNStage(SMALL).kernels().detach().double()
    u = torch.randn(2, 2, 9, 11, dtype=torch.float64)
    v = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    left = (F.conv2d(u, kernels, padding=2) * v).sum()
    right = (u * F.conv_transpose2d(v, kernels, padding=2)).sum()
    assert float(left) == pytest.approx(float(right), rel=1e-12)


@pytest.mark.parametrize("shape", [(16, 16), (2, 16, 16), (37, 50)])
def test_iterates_keep_shape_and_dtype_at_any_size(shape):
    model = VariationalNetwork(SMALL)
    mask = make_mask("random", shape[-2:], acceleration=2, seed=0)
    op = masked_fourier(mask)
    y = op(_complex(shape))
    states = list(model.iterates(y, op))
    assert len(states) == 3
    for x in states:
        assert x.shape == shape and x.dtype == torch.complex64
        assert torch.all(torch.isfinite(torch.view_as_real(x)))


def test_operator_agnostic_sense_data_term():
    maps = synthetic_maps(4, (24, 24))
    op = sense(maps, make_mask("random", (24, 24), acceleration=2, center_fraction=0.2, seed=1))
    y = op(_complex((24, 24)))
    model = VariationalNetwork(SMALL)
    x = model(y, op)
    assert x.shape == (24, 24)
    # with no learned prior term, one stage is a gradient step on 1/2 ||A x - y||^2
    stage = model.stages[0]
    with torch.no_grad():
        stage.rbf_weights.zero_()
        aty = op.adjoint(y)
        x0 = torch.zeros(1, 24, 24, dtype=torch.complex64)
        step = stage(x0, aty[None], op)
    torch.testing.assert_close(step[0], stage.data_weight.detach() * aty)


def test_gradients_reach_every_parameter():
    model = VariationalNetwork(SMALL)
    op = masked_fourier(make_mask("random", (16, 16), acceleration=2, seed=0))
    truth = _complex((2, 16, 16), seed=3)
    loss = (model(op(truth), op) - truth).abs().square().mean()
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


def test_construction_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = VariationalNetwork(SMALL)
    b = VariationalNetwork(SMALL, torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.testing.assert_close(a.state_dict(), b.state_dict())


def test_intensity_scale_is_the_99th_percentile_per_image():
    x = torch.stack([torch.arange(100.0).view(10, 10), 2 * torch.arange(100.0).view(10, 10)])
    torch.testing.assert_close(intensity_scale(x), torch.tensor([98.01, 196.02]))


# --------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture
def saved(tmp_path):
    model = VariationalNetwork(SMALL, torch.Generator().manual_seed(5))
    out = tmp_path / "vn"
    save_vn(model, SMALL, out, metrics={"val_psnr": 30.0}, command="pytest")
    return model, out


def test_save_load_round_trip(saved):
    model, out = saved
    loaded, card = load_vn(out)
    assert card.config == SMALL and card.metrics["val_psnr"] == 30.0
    assert model_format(out) == VN_FORMAT
    op = masked_fourier(make_mask("random", (16, 16), acceleration=2, seed=0))
    y = op(_complex((16, 16)))
    with torch.no_grad():
        torch.testing.assert_close(loaded(y, op), model(y, op))


def test_corrupted_weights_are_refused(saved):
    _, out = saved
    data = bytearray((out / WEIGHTS_NAME).read_bytes())
    data[-1] ^= 0xFF
    (out / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_vn(out)


def test_an_edited_configuration_is_refused(saved):
    _, out = saved
    record = json.loads((out / CONFIG_NAME).read_text())
    record["model"]["stages"] = 4
    (out / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not match the one stored with the weights"):
        load_vn(out)


def test_a_wrong_architecture_is_refused(saved):
    _, out = saved
    record = json.loads((out / CONFIG_NAME).read_text())
    record["model"]["architecture"] = "vn-other"
    (out / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="unknown model architecture"):
        load_vn(out)


def test_each_loader_refuses_the_other_kind_and_says_which_to_use(saved):
    _, out = saved
    with pytest.raises(CheckpointError, match=r"variational network \(load_vn; for the vn"):
        load_model(out)
    with pytest.raises(CheckpointError, match=r"VAE prior \(load_model; for the vae-\*"):
        load_vn("builtin:identity")
    assert model_format("builtin:identity") == FORMAT


def test_the_builtin_network_loads():
    model, card = load_vn("builtin:vn")
    assert card.config.stages == len(model.stages)
    assert model.num_parameters() == card.config.stages * (
        card.config.filters * (2 * card.config.kernel_size**2 + card.config.rbf_centres) + 1
    )
    assert math.isfinite(card.metrics["val_psnr"])
    assert card.metrics["val_psnr"] > card.metrics["val_psnr_zero_filled"]
