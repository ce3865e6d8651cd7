"""``napari-genreg-gui``: napari with the brain sample, the Reconstruct widget and the Covariance
Inspector docked."""

from __future__ import annotations

import sys
from collections.abc import Sequence


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

    viewer = napari.Viewer(title="napari-genreg")
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
