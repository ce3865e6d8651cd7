"""Image readers: NIfTI (orientation), DICOM (rescale, series), PNG and TIFF."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from napari_genreg.io import ReadError, read, read_dicom, read_nifti, read_png, read_tiff

# ------------------------------------------------------------------------------------ NIfTI


def _ras_volume() -> np.ndarray:
    """An asymmetric RAS volume (X=4, Y=5, Z=3) with two markers.

    10 at the subject's far left, most anterior, most inferior voxel (x=0, y=4, z=0);
    20 at the far right, most posterior, most superior voxel (x=3, y=0, z=2).
    """
    ras = np.ones((4, 5, 3), dtype=np.float32)
    ras[0, 4, 0] = 10.0
    ras[3, 0, 2] = 20.0
    return ras


def test_nifti_axial_slices_anterior_up_left_on_left(tmp_path: Path, build: SimpleNamespace):
    path = build.nifti(tmp_path / "v.nii.gz", _ras_volume())
    data = read(path)
    slices = data.reference
    assert slices.shape == (3, 5, 4)  # (Z, Y, X): axial slices, rows along Y, columns along X
    assert slices[0, 0, 0] == 10.0  # inferior slice 0; top row anterior; left column left
    assert slices[2, 4, 3] == 20.0  # superior slice; bottom row posterior; right column right
    assert data.meta.extra["plane"] == "axial"
    assert data.meta.extra["original_orientation"] == "RAS"
    assert data.meta.extra["format"] == "nifti"


@pytest.mark.parametrize("storage", ["LPS", "ASR"])
def test_nifti_other_storage_orders_give_the_same_slices(
    tmp_path: Path, build: SimpleNamespace, storage: str
) -> None:
    ras = _ras_volume()
    nx, ny, _ = ras.shape
    if storage == "LPS":
        data = ras[::-1, ::-1, :].copy()
        affine = np.array(
            [[-1.0, 0, 0, nx - 1], [0, -1.0, 0, ny - 1], [0, 0, 1.0, 0], [0, 0, 0, 1]]
        )
    else:  # voxel axes (j, k, i) -> world (A, S, R)
        data = ras.transpose(1, 2, 0).copy()
        affine = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    reference = read(build.nifti(tmp_path / "ras.nii", ras)).reference
    other = read(build.nifti(tmp_path / "other.nii", data, affine))
    assert other.meta.extra["original_orientation"] == storage
    np.testing.assert_array_equal(other.reference, reference)


def test_nifti_pixel_spacing_follows_the_display_axes(tmp_path: Path, build: SimpleNamespace):
    affine = np.diag([0.5, 0.8, 3.0, 1.0])
    data = read(build.nifti(tmp_path / "v.nii", _ras_volume(), affine))
    assert data.meta.extra["pixel_spacing"] == pytest.approx([0.8, 0.5])  # [row=y, column=x]
    assert data.meta.extra["voxel_size_ras"] == pytest.approx([0.5, 0.8, 3.0])


def test_nifti_single_sagittal_slice(tmp_path: Path, build: SimpleNamespace) -> None:
    ras = np.ones((1, 5, 3), dtype=np.float32)
    ras[0, 4, 2] = 7.0  # most anterior, most superior
    data = read(build.nifti(tmp_path / "sag.nii", ras))
    assert data.meta.extra["plane"] == "sagittal"
    assert data.reference.shape == (1, 3, 5)  # rows along S, columns along Y
    assert data.reference[0, 0, 0] == 7.0  # superior up, anterior on the left


def test_nifti_two_dimensional(tmp_path: Path, build: SimpleNamespace) -> None:
    image = np.arange(1, 21, dtype=np.float32).reshape(4, 5)  # (X, Y)
    data = read(build.nifti(tmp_path / "flat.nii", image))
    assert data.reference.shape == (1, 5, 4)
    np.testing.assert_array_equal(data.reference[0], image.T[::-1])


def test_nifti_four_dimensional_reads_the_first_volume(tmp_path: Path, build: SimpleNamespace):
    vol = np.stack([_ras_volume(), 2 * _ras_volume()], axis=-1)
    data = read(build.nifti(tmp_path / "t.nii.gz", vol))
    first = read(build.nifti(tmp_path / "f.nii.gz", _ras_volume())).reference
    np.testing.assert_array_equal(data.reference, first)
    assert data.meta.extra["volume_index"] == [0]
    assert data.meta.extra["original_shape"] == [4, 5, 3, 2]


def test_nifti_scaling_is_applied(tmp_path: Path, build: SimpleNamespace) -> None:
    stored = (np.arange(4 * 5 * 2).reshape(4, 5, 2) + 1).astype(np.int16)
    data = read_nifti(build.nifti(tmp_path / "s.nii", stored, slope=2.5))
    np.testing.assert_allclose(data.reference, 2.5 * stored.transpose(2, 1, 0)[:, ::-1, :])


def test_nifti_noise_argument(tmp_path: Path, build: SimpleNamespace) -> None:
    path = build.nifti(tmp_path / "v.nii", _ras_volume())
    data = read(path, noise_sigma=0.1, seed=4)
    assert data.meta.noise_sigma == pytest.approx(0.1 * 20.0)
    assert data.meta.simulated


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (np.full((3, 3, 2), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((3, 3, 2), dtype=np.float32), "all zero"),
    ],
)
def test_nifti_bad_content(tmp_path: Path, build: SimpleNamespace, data: np.ndarray, problem: str):
    with pytest.raises(ReadError, match=problem):
        read(build.nifti(tmp_path / "bad.nii", data))


def test_nifti_rgb_is_rejected(tmp_path: Path) -> None:
    import nibabel as nib

    rgb = np.zeros((3, 3, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii")
    with pytest.raises(ReadError, match="dtype"):
        read(tmp_path / "rgb.nii")


def test_nifti_gzip_without_gz_extension(tmp_path: Path, build: SimpleNamespace) -> None:
    gz = build.nifti(tmp_path / "v.nii.gz", _ras_volume())
    plain = tmp_path / "v.nii"
    plain.write_bytes(gz.read_bytes())
    np.testing.assert_array_equal(read(plain).reference, read(gz).reference)


# ------------------------------------------------------------------------------------ DICOM


def test_dicom_file_with_rescale(tmp_path: Path, build: SimpleNamespace) -> None:
    pixels = (np.arange(12).reshape(3, 4) * 100 + 7).astype(np.uint16)
    data = read(build.dicom(tmp_path / "a.dcm", pixels, slope=2.0, intercept=-10.0))
    np.testing.assert_array_equal(data.reference[0], pixels * 2.0 - 10.0)
    extra = data.meta.extra
    assert extra["format"] == "dicom" and extra["files"] == 1
    assert extra["rescale"] == {"slope": 2.0, "intercept": -10.0}
    assert extra["pixel_spacing"] == [0.5, 0.75]
    assert data.meta.simulated


def test_dicom_signed_pixels_without_rescale(tmp_path: Path, build: SimpleNamespace) -> None:
    pixels = np.array([[-5, 3], [100, -200]], dtype=np.int16)
    path = build.dicom(tmp_path / "s.dcm", pixels, slope=None, intercept=None, signed=True)
    np.testing.assert_array_equal(read_dicom(path).reference[0], np.abs(pixels))


def _series(folder: Path, build: SimpleNamespace, **kwargs) -> list[np.ndarray]:
    """Three slices at z = 0, 1, 2 written as files c, a, b (name order != slice order)."""
    folder.mkdir()
    slices = [np.full((3, 4), 10 * (z + 1), dtype=np.uint16) for z in range(3)]
    for name, z in (("c.dcm", 0), ("a.dcm", 1), ("b.dcm", 2)):
        options = {"position": (0.0, 0.0, float(z)), "instance": 3 - z, **kwargs}
        build.dicom(folder / name, slices[z], slope=1.0, intercept=0.0, **options)
    return slices


def test_dicom_folder_sorted_by_position(tmp_path: Path, build: SimpleNamespace) -> None:
    slices = _series(tmp_path / "series", build)
    (tmp_path / "series" / "README.txt").write_text("not dicom")
    (tmp_path / "series" / ".hidden").write_bytes(b"\0" * 200)
    data = read(tmp_path / "series")
    np.testing.assert_array_equal(data.reference, np.stack(slices))
    assert data.meta.extra["sorted_by"] == "ImagePositionPatient"
    assert data.meta.extra["skipped_files"] == ["README.txt"]
    assert data.meta.extra["files"] == 3


def test_dicom_folder_sorted_by_instance_number(tmp_path: Path, build: SimpleNamespace) -> None:
    slices = _series(tmp_path / "series", build, position=None)
    data = read_dicom(tmp_path / "series")
    np.testing.assert_array_equal(data.reference, np.stack(slices[::-1]))  # instance = 3 - z
    assert data.meta.extra["sorted_by"] == "InstanceNumber"


def test_dicom_folder_problems(tmp_path: Path, build: SimpleNamespace) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(ReadError, match="no DICOM images"):
        read(empty)

    two = tmp_path / "two"
    two.mkdir()
    build.dicom(two / "a.dcm", np.ones((3, 3), np.uint16), series="1.2.3")
    build.dicom(two / "b.dcm", np.ones((3, 3), np.uint16), series="1.2.4")
    with pytest.raises(ReadError, match="2 DICOM series"):
        read(two)

    sizes = tmp_path / "sizes"
    sizes.mkdir()
    build.dicom(sizes / "a.dcm", np.ones((3, 3), np.uint16), position=(0, 0, 0))
    build.dicom(sizes / "b.dcm", np.ones((3, 4), np.uint16), position=(0, 0, 1))
    with pytest.raises(ReadError, match="differs"):
        read(sizes)


def test_dicom_corrupt_member_of_a_folder_names_that_file(
    tmp_path: Path, build: SimpleNamespace
) -> None:
    _series(tmp_path / "series", build)
    bad = tmp_path / "series" / "a.dcm"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(ReadError) as info:
        read(tmp_path / "series")
    assert str(info.value).startswith(f"{bad}: ")


def test_dicom_without_pixel_data(tmp_path: Path, build: SimpleNamespace) -> None:
    import pydicom

    path = build.dicom(tmp_path / "a.dcm", np.ones((3, 3), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ReadError, match="no pixel data"):
        read(path)


# ------------------------------------------------------------------------------ PNG, TIFF


def test_png_8_bit(tmp_path: Path, build: SimpleNamespace) -> None:
    image = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
    data = read(build.png(tmp_path / "a.png", image))
    np.testing.assert_array_equal(data.reference[0], image)
    assert data.meta.extra["mode"] == "L"


def test_png_16_bit_keeps_its_range(tmp_path: Path, build: SimpleNamespace) -> None:
    image = (np.arange(48).reshape(6, 8) * 1000 + 1).astype(np.uint16)
    data = read_png(build.png(tmp_path / "a.PNG", image))
    np.testing.assert_array_equal(data.reference[0], image.astype(np.float32))
    assert data.meta.extra["image_scale"] == float(image.max())


def test_png_rgb_becomes_luminance(tmp_path: Path, build: SimpleNamespace) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 100
    rgb[..., 1] = 50
    rgb[..., 2] = 200
    data = read(build.png(tmp_path / "c.png", rgb))
    np.testing.assert_allclose(data.reference[0], 0.299 * 100 + 0.587 * 50 + 0.114 * 200, rtol=1e-6)
    assert "luminance" in data.meta.extra["color_conversion"]


def test_png_rgba_notes_the_ignored_alpha(tmp_path: Path, build: SimpleNamespace) -> None:
    rgba = np.full((4, 5, 4), 80, dtype=np.uint8)
    data = read(build.png(tmp_path / "c.png", rgba))
    assert data.meta.extra["alpha_ignored"] is True
    np.testing.assert_allclose(data.reference[0], 80.0, rtol=1e-6)


def test_jpeg_named_png_is_rejected(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(tmp_path / "x.png", format="JPEG")
    with pytest.raises(ReadError, match="not a PNG"):
        read(tmp_path / "x.png")


def test_tiff_2d_and_stack(tmp_path: Path, build: SimpleNamespace) -> None:
    image = (np.arange(30).reshape(5, 6) * 300 + 1).astype(np.uint16)
    data = read(build.tiff(tmp_path / "a.tif", image))
    np.testing.assert_array_equal(data.reference[0], image)
    stack = np.stack([image, 2 * image, 3 * image]).astype(np.float32)
    data = read_tiff(build.tiff(tmp_path / "s.tiff", stack, photometric="minisblack"))
    np.testing.assert_array_equal(data.reference, stack)
    assert data.kspace.shape == (3, 1, 5, 6)


def test_tiff_rgb_becomes_luminance(tmp_path: Path, build: SimpleNamespace) -> None:
    rgb = np.zeros((4, 5, 3), dtype=np.uint16)
    rgb[..., 1] = 1000
    data = read(build.tiff(tmp_path / "c.tif", rgb, photometric="rgb"))
    np.testing.assert_allclose(data.reference[0], 587.0, rtol=1e-6)
    assert "luminance" in data.meta.extra["color_conversion"]


def test_tiff_nan_is_rejected(tmp_path: Path, build: SimpleNamespace) -> None:
    image = np.ones((4, 4), np.float32)
    image[1, 1] = np.nan
    with pytest.raises(ReadError, match="NaN"):
        read(build.tiff(tmp_path / "n.tif", image))


def test_tiff_header_lying_about_its_size_is_refused_before_allocation(
    tmp_path: Path, build: SimpleNamespace
) -> None:
    import struct

    import tifffile

    path = build.tiff(tmp_path / "a.tif", np.ones((6, 5), np.uint16))
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = {tag.code: tag for tag in tif.pages[0].tags}
    for code in (256, 257):  # ImageWidth, ImageLength -> 40000 x 40000 (3 GB of uint16)
        tag = tags[code]
        fmt = "<H" if tag.dtype == 3 else "<I"
        raw[tag.valueoffset : tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, 40000)
    path.write_bytes(bytes(raw))
    with pytest.raises(ReadError, match="declares"):
        read(path)
