"""Tests of the training data: sources, prepare_dataset, SliceDataset and Augmentation."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_genreg.io.errors import ReadError
from napari_genreg.training import sources as sources_module
from napari_genreg.training.data import (
    MANIFEST_NAME,
    Augmentation,
    Manifest,
    SliceDataset,
    item_seed,
    prepare_dataset,
)
from napari_genreg.training.sources import (
    BUILTIN,
    INDEX_NAME,
    MissingSourceWarning,
    Source,
    default_cache_dir,
    file_sha256,
    find_builtin_sources,
    search_builtin_sources,
    sources_from_path,
    unread_files,
)

SIZE = 32


# --------------------------------------------------------------------------------------------
# Builders


def head(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """A smooth ellipsoidal "head" in RAS order ``(X, Y, Z)``, 0 outside, about 1 inside, with
    a bright block at the anterior end (high y) and one on the subject's left (low x)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = sum((g / 0.8) ** 2 for g in grids)
    data = np.where(radius < 1, 0.8 + 0.2 * rng.random(shape), 0.0)
    x, y, z = (n // 2 for n in shape)
    data[x - 3 : x + 3, int(shape[1] * 0.8) : int(shape[1] * 0.85), z - 3 : z + 3] = 3.0
    data[int(shape[0] * 0.2) : int(shape[0] * 0.25), y - 2 : y + 2, z - 2 : z + 2] = 2.0
    return data.astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def write_fastmri(path: Path, stack: np.ndarray, key: str = "reconstruction_rss") -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=stack)
    return path


def knee_stack(n: int = 5, size: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    disc = (xx**2 / 0.16 + yy**2 / 0.09 < 1).astype(np.float32)
    return np.stack([disc * (1 + 0.1 * k + xx) for k in range(n)]).astype(np.float32)


@pytest.fixture
def volumes(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "data"
    folder.mkdir()
    return {
        "alpha": write_nifti(folder / "alpha.nii.gz", head((40, 48, 36), 0)),
        "beta": write_nifti(folder / "beta.nii", head((44, 40, 38), 1)),
        "knee": write_fastmri(folder / "knee.h5", knee_stack()),
    }


@pytest.fixture
def prepared(tmp_path: Path, volumes: dict[str, Path]) -> Manifest:
    return prepare_dataset(
        [volumes["alpha"], volumes["beta"], volumes["knee"]],
        tmp_path / "out",
        size=SIZE,
        validation=("beta",),
    )


# --------------------------------------------------------------------------------------------
# prepare_dataset


def test_shapes_range_and_files(prepared: Manifest) -> None:
    root = prepared.root
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "train.npy", "val.npy"]
    for split in ("train", "val"):
        array = np.load(root / f"{split}.npy")
        assert array.dtype == np.float16
        assert array.ndim == 3 and array.shape[1:] == (SIZE, SIZE) and array.shape[0] > 0
        assert prepared.arrays[split].shape == array.shape
        assert array.min() >= 0 and array.max() <= 1
        # each slice is scaled by its own 99.5th percentile, so it reaches 1
        np.testing.assert_array_equal(array.reshape(len(array), -1).max(axis=1), 1.0)


def test_split_is_by_volume(prepared: Manifest) -> None:
    by_name = {s.name: s for s in prepared.sources}
    assert [s.name for s in prepared.sources] == ["alpha", "beta", "knee"]
    assert by_name["beta"].split == "val"
    assert by_name["alpha"].split == by_name["knee"].split == "train"
    counts = prepared.counts()
    for split in ("train", "val"):
        records = [s for s in prepared.sources if s.split == split]
        assert sum(s.n_slices for s in records) == counts[split]
        # the ranges tile the split's array, in order, without overlap
        bounds = [r for s in records for r in s.ranges.values()]
        assert bounds[0][0] == 0 and bounds[-1][1] == counts[split]
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        assert all(
            stop - start == n
            for s in records
            for (start, stop), n in zip(s.ranges.values(), s.slices.values(), strict=True)
        )
    # no validation slice is among the training slices
    train = np.load(prepared.root / "train.npy").astype(np.float32)
    val = np.load(prepared.root / "val.npy").astype(np.float32)
    distance = np.abs(val[:, None] - train[None]).max(axis=(2, 3))
    assert distance.min() > 0.01


def test_three_planes_for_volumes_stored_for_stacks(prepared: Manifest) -> None:
    by_name = {s.name: s for s in prepared.sources}
    for name in ("alpha", "beta"):
        assert set(by_name[name].slices) == {"axial", "coronal", "sagittal"}
        assert all(n > 0 for n in by_name[name].slices.values())
    assert by_name["alpha"].candidates == {"axial": 36, "coronal": 48, "sagittal": 40}
    assert by_name["knee"].slices == {"stored": 5}
    assert by_name["knee"].format == "fastmri"


def test_stacks_are_used_whole(tmp_path: Path) -> None:
    # 100 px slices at SIZE 32: a volume would take every 3rd slice, a stack takes all
    big = write_fastmri(tmp_path / "big.h5", knee_stack(6, 100))
    m = prepare_dataset([big], tmp_path / "o", size=SIZE, validation=())
    assert m.sources[0].slices == {"stored": 6} and m.sources[0].step == {"stored": 1}


def test_manifest_fields_and_hashes(prepared: Manifest, volumes: dict[str, Path]) -> None:
    root = prepared.root
    data = json.loads((root / MANIFEST_NAME).read_text())
    assert data["size"] == SIZE and data["parameters"]["validation"] == ["beta"]
    for record in data["sources"]:
        assert record["sha256"] == file_sha256(volumes[record["name"]])
        assert record["file"] == str(volumes[record["name"]])
        assert record["licence"] == "user-supplied"
        for key in ("modality", "subject", "split", "slices", "ranges", "shape", "voxel_mm"):
            assert key in record
    for array in data["arrays"].values():
        assert array["sha256"] == file_sha256(root / array["file"])
        assert array["dtype"] == "float16"
    content = "".join(f"{a['file']} {a['sha256']}\n" for a in data["arrays"].values())
    assert data["content_sha256"] == hashlib.sha256(content.encode()).hexdigest()
    assert Manifest.load(root) == prepared


def test_reorientation_and_display_convention(tmp_path: Path) -> None:
    ras = head((34, 40, 36), 2)
    # the same anatomy stored LPS: x and y reversed, with an affine saying so
    lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps_affine[:2, 3] = [33.0, 39.0]
    a = write_nifti(tmp_path / "ras.nii.gz", ras)
    b = write_nifti(tmp_path / "lps.nii.gz", np.ascontiguousarray(ras[::-1, ::-1]), lps_affine)
    m1 = prepare_dataset([a], tmp_path / "m1", size=SIZE, validation=())
    m2 = prepare_dataset([b], tmp_path / "m2", size=SIZE, validation=())
    train1 = np.load(m1.root / "train.npy")
    np.testing.assert_array_equal(train1, np.load(m2.root / "train.npy"))

    record = m1.sources[0]
    axial = train1[slice(*record.ranges["axial"])]
    middle = axial[len(axial) // 2].astype(np.float32)
    rows, cols = np.nonzero(middle >= 1.0)  # the saturated markers
    assert rows.min() < SIZE // 3  # anterior marker at the top
    assert cols.min() < SIZE // 3  # subject's left on the left
    sagittal = train1[slice(*record.ranges["sagittal"])]
    middle = sagittal[len(sagittal) // 2].astype(np.float32)
    _, cols = np.nonzero(middle >= 1.0)
    assert cols.mean() < SIZE / 2  # anterior on the left


def test_foreground_filter(tmp_path: Path) -> None:
    n = 40
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    big = (xx**2 + yy**2 < 12**2).astype(np.float32)  # 28 % of the slice
    small = (xx**2 + yy**2 < 4**2).astype(np.float32)  # 3 %
    volume = np.zeros((n, n, 40), np.float32)
    volume[:, :, 10:30] = big[:, :, None]
    volume[:, :, 30:35] = small[:, :, None]
    path = write_nifti(tmp_path / "cylinder.nii.gz", volume)
    axial = {}
    for fraction in (0.0, 0.01, 0.15):
        m = prepare_dataset(
            [path], tmp_path / f"f{fraction}", size=SIZE, validation=(), min_foreground=fraction
        )
        axial[fraction] = m.sources[0].slices["axial"]
        assert m.sources[0].candidates["axial"] == 40
    assert axial == {0.0: 25, 0.01: 25, 0.15: 20}  # empty slices are never kept


def test_folder_expansion_and_dicom(tmp_path: Path, volumes: dict[str, Path]) -> None:
    series = volumes["alpha"].parent / "series"
    series.mkdir()
    for k, image in enumerate(knee_stack(3, 36)):
        write_dicom(series / f"im{k}.dcm", (image * 1000).astype(np.uint16), k)
    (volumes["alpha"].parent / "notes.txt").write_text("not a volume")
    found = sources_from_path(volumes["alpha"].parent)
    assert [(s.name, s.format) for s in found] == [
        ("data/series", "dicom"),
        ("data/alpha", "nifti"),
        ("data/beta", "nifti"),
        ("data/knee", "fastmri"),
    ]
    # what is not read is told: the note, not the series' files
    assert unread_files(volumes["alpha"].parent) == [volumes["alpha"].parent / "notes.txt"]
    assert unread_files(series) == [] and unread_files(volumes["alpha"]) == []
    m = prepare_dataset([series], tmp_path / "dicom", size=SIZE, validation=())
    record = m.sources[0]
    assert record.name == "series" and record.slices == {"stored": 3}
    assert record.voxel_mm == (1.0, 0.5, 0.75)  # thickness default, PixelSpacing (row, col)


def write_dicom(path: Path, pixels: np.ndarray, instance: int) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.7"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.InstanceNumber = instance
    ds.PixelSpacing = [0.5, 0.75]
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rewrite_replaces_and_leaves_no_temporary_files(
    tmp_path: Path, volumes: dict[str, Path], prepared: Manifest
) -> None:
    again = prepare_dataset(
        [volumes["alpha"], volumes["knee"]], prepared.root, size=SIZE, validation=("knee",)
    )
    assert [s.name for s in Manifest.load(prepared.root).sources] == ["alpha", "knee"]
    assert again.content_sha256 != prepared.content_sha256
    assert sorted(p.name for p in prepared.root.iterdir()) == [
        "manifest.json",
        "train.npy",
        "val.npy",
    ]
    # a failed run leaves the previous dataset as it was
    with pytest.raises(ValueError, match="no training slices"):
        prepare_dataset([volumes["alpha"]], prepared.root, size=SIZE, validation=("alpha",))
    assert Manifest.load(prepared.root) == again
    assert sorted(p.name for p in prepared.root.iterdir()) == [
        "manifest.json",
        "train.npy",
        "val.npy",
    ]


def test_validation_glob(tmp_path: Path, volumes: dict[str, Path]) -> None:
    m = prepare_dataset(
        [volumes["alpha"].parent], tmp_path / "o", size=SIZE, validation=("data/b*",)
    )
    assert {s.name: s.split for s in m.sources} == {
        "data/alpha": "train",
        "data/beta": "val",
        "data/knee": "train",
    }


def test_builtin_style_source_records_its_licence(tmp_path: Path, volumes: dict[str, Path]):
    source = Source(
        name="demo",
        path=volumes["alpha"],
        licence="MIT",
        modality="T1w",
        subject="template",
        origin="test",
        licence_note="note",
        sha256="abc",
    )
    m = prepare_dataset([source, volumes["knee"]], tmp_path / "o", size=SIZE, validation=("knee",))
    record = m.sources[0]
    assert (record.licence, record.modality, record.subject, record.licence_note) == (
        "MIT",
        "T1w",
        "template",
        "note",
    )
    assert record.sha256 == "abc"


# --------------------------------------------------------------------------------------------
# errors


def test_error_validation_name_matches_nothing(tmp_path: Path, volumes: dict[str, Path]):
    with pytest.raises(ValueError, match="'colin27' matches no source"):
        prepare_dataset([volumes["alpha"], volumes["beta"]], tmp_path / "o", size=SIZE)
    assert not (tmp_path / "o").exists()


def test_error_nan_volume_names_the_source(tmp_path: Path, volumes: dict[str, Path]):
    data = head((32, 32, 32), 3)
    data[5, 5, 5] = np.nan
    bad = write_nifti(tmp_path / "broken.nii.gz", data)
    with pytest.raises(ValueError, match=r"'broken'.*NaN"):
        prepare_dataset([volumes["alpha"], bad], tmp_path / "o", size=SIZE, validation=())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_foreground": 0.99}, "no training slices"),
        ({"validation": ("alpha", "beta")}, "no training slices"),
        ({"size": 8}, "size must be"),
        ({"size": 30}, "size must be a multiple of 8"),
        ({"min_foreground": 1.0}, "min_foreground"),
        ({"validation": "beta"}, "sequence of names"),
    ],
)
def test_error_bad_arguments(tmp_path: Path, volumes: dict[str, Path], kwargs, message):
    options = {"size": SIZE, "validation": ("beta",), **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        prepare_dataset([volumes["alpha"], volumes["beta"]], tmp_path / "o", **options)


def test_error_bad_files(tmp_path: Path, volumes: dict[str, Path]) -> None:
    with pytest.raises(FileNotFoundError):
        prepare_dataset([tmp_path / "missing.nii"], tmp_path / "o", validation=())
    fake = tmp_path / "fake.nii"
    fake.write_bytes(b"not a nifti file at all")
    with pytest.raises(ReadError, match=r"fake\.nii"):
        prepare_dataset([fake], tmp_path / "o", validation=())
    other = write_fastmri(tmp_path / "other.h5", knee_stack(), key="kspace_only")
    with pytest.raises(ReadError, match="reconstruction_rss"):
        prepare_dataset([other], tmp_path / "o", validation=())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no NIfTI"):
        prepare_dataset([tmp_path / "empty"], tmp_path / "o", validation=())
    with pytest.raises(ValueError, match="named"):
        prepare_dataset([volumes["alpha"], volumes["alpha"]], tmp_path / "o", validation=())


# --------------------------------------------------------------------------------------------
# SliceDataset and Augmentation


def test_dataset_without_augmentation_returns_the_stored_slices(prepared: Manifest) -> None:
    dataset = SliceDataset(prepared.root, "val")
    assert dataset.augmentation is None
    stored = np.load(prepared.root / "val.npy")
    assert len(dataset) == len(stored)
    item = dataset[1]
    assert item.shape == (1, SIZE, SIZE) and item.dtype == torch.float32
    np.testing.assert_array_equal(item[0].numpy(), stored[1].astype(np.float32))
    assert torch.equal(dataset[-1], dataset[len(dataset) - 1])
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_augmentation_is_seeded_by_seed_epoch_index(prepared: Manifest) -> None:
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()  # noqa: NPY002
    a = SliceDataset(prepared.root, "train", seed=7)
    b = SliceDataset(prepared.root, "train", seed=7)
    assert a.augmentation is not None
    items = [a[i] for i in range(len(a))]
    for i in reversed(range(len(a))):  # order does not matter
        assert torch.equal(b[i], items[i])
    for item in items:
        assert item.shape == (1, SIZE, SIZE) and item.dtype == torch.float32
        assert torch.isfinite(item).all() and item.min() >= 0 and item.max() <= 1
        assert item.mean() > 0.02
    b.set_epoch(1)
    assert not torch.equal(b[0], items[0])
    assert not torch.equal(SliceDataset(prepared.root, "train", seed=8)[0], items[0])
    clone = pickle.loads(pickle.dumps(a))  # as sent to DataLoader workers
    assert torch.equal(clone[3], items[3])
    # the global generators are untouched
    assert torch.equal(torch.get_rng_state(), torch_state)
    numpy_after = np.random.get_state()  # noqa: NPY002
    assert all(
        np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        for x, y in zip(numpy_after, numpy_state, strict=True)
    )


def test_augmentation_stays_close_to_the_image(prepared: Manifest) -> None:
    plain = SliceDataset(prepared.root, "train", augment=False)
    augmented = SliceDataset(prepared.root, "train", augment=True)
    for i in range(len(plain)):
        x, y = plain[i], augmented[i]
        assert abs(float(y.mean()) - float(x.mean())) < 0.25


NEUTRAL = Augmentation(
    flip_lr=0.0,
    flip_ud=0.0,
    rotation_deg=0.0,
    scale=(1.0, 1.0),
    translation=0.0,
    elastic=0.0,
    bias=0.0,
    gamma=(1.0, 1.0),
    intensity=(1.0, 1.0),
    noise=0.0,
)


def test_neutral_augmentation_is_the_identity_and_flips_are_exact() -> None:
    images = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(NEUTRAL(images, g), images, atol=1e-5, rtol=0)
    flip_lr = dataclasses.replace(NEUTRAL, flip_lr=1.0)
    torch.testing.assert_close(flip_lr(images, g), images.flip(-1), atol=1e-5, rtol=0)
    flip_ud = dataclasses.replace(NEUTRAL, flip_ud=1.0)
    torch.testing.assert_close(flip_ud(images, g), images.flip(-2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="B, 1, H, W"):
        NEUTRAL(images[:, 0], g)


def test_item_seed() -> None:
    seeds = {item_seed(0, e, i) for e in range(3) for i in range(100)}
    assert len(seeds) == 300 and item_seed(1, 2, 3) == item_seed(1, 2, 3)
    with pytest.raises(ValueError, match="epoch"):
        item_seed(0, -1, 0)


def test_dataset_rejects_an_unprepared_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        SliceDataset(tmp_path)


# --------------------------------------------------------------------------------------------
# builtin sources


def test_missing_builtin_sources_warn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_module.BuiltinSpec, "installed_path", property(lambda s: None))
    with pytest.warns(MissingSourceWarning, match="colin27"):
        found = find_builtin_sources(tmp_path, names=["colin27"])
    assert found == []
    search = search_builtin_sources(tmp_path)
    assert search.found == [] and set(search.missing) == {s.name for s in BUILTIN}
    with pytest.raises(ValueError, match="unknown builtin"):
        search_builtin_sources(tmp_path, names=["nope"])


def test_builtin_source_from_the_cache_index(
    tmp_path: Path, volumes: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = dataclasses.replace(BUILTIN[0], sha256=file_sha256(volumes["alpha"]))
    monkeypatch.setattr(sources_module, "BUILTIN", (spec,))
    monkeypatch.setattr(sources_module.BuiltinSpec, "installed_path", property(lambda s: None))
    cache = tmp_path / "cache"
    (cache / spec.name).mkdir(parents=True)
    target = cache / spec.name / "volume.nii.gz"
    target.write_bytes(volumes["alpha"].read_bytes())
    index = {"format": 1, "sources": [{"name": spec.name, "file": f"{spec.name}/volume.nii.gz"}]}
    (cache / INDEX_NAME).write_text(json.dumps(index))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (source,) = find_builtin_sources(cache)
    assert (source.name, source.path, source.licence) == (spec.name, target, spec.licence)
    assert (source.modality, source.subject, source.sha256) == (
        spec.modality,
        spec.subject,
        spec.sha256,
    )
    target.write_bytes(b"changed")
    assert "sha256" in search_builtin_sources(cache).missing[spec.name]


@pytest.mark.slow
def test_find_builtin_sources_on_the_real_cache() -> None:
    candidates = [Path(__file__).resolve().parents[2] / ".cache-builtin", default_cache_dir()]
    cache = next((c for c in candidates if (c / INDEX_NAME).is_file()), None)
    if cache is None:
        pytest.skip("no builtin cache; run tools/fetch_builtin_data.py")
    found, missing = search_builtin_sources(cache)
    assert found, missing
    names = [s.name for s in found]
    assert len(set(names)) == len(names)
    for source in found:
        assert source.path.is_file() and file_sha256(source.path) == source.sha256
        assert (
            source.licence and source.modality and source.subject in ("single-subject", "template")
        )


def test_prepare_data_prints_the_hash_a_model_records(tmp_path, volumes, capsys):
    from napari_genreg.cli import main

    out = tmp_path / "prepared"
    argv = ["prepare-data", "--out", str(out), "--source", str(volumes["alpha"]),
            "--source", str(volumes["beta"]), "--validation", "beta",
            "--size", str(SIZE)]  # fmt: skip
    assert main(argv) == 0
    recorded = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    said = capsys.readouterr().err
    assert f"manifest sha256 {recorded}" in said and "content sha256" in said


def test_prepare_data_says_what_it_did_not_use(tmp_path, volumes, capsys):
    """A thin slab has no coronal or sagittal slices (too few voxels in their plane), a flat
    disc no slice of enough foreground across it: each said, not a bare 0; so are the files of
    a source folder that are not read."""
    from napari_genreg.cli import main

    thin = write_nifti(tmp_path / "thin.nii.gz", head((40, 48, 16), 2))
    flat = np.zeros((40, 40, 40), np.float32)
    flat[:, :, 20] = head((40, 40, 1), 3)[:, :, 0] + 0.5
    disc = write_nifti(tmp_path / "disc.nii.gz", flat)
    (volumes["alpha"].parent / "notes.txt").write_text("not a volume")
    argv = ["prepare-data", "--out", str(tmp_path / "prepared"), "--validation", "data/beta",
            "--size", str(SIZE), "--source", str(volumes["alpha"].parent)]  # fmt: skip
    for source in (thin, disc):
        argv += ["--source", str(source)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"{volumes['alpha'].parent}: 1 file(s) not read (.txt 1)" in err
    lines = {line.split(":")[0]: line for line in err.splitlines()}
    assert "coronal 0 (under 32 voxels in its plane)" in lines["thin"]
    assert "sagittal 0 (under 32 voxels in its plane)" in lines["thin"]
    assert "axial 0" not in lines["thin"]
    assert "coronal 0 of 40 (each under --min-foreground)" in lines["disc"]


def test_a_failed_preparation_leaves_no_empty_folder(tmp_path, capsys):
    from napari_genreg.cli import main

    (tmp_path / "text.nii").write_text("not a volume")
    out = tmp_path / "prepared"
    argv = ["prepare-data", "--source", str(tmp_path / "text.nii"), "--validation", "text"]
    assert main([*argv, "--out", str(out)]) == 2
    assert "text.nii" in capsys.readouterr().err and not out.exists()
