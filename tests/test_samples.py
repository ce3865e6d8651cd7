"""The shipped brain MRI sample: shapes, range, content, consistency, provenance."""

import itertools
import subprocess
import sys

import numpy as np
import pytest

from napari_genreg.samples import SAMPLES, SIZES, load_image, load_stack, sample_path


def test_brain_is_listed():
    assert "brain" in SAMPLES
    assert set(SIZES) == {128, 256}


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("size", SIZES)
def test_image_shape_dtype_range(name, size):
    image = load_image(name, size=size)
    assert image.shape == (size, size)
    assert image.dtype == np.float32
    assert image.min() >= 0.0
    assert image.max() <= 1.0


@pytest.mark.parametrize("name", SAMPLES)
def test_stack_shape_dtype_range(name):
    stack = load_stack(name)
    assert stack.ndim == 3
    assert stack.shape[0] >= 2
    assert stack.shape[1:] == (128, 128)
    assert stack.dtype == np.float32
    assert stack.min() >= 0.0
    assert stack.max() <= 1.0


def test_defaults():
    np.testing.assert_array_equal(load_image(), load_image("brain", 128))
    np.testing.assert_array_equal(load_stack(), load_stack("brain"))


@pytest.mark.parametrize("size", SIZES)
def test_brain_has_content(size):
    image = load_image("brain", size)
    assert image.std() > 0.1
    foreground = image > 0.05
    assert 0.3 < foreground.mean() < 0.9  # a head filling most of the field of view
    # the 99.9th percentile (at 256) was scaled to 1: bright, but few pixels saturate
    assert image.max() > 0.95
    assert (image >= 1.0).mean() < 0.01
    # zero background at the corners, tissue at the centre
    assert image[:4, :4].max() < 0.05
    assert image[size // 2 - 4 : size // 2 + 4, size // 2 - 4 : size // 2 + 4].mean() > 0.2


def test_brain_many_grey_levels():
    image = load_image("brain", 256)
    assert np.unique(image).size > 1000  # not a binary or piecewise-constant phantom


def test_128_is_downsampled_256():
    hi = load_image("brain", 256).astype(np.float64)
    lo = load_image("brain", 128).astype(np.float64)
    block_mean = hi.reshape(128, 2, 128, 2).mean(axis=(1, 3))
    assert np.abs(block_mean - lo).mean() < 0.01
    assert np.corrcoef(block_mean.ravel(), lo.ravel())[0, 1] > 0.99


def test_stack_middle_is_image_and_neighbours_differ():
    stack = load_stack("brain")
    np.testing.assert_array_equal(stack[stack.shape[0] // 2], load_image("brain", 128))
    for a, b in itertools.pairwise(stack):
        assert 0.0 < np.abs(a - b).mean() < 0.1  # neighbouring, distinct slices


def test_anterior_is_up():
    # the head is longer front-to-back than side-to-side, and rows run front-to-back
    image = load_image("brain", 256)
    rows = np.flatnonzero((image > 0.05).any(axis=1))
    cols = np.flatnonzero((image > 0.05).any(axis=0))
    assert rows[-1] - rows[0] > cols[-1] - cols[0]


@pytest.mark.parametrize("name", ["", "Brain", "knee", "brain.npz"])
def test_bad_name(name):
    with pytest.raises(ValueError, match="unknown sample"):
        load_image(name)
    with pytest.raises(ValueError, match="unknown sample"):
        load_stack(name)
    with pytest.raises(ValueError, match="unknown sample"):
        sample_path(name)


@pytest.mark.parametrize("size", [0, 64, 127, 512, "128", None])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size must be one of"):
        load_image("brain", size)


def test_files_ship_with_the_package():
    path = sample_path("brain")
    assert path.name == "brain.npz"
    assert path.is_file()
    assert path.stat().st_size < 500_000
    folder = path.parent
    provenance = (folder / "PROVENANCE.md").read_text(encoding="utf-8")
    assert "sha256" in provenance
    assert "ch2.nii.gz" in provenance
    assert "BSD-3-clause" in provenance
    licence = (folder / "LICENSE-mricron-data.txt").read_text(encoding="utf-8")
    assert "Chris Rorden" in licence
    assert "Redistribution and use in source and binary forms" in licence


def test_stored_arrays():
    with np.load(sample_path("brain")) as data:
        assert data["image_256"].dtype == np.uint16
        assert data["image_128"].dtype == np.uint16
        assert data["stack_128"].dtype == np.uint16
        assert data["stack_128"].shape == (3, 128, 128)


def test_import_is_light():
    # napari loads this module at start-up: it must not pull in numpy or anything heavier
    code = (
        "import sys, napari_genreg; before = set(sys.modules); "
        "import napari_genreg.samples; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "heavy = new & {'numpy', 'torch', 'skimage', 'nibabel', 'scipy'}; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
