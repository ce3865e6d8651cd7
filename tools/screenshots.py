"""Screenshots of the Reconstruct widget for the docs, taken from the real GUI.

Run from the repository root (an X server is needed; Xvfb will do)::

    xvfb-run -a .venv/bin/python tools/screenshots.py

It opens the brain sample, docks the Reconstruct widget, runs zero-filled, TV, the vn and
vae-structured at 4x Poisson-disc undersampling, and writes

- ``docs/images/reconstruct_dock.png``: the whole window (the widget with its metrics table and
  convergence plot, the results side by side in grid mode);
- ``docs/images/comparison_grid.png``: the canvas alone;

then docks the Covariance Inspector, runs vae-structured, clicks the pixel (of a coarse grid
over the head) whose red and blue parts are the most balanced, and writes

- ``docs/images/covariance_view.png``: the whole window, the positive (red) and negative
  (blue) covariance around the clicked pixel over the reconstruction, the marker and the
  inspector's dock (the Reconstruct dock hidden, so that the inspector's has the height).

``--only reconstruct`` or ``--only covariance`` writes one part.

``xvfb-run``'s default screen is small (640x480, 8-bit); when the screen is smaller than the
window, the script runs itself again under its own ``Xvfb`` of 1920x1200x24 (if ``Xvfb`` is
installed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
WINDOW = (1600, 1200)
METHODS = ("zero-filled", "tv", "vn", "vae-structured")
#: Candidate pixels of the covariance screenshot: every STRIDE-th pixel inside the head; the
#: one whose positive (red, away from the pixel) and negative (blue) parts are the most
#: balanced is shown, so that both colours read.
STRIDE = 8
#: The pixel shown when no candidate has a negative part.
FALLBACK_PIXEL = (58, 44)
#: Zoom of the covariance screenshot relative to the whole image (the covariance is local).
ZOOM = 1.8
OWN_DISPLAY_FLAG = "NAPARI_GENREG_SCREENSHOT_OWN_DISPLAY"


def _rerun_under_own_xvfb() -> int:
    """Run this script again under a private Xvfb with a large 24-bit screen."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        print("screenshots: the screen is small and Xvfb is not installed", file=sys.stderr)
        return 1
    for number in range(99, 140):
        if not Path(f"/tmp/.X{number}-lock").exists():
            break
    display = f":{number}"
    server = subprocess.Popen(
        [xvfb, display, "-screen", "0", "1920x1200x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        env = {**os.environ, "DISPLAY": display, OWN_DISPLAY_FLAG: "1"}
        return subprocess.call([sys.executable, __file__, *sys.argv[1:]], env=env)
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait(app, condition, timeout: float) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the GUI did not get there in time")
        app.processEvents()
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the PNGs")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the run")
    parser.add_argument(
        "--only", choices=("reconstruct", "covariance"), default=None, help="write one part"
    )
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or napari.qt.get_qapp()
    screen = app.primaryScreen().size()
    too_small = screen.width() < WINDOW[0] or screen.height() < WINDOW[1]
    if too_small and not os.environ.get(OWN_DISPLAY_FLAG):
        print(
            f"screenshots: the screen is {screen.width()}x{screen.height()}; "
            "running again under a 1920x1200 Xvfb",
            file=sys.stderr,
        )
        return _rerun_under_own_xvfb()

    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "reconstruct") and _reconstruct(app, args) != 0:
        return 1
    if args.only in (None, "covariance"):
        return _covariance(app, args)
    return 0


def _reconstruct(app, args) -> int:
    import napari

    viewer = napari.Viewer(title="napari-genreg")
    viewer.window.resize(*WINDOW)
    viewer.open_sample("napari-genreg", "brain")
    _, widget = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    _wait(app, widget.is_ready, 60)
    widget.set_mask_choice("poisson")
    widget.acceleration_spin.setValue(4.0)
    widget.refresh_mask()
    widget.set_methods(METHODS)
    widget.grid_check.setChecked(True)
    widget.run()
    _wait(app, lambda: widget.worker is None, args.timeout)
    if len(widget.results) != len(METHODS):
        print(f"screenshots: the run did not finish: {widget.status.text()}", file=sys.stderr)
        return 1
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)

    dock = args.out / "reconstruct_dock.png"
    grid = args.out / "comparison_grid.png"
    viewer.screenshot(str(dock), canvas_only=False)
    viewer.screenshot(str(grid), canvas_only=True)
    for result in widget.results:
        m = result.recon.metrics
        print(f"{result.name}: PSNR {m.psnr:.2f} dB, SSIM {m.ssim:.4f}", file=sys.stderr)
    print(f"screenshots: wrote {dock} and {grid}", file=sys.stderr)
    viewer.close()
    return 0


def _balanced_pixel(source) -> tuple[int, int]:
    """The candidate pixel whose covariance has the largest ratio of its smaller part (red away
    from the pixel, or blue) to its larger one."""
    import numpy as np

    from napari_genreg._napari import _inspector as inspector

    target = inspector.inspect_target(source)
    image = np.asarray(source.data)
    best, best_score = FALLBACK_PIXEL, 0.0
    for row in range(STRIDE, image.shape[0] - STRIDE, STRIDE):
        for col in range(STRIDE, image.shape[1] - STRIDE, STRIDE):
            if image[row, col] < 0.3 * image.max():
                continue
            view = inspector.compute_view(target, (row, col))
            positive = view.positive.copy()
            positive[view.pixel] = 0.0
            parts = sorted((float(positive.max()), float(view.negative.max())))
            score = parts[0] / parts[1] if parts[1] > 0 else 0.0
            if score > best_score:
                best, best_score = (row, col), score
    print(f"screenshots: pixel {best}, smaller/larger part {best_score:.2f}", file=sys.stderr)
    return best


def _covariance(app, args) -> int:
    import napari

    viewer = napari.Viewer(title="napari-genreg")
    viewer.window.resize(*WINDOW)
    viewer.open_sample("napari-genreg", "brain")
    recon_dock, recon = viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    _, inspector = viewer.window.add_plugin_dock_widget("napari-genreg", "Covariance Inspector")
    _wait(app, recon.is_ready, 60)
    recon.set_mask_choice("poisson")
    recon.acceleration_spin.setValue(4.0)
    recon.refresh_mask()
    recon.set_methods(["vae-structured"])
    recon.grid_check.setChecked(False)
    recon.run()
    _wait(app, lambda: recon.worker is None, args.timeout)
    if len(recon.results) != 1:
        print(f"screenshots: the run did not finish: {recon.status.text()}", file=sys.stderr)
        return 1
    (result,) = recon.results
    recon_dock.hide()  # the picture is about the inspector: its dock gets the whole height
    inspector.set_source(result.name)
    source = viewer.layers[result.name]
    pixel = _balanced_pixel(source)
    inspector.inspect_world(source.data_to_world(pixel))
    _wait(app, lambda: inspector.worker is None, 120)
    if inspector.pixel != pixel:
        print(f"screenshots: the inspection failed: {inspector.status.text()}", file=sys.stderr)
        return 1
    # the latency under Xvfb (software rendering) says nothing about a real display
    inspector.status.setText(re.sub(r" \(\d+ ms from the click\)", "", inspector.status.text()))
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple(source.data_to_world(pixel))
    camera.zoom *= ZOOM
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    path = args.out / "covariance_view.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"screenshots: wrote {path}", file=sys.stderr)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
