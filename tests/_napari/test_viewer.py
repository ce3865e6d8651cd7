"""What both dock widgets share: the heap hold and the glyphs rendered ahead (the step queue and
the scroll area are exercised through the widgets' tests)."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_genreg._napari import _viewer
from napari_genreg._napari._viewer import NAME_CHARACTERS, HeapHold, glyph_steps


@pytest.fixture
def thawed():
    """A heap that nobody froze and no hold is in force on, and that is left so."""
    gc.unfreeze()
    assert _viewer._holds["count"] == 0, "a hold leaked from an earlier test"
    yield
    gc.unfreeze()
    _viewer._holds.update(count=0, froze=False)


def test_a_hold_freezes_the_heap_until_the_last_release(thawed):
    first = HeapHold()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    second = HeapHold()  # a second run: the heap is not frozen again
    assert gc.get_freeze_count() == frozen
    first.release()
    first.release()  # a second release of the same hold does nothing
    assert gc.get_freeze_count() == frozen
    second.release()
    assert gc.get_freeze_count() == 0


def test_a_heap_frozen_by_someone_else_stays_frozen(thawed):
    gc.freeze()
    frozen = gc.get_freeze_count()
    hold = HeapHold()
    hold.release()
    assert gc.get_freeze_count() == frozen


def test_what_dies_during_a_hold_is_collected_after_it(thawed):
    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle that exists when the hold is taken
    alive = weakref.ref(a)
    hold = HeapHold()
    del a, b  # garbage now, but frozen: the collector does not look at it
    gc.collect()
    assert alive() is not None
    hold.release()
    gc.collect()
    assert alive() is None


def _canvas_font(viewer):
    info = viewer.window._qt_viewer.canvas._font_info
    return info.font_manager.get_font(info.face)


def test_a_layer_name_is_drawn_from_the_font_the_glyph_steps_fill(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    font = _canvas_font(viewer)
    assert "Q" not in font._glyphs
    layer = viewer.add_image(np.zeros((4, 4)), name="Qz")
    layer.name_overlay.visible = True
    viewer.screenshot(canvas_only=True)  # draws the name
    assert {"Q", "z"} <= set(font._glyphs)


def test_glyph_steps_render_the_names_characters_into_the_canvas_font(make_napari_viewer):
    viewer = make_napari_viewer()
    steps = glyph_steps(viewer, per_step=5)
    assert len(steps) == -(-len(NAME_CHARACTERS) // 5)
    font = _canvas_font(viewer)
    assert not set(NAME_CHARACTERS) <= set(font._glyphs)
    for step in steps:
        step()
    assert set(NAME_CHARACTERS) <= set(font._glyphs)


def test_without_napari_s_font_cache_there_are_no_glyph_steps():
    class Viewer:  # neither a window nor a canvas
        pass

    assert glyph_steps(Viewer()) == []
