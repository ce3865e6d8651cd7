"""Small real brain MRI images shipped with the package, for demos, docs and tests.

``brain``: axial slices of the Colin27 single-subject T1-weighted head MRI (from Debian's
``mricron-data``, BSD-3-clause), anterior up. See ``PROVENANCE.md`` and
``LICENSE-mricron-data.txt`` in this folder; ``tools/make_samples.py`` regenerates the file.

Examples
--------
>>> from napari_genreg.samples import load_image, load_stack
>>> load_image("brain", size=256).shape
(256, 256)
>>> load_stack("brain").shape
(3, 128, 128)
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SAMPLES", "SIZES", "load_image", "load_stack", "sample_path"]

SAMPLES: tuple[str, ...] = ("brain",)
SIZES: tuple[int, ...] = (128, 256)
_UINT16_MAX = 65535.0


def sample_path(name: str = "brain") -> Path:
    """Path of a sample's ``.npz`` file inside the installed package.

    Parameters
    ----------
    name : str
        One of :data:`SAMPLES`.

    Returns
    -------
    pathlib.Path
        The file ``<name>.npz`` in the ``napari_genreg.samples`` package.

    Raises
    ------
    ValueError
        If ``name`` is not a known sample.
    """
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}")
    return Path(str(files(__name__).joinpath(f"{name}.npz")))


def _load(name: str, key: str) -> np.ndarray:
    import numpy as np

    with np.load(sample_path(name)) as data:
        stored = data[key]
    return (stored.astype(np.float32) / np.float32(_UINT16_MAX)).astype(np.float32)


def load_image(name: str = "brain", size: int = 128) -> np.ndarray:
    """Load one sample image: a real-valued magnitude image in [0, 1].

    Parameters
    ----------
    name : str
        One of :data:`SAMPLES`.
    size : int
        Side of the square image, one of :data:`SIZES` (128 or 256). The 128 x 128 image
        is the 256 x 256 one resized with anti-aliasing.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(size, size)`` with values in [0, 1]; row 0 is anterior.

    Raises
    ------
    ValueError
        If ``name`` is not a known sample or ``size`` is not in :data:`SIZES`.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    return _load(name, f"image_{int(size)}")


def load_stack(name: str = "brain") -> np.ndarray:
    """Load a few neighbouring slices of a sample, for multi-slice input.

    Parameters
    ----------
    name : str
        One of :data:`SAMPLES`.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(N, 128, 128)`` with values in [0, 1], slices ordered from
        inferior to superior; the middle slice equals ``load_image(name, 128)``.

    Raises
    ------
    ValueError
        If ``name`` is not a known sample.
    """
    return _load(name, "stack_128")
