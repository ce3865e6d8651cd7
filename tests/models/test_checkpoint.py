"""Checkpoints: round trip, and refusal of tampered, mismatched, pickled or unknown files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from napari_genreg.models import checkpoint
from napari_genreg.models.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_model,
    save_model,
    sha256_bytes,
    weights_metadata,
)
from napari_genreg.models.vae import VAE, VAEConfig

CONFIG = VAEConfig(covariance="structured", image_size=32, base_channels=4, max_channels=8)


def _model(config: VAEConfig = CONFIG, seed: int = 1) -> VAE:
    return VAE(config, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def saved(tmp_path) -> tuple[VAE, Path]:
    model = _model()
    out = tmp_path / "model"
    save_model(
        model,
        model.config,
        out,
        metrics={"val_bits_per_dim": -1.5},
        data_manifest_hash="ab" * 32,
        command="napari-genreg train --data d --covariance structured --out model",
    )
    return model, out


def _outputs(model: VAE) -> tuple[torch.Tensor, ...]:
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    return out.mean, out.covariance.log_diagonal, out.covariance.off_diagonal, out.mu


def _config(out: Path) -> dict:
    return json.loads((out / CONFIG_NAME).read_text())


def _replace_weights(out: Path, data: bytes) -> None:
    """Swap in a weights file *and* make the config's checksum agree, as an attacker would."""
    (out / WEIGHTS_NAME).write_bytes(data)
    record = _config(out)
    record["weights"]["sha256"] = sha256_bytes(data)
    (out / CONFIG_NAME).write_text(json.dumps(record))


def test_round_trip_gives_the_same_model(saved):
    model, out = saved
    loaded, card = load_model(out)
    assert loaded.config == model.config == card.config
    assert not loaded.training
    reference = model.state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in loaded.state_dict().items())
    for a, b in zip(_outputs(model.eval()), _outputs(loaded), strict=True):
        assert torch.equal(a, b)
    assert card.metrics == {"val_bits_per_dim": -1.5}
    assert card.data_manifest_sha256 == "ab" * 32
    assert card.command.startswith("napari-genreg train")
    assert card.software["torch"] == torch.__version__
    assert "multiples of 8" in card.accepted_sizes
    record = _config(out)
    assert record["format_version"] == 1 and record["model"]["stencil"] == 5
    assert record["weights"]["sha256"] == sha256_bytes((out / WEIGHTS_NAME).read_bytes())
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temp files
    assert load_model(out / CONFIG_NAME)[1].weights_sha256 == card.weights_sha256


def test_saving_twice_gives_identical_weight_files(saved, tmp_path):
    model, out = saved
    save_model(model, model.config, tmp_path / "again")
    assert (tmp_path / "again" / WEIGHTS_NAME).read_bytes() == (out / WEIGHTS_NAME).read_bytes()


def test_save_refuses_a_foreign_config_and_non_finite_weights(tmp_path):
    model = _model()
    with pytest.raises(ValueError, match="configuration"):
        save_model(model, VAEConfig(covariance="diagonal"), tmp_path / "a")
    with torch.no_grad():
        model.decoder.mean_head.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"decoder\.mean_head\.bias"):
        save_model(model, model.config, tmp_path / "b")


def test_tampered_weights_are_refused(saved):
    _, out = saved
    data = bytearray((out / WEIGHTS_NAME).read_bytes())
    data[-5] ^= 0x01
    (out / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        load_model(out)


@pytest.mark.parametrize(("key", "value"), [("stencil", 3), ("min_std", 0.01), ("image_size", 64)])
def test_an_edited_model_configuration_is_refused(saved, key, value):
    _, out = saved
    record = _config(out)
    record["model"][key] = value
    (out / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(out)


def test_weights_of_another_shape_are_refused_naming_the_tensor(saved):
    """Config and weights metadata agree on stencil 3, but the tensors are a 5 x 5 model's."""
    model, out = saved
    other = VAEConfig(
        covariance="structured", stencil=3, image_size=32, base_channels=4, max_channels=8
    )
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    _replace_weights(out, save(tensors, metadata=weights_metadata(other)))
    record = _config(out)
    record["model"] = other.to_dict()
    (out / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"decoder\.covariance_head\.2\.weight"):
        load_model(out)


@pytest.mark.parametrize("change", ["missing", "unexpected", "dtype", "nan"])
def test_wrong_tensors_are_refused_naming_them(saved, change):
    model, out = saved
    tensors = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    name = "decoder.mean_head.bias"
    if change == "missing":
        del tensors[name]
    elif change == "unexpected":
        tensors["decoder.extra"] = torch.zeros(3)
        name = "decoder.extra"
    elif change == "dtype":
        tensors[name] = tensors[name].double()
    else:
        tensors[name][0] = float("inf")
    _replace_weights(out, save(tensors, metadata=weights_metadata(model.config)))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_model(out)


class _Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_is_refused_without_running_it(saved, tmp_path):
    _, out = saved
    marker = tmp_path / "code-was-executed"
    pickled = out / "pickle.tmp"
    torch.save({"weights": torch.zeros(3), "payload": _Payload(marker)}, pickled)
    _replace_weights(out, pickled.read_bytes())
    pickled.unlink()
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_model(out)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(format_version=2), "format version"),
        (lambda r: r.update(format_version=True), "format version"),
        (lambda r: r.update(format="something-else"), "not a napari-genreg model"),
        (lambda r: r["model"].update(architecture="unet-v7"), "architecture"),
        (lambda r: r["weights"].update(file="../elsewhere.safetensors"), "weights.file"),
        (lambda r: r["weights"].update(sha256="xyz"), "SHA-256"),
        (lambda r: r.update(model=[1, 2]), "JSON object"),
    ],
)
def test_unknown_formats_and_bad_configs_are_refused(saved, edit, message):
    _, out = saved
    record = _config(out)
    edit(record)
    (out / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=message):
        load_model(out)


def test_unreadable_configs_and_missing_files(saved, tmp_path):
    _, out = saved
    (out / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        load_model(out)
    (out / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid JSON"):
        load_model(out)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "model.safetensors").write_bytes(b"")  # a file where a folder belongs
    with pytest.raises(FileNotFoundError, match="is a file: give its folder"):
        load_model(tmp_path / "model.safetensors")


def test_builtin_names(saved, tmp_path, monkeypatch):
    _, out = saved
    with pytest.raises(CheckpointError, match="builtin:structured"):
        load_model("builtin:full")
    monkeypatch.setattr(checkpoint, "BUILTIN_DIR", tmp_path / "builtin")
    with pytest.raises(FileNotFoundError, match="not installed"):
        load_model("builtin:structured")
    (tmp_path / "builtin").mkdir()
    out.rename(tmp_path / "builtin" / "structured")
    model, card = load_model("builtin:structured")
    assert card.path == tmp_path / "builtin" / "structured"
    assert model.config == CONFIG


def test_the_shipped_builtin_folder_resolves_to_the_package():
    expected = Path(checkpoint.__file__).parent / "builtin"
    assert checkpoint.BUILTIN_DIR == expected
    assert checkpoint.BUILTIN_MODELS == ("identity", "diagonal", "structured")
