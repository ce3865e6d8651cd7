"""``python -m napari_genreg``: the command line of :mod:`napari_genreg.cli` (``napari-genreg``)."""

import sys

from napari_genreg.cli import main

sys.exit(main())
