"""The Reconstruct widget's model (`_session`): no viewer, no Qt event loop."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.layers import Image, Labels, Layer, Shapes

from napari_genreg._napari import _session as session
from napari_genreg._napari._layers import METADATA_KEY, kspace_layer
from napari_genreg.io import simulate_kspace
from napari_genreg.metrics import evaluate
from napari_genreg.physics.masks import MASKS, make_mask
from napari_genreg.recon import METHODS


def _image(h: int = 32, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return (((y - h / 2) ** 2 + (x - w / 2) ** 2 < (h / 3) ** 2) * 1.0 + 0.1 * x / w).astype(
        np.float32
    )


def _data(noise: float = 0.01):
    return simulate_kspace(_image()[None], noise_sigma=noise, seed=0, source="test")


def _request(**kwargs):
    data = kwargs.pop("data", _data())
    mask = kwargs.pop("mask", make_mask("poisson", (32, 32), acceleration=3, seed=0))
    fields = {"mask_label": "poisson 3x", "methods": ("zero-filled", "tv"), "iterations": 5}
    fields.update(kwargs)
    return session.ReconRequest(data=data, mask=mask, **fields)


class FakeClock:
    """Advances by ``step`` seconds on every reading."""

    def __init__(self, step: float) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def _drain(generator):
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value


def test_layers_are_classified_as_inputs_and_mask_sources():
    data = _data()
    kspace = Layer.create(*kspace_layer(data, "k"))
    image = Image(_image(), name="img")
    volume = Image(np.stack([_image()] * 3), name="vol")
    rgb = Image(np.zeros((8, 8, 3), np.uint8), rgb=True)
    result = Image(_image(), metadata={METADATA_KEY: {"kind": session.KIND_RECONSTRUCTION}})
    assert session.input_kind(kspace) == "kspace"
    assert session.input_kind(image) == "image"
    assert session.input_kind(volume) == "image" and session.slice_count(volume) == 3
    assert session.input_kind(rgb) is None and session.input_kind(result) is None
    assert session.input_kind(Labels(np.zeros((4, 4), int))) is None
    assert session.is_mask_source(Labels(np.zeros((4, 4), int)))
    assert session.is_mask_source(Shapes())
    assert not session.is_mask_source(image)
    assert session.kspace_shape(kspace) == (32, 32) == session.kspace_shape(image)
    assert "simulated k-space 32x32, 1 coil" in session.describe_input(kspace)
    assert "simulated from it" in session.describe_input(image)


def test_an_image_layer_is_simulated_with_the_chosen_noise_and_slice():
    volume = np.stack([_image(), 2 * _image()])
    layer = Image(volume, name="vol")
    data = session.load_input(layer, slice_index=1, noise_sigma=0.0, seed=3)
    assert data.kspace.shape == (1, 1, 32, 32)
    np.testing.assert_allclose(data.reference[0], 2 * _image(), rtol=1e-6)
    assert data.meta.extra["seed"] == 3 and data.meta.noise_sigma == 0.0
    again = session.load_input(layer, slice_index=1, noise_sigma=0.05, seed=3)
    assert not np.allclose(again.kspace, data.kspace)
    with pytest.raises(ValueError, match="out of range"):
        session.load_input(layer, slice_index=2)


def test_a_kspace_layer_gives_its_own_record():
    data = _data()
    layer = Layer.create(*kspace_layer(data, "k"))
    loaded = session.load_input(layer, noise_sigma=0.5)  # noise settings do not apply
    np.testing.assert_array_equal(loaded.kspace, data.kspace)


def test_drawn_masks_from_labels_and_shapes():
    shape = (32, 32)
    labels = np.zeros(shape, np.uint8)
    labels[:, 14:18] = 2
    mask = session.mask_from_layer(Labels(labels, name="paint"), shape)
    assert mask.dtype == np.bool_ and mask.sum() == 4 * 32

    painted_3d = np.zeros((2, *shape), np.uint8)
    painted_3d[1, 3, 4] = 1
    assert session.mask_from_layer(Labels(painted_3d), shape).sum() == 1

    line = np.array([[16.0, 0.0], [16.0, 31.0]])
    square = np.array([[10.0, 10.0], [10.0, 13.0], [13.0, 13.0], [13.0, 10.0]])
    shapes = Shapes([line, square], shape_type=["line", "polygon"])
    mask = session.mask_from_layer(shapes, shape)
    assert mask[16].all()  # the line, one pixel wide
    assert mask[11:13, 11:13].all()  # inside the polygon
    assert mask.sum() < 32 + 25

    with pytest.raises(ValueError, match="samples nothing"):
        session.mask_from_layer(Labels(np.zeros(shape, int), name="empty"), shape)
    with pytest.raises(ValueError, match="samples nothing"):
        session.mask_from_layer(Shapes(name="none"), shape)
    with pytest.raises(ValueError, match="16x16"):
        session.mask_from_layer(Labels(np.ones((16, 16), int)), shape)


@pytest.mark.parametrize("kind", list(MASKS))
def test_mask_specs_draw_the_registry_masks(kind):
    spec = session.MaskSpec(kind, acceleration=4, seed=2)
    expected = make_mask(kind, (64, 64), acceleration=4, seed=2)
    np.testing.assert_array_equal(spec.draw((64, 64)), expected)
    assert spec.label == f"{kind} 4x"
    assert "achieved" in session.acceleration_text(expected)


def test_requests_are_checked():
    with pytest.raises(ValueError, match="at least one"):
        _request(methods=())
    with pytest.raises(ValueError, match="twice"):
        _request(methods=("tv", "tv"))
    with pytest.raises(ValueError, match="lam"):
        _request(lam=-1.0)
    with pytest.raises(ValueError, match="iterations"):
        _request(iterations=0)
    with pytest.raises(ValueError, match="unknown mask"):
        session.MaskSpec("nope")
    tv = METHODS["tv"].default_iterations
    assert _request(iterations=None).planned_iterations() == {"zero-filled": 1, "tv": tv}
    assert _request(lam=2.0).result_name("tv", True) == "tv · poisson 3x · lam 2"
    assert _request(lam=2.0).result_name("zero-filled", False) == "zero-filled · poisson 3x"
    assert _request(lam=2.0).result_names() == {
        "zero-filled": "zero-filled · poisson 3x",
        "tv": "tv · poisson 3x · lam 2",
    }


def test_the_run_yields_per_iteration_and_throttles_previews():
    request = _request(methods=("zero-filled", "tv"), iterations=10)
    # every clock reading advances 0.05 s: a preview at most every 0.2 s
    events, results = _drain(session.run_request(request, clock=FakeClock(0.05)))
    assert isinstance(events[0], session.ProblemReady)
    assert events[0].planned == {"zero-filled": 10, "tv": 10}  # zero-filled stops after 1
    iterations = [e for e in events if isinstance(e, session.IterationEvent)]
    assert [(e.method, e.iteration) for e in iterations] == [("zero-filled", 1)] + [
        ("tv", i) for i in range(1, 11)
    ]
    previews = [e for e in iterations if e.preview is not None]
    assert iterations[0].preview is not None
    assert 2 <= len(previews) <= 4
    assert all(p.preview.shape == (32, 32) for p in previews)
    finished = [e.result for e in events if isinstance(e, session.MethodFinished)]
    assert [r.name for r in finished] == ["zero-filled · poisson 3x", "tv · poisson 3x"]
    assert tuple(finished) == results
    tv = results[1]
    assert tv.recon.iterations == 10 and len(tv.recon.objectives) == 10
    assert tv.lam_automatic and tv.recon.lam > 0 and tv.settings["regularizer"] == "tv"
    reference = request.data.reference[0]
    assert tv.recon.metrics == evaluate(reference, tv.recon.image)
    assert tv.display_range == (0.0, float(reference.max()))


def test_stopping_the_generator_stops_the_run():
    generator = session.run_request(_request(methods=("tv",), iterations=10_000))
    events = [next(generator) for _ in range(4)]
    generator.close()  # what a thread worker's quit() amounts to
    assert [type(e).__name__ for e in events] == ["ProblemReady"] + ["IterationEvent"] * 3


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown regulariser"):
        _drain(session.run_request(_request(methods=("nope",))))
    with pytest.raises(ValueError, match="unknown device"):
        _drain(session.run_request(_request(device="tpu")))
    empty = _request(mask=np.zeros((32, 32), bool))
    with pytest.raises(ValueError, match="samples nothing"):
        _drain(session.run_request(empty))


def test_result_layers_carry_settings_history_and_metrics():
    request = _request(methods=("tv",), iterations=3, lam=5.0, scale=(0.5, 0.5))
    _, (result,) = _drain(session.run_request(request))
    data, kwargs, kind = session.result_layer(result, request.mask)
    assert kind == "image" and data.shape == (32, 32) and data.dtype == np.float32
    assert kwargs["name"] == "tv · poisson 3x · lam 5" and kwargs["scale"] == (0.5, 0.5)
    meta = kwargs["metadata"][METADATA_KEY]
    assert meta["kind"] == session.KIND_RECONSTRUCTION
    assert meta["lam"] == 5.0 and meta["iterations"] == 3 and len(meta["objectives"]) == 3
    assert meta["settings"]["lam_automatic"] is False
    assert meta["problem"]["kspace_shape"] == [32, 32] and meta["problem"]["retrospective"]
    assert set(meta["metrics"]) == {"psnr", "ssim", "nmse"}
    np.testing.assert_array_equal(meta["mask"], request.mask)
    row = session.metrics_row(result)
    assert len(row) == len(session.METRICS_COLUMNS) and row[1] == f"{result.recon.metrics.psnr:.2f}"


def test_a_runs_layer_is_made_before_its_result_and_named_as_it():
    request = _request(methods=("tv",), iterations=2, scale=(0.5, 0.5))
    events, (result,) = _drain(session.run_request(request))
    ready = events[0]
    shape = tuple(ready.info["recon_size"])
    data, kwargs, kind = session.run_layer(
        request.result_names()["tv"], shape, ready.display_range, request.scale
    )
    assert kind == "image" and data.shape == shape == result.recon.image.shape and not data.any()
    assert kwargs["name"] == result.name and kwargs["opacity"] == 0  # hides nothing yet
    assert kwargs["contrast_limits"] == result.display_range and kwargs["scale"] == (0.5, 0.5)
    assert kwargs["metadata"][METADATA_KEY]["kind"] == session.KIND_PREVIEW
    assert session.input_kind(Layer.create(data, kwargs, kind)) is None  # never an input


def test_a_result_of_one_slice_of_several_names_it():
    """Results of slice 0 and slice 3 of a stack are told apart by their names, the title and
    the settings saved with them; an input of one slice names none."""
    request = _request(methods=("zero-filled",), slice_index=3, source="stack")
    assert request.result_names() == {"zero-filled": "zero-filled · poisson 3x · slice 3"}
    assert request.title == "stack, slice 3, poisson 3x"
    _, (result,) = _drain(session.run_request(request))
    assert result.name.endswith(" · slice 3") and result.settings["slice"] == 3
    one = _request(methods=("zero-filled",), source="brain")
    assert one.result_names() == {"zero-filled": "zero-filled · poisson 3x"}
    assert one.title == "brain, poisson 3x"


def test_data_with_its_own_mask_keeps_it():
    data = _data()
    own = make_mask("equispaced", (32, 32), acceleration=2, seed=0)
    undersampled = replace(data, kspace=data.kspace * own, mask=own)
    layer = Layer.create(*kspace_layer(undersampled, "k"))
    np.testing.assert_array_equal(session.acquired_mask(layer), own)
    assert "undersampled in the file" in session.describe_input(layer)
    request = _request(data=session.load_input(layer), mask=None, methods=("zero-filled",))
    _, (result,) = _drain(session.run_request(request))
    assert result.info["retrospective"] is False


def test_resolve_mask_prefers_the_files_own_then_the_drawn_then_the_spec():
    data = _data()
    image = Image(_image(), name="img")
    spec = session.MaskSpec("radial", acceleration=3, seed=1)
    resolved = session.resolve_mask(image, spec=spec)
    np.testing.assert_array_equal(resolved.mask, spec.draw((32, 32)))
    assert resolved.label == "radial 3x" and not resolved.acquired
    assert resolved.summary.startswith("2-D, ")

    painted = np.zeros((32, 32), np.uint8)
    painted[:, :8] = 1
    drawn = session.resolve_mask(image, spec=spec, drawn=Labels(painted, name="paint"))
    assert drawn.label == "paint 4.0x" and drawn.summary.startswith("drawn: 4.00x")

    own = make_mask("equispaced", (32, 32), acceleration=2, seed=0)
    layer = Layer.create(*kspace_layer(replace(data, kspace=data.kspace * own, mask=own), "k"))
    acquired = session.resolve_mask(layer, spec=spec, drawn=Labels(painted))
    assert acquired.acquired and acquired.label.startswith("acquired ")
    np.testing.assert_array_equal(acquired.mask, own)
    with pytest.raises(ValueError, match="lower center_fraction"):
        session.resolve_mask(image, spec=session.MaskSpec("random", 8, center_fraction=0.5))


# ---------------------------------------------------------------------------- live view


class StillClock:
    """Reads ``now``, which the test sets."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_lets_one_update_through_per_interval():
    clock = StillClock()
    throttle = session.Throttle(0.25, clock=clock)
    assert throttle.wait() == 0 and throttle.take()  # the first goes through at once
    assert not throttle.take() and throttle.wait() == pytest.approx(0.25)
    clock.now = 0.2
    assert not throttle.take() and throttle.wait() == pytest.approx(0.05)
    clock.now = 0.25
    assert throttle.take() and not throttle.take()
    clock.now = 10.0  # a long pause does not bank updates
    assert throttle.take() and not throttle.take()
    throttle.reset()
    assert throttle.take()


def _iteration(method, i, planned=5, preview=True):
    image = np.full((2, 2), float(i), dtype=np.float32) if preview else None
    return session.IterationEvent(method, i, planned, 10.0 / i, image)


def test_the_live_run_keeps_the_latest_preview_and_every_objective():
    live = session.LiveRun()
    assert live.take_preview() is None and live.take_curves() == {}
    for i in (1, 2, 3):
        live.record(_iteration("tv", i, preview=i != 3))
    assert live.done == 3 and live.description == "Reconstruct: tv"
    assert live.history == {"tv": [10.0, 5.0, 10.0 / 3]}
    preview = live.take_preview()  # the newest preview; older ones were dropped
    assert preview.method == "tv" and preview.image[0, 0] == 2
    assert live.take_preview() is None  # shown once
    assert live.status.startswith("tv: iteration 2 of 5")
    assert live.curves_changed and live.take_curves() == {"tv": [10.0, 5.0, 10.0 / 3]}
    assert not live.curves_changed and live.take_curves() == {}


def test_the_live_run_counts_the_unused_iterations_of_a_finished_method():
    live = session.LiveRun()
    live.record(_iteration("tv", 1))
    live.record(_iteration("tv", 2))
    result = SimpleNamespace(method="tv", recon=SimpleNamespace(objectives=(10.0, 5.0)))
    live.take_curves()
    live.finish(result)
    assert live.done == 5  # stopped after 2 of 5
    assert live.take_curves() == {"tv": [10.0, 5.0]}
    assert live.take_preview() is None  # the result replaces the method's last preview


@pytest.mark.parametrize(
    "objectives",
    [
        [10.0, 5.0, 2.0, 1.5],  # positive, decreasing
        [-100.0, -150.0, -160.0, -161.0],  # negative (the vae-* log-det terms)
        [3.0, 4.0, 1.0, 2.0],  # not monotone (the vn's data term)
    ],
)
def test_the_plot_shows_each_objectives_excess_over_its_lowest(objectives):
    f = np.asarray(objectives)
    y = session.relative_excess(objectives)
    np.testing.assert_allclose(y, (f - f.min()) / (f.max() - f.min()))
    assert y.max() == 1 and y.min() == 0 and y.argmin() == f.argmin()
    # the same for any scale and offset of the objective
    np.testing.assert_allclose(session.relative_excess(1e6 * f - 5e7), y)


def test_the_plot_has_nothing_to_show_for_a_closed_form_or_a_constant():
    assert session.relative_excess([3.0]) is None
    assert session.relative_excess([2.0, 2.0, 2.0]) is None
    assert session.relative_excess([float("nan"), 1.0]) is None
    y = session.relative_excess([4.0, float("nan"), 2.0])
    assert y[0] == 1 and np.isnan(y[1]) and y[2] == 0


def test_the_vn_reports_its_data_term():
    choices = session.load_choices()
    kinds = {m.name: m.objective for m in choices.methods}
    assert kinds["vn"] == "data term"
    assert {kinds[name] for name in ("tv", "vae-structured", "least-squares")} == {"objective"}


def test_a_run_abandoned_after_a_cancel_can_be_closed_in_another_thread():
    """The model override is set around each step of the run, not across its yields: a run
    stopped mid-way (a cancelled worker) and closed later in another thread raises nothing,
    and the override is not left set in either thread."""
    import threading

    from napari_genreg.recon.generative import model_override

    events = session.run_request(_request(model="builtin:structured", methods=("tv",)))
    seen = []
    worker = threading.Thread(target=lambda: seen.extend([next(events), next(events)]))
    worker.start()
    worker.join()
    assert isinstance(seen[0], session.ProblemReady) and isinstance(seen[1], session.IterationEvent)
    assert model_override() is None
    events.close()  # in this thread: no "Token was created in a different Context"
    assert model_override() is None
