"""``napari-genreg-gui``: napari with the brain sample, the Reconstruct widget and the Covariance
Inspector docked."""

from __future__ import annotations

import sys
from collections.abc import Sequence

#: The window a first launch opens (width, height), at most 90 % of the screen: room for the
#: canvas and the docks (their controls scroll where the screen is shorter).
FIRST_WINDOW = (1600, 1150)


def first_window_size(available: tuple[int, int]) -> tuple[int, int]:
    """The window size of a first launch on a screen whose ``available`` area is
    ``(width, height)``: :data:`FIRST_WINDOW`, shrunk to 90 % of the screen.

    Examples
    --------
    >>> first_window_size((1920, 1200)), first_window_size((1366, 768))
    ((1600, 1080), (1229, 691))
    """
    return (
        min(FIRST_WINDOW[0], int(0.9 * available[0])),
        min(FIRST_WINDOW[1], int(0.9 * available[1])),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Open a napari viewer with the plugin's sample and widgets, and run it."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="napari-genreg-gui",
        description="napari with the brain sample and the widgets of napari-genreg",
    )
    parser.add_argument("files", nargs="*", help="k-space or image files to open instead")
    args = parser.parse_args(argv)

    import napari
    from napari.settings import get_settings

    viewer = napari.Viewer(title="napari-genreg")
    if get_settings().application.window_size is None:  # napari restores a saved size itself
        from qtpy.QtWidgets import QApplication

        screen = QApplication.primaryScreen().availableGeometry()
        viewer.window.resize(*first_window_size((screen.width(), screen.height())))
    if args.files:
        viewer.open(args.files, plugin="napari-genreg")
    else:
        viewer.open_sample("napari-genreg", "brain")
    viewer.window.add_plugin_dock_widget("napari-genreg", "Reconstruct")
    viewer.window.add_plugin_dock_widget("napari-genreg", "Covariance Inspector")
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
