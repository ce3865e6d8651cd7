"""The Covariance Inspector's model (`_inspector`) and the writer's settings: no viewer."""

from __future__ import annotations

import copy

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.layers import Image, Layer

from napari_genreg._napari import _inspector as inspector
from napari_genreg._napari import _session as session
from napari_genreg._napari._layers import METADATA_KEY
from napari_genreg._napari._writer import layer_settings, write_image
from napari_genreg.io import read_settings, simulate_kspace
from napari_genreg.physics.masks import make_mask


@pytest.fixture(scope="module")
def generative():
    """A 40 x 36 vae-structured reconstruction (1 iteration; the model pads it to 40 x 40)."""
    y, x = np.mgrid[:40, :36]
    image = (((y - 20) ** 2 + (x - 18) ** 2 < 150) * 0.8 + 0.1).astype(np.float32)
    request = session.ReconRequest(
        data=simulate_kspace(image[None], noise_sigma=0.01, seed=0, source="disc"),
        mask=make_mask("poisson", (40, 36), acceleration=3, seed=0),
        mask_label="poisson 3x",
        methods=("vae-structured", "tv"),
        iterations=1,
        scale=(0.5, 0.5),
    )
    finished = [e for e in session.run_request(request) if isinstance(e, session.MethodFinished)]
    return [Layer.create(*session.result_layer(e.result, request.mask)) for e in finished]


def test_generative_results_carry_the_latent_model_and_head(generative):
    vae, tv = generative
    meta = vae.metadata[METADATA_KEY]
    assert meta["latent"].shape == (4, 5, 5)  # the padded 40 x 40 grid over 8
    assert meta["model"] == "builtin:structured" and meta["prior_head"] == "configured"
    assert meta["settings"]["model"] == "builtin:structured"
    assert tv.metadata[METADATA_KEY]["latent"] is None
    assert "model" not in tv.metadata[METADATA_KEY]["settings"]


def test_target_pixel_and_layers_match_inspect_covariance(generative):
    import torch

    from napari_genreg.recon.covariance import inspect_covariance
    from napari_genreg.recon.generative import load_prior_model

    vae, _ = generative
    target = inspector.inspect_target(vae)
    assert target.shape == (40, 36) and target.layer_scale == (0.5, 0.5)
    assert inspector.pixel_at(vae, vae.data_to_world((12, 30))) == (12, 30)
    assert inspector.pixel_at(vae, (6.1, 14.8)) == (12, 30)  # world units of 0.5
    with pytest.raises(ValueError, match="outside"):
        inspector.pixel_at(vae, (-1.0, 3.0))
    assert inspector.model_pixel(target, (12, 30), 8) == (12, 32)  # offsets (0, 2)

    options = inspector.InspectOptions(correlation=True, variance=True, samples=2, seed=3)
    layers = inspector.compute_layers(target, (12, 30), options)
    assert tuple(layers) == inspector.ROLES
    model, _ = load_prior_model("builtin:structured", "cpu")
    view = inspect_covariance(
        model,
        target.latent,
        (12, 32),
        generator=torch.Generator().manual_seed(3),
        samples=2,
        scale=target.scale,
    ).cropped((40, 36))
    for role in ("positive", "negative", "correlation", "variance", "samples"):
        data, kwargs, kind = layers[role]
        assert kind == "image" and kwargs["scale"] == (0.5, 0.5)
        np.testing.assert_allclose(data, getattr(view, role), rtol=1e-6)
        assert kwargs["metadata"][METADATA_KEY]["kind"] == session.KIND_COVARIANCE
    data, kwargs, kind = layers["marker"]
    assert kind == "points" and data.tolist() == [[12.0, 30.0]]
    # the inspection's own layers are no input of the Reconstruct widget
    assert session.input_kind(Layer.create(*layers["positive"])) is None
    with pytest.raises(ValueError, match="outside"):
        inspector.compute_view(target, (40, 0))


def _signs(positive: np.ndarray, negative: np.ndarray, pixel: tuple[int, int]) -> str:
    meta = {"metadata": {METADATA_KEY: {"pixel": list(pixel)}}}
    layers = {"positive": (positive, meta, "image"), "negative": (negative, meta, "image")}
    return inspector.describe_signs(layers)


def test_the_status_line_compares_the_negative_part_with_the_positive_one(generative):
    column = np.array([[10.0, 4.0, -1.0], [2.0, 0.0, -0.002], [0.0, 0.0, 0.0]])
    positive, negative = np.maximum(column, 0), np.maximum(-column, 0)
    # the pixel's own variance (10) is left out: the largest positive neighbour is 4
    assert _signs(positive, negative, (0, 0)).startswith("largest negative covariance 25 %")
    weak = np.where(column < -0.01, 0.0, negative)  # only -0.002: 5e-4 of 4
    assert _signs(positive, weak, (0, 0)).startswith("no negative covariance here")
    alone = np.zeros((3, 3))
    alone[1, 1] = 5.0
    assert _signs(alone, np.zeros((3, 3)), (1, 1)) == "no covariance with any other pixel"
    against = np.zeros((3, 3))
    against[0, 0] = 2.0
    assert _signs(alone, against, (1, 1)).startswith("no positive covariance away from")
    assert inspector.describe_signs({"positive": (positive, {}, "image")}) == ""

    # on a real inspection it reads the same numbers as the layers show
    vae, _ = generative
    layers = inspector.compute_layers(inspector.inspect_target(vae), (12, 30))
    off = layers["positive"][0].copy()
    off[12, 30] = 0
    ratio = layers["negative"][0].max() / off.max()
    line = inspector.describe_signs(layers)
    if ratio < inspector.NEGLIGIBLE_NEGATIVE:
        assert line.startswith("no negative covariance here")
    else:
        assert f"{100 * ratio:.0f} %" in line


def test_only_generative_reconstructions_are_targets(generative):
    _, tv = generative
    with pytest.raises(ValueError, match="no generative prior"):
        inspector.inspect_target(tv)
    with pytest.raises(ValueError, match="not a reconstruction"):
        inspector.inspect_target(Image(np.zeros((8, 8)), name="plain"))
    with pytest.raises(ValueError, match="choose a reconstruction"):
        inspector.inspect_target(None)
    with pytest.raises(ValueError, match="non-negative"):
        inspector.InspectOptions(samples=-1)


def test_adapt_reconstructions_are_refused_for_inspection(generative):
    """adapt's latent decodes to its image only through weights it did not keep."""
    vae, _ = generative
    adapted = Image(vae.data, name="adapt result", metadata=copy.deepcopy(vae.metadata))
    adapted.metadata[METADATA_KEY]["regularizer"] = "adapt"
    with pytest.raises(ValueError, match="adapted"):
        inspector.inspect_target(adapted)


def test_layer_settings_keep_json_and_leave_arrays_out(generative, tmp_path):
    vae, _ = generative
    attributes = vae.as_layer_data_tuple()[1]
    settings = layer_settings(attributes)
    assert settings["regularizer"] == "vae-structured" and settings["layer"] == vae.name
    assert settings["layer_scale"] == [0.5, 0.5] and settings["iterations"] == 1
    assert not {"latent", "mask", "record"} & set(settings)
    assert layer_settings({"name": "plain", "metadata": {}}) == {
        "software": settings["software"],
        "layer": "plain",
    }
    paths = write_image(str(tmp_path / "r.npy"), vae.data, attributes)
    assert paths == [str(tmp_path / "r.npy"), str(tmp_path / "r.json")]
    assert read_settings(tmp_path / "r.npy")["settings"]["mask"] == "poisson 3x"
