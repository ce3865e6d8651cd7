"""The Reconstruct widget end to end through napari (needs Xvfb)."""

from __future__ import annotations

import gc
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari.utils.notifications import NotificationSeverity, notification_manager  # noqa: E402

from napari_genreg._napari import _session as session  # noqa: E402
from napari_genreg._napari._layers import METADATA_KEY  # noqa: E402
from napari_genreg._napari._session import MASK_LAYER_NAME  # noqa: E402
from napari_genreg.metrics import evaluate  # noqa: E402
from napari_genreg.physics.masks import make_mask  # noqa: E402

TIMEOUT_MS = 30_000


@pytest.fixture
def notifications():
    """The notifications dispatched during the test."""
    start = len(notification_manager.records)

    class Recorder:
        def errors(self) -> list[str]:
            return [
                str(n.message)
                for n in notification_manager.records[start:]
                if n.severity == NotificationSeverity.ERROR
            ]

        def infos(self) -> list[str]:
            return [
                str(n.message)
                for n in notification_manager.records[start:]
                if n.severity == NotificationSeverity.INFO
            ]

    return Recorder()


@pytest.fixture
def sample(make_napari_viewer, qtbot):
    """A viewer with the brain sample and the Reconstruct widget docked, ready to run."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-genreg", "brain")
    _, widget = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    qtbot.waitUntil(widget.is_ready, timeout=TIMEOUT_MS)
    widget.refresh_mask()
    return viewer, widget


def run_and_wait(qtbot, widget) -> None:
    """Press Run and wait until the worker has finished and the widget has handled it (the
    widget relays the worker's ``finished`` as ``run_finished``, connected before the run)."""
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        widget.run_button.click()
        assert widget.worker is not None, "the run did not start"
    assert widget.worker is None


def grid(viewer):
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def named(viewer) -> set[str]:
    """The layers whose name is written in their grid cell."""
    return {layer.name for layer in viewer.layers if layer.name_overlay.visible}


def layer_state(viewer) -> list[tuple[str, bytes]]:
    return [(layer.name, np.asarray(layer.data).tobytes()) for layer in viewer.layers]


def test_the_manifest_offers_the_reconstruct_widget():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-genreg")
    names = [w.display_name for w in manifest.contributions.widgets]
    assert names == ["Reconstruct", "Covariance Inspector"]
    (writer,) = manifest.contributions.writers
    assert writer.layer_types == ["image"]
    assert writer.filename_extensions == [".npy", ".nii", ".nii.gz", ".h5"]
    validate = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-genreg"], capture_output=True, text=True
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr


def test_importing_the_widget_does_not_import_torch():
    code = (
        "import sys; import napari_genreg._napari._reconstruct_widget; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_two_regularisers_end_to_end(sample, qtbot):
    viewer, widget = sample
    assert widget.input_combo.currentText() == "brain k-space"
    assert widget.mask_choice() == ("generated", "poisson")
    widget.set_methods(["zero-filled", "tv"])
    widget.iterations_spin.setValue(25)
    added, removed, at_first_iteration = [], [], []
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))
    viewer.layers.events.removed.connect(lambda event: removed.append(event.value.name))

    def on_event(event):
        if isinstance(event, session.IterationEvent) and not at_first_iteration:
            names = [layer.name for layer in viewer.layers if layer.visible]
            at_first_iteration.append((names, grid(viewer).enabled))

    widget.run_button.click()
    widget.worker.yielded.connect(on_event)
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        pass
    assert widget.worker is None

    reference = viewer.layers["brain"].data
    names = ["zero-filled · poisson 4x", "tv · poisson 4x"]
    # one layer per method, made (and the grid switched on) before the first iteration, and
    # kept: the previews and then the result replace its data
    assert added == names and removed == []
    layers_then, grid_then = at_first_iteration[0]
    assert layers_then[-2:] == names and grid_then  # shown in their cells
    assert [layer.name for layer in viewer.layers][-2:] == names
    assert widget.table.rowCount() == 2
    for row, name in enumerate(names):
        layer = viewer.layers[name]
        assert layer.data.shape == reference.shape == (128, 128)
        assert np.all(np.isfinite(layer.data))
        # on the input's intensity scale
        assert 0.8 < layer.data.max() / reference.max() < 1.25
        assert tuple(layer.contrast_limits) == (0.0, pytest.approx(float(reference.max())))
        metrics = evaluate(reference, layer.data)
        assert widget.table.item(row, 0).text() == name.split(" · ")[0]
        assert widget.table.item(row, 1).text() == f"{metrics.psnr:.2f}"
        assert widget.table.item(row, 2).text() == f"{metrics.ssim:.4f}"
        meta = layer.metadata[METADATA_KEY]
        assert meta["kind"] == "reconstruction" and layer.opacity == 1
        assert meta["metrics"]["psnr"] == pytest.approx(metrics.psnr)
        assert meta["problem"]["kspace_shape"] == [128, 128]
        np.testing.assert_array_equal(meta["mask"], viewer.layers[MASK_LAYER_NAME].data == 1)
    tv = viewer.layers["tv · poisson 4x"].metadata[METADATA_KEY]
    assert tv["iterations"] == 25 and len(tv["objectives"]) == 25 and tv["lam"] > 0
    assert tv["settings"]["lam_automatic"] and tv["settings"]["regularizer"] == "tv"
    assert tv["metrics"]["psnr"] > viewer.layers[names[0]].metadata[METADATA_KEY]["metrics"]["psnr"]
    assert widget.results_box.title() == "Results: brain k-space, poisson 4x"
    curves = widget.plot.curves()  # excess over the lowest objective; none for a closed form
    assert set(curves) == {"tv"} and len(curves["tv"]) == 25
    np.testing.assert_allclose(curves["tv"], session.relative_excess(tv["objectives"]))
    assert widget.plot.labels() == {"tv": "tv"}
    # side by side: grid mode, with the k-space and the mask hidden and each name in its cell
    assert grid(viewer).enabled
    assert named(viewer) == {"brain", *names}
    assert not viewer.layers["brain k-space"].visible
    assert not viewer.layers[MASK_LAYER_NAME].visible
    widget.grid_check.setChecked(False)
    assert not grid(viewer).enabled and viewer.layers["brain k-space"].visible


def test_every_registered_regulariser_runs_in_the_gui(sample, qtbot):
    """Every method of the registry, generative ones included, in one run of 2 iterations."""
    viewer, widget = sample
    methods = [info.name for info in widget.choices.methods]
    assert {"vae-identity", "vae-diagonal", "vae-structured", "range"} <= set(methods)
    widget.set_methods(methods)
    assert widget.checked_methods() == tuple(methods)
    widget.iterations_spin.setValue(2)
    run_and_wait(qtbot, widget)
    assert [r.method for r in widget.results] == methods
    labels = widget.plot.labels()  # the vn reports its data term, and says so
    assert labels["vn"] == "vn (data term)" and labels["vae-structured"] == "vae-structured"
    for result in widget.results:
        layer = viewer.layers[result.name]
        assert layer.data.shape == (128, 128) and np.all(np.isfinite(layer.data))
        meta = layer.metadata[METADATA_KEY]
        assert meta["iterations"] <= 2
        generative = result.method.startswith("vae-") or result.method == "range"
        if generative:
            assert meta["latent"] is not None and meta["latent"].ndim == 3
            assert meta["model"].startswith("builtin:") and meta["prior_head"]
        if result.method in ("tv", "wavelet", "zero-filled", "least-squares"):
            assert meta["latent"] is None and meta["model"] is None
        if result.method == "vn":  # its network is recorded; there is no prior to inspect
            assert meta["model"] == "builtin:vn" and meta["latent"] is None


def test_the_live_mask_follows_the_controls(sample, qtbot):
    viewer, widget = sample
    mask_layer = viewer.layers[MASK_LAYER_NAME]
    expected = make_mask("poisson", (128, 128), acceleration=4, seed=0)
    np.testing.assert_array_equal(mask_layer.data == 1, expected)
    assert "4.00x achieved" in widget.mask_info.text()

    widget.set_mask_choice("random")
    widget.acceleration_spin.setValue(8)
    widget.mask_seed.setValue(3)
    expected = make_mask("random", (128, 128), acceleration=8, seed=3)
    qtbot.waitUntil(lambda: np.array_equal(mask_layer.data == 1, expected), timeout=TIMEOUT_MS)
    assert widget.mask_info.text().startswith("1-D")
    rate = expected.size / expected.sum()
    assert f"{rate:.2f}x achieved" in widget.mask_info.text()

    widget.center_spin.setValue(0.5)  # too large a centre for 8x: an error, the layer stays
    qtbot.waitUntil(lambda: "lower center_fraction" in widget.mask_info.text())
    np.testing.assert_array_equal(mask_layer.data == 1, expected)
    assert [layer.name for layer in viewer.layers].count(MASK_LAYER_NAME) == 1


def test_a_painted_labels_mask_is_used(sample, qtbot):
    viewer, widget = sample
    painted = np.zeros((128, 128), np.uint8)
    painted[:, 48:80] = 1
    painted[:, ::4] = 1
    viewer.add_labels(painted, name="my lines")
    widget.set_mask_choice(layer="my lines")
    assert not widget.acceleration_spin.isEnabled()
    qtbot.waitUntil(
        lambda: np.array_equal(viewer.layers[MASK_LAYER_NAME].data == 1, painted == 1),
        timeout=TIMEOUT_MS,
    )
    # painting more updates the live mask
    labels = viewer.layers["my lines"]
    labels.brush_size = 1
    labels.paint((5, 2), 1)
    qtbot.waitUntil(lambda: viewer.layers[MASK_LAYER_NAME].data[5, 2] == 1, timeout=TIMEOUT_MS)

    widget.set_methods(["zero-filled"])
    run_and_wait(qtbot, widget)
    drawn = viewer.layers["my lines"].data != 0
    rate = drawn.size / drawn.sum()
    layer = viewer.layers[f"zero-filled · my lines {rate:.1f}x"]
    np.testing.assert_array_equal(layer.metadata[METADATA_KEY]["mask"], drawn)


def test_choosing_a_drawn_mask_after_a_run_shows_the_kspace_under_it(sample, qtbot):
    """After a run the grid is on (the k-space hidden, the drawing in a cell of its own):
    choosing the drawn layer leaves it and hides the results above the k-space."""
    viewer, widget = sample
    widget.set_methods(["zero-filled"])
    run_and_wait(qtbot, widget)
    viewer.add_labels(np.zeros((128, 128), np.uint8), name="to draw")
    widget.set_mask_choice(layer="to draw")
    assert grid(viewer).enabled  # chosen by the program (a test, a run): nothing moves
    widget.mask_combo.activated.emit(widget.mask_combo.currentIndex())  # by the user
    assert not grid(viewer).enabled
    assert viewer.layers["brain k-space"].visible and viewer.layers["to draw"].visible
    assert not viewer.layers["zero-filled · poisson 4x"].visible


def test_drawn_shapes_are_a_mask(sample, qtbot):
    viewer, widget = sample
    lines = [np.array([[float(r), 0.0], [float(r), 127.0]]) for r in range(0, 128, 3)]
    box = np.array([[54.0, 54.0], [54.0, 74.0], [74.0, 74.0], [74.0, 54.0]])
    viewer.add_shapes([*lines, box], shape_type=["line"] * len(lines) + ["rectangle"], name="drawn")
    widget.set_mask_choice(layer="drawn")
    mask_layer = viewer.layers[MASK_LAYER_NAME]
    qtbot.waitUntil(
        lambda: mask_layer.data[::3].all() and mask_layer.data[60, 60], timeout=TIMEOUT_MS
    )
    assert not mask_layer.data[1, 0]
    assert "achieved" in widget.mask_info.text()
    viewer.layers["drawn"].add_lines(np.array([[1.0, 0.0], [1.0, 127.0]]))  # drawing more
    qtbot.waitUntil(lambda: mask_layer.data[1].all(), timeout=TIMEOUT_MS)


def test_cancel_stops_within_an_iteration(sample, qtbot, notifications):
    viewer, widget = sample
    before = layer_state(viewer)
    widget.set_methods(["tv"])
    widget.iterations_spin.setValue(200_000)
    widget.run_button.click()
    worker = widget.worker
    qtbot.waitUntil(lambda: len(widget.history.get("tv", [])) >= 3, timeout=TIMEOUT_MS)
    assert widget.cancel_button.isEnabled()
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        widget.cancel_button.click()
    assert widget.worker is None and worker.abort_requested
    assert len(widget.history["tv"]) < 100_000
    assert layer_state(viewer) == before  # no result, no preview left behind
    assert not grid(viewer).enabled
    assert any("cancelled in tv" in m for m in notifications.infos())
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_closing_the_dock_cancels_the_run(sample, qtbot):
    """The dock's close button takes the widget out of the window without destroying it: the
    run stops as with Cancel, and its unfinished layer goes."""
    viewer, widget = sample
    before = [layer.name for layer in viewer.layers]
    widget.set_methods(["tv"])
    widget.iterations_spin.setValue(200_000)
    widget.run_button.click()
    worker = widget.worker
    qtbot.waitUntil(lambda: len(widget.history.get("tv", [])) >= 3, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        viewer.window.remove_dock_widget(widget.parent())
    assert worker.abort_requested and widget.worker is None
    assert len(widget.history["tv"]) < 100_000
    assert [layer.name for layer in viewer.layers] == before


def test_a_cancelled_run_leaves_grid_mode_as_the_run_found_it(sample, qtbot):
    viewer, widget = sample
    widget.set_methods(["zero-filled"])
    run_and_wait(qtbot, widget)  # grid mode on, the k-space hidden
    assert grid(viewer).enabled and not viewer.layers["brain k-space"].visible

    widget.set_methods(["tv"])
    widget.iterations_spin.setValue(200_000)
    widget.run_button.click()
    qtbot.waitUntil(lambda: len(widget.history.get("tv", [])) >= 3, timeout=TIMEOUT_MS)
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        widget.cancel_button.click()
    assert "tv · poisson 4x" not in viewer.layers  # the cancelled method's layer is gone
    assert "zero-filled · poisson 4x" in viewer.layers
    assert grid(viewer).enabled and not viewer.layers["brain k-space"].visible


def test_a_run_into_a_grid_writes_every_name_again(sample, qtbot):
    """The names are taken away while a new layer grows the grid, and written again after
    it: by the grid's steps, or by the clean-up of a run cancelled in between."""
    viewer, widget = sample
    widget.set_methods(["zero-filled"])
    run_and_wait(qtbot, widget)
    assert named(viewer) == {"brain", "zero-filled · poisson 4x"}

    widget.set_methods(["tv"])
    widget.iterations_spin.setValue(3)
    unnamed_then = []

    def on_inserted(event):  # the run's layer: when it is shown, the others are not named
        layer = event.value
        layer.events.visible.connect(lambda _: unnamed_then.append(named(viewer)))

    viewer.layers.events.inserted.connect(on_inserted)
    run_and_wait(qtbot, widget)
    assert unnamed_then == [set()]
    assert named(viewer) == {"brain", "zero-filled · poisson 4x", "tv · poisson 4x"}
    assert widget._unnamed_for_layout == []

    # cancelled as soon as the run's layer is shown: the grid's steps do not come
    viewer.layers.events.inserted.disconnect(on_inserted)
    widget.set_methods(["wavelet"])
    widget.iterations_spin.setValue(200_000)

    def cancel_when_shown(event):
        event.value.events.visible.connect(lambda _: widget.cancel())

    viewer.layers.events.inserted.connect(cancel_when_shown)
    run_and_wait(qtbot, widget)
    assert "wavelet · poisson 4x" not in viewer.layers
    assert grid(viewer).enabled
    assert named(viewer) == {"brain", "zero-filled · poisson 4x", "tv · poisson 4x"}
    assert widget._unnamed_for_layout == []


def test_each_image_is_whole_in_its_cell_and_in_the_canvas_after(sample, qtbot):
    """The camera is fitted to the images shown when the run switches the grid on (a cell is
    smaller than the canvas: the zoom of the canvas showed the middle of each image) and when
    the grid is left (the zoom of a cell showed a small image); not to a hidden layer larger
    than the images and of more dimensions (a multi-coil k-space with readout oversampling,
    on which napari's own fit to some layers fails)."""
    viewer, widget = sample
    viewer.add_image(np.zeros((2, 3, 512, 256), np.float32), name="wide", visible=False)
    widget.set_methods(["zero-filled", "tv"])
    widget.iterations_spin.setValue(2)
    start = len(notification_manager.records)
    run_and_wait(qtbot, widget)
    assert grid(viewer).enabled
    assert not [
        n for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR
    ]

    def fitted() -> bool:  # the 128 x 128 images, centred, 95 % of a cell's smaller side
        box = np.asarray(viewer.canvas.viewbox_size(viewer.layers), dtype=float)
        zoom, centre = camera(viewer).zoom, tuple(camera(viewer).center)[-2:]
        return zoom == pytest.approx(0.95 * box.min() / 128) and centre == pytest.approx(
            (63.5, 63.5)
        )

    assert fitted()
    widget.grid_check.setChecked(False)
    assert not grid(viewer).enabled
    assert fitted()
    camera(viewer).zoom *= 3  # the user's zoom, out of the grid, is left alone
    widget.grid_check.setChecked(False)
    assert not fitted()


def test_the_names_go_with_the_grid_whoever_leaves_it(sample, qtbot):
    """Out of grid mode napari stacks every name in the canvas's corner: the names the widget
    wrote go when another (napari's grid button, the Covariance Inspector) leaves the grid,
    and come back when the grid does."""
    viewer, widget = sample
    widget.set_methods(["zero-filled"])
    run_and_wait(qtbot, widget)
    assert named(viewer) == {"brain", "zero-filled · poisson 4x"}
    grid(viewer).enabled = False
    assert named(viewer) == set()
    assert widget.grid_check.isChecked()  # what runs do is still the user's choice
    grid(viewer).enabled = True
    qtbot.waitUntil(lambda: not widget._steps, timeout=TIMEOUT_MS)
    assert named(viewer) == {"brain", "zero-filled · poisson 4x"}


def test_napari_grid_button_writes_no_names_of_its_own(sample, qtbot):
    """Before any run, grid mode switched on by napari (its button) is napari's: no names."""
    viewer, widget = sample
    grid(viewer).enabled = True
    qtbot.wait(100)
    assert not widget._steps and named(viewer) == set()


def test_leaving_the_grid_during_the_layout_leaves_no_name_behind(sample, qtbot):
    """Unticked as soon as the run switches the grid on: the steps still queued (the names)
    do nothing, and the grid stays off."""
    viewer, widget = sample
    widget.set_methods(["zero-filled"])
    settings = grid(viewer)

    def untick(event):
        if settings.enabled:
            widget.grid_check.setChecked(False)

    settings.events.enabled.connect(untick)
    run_and_wait(qtbot, widget)
    settings.events.enabled.disconnect(untick)
    assert not settings.enabled
    assert named(viewer) == set()
    assert viewer.layers["brain k-space"].visible  # shown again when the grid was left


def test_the_heap_is_frozen_during_a_run_and_thawed_after_it(sample, qtbot):
    viewer, widget = sample
    gc.unfreeze()
    widget.set_methods(["tv"])
    widget.iterations_spin.setValue(20)
    frozen = []
    with qtbot.waitSignal(widget.run_finished, timeout=TIMEOUT_MS):
        widget.run_button.click()
        widget.worker.yielded.connect(lambda _: frozen.append(gc.get_freeze_count()))
    assert frozen and min(frozen) > 0  # a full collection skips napari's objects
    assert gc.get_freeze_count() == 0

    # a dock closed during a run thaws it too
    widget.iterations_spin.setValue(200_000)
    widget.run_button.click()
    worker = widget.worker
    qtbot.waitUntil(lambda: len(widget.history.get("tv", [])) >= 3, timeout=TIMEOUT_MS)
    assert gc.get_freeze_count() > 0
    viewer.window.remove_dock_widget("all")
    widget.deleteLater()  # what Qt does once nothing holds the closed dock
    qtbot.waitUntil(
        lambda: gc.get_freeze_count() == 0 and not worker.is_running, timeout=TIMEOUT_MS
    )


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """A small (untrained) structured VAE prior and a 2-stage variational network, saved."""
    import torch

    from napari_genreg.models.checkpoint import save_model, save_vn
    from napari_genreg.models.vae import VAE, VAEConfig
    from napari_genreg.models.vn import VariationalNetwork, VNConfig

    root = tmp_path_factory.mktemp("models")
    prior = VAEConfig(covariance="structured", stencil=3, base_channels=4, max_channels=8)
    save_model(VAE(prior, generator=torch.Generator().manual_seed(0)), prior, root / "prior")
    network = VNConfig(stages=2, filters=2, kernel_size=3)
    save_vn(VariationalNetwork(network), network, root / "vn")
    return root


def test_a_model_folder_replaces_the_shipped_models(sample, qtbot, model_folders):
    viewer, widget = sample
    widget.set_methods(["vae-structured"])
    widget.iterations_spin.setValue(2)
    widget.model_edit.setText(str(model_folders / "prior"))
    run_and_wait(qtbot, widget)
    meta = viewer.layers[widget.results[0].name].metadata[METADATA_KEY]
    assert meta["model"] == str(model_folders / "prior") == meta["settings"]["model"]
    widget.set_methods(["vn"])
    widget.iterations_spin.setValue(0)  # each method's default: this network's 2 stages
    widget.model_edit.setText(str(model_folders / "vn"))
    run_and_wait(qtbot, widget)
    result = widget.results[0]
    assert result.recon.iterations == 2 and result.recon.model == str(model_folders / "vn")


def test_a_model_folder_of_the_wrong_kind_is_an_error_and_nothing_runs(
    sample, qtbot, model_folders, notifications
):
    viewer, widget = sample
    before = layer_state(viewer)
    widget.set_methods(["tv", "vae-structured"])
    widget.model_edit.setText(str(model_folders / "vn"))
    widget.run_button.click()
    assert widget.worker is None
    assert notifications.errors() == [
        f"Reconstruct: the model {model_folders / 'vn'} is a variational network, but "
        "vae-structured needs a VAE prior: run them apart, or without a model folder"
    ]
    widget.model_edit.setText(str(model_folders / "missing"))
    widget.run_button.click()
    assert widget.worker is None
    assert "missing" in notifications.errors()[-1]
    assert layer_state(viewer) == before


def test_an_empty_drawn_mask_is_an_error_and_nothing_changes(sample, qtbot, notifications):
    viewer, widget = sample
    viewer.add_labels(np.zeros((128, 128), np.uint8), name="empty")
    widget.set_mask_choice(layer="empty")
    widget.refresh_mask()
    before = layer_state(viewer)
    widget.run_button.click()
    assert widget.worker is None
    assert any("samples nothing" in m for m in notifications.errors())
    assert layer_state(viewer) == before


def test_a_failing_method_is_an_error_and_nothing_changes(
    sample, qtbot, notifications, monkeypatch
):
    from napari_genreg.recon import METHODS, ReconstructionError

    tv = METHODS["tv"]

    def failing(problem, lam):
        states = tv.solve(problem, lam)
        yield next(states)
        yield next(states)
        raise ReconstructionError("tv: the objective became nan at iteration 3")

    monkeypatch.setitem(METHODS, "tv", replace(tv, solve=failing))
    viewer, widget = sample
    widget.set_methods(["tv"])
    before = layer_state(viewer)
    run_and_wait(qtbot, widget)
    assert notifications.errors() == [
        "Reconstruct failed: tv: the objective became nan at iteration 3"
    ]
    assert layer_state(viewer) == before
    assert widget.status.text().startswith("failed") and widget.run_button.isEnabled()


def test_an_image_layer_is_simulated(make_napari_viewer, qtbot, notifications):
    from napari_genreg.samples import load_image

    viewer = make_napari_viewer()
    image = 7.0 * load_image("brain", 128)[::2, ::2]
    viewer.add_image(image, name="phantom", scale=(0.5, 0.5), translate=(10.0, -4.0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    qtbot.waitUntil(widget.is_ready, timeout=TIMEOUT_MS)
    assert widget.input_combo.currentText() == "phantom"
    assert tuple(viewer.layers[MASK_LAYER_NAME].translate) == (10.0, -4.0)
    assert widget.noise_spin.isVisibleTo(widget)
    widget.noise_spin.setValue(0.0)
    widget.set_mask_choice("gaussian1d")
    widget.acceleration_spin.setValue(2)
    widget.set_methods(["zero-filled", "least-squares"])
    widget.lam_edit.setText("")
    run_and_wait(qtbot, widget)
    for name in ("zero-filled · gaussian1d 2x", "least-squares · gaussian1d 2x"):
        layer = viewer.layers[name]
        assert layer.data.shape == (64, 64) and tuple(layer.scale) == (0.5, 0.5)
        assert tuple(layer.translate) == (10.0, -4.0)  # over the input, pixel for pixel
        assert 0.8 < layer.data.max() / image.max() < 1.25
        psnr = layer.metadata[METADATA_KEY]["metrics"]["psnr"]
        assert psnr == pytest.approx(evaluate(image, layer.data).psnr, rel=1e-5)
        assert psnr > 20
    assert not any("was trained on" in m for m in notifications.infos())  # no prior used
    # a prior trained on 128 x 128 images, run on this 64 x 64 one: the user is told
    widget.set_methods(["vae-identity"])
    widget.iterations_spin.setValue(1)
    run_and_wait(qtbot, widget)
    told = [m for m in notifications.infos() if "was trained on" in m]
    assert told == [
        "Reconstruct: the prior builtin:identity was trained on 128x128 images, this input is "
        "64x64: it knows anatomy at its own field of view and pixel size"
    ]


def test_rows_follow_the_input(make_napari_viewer, qtbot):
    from napari.layers import Layer

    from napari_genreg._napari._layers import kspace_layer
    from napari_genreg.io import simulate_kspace

    viewer = make_napari_viewer()
    stack = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    data = simulate_kspace(stack, source="stack")
    viewer.add_layer(Layer.create(*kspace_layer(data, "stack k-space")))
    viewer.add_image(stack, name="stack")
    _, widget = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    qtbot.waitUntil(widget.is_ready, timeout=TIMEOUT_MS)
    assert widget.input_combo.currentText() == "stack k-space"  # k-space first
    assert widget.slice_spin.isVisibleTo(widget) and widget.slice_spin.maximum() == 2
    assert viewer.dims.current_step[0] == 1  # napari opened the stack mid-way...
    assert widget.slice_spin.value() == 1  # ...and the slice chosen is the one shown
    assert not widget.noise_row.isVisibleTo(widget)
    assert not widget.coil_maps_combo.isVisibleTo(widget)
    widget.input_combo.setCurrentText("stack")
    assert widget.noise_row.isVisibleTo(widget) and widget.slice_spin.isVisibleTo(widget)
    viewer.layers["stack"].scale = (2.5, 1.0, 1.0)  # slices 2.5 apart
    widget.slice_spin.setValue(2)
    request = widget.build_request()
    np.testing.assert_allclose(request.data.reference[0], stack[2], rtol=1e-6)
    assert request.slice_index == 2 and request.title.startswith("stack, slice 2, ")
    # the viewer's slider follows: the stack shows the slice that is reconstructed
    assert viewer.layers["stack"].world_to_data(viewer.dims.point)[0] == pytest.approx(2)
    # and the other way: the slider moves the slice chosen here
    axis = viewer.dims.ndim - 3  # the stack's slice axis (napari lines up the last axes)
    viewer.dims.set_point(axis, float(viewer.layers["stack"].data_to_world((1, 0, 0))[0]))
    assert widget.slice_spin.value() == 1
    np.testing.assert_allclose(widget.build_request().data.reference[0], stack[1], rtol=1e-6)
    viewer.layers.remove("stack")
    assert widget.input_combo.currentText() == "stack k-space"


def test_a_multicoil_files_reference_keeps_to_the_slice_slider(
    make_napari_viewer, qtbot, tmp_path, mri
):
    """(slices, coils, ky, kx) k-space beside a (slices, H, W) reference: napari lines up the
    last axes, so the reference gets a coil axis of 1; it is still an image input."""
    path = tmp_path / "scan.h5"
    truth = mri.fastmri(path)
    viewer = make_napari_viewer()
    kspace, reference = viewer.open(str(path), plugin="napari-genreg")
    assert kspace.data.shape == (mri.slices, mri.coils, *mri.encoded)
    assert reference.data.shape == (mri.slices, 1, *mri.recon)
    for coil in range(mri.coils):  # shown whichever coil the coil slider is on
        viewer.dims.set_point(1, coil)
        assert abs(reference.world_to_data(viewer.dims.point)[1]) < 0.5
    _, widget = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    qtbot.waitUntil(widget.is_ready, timeout=TIMEOUT_MS)
    widget.input_combo.setCurrentText(reference.name)
    widget.slice_spin.setValue(1)
    assert viewer.dims.current_step[0] == 1  # the slice axis, not the coils'
    request = widget.build_request()
    np.testing.assert_allclose(request.data.reference[0], truth["reference"][1], rtol=1e-6)


def test_a_file_with_its_own_mask_keeps_it(make_napari_viewer, qtbot):
    from napari.layers import Layer

    from napari_genreg._napari._layers import kspace_layer
    from napari_genreg.io import simulate_kspace
    from napari_genreg.samples import load_image

    full = simulate_kspace(load_image("brain", 128)[None], noise_sigma=0.01, source="acq")
    own = make_mask("equispaced", (128, 128), acceleration=2, seed=0)
    data = replace(full, kspace=full.kspace * own, mask=own)
    viewer = make_napari_viewer()
    viewer.add_layer(Layer.create(*kspace_layer(data, "acq k-space")))
    _, widget = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    qtbot.waitUntil(widget.is_ready, timeout=TIMEOUT_MS)
    assert not widget.mask_combo.isEnabled()
    assert "the file's own acquisition mask" in widget.mask_info.text()
    np.testing.assert_array_equal(viewer.layers[MASK_LAYER_NAME].data == 1, own)
    widget.set_methods(["zero-filled"])
    run_and_wait(qtbot, widget)
    rate = own.size / own.sum()
    layer = viewer.layers[f"zero-filled · acquired {rate:.1f}x"]
    assert layer.metadata[METADATA_KEY]["problem"]["retrospective"] is False


def test_the_convergence_plot_paints_any_history(qtbot):
    from napari_genreg._napari._plot import ConvergencePlot, decade_label, x_ticks

    plot = ConvergencePlot()
    qtbot.addWidget(plot)
    plot.resize(320, 200)
    plot.set_curve("vae-structured", [-100.0, -150.0, -160.0, -161.0])  # negative objectives
    plot.set_curve("vn", [3.0, 4.0, float("nan"), 1.0, 2.0], label="vn (data term)")
    plot.set_curve("zero-filled", [5.0])  # a closed form: no curve
    assert set(plot.curves()) == {"vae-structured", "vn"}
    assert plot.labels()["vn"] == "vn (data term)"
    np.testing.assert_allclose(plot.curves()["vae-structured"], [1.0, 11 / 61, 1 / 61, 0.0])
    assert not plot.grab().isNull()  # paints (the zeros and the nan are left out)
    plot.clear()
    assert plot.curves() == {} and not plot.grab().isNull()
    assert [decade_label(k) for k in (0, -1, -2, -3)] == ["1", "0.1", "0.01", "1e-3"]
    assert x_ticks(2) == [1, 2] and x_ticks(8) == [1, 2, 5, 8]
    assert x_ticks(1000) == [1, 10, 100, 1000] and x_ticks(1200) == [1, 10, 100, 1000]


def test_a_long_curve_is_drawn_as_its_envelope_at_the_plots_width(qtbot):
    from napari_genreg._napari._plot import ConvergencePlot, envelope

    rng = np.random.default_rng(0)
    y = np.abs(rng.standard_normal(100_000)) + 1e-6
    y[50_000:55_000] = np.nan  # a run with nothing drawable breaks the line
    k, v = envelope(y, 300)
    assert k.size <= 600 and np.all(np.diff(k) > 0)  # in iteration order
    assert k[:10].tolist() == list(range(1, 11))  # a log axis: the first iterations are wide
    np.testing.assert_array_equal(v, y[k - 1])
    assert np.nanmax(v) == np.nanmax(y) and np.nanmin(v) == np.nanmin(y)
    assert np.isnan(v).any()
    short = np.array([3.0, 2.0, 1.0])
    np.testing.assert_array_equal(envelope(short, 300)[1], short)  # drawn whole

    plot = ConvergencePlot()
    qtbot.addWidget(plot)
    plot.resize(320, 200)
    plot.set_curve("tv", np.linspace(1.0, 0.0, 200_000))
    assert plot.curves()["tv"].size == 200_000  # the data are kept whole
    assert not plot.grab().isNull()
