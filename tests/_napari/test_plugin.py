"""The plugin through napari: manifest, reader and sample data (needs Xvfb)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari_genreg._napari._layers import METADATA_KEY  # noqa: E402
from napari_genreg._napari._reader import get_reader  # noqa: E402


def test_manifest_is_valid():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-genreg")
    npe2.PluginManifest.model_validate(manifest.model_dump())
    keys = [s.key for s in manifest.contributions.sample_data]
    assert keys == ["brain"]


def test_sample_opens_as_reference_and_kspace_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-genreg", "brain")
    names = [layer.name for layer in viewer.layers]
    assert names == ["brain", "brain k-space"]
    kspace = viewer.layers["brain k-space"]
    record = kspace.metadata[METADATA_KEY]["record"]
    assert record.kspace.shape == (1, 1, 128, 128) and np.iscomplexobj(record.kspace)
    np.testing.assert_allclose(kspace.data, np.log1p(np.abs(record.kspace[0, 0])), rtol=1e-6)
    assert viewer.layers["brain"].data.shape == (128, 128)


def test_reader_opens_complex_kspace_without_losing_it(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(0)
    kspace = (rng.standard_normal((3, 32, 32)) + 1j * rng.standard_normal((3, 32, 32))).astype(
        np.complex64
    )
    path = tmp_path / "coils.npy"
    np.save(path, kspace)
    assert get_reader(str(path)) is not None
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-genreg")
    layer = viewer.layers["coils k-space"]
    record = layer.metadata[METADATA_KEY]["record"]
    np.testing.assert_array_equal(record.kspace[0], kspace)
    assert layer.data.shape == (3, 32, 32)


def test_reader_opens_images_as_reference_layers(make_napari_viewer, tmp_path):
    import nibabel as nib

    volume = np.random.default_rng(1).random((16, 20, 3)).astype(np.float32)
    path = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-genreg")
    (layer,) = viewer.layers
    assert layer.name == "head"
    assert layer.metadata[METADATA_KEY]["kind"] == "reference"
    assert layer.data.shape[0] == 3


@pytest.mark.parametrize("ext", [".npy", ".h5"])
def test_a_reconstruction_written_by_the_command_line_opens_as_one(
    make_napari_viewer, tmp_path, ext
):
    from napari_genreg.cli import main

    out = tmp_path / f"tv{ext}"
    assert main(["reconstruct", "sample:brain", "--regularizer", "tv", "--iterations", "3",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(out), plugin="napari-genreg")
    entry = layer.metadata[METADATA_KEY]
    assert layer.name == "tv" and entry["kind"] == "reconstruction"
    assert entry["regularizer"] == "tv" and entry["iterations"] == [3]
    assert layer.data.shape == (128, 128)


def test_reader_declines_other_files():
    assert get_reader("picture.png") is None
    assert get_reader(["a.npy", "b.txt"]) is None


def test_a_corrupt_file_raises_a_clear_error_and_leaves_the_viewer_intact(
    make_napari_viewer, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-genreg", "brain")
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"\x93NUMPY garbage that is not an array")
    with pytest.raises(Exception, match=r"broken\.npy"):
        viewer.open(str(bad), plugin="napari-genreg")
    assert [layer.name for layer in viewer.layers] == ["brain", "brain k-space"]


def test_the_gui_launcher_opens_the_sample_with_the_widgets_docked(monkeypatch, qtbot):
    import napari

    from napari_genreg._napari import launch

    seen = {}

    def fake_run():
        viewer = napari.current_viewer()
        seen["layers"] = [layer.name for layer in viewer.layers]
        seen["docks"] = list(viewer.window.dock_widgets)
        size = viewer.window._qt_window.size()  # no public getter
        seen["size"] = (size.width(), size.height())
        viewer.close()

    monkeypatch.setattr(napari, "run", fake_run)
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    monkeypatch.setattr(get_settings().application, "window_size", None)  # a first launch
    assert launch.main([]) == 0
    screen = QApplication.primaryScreen().availableGeometry()
    expected = launch.first_window_size((screen.width(), screen.height()))
    assert seen["size"] == expected
    assert launch.first_window_size((1920, 1200)) == (1600, 1080)
    assert seen["layers"][:2] == ["brain", "brain k-space"]
    assert any("Reconstruct" in name for name in seen["docks"])
    assert any("Covariance Inspector" in name for name in seen["docks"])


def test_both_docks_in_a_short_window_scroll_instead_of_squeezing_their_rows(
    make_napari_viewer, qtbot
):
    from qtpy.QtWidgets import QCheckBox, QPushButton, QScrollArea

    viewer = make_napari_viewer(show=True)
    _, recon = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    _, inspector = viewer.window.add_plugin_dock_widget("napari-genreg", "Covariance Inspector")
    qtbot.waitUntil(lambda: recon.choices is not None, timeout=30_000)  # methods listed
    viewer.window.resize(1200, 700)  # shorter than the two docks' controls together
    qtbot.wait(100)
    for widget in (recon, inspector):
        area = widget.findChild(QScrollArea)
        assert area is not None
        controls = area.widget()
        assert controls.height() >= controls.minimumSizeHint().height()
        for row in controls.findChildren(QCheckBox) + controls.findChildren(QPushButton):
            assert row.height() >= row.minimumSizeHint().height(), row.text()
    # together they do not fit: at least one of them scrolls
    assert any(
        w.findChild(QScrollArea).verticalScrollBar().maximum() > 0 for w in (recon, inspector)
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_an_hdf5_file_that_hangs_its_reader_is_stopped_and_the_viewer_goes_on(
    make_napari_viewer, tmp_path, monkeypatch
):
    """HDF5 files are read in a child process: one that never finishes (a FIFO nobody writes
    to stands in for a corrupt file that sends HDF5 into an endless loop) ends in an error
    after the time limit, with the viewer and its layers as they were."""
    from napari_genreg.io import isolated

    monkeypatch.setattr(isolated, "BASE_SECONDS", 2.0)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-genreg", "brain")
    hangs = tmp_path / "scan.h5"
    os.mkfifo(hangs)
    with pytest.raises(Exception, match=r"scan\.h5: reading did not finish within 2 s"):
        viewer.open(str(hangs), plugin="napari-genreg")
    assert [layer.name for layer in viewer.layers] == ["brain", "brain k-space"]
