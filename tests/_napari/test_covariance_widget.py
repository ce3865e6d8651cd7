"""The Covariance Inspector and the writer end to end through napari (needs Xvfb)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402

from napari_genreg._napari import _inspector as inspector  # noqa: E402
from napari_genreg._napari._layers import METADATA_KEY  # noqa: E402

TIMEOUT_MS = 60_000
VAE = "vae-structured · poisson 4x"
TV = "tv · poisson 4x"


def errors_since(start: int) -> list[str]:
    return [
        str(n.message)
        for n in notification_manager.records[start:]
        if n.severity == NotificationSeverity.ERROR
    ]


def layer_state(viewer) -> list[tuple[str, bytes, bool]]:
    return [(la.name, np.asarray(la.data).tobytes(), la.visible) for la in viewer.layers]


@pytest.fixture
def inspected(make_napari_viewer, qtbot):
    """The brain sample reconstructed by tv and vae-structured (2 iterations each) in the
    Reconstruct widget, with the Covariance Inspector docked: both through the manifest."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-genreg", "brain")
    _, recon = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    _, widget = viewer.window.add_plugin_dock_widget("napari-genreg", "Covariance Inspector")
    qtbot.waitUntil(recon.is_ready, timeout=TIMEOUT_MS)
    recon.set_methods(["tv", "vae-structured"])
    recon.iterations_spin.setValue(2)
    with qtbot.waitSignal(recon.run_finished, timeout=TIMEOUT_MS):
        recon.run_button.click()
    assert [r.name for r in recon.results] == [TV, VAE]
    qtbot.waitUntil(lambda: widget.warm_worker is None and not widget._steps, timeout=TIMEOUT_MS)
    return viewer, widget


def click(widget, viewer, position, *, drag_to=None) -> None:
    """Drive the inspector's mouse callback as napari does: press, (moves), release."""
    (callback,) = [cb for cb in viewer.mouse_drag_callbacks if cb == widget._on_mouse_drag]
    event = SimpleNamespace(type="mouse_press", position=tuple(position), button=1, modifiers=())
    steps = callback(viewer, event)
    next(steps)
    if drag_to is not None:
        event.type, event.position = "mouse_move", tuple(drag_to)
        next(steps)
    event.type = "mouse_release"
    with pytest.raises(StopIteration):
        next(steps)


def expected_view(layer, pixel, samples=0):
    """``inspect_covariance`` called directly with the layer's latent at ``pixel``."""
    import torch

    from napari_genreg.recon.covariance import inspect_covariance
    from napari_genreg.recon.generative import load_prior_model

    meta = layer.metadata[METADATA_KEY]
    model, _ = load_prior_model(meta["model"], "cpu")
    h, w = layer.data.shape
    f = model.config.factor
    grid = (meta["latent"].shape[-2] * f, meta["latent"].shape[-1] * f)
    at = (pixel[0] + grid[0] // 2 - h // 2, pixel[1] + grid[1] // 2 - w // 2)
    view = inspect_covariance(
        model,
        meta["latent"],
        at,
        generator=torch.Generator().manual_seed(0),
        samples=samples,
        scale=meta["problem"]["scale"],
        head=meta["prior_head"],
    )
    return view.cropped((h, w))


def test_a_click_shows_the_covariance_at_the_reconstructions_latent(inspected, qtbot):
    viewer, widget = inspected
    assert widget.source_combo.currentText() == VAE  # the newest generative result
    source = viewer.layers[VAE]
    meta = source.metadata[METADATA_KEY]
    assert meta["latent"].shape == (4, 16, 16) and meta["model"] == "builtin:structured"
    assert meta["prior_head"] == "configured" and meta["problem"]["scale"] > 0
    assert viewer.layers[TV].metadata[METADATA_KEY]["latent"] is None

    widget.correlation_check.setChecked(True)
    widget.variance_check.setChecked(True)
    widget.samples_check.setChecked(True)
    widget.samples_spin.setValue(3)
    pixel = (60, 70)
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        click(widget, viewer, source.data_to_world(pixel))
    assert widget.pixel == pixel
    view = expected_view(source, pixel, samples=3)
    layers = widget.layers
    assert set(layers) == {"positive", "negative", "correlation", "variance", "samples", "marker"}
    # the options' layers, made after the others, go below them: the overlays stay on top
    stacked = [la for la in viewer.layers if la in layers.values()]
    assert stacked == [layers[role] for role in inspector.ROLES]
    for role in ("positive", "negative", "correlation", "variance", "samples"):
        np.testing.assert_allclose(layers[role].data, getattr(view, role), rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(layers["marker"].data, [pixel])
    assert view.positive.max() > 0 and view.negative.max() > 0  # both signs occur
    # the shipped prior's negative lobes are no rounding: the blue mass is a good part of the red
    assert layers["negative"].data.sum() > 0.1 * layers["positive"].data.sum()
    # the status line says how large the negative part is (an empty blue layer is explained)
    shown = {
        r: (layers[r].data, {"metadata": layers[r].metadata}, "image")
        for r in ("positive", "negative")
    }
    assert widget.status.text().endswith(inspector.describe_signs(shown))
    assert "largest negative covariance" in widget.status.text()
    pos, neg = layers["positive"], layers["negative"]
    assert (pos.colormap.name, neg.colormap.name) == ("red", "blue")
    assert pos.blending == neg.blending == "additive"
    assert tuple(pos.contrast_limits) == pytest.approx((0.0, inspector.overlay_limit(view)))
    assert tuple(pos.scale) == tuple(source.scale)
    # drawn over the reconstruction: no grid, nothing above it but the inspection
    assert not viewer.canvas.grid.enabled and source.visible
    above = list(viewer.layers)[viewer.layers.index(source) + 1 :]
    assert all(la.visible == (la in layers.values()) for la in above)

    # a click elsewhere updates the same layers
    count, same = len(viewer.layers), dict(layers)
    pixel = (30, 41)
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        click(widget, viewer, source.data_to_world(pixel))
    assert len(viewer.layers) == count
    assert all(widget.layers[role] is layer for role, layer in same.items())
    view = expected_view(source, pixel, samples=3)
    np.testing.assert_allclose(widget.layers["positive"].data, view.positive, rtol=1e-5)
    np.testing.assert_allclose(widget.layers["negative"].data, view.negative, rtol=1e-5)
    np.testing.assert_array_equal(widget.layers["marker"].data, [pixel])
    assert widget.layers["positive"].metadata[METADATA_KEY]["pixel"] == list(pixel)

    # fewer options: the layers not asked for go, the others stay
    widget.samples_check.setChecked(False)
    widget.variance_check.setChecked(False)
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((64, 64))
    assert set(widget.layers) == {"positive", "negative", "correlation", "marker"}
    assert widget.layers["positive"] is same["positive"]
    assert len(viewer.layers) == count - 2


def test_only_vae_reconstructions_are_offered_and_the_selection_is_left_alone(inspected):
    """The other methods' results have no covariance to show; the inspection's layers, made
    hidden after the run, do not take the selection (and the layer controls) from its
    result."""
    viewer, widget = inspected
    offered = [widget.source_combo.itemText(i) for i in range(widget.source_combo.count())]
    assert offered == [VAE]
    assert set(widget.layers) == {"positive", "negative", "marker"}
    assert viewer.layers.selection.active is viewer.layers[VAE]
    viewer.layers.selection.active = viewer.layers[TV]  # a non-vae layer chosen in napari
    assert widget.source_combo.currentText() == VAE


def test_the_layers_an_inspection_adds_do_not_change_the_chosen_reconstruction(inspected, qtbot):
    """Another vae-* result selected in napari's layer list: the inspector's own layers, added
    while the chosen one is inspected, give the selection back without choosing it."""
    from napari.layers import Image

    viewer, widget = inspected
    vae = viewer.layers[VAE]
    other = viewer.add_layer(Image(vae.data, name="other", metadata=dict(vae.metadata)))
    assert widget.source_combo.currentText() == "other"  # the newest, and selected
    qtbot.waitUntil(lambda: widget.warm_worker is None and not widget._steps, timeout=TIMEOUT_MS)
    widget.set_source(VAE)
    widget.correlation_check.setChecked(True)  # a layer to add on the click
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((64, 64))
    assert "correlation" in widget.layers
    assert widget.source_combo.currentText() == VAE
    assert viewer.layers.selection.active is other


def test_choosing_a_reconstruction_prepares_its_latent_for_the_first_click(inspected, qtbot):
    """The chosen vae-* result's decoder output and variance map are computed in a worker as
    soon as it is chosen (once per latent), so a first click reuses them."""
    from napari_genreg.recon import covariance

    viewer, widget = inspected
    assert widget.source_layer().name == VAE
    widget.source_combo.setCurrentIndex(-1)  # none, then the same again
    widget.set_source(VAE)
    assert widget.warm_worker is None  # the same latent is not prepared twice
    covariance.clear_covariance_cache()
    widget._warmed = None  # forget it, as for a new reconstruction
    widget.source_combo.setCurrentIndex(-1)
    widget.set_source(VAE)
    assert widget.warm_worker is not None
    qtbot.waitUntil(lambda: widget.warm_worker is None, timeout=TIMEOUT_MS)
    latent = viewer.layers[VAE].metadata[METADATA_KEY]["latent"]
    prepared = [e for e in covariance._AT_LATENT.values() if e.variance is not None]
    assert [e.mean.shape[-2:] for e in prepared] == [(8 * latent.shape[-2], 8 * latent.shape[-1])]


def test_choosing_a_reconstruction_prepares_its_layers_and_a_click_adds_none(inspected, qtbot):
    """The layers of an inspection (by default: positive, negative, marker) are made, hidden,
    when the vae-* result is chosen, not on the first click, which only fills them."""
    viewer, widget = inspected
    assert set(widget.layers) == {"positive", "negative", "marker"}
    assert all(la in viewer.layers and not la.visible for la in widget.layers.values())
    added = []
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((64, 64))
    assert added == [] and all(la.visible for la in widget.layers.values())


def test_a_comparison_in_grid_mode_hides_the_overlays_and_a_click_brings_them_back(
    inspected, qtbot
):
    viewer, widget = inspected
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((64, 64))
    assert not viewer.canvas.grid.enabled  # the inspection left grid mode
    _, recon = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    recon.set_methods(["tv"])
    recon.iterations_spin.setValue(2)
    with qtbot.waitSignal(recon.run_finished, timeout=TIMEOUT_MS):
        recon.run_button.click()
    assert viewer.canvas.grid.enabled  # side by side again, without the overlays
    assert not any(layer.visible for layer in widget.layers.values())
    widget.set_source(VAE)
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((40, 40))
    assert not viewer.canvas.grid.enabled and viewer.layers[VAE].visible
    assert all(layer.visible for layer in widget.layers.values())


def test_a_drag_pans_and_inspects_nothing(inspected, qtbot):
    viewer, widget = inspected
    before = layer_state(viewer)
    click(widget, viewer, (60.0, 60.0), drag_to=(70.0, 80.0))
    qtbot.wait(50)
    assert widget.worker is None and widget.pixel is None and layer_state(viewer) == before


def test_clicks_faster_than_the_inspection_keep_only_the_latest(inspected, qtbot):
    _, widget = inspected
    shown = []
    widget.inspection_done.connect(lambda: shown.append(widget.pixel))
    for pixel in [(10, 10), (20, 20), (30, 30), (40, 40)]:
        widget.inspect_pixel(pixel)
    qtbot.waitUntil(lambda: widget.worker is None and widget._pending is None, timeout=TIMEOUT_MS)
    assert shown == [(10, 10), (40, 40)]  # the first was running; of the rest only the latest
    np.testing.assert_array_equal(widget.layers["marker"].data, [(40, 40)])


def test_errors_are_notifications_and_leave_the_layers_intact(inspected, qtbot):
    viewer, widget = inspected
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((64, 64))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=TIMEOUT_MS)
    before = layer_state(viewer)
    start = len(notification_manager.records)

    # a click outside the image
    with qtbot.waitSignal(widget.inspection_failed, timeout=TIMEOUT_MS) as failed:
        click(widget, viewer, viewer.layers[VAE].data_to_world((-5, 300)))
    assert "outside" in failed.args[0]
    # a reconstruction without a generative prior is not offered
    assert widget.source_combo.findText(TV) < 0
    with pytest.raises(ValueError, match=r"'tv · .*' is not a reconstruction made by a vae-"):
        widget.set_source(TV)
    # a generative layer whose latent is missing
    widget.set_source(VAE)
    viewer.layers[VAE].metadata[METADATA_KEY]["latent"] = None
    with qtbot.waitSignal(widget.inspection_failed, timeout=TIMEOUT_MS) as failed:
        widget.inspect_pixel((64, 64))
    assert "carries no latent" in failed.args[0]

    messages = errors_since(start)
    assert len(messages) == 2 and all(m.startswith("Covariance Inspector: ") for m in messages)
    assert layer_state(viewer) == before
    assert widget.worker is None


@pytest.mark.parametrize("ext", [".npy", ".nii", ".nii.gz", ".h5"])
def test_the_writer_round_trips_a_reconstruction_with_its_settings(
    make_napari_viewer, tmp_path, ext
):
    from napari.layers import Layer

    from napari_genreg._napari import _session as session
    from napari_genreg.io import read_settings
    from napari_genreg.io.images import read_nifti

    request = session.ReconRequest(
        data=session.load_input(_brain_layer(), seed=0),
        mask=session.MaskSpec("poisson").draw((128, 128)),
        mask_label="poisson 4x",
        methods=("vae-structured",),
        iterations=1,
    )
    *_, finished = session.run_request(request)
    layer = Layer.create(*session.result_layer(finished.result, request.mask))
    layer.translate = (3.0, -2.0)
    viewer = make_napari_viewer()
    viewer.add_layer(layer)
    path = tmp_path / f"recon{ext}"
    written = viewer.layers.save(str(path), selected=True, plugin="napari-genreg")
    assert written[0] == str(path) and path.is_file()
    if ext == ".npy":
        assert written[1] == str(tmp_path / "recon.json")
        data = np.load(path)
    elif ext == ".h5":
        import h5py

        with h5py.File(path) as f:
            data = f["reconstruction"][()]
    else:
        data = read_nifti(path).reference[0]
    np.testing.assert_array_equal(data, layer.data)
    settings = read_settings(path)
    meta = layer.metadata[METADATA_KEY]
    assert settings["layer"] == layer.name and settings["regularizer"] == "vae-structured"
    assert settings["lam"] == pytest.approx(meta["lam"]) and settings["iterations"] == 1
    assert settings["settings"]["mask"] == "poisson 4x" and settings["model"] == meta["model"]
    assert settings["metrics"] == pytest.approx(meta["metrics"])
    assert settings["problem"]["scale"] == pytest.approx(meta["problem"]["scale"])
    assert "latent" not in settings and "mask" not in settings  # arrays stay out

    # opened again (through the manifest): a reconstruction, with its settings, not an image
    (opened,) = viewer.open(str(path), plugin="napari-genreg")
    assert opened.name == f"{layer.name} [1]"  # napari's suffix: the original is still there
    np.testing.assert_allclose(opened.data, layer.data, rtol=1e-6)
    entry = opened.metadata[METADATA_KEY]
    assert entry["kind"] == "reconstruction" and entry["regularizer"] == "vae-structured"
    assert entry["lam"] == pytest.approx(meta["lam"]) and entry["latent"] is None
    assert tuple(opened.scale) == tuple(layer.scale)
    assert tuple(opened.translate) == (3.0, -2.0)
    _, widget = viewer.window.add_plugin_dock_widget("napari-genreg", "Covariance Inspector")
    widget.set_source(opened.name)  # listed; the latent was not saved: it says so
    assert "carries no latent" in widget.source_info.text()


def test_the_writer_refuses_unknown_extensions(make_napari_viewer, tmp_path):
    from napari_genreg._napari._writer import write_image
    from napari_genreg.io import WriteError

    viewer = make_napari_viewer()
    viewer.add_image(np.ones((8, 8), np.float32), name="img")
    target = tmp_path / "img.tif"
    with pytest.warns(UserWarning, match="not a valid writer"):
        assert viewer.layers.save(str(target), selected=True, plugin="napari-genreg") == []
    with pytest.raises(WriteError, match=r"supported: \.npy, \.nii, \.nii\.gz, \.h5"):
        write_image(str(target), np.ones((8, 8)), {"name": "img"})
    assert list(tmp_path.iterdir()) == []


def _brain_layer():
    from napari.layers import Layer

    from napari_genreg._napari._sample_data import brain

    data, kwargs, kind = next(t for t in brain() if t[1]["name"] == "brain k-space")
    return Layer.create(data, kwargs, kind)


def test_the_status_forgets_an_inspection_whose_layer_is_gone(inspected, qtbot):
    viewer, widget = inspected
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((64, 64))
    assert "covariance with pixel (64, 64)" in widget.status.text()
    viewer.layers.remove(VAE)
    assert widget.status.text() == "click a pixel of the reconstruction"
    assert widget.pixel is None and widget.source_combo.count() == 0
    assert not any(layer.visible for layer in widget.layers.values())  # no overlay over another


def test_a_later_vae_result_is_inspected_under_the_overlays(inspected, qtbot):
    """The inspection's layers, made for the first result, lie under a later run's result:
    inspecting that one puts them right above it, in their order."""
    viewer, widget = inspected
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((64, 64))
    _, recon = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    recon.set_methods(["vae-structured"])
    recon.iterations_spin.setValue(2)
    recon.acceleration_spin.setValue(6.0)
    with qtbot.waitSignal(recon.run_finished, timeout=TIMEOUT_MS):
        recon.run_button.click()
    later = recon.results[0].name
    assert later != VAE and widget.source_combo.currentText() == later
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((50, 50))
    names = [layer.name for layer in viewer.layers]
    ours = [widget.layers[role].name for role in ("positive", "negative", "marker")]
    assert names[names.index(later) + 1 :][:3] == ours
    assert all(viewer.layers[name].visible for name in [later, *ours])


def test_a_closed_inspector_follows_no_click(inspected, qtbot):
    """Its dock's X takes the widget out of the window: it no longer inspects clicks, and a
    new one docked in its place inspects each click once."""
    viewer, widget = inspected
    viewer.window.remove_dock_widget(widget.parent())
    assert widget._on_mouse_drag not in viewer.mouse_drag_callbacks
    _, again = viewer.window.add_plugin_dock_widget("napari-genreg", "Covariance Inspector")
    inspectors = [cb for cb in viewer.mouse_drag_callbacks if hasattr(cb, "__self__")]
    assert [cb.__self__ for cb in inspectors if cb.__name__ == "_on_mouse_drag"] == [again]


def test_the_writer_refuses_kspace_and_writes_a_multicoil_reference(
    make_napari_viewer, tmp_path, mri
):
    """A k-space layer shows log(1 + |k|): writing it would lose the complex data, so it is
    refused, naming why; a multi-coil file's reference, (slices, 1, H, W) for the slider, is
    written as (slices, H, W) with the scale of those axes."""
    from napari_genreg._napari._writer import write_image
    from napari_genreg.io import WriteError, read_settings

    path = tmp_path / "scan.h5"
    truth = mri.fastmri(path)
    viewer = make_napari_viewer()
    kspace, reference = viewer.open(str(path), plugin="napari-genreg")
    with pytest.raises(WriteError, match="k-space layer shows log"):
        write_image(str(tmp_path / "k.npy"), kspace.data, kspace.as_layer_data_tuple()[1])
    assert not (tmp_path / "k.npy").exists()
    out = tmp_path / "ref.npy"
    write_image(str(out), reference.data, reference.as_layer_data_tuple()[1])
    np.testing.assert_allclose(np.load(out), truth["reference"], rtol=1e-6)
    assert read_settings(out)["layer_scale"] == [1.0, 1.0, 1.0]


def test_samples_keep_a_slider_of_their_own_beside_a_stack(inspected, qtbot):
    """With a stack of slices open, the samples (n, H, W) would take the slice slider (sample
    k shown at slice k, none beyond): they get an axis of 1 spread over the slices instead,
    and a slider of their own."""
    viewer, widget = inspected
    viewer.add_image(np.zeros((5, 128, 128), np.float32), name="stack", scale=(2.5, 1, 1))
    slice_steps = viewer.dims.nsteps[0]
    widget.samples_check.setChecked(True)
    widget.samples_spin.setValue(3)
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((64, 64))
    samples = widget.layers["samples"]
    assert samples.data.shape == (3, 1, 128, 128) and viewer.dims.ndim == 4
    assert viewer.dims.nsteps[1] == slice_steps  # the slices' slider is untouched
    assert samples.data[:, 0].std(axis=0).max() > 0  # three different samples
    for k in range(5):  # shown at every slice
        viewer.dims.set_point(1, float(viewer.layers["stack"].data_to_world((k, 0, 0))[0]))
        assert abs(samples.world_to_data(viewer.dims.point)[1]) < 0.5
    with qtbot.waitSignal(widget.inspection_done, timeout=TIMEOUT_MS):
        widget.inspect_pixel((30, 30))  # the next click updates the same layer
    assert widget.layers["samples"] is samples and samples.data.shape == (3, 1, 128, 128)
