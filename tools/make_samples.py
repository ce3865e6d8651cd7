"""Regenerate the brain MRI sample shipped in ``src/napari_genreg/samples/``.

The sample is a few axial slices of the Colin27 single-subject T1-weighted head image
(``ch2.nii.gz``) as distributed by Debian's ``mricron-data`` package. Fetch it without
installing it::

    mkdir -p /tmp/y && cd /tmp/y && apt-get download mricron-data && dpkg -x mricron-data_*.deb root

then, from the repository root::

    .venv/bin/python tools/make_samples.py /tmp/y/root/usr/share/mricron/templates/ch2.nii.gz \\
        --copyright /tmp/y/root/usr/share/doc/mricron-data/copyright \\
        --deb /tmp/y/mricron-data_1.2.20211006+dfsg-4_all.deb

This writes ``brain.npz``, ``PROVENANCE.md`` and ``LICENSE-mricron-data.txt``. Processing:

1. load with nibabel and reorient to canonical RAS (``nib.as_closest_canonical``);
2. take the axial slices ``k - STEP, k, k + STEP`` with ``k`` the slice at world
   ``z = Z_MM`` (just above the anterior commissure: lateral ventricles, thalami and cortex);
3. rotate each (x, y) slice by 90 degrees (``np.rot90``) so that anterior is up and the
   subject's right is on the image's right (neurological convention);
4. crop/pad (with zeros) to one square field of view around the head, shared by all slices,
   with a margin of ``MARGIN`` of the head's larger extent on each side;
5. resize to 256 x 256 (``skimage.transform.resize``, cubic spline, anti-aliasing);
6. divide by the 99.9th percentile of the central 256 x 256 slice and clip to [0, 1];
7. quantise to uint16 (``round(65535 x)``): ``image_256``;
8. resize the dequantised 256 images to 128 x 128 (bilinear, anti-aliasing), clip, quantise:
   ``image_128`` (central slice) and ``stack_128`` (all slices).
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import skimage
from skimage.transform import resize

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "src" / "napari_genreg" / "samples"
Z_MM = 15.0  # world z of the central slice (mm above the AC-PC plane in MNI space)
STEP = 2  # voxel step between the slices of the stack
MARGIN = 0.04  # margin around the head, as a fraction of its larger extent
PERCENTILE = 99.9
SIZE_HI, SIZE_LO = 256, 128
UINT16_MAX = 65535


def sha256(path: Path) -> str:
    """Hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def square_box(mask: np.ndarray, margin: float) -> tuple[int, int, int]:
    """Square box ``(row0, col0, side)`` around the ``True`` pixels of a 2-D mask.

    The box is centred on the mask's bounding box, its side is the larger extent plus
    ``margin`` of it on each side; it may extend outside the array (pad with zeros).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    h = rows[-1] - rows[0] + 1
    w = cols[-1] - cols[0] + 1
    side = int(np.ceil(max(h, w) * (1 + 2 * margin)))
    row0 = round((rows[0] + rows[-1] + 1) / 2 - side / 2)
    col0 = round((cols[0] + cols[-1] + 1) / 2 - side / 2)
    return row0, col0, side


def crop_pad(image: np.ndarray, row0: int, col0: int, side: int) -> np.ndarray:
    """The ``side x side`` window of ``image`` at ``(row0, col0)``, zero outside the image."""
    out = np.zeros((side, side), dtype=image.dtype)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + side, image.shape[0]), min(col0 + side, image.shape[1])
    out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = image[r0:r1, c0:c1]
    return out


def to_uint16(x: np.ndarray) -> np.ndarray:
    """Quantise an image in [0, 1] to uint16."""
    return np.round(np.clip(x, 0.0, 1.0) * UINT16_MAX).astype(np.uint16)


def make_sample(nifti: Path) -> dict:
    """Slices, crop and scaling of the sample; returns the arrays and the numbers used."""
    img = nib.as_closest_canonical(nib.load(nifti))
    if nib.aff2axcodes(img.affine) != ("R", "A", "S"):
        raise RuntimeError(f"not RAS after reorientation: {nib.aff2axcodes(img.affine)}")
    data = np.asarray(img.dataobj, dtype=np.float64)
    k = round((np.linalg.inv(img.affine) @ [0.0, 0.0, Z_MM, 1.0])[2])
    ks = [k - STEP, k, k + STEP]
    # (x, y) with x = right, y = anterior; rot90 puts anterior at the top, right on the right.
    slices = np.stack([np.rot90(data[:, :, kk]) for kk in ks])

    head = slices.max(axis=0) > 0.05 * np.percentile(slices[1], PERCENTILE)
    row0, col0, side = square_box(head, MARGIN)
    crops = np.stack([crop_pad(s, row0, col0, side) for s in slices])

    hi = np.stack([resize(c, (SIZE_HI, SIZE_HI), order=3, anti_aliasing=True) for c in crops])
    scale = float(np.percentile(hi[1], PERCENTILE))
    hi_q = to_uint16(hi / scale)
    hi_f = hi_q.astype(np.float64) / UINT16_MAX
    lo = np.stack([resize(h, (SIZE_LO, SIZE_LO), order=1, anti_aliasing=True) for h in hi_f])
    lo_q = to_uint16(lo)

    voxel_mm = float(img.header.get_zooms()[0])
    return {
        "image_256": hi_q[1],
        "image_128": lo_q[1],
        "stack_128": lo_q,
        "slice_index": np.array(ks, dtype=np.int16),
        "slice_z_mm": np.array([(img.affine @ [0, 0, kk, 1])[2] for kk in ks]),
        "pixel_mm_256": np.float64(side * voxel_mm / SIZE_HI),
        "pixel_mm_128": np.float64(side * voxel_mm / SIZE_LO),
        "_shape": img.shape,
        "_voxel_mm": voxel_mm,
        "_box": (row0, col0, side),
        "_scale": scale,
    }


PROVENANCE = """\
# Provenance of the shipped sample data

## `brain.npz` — Colin27 single-subject T1-weighted MRI, axial slices

Generated by `tools/make_samples.py`; do not edit by hand, rerun the script.

| | |
|---|---|
| Subject | "Colin27": one healthy adult male, T1-weighted, average of 27 registered scans (MNI) |
| Source package | Debian `mricron-data` {deb_version} (bookworm, section *main*), `{deb_name}` |
| Source package sha256 | `{deb_sha}` |
| Original file | `{nifti_rel}` ({shape}, {voxel_mm:g} mm isotropic, uint8) |
| Original file sha256 | `{nifti_sha}` |
| Axial slice indices (after RAS reorientation) | {ks} (central: {k}) |
| World z of the slices (mm, MNI space) | {zs} |
| Field of view (rotated slice, zero-padded) | rows {r0}..{r1}, cols {c0}..{c1}: {fov_mm:g} mm |
| Pixel size | {px256:.4f} mm at 256, {px128:.4f} mm at 128 |
| Intensity scale | 99.9th percentile of the central 256 x 256 slice: {scale:.3f} |
| Software | Python {python}, numpy {numpy}, nibabel {nibabel}, scikit-image {skimage} |
| Output sha256 | `{out_sha}` |

### Arrays

- `image_256`: uint16 (256, 256), the central slice; value / 65535 is the intensity in [0, 1].
- `image_128`: uint16 (128, 128), `image_256` resized to 128 x 128.
- `stack_128`: uint16 (3, 128, 128), slices {ks} (inferior to superior), 128 x 128;
  `stack_128[1] == image_128`.
- `slice_index`, `slice_z_mm`, `pixel_mm_256`, `pixel_mm_128`: the numbers above.

Display convention: anterior at the top (row 0), the subject's right on the image's right
(neurological convention; flip the columns for the radiological one).

### Processing steps

1. Load `{nifti_name}` with nibabel; reorient to canonical RAS (`nib.as_closest_canonical`).
2. Take axial slices {ks}: the central one is the voxel plane nearest world z = {z_mm:g} mm
   (above the anterior commissure: frontal and occipital horns of the lateral ventricles,
   third ventricle, basal ganglia, thalami, cortex), its neighbours {step} voxels
   ({step_mm:g} mm) below and above.
3. Rotate each (x, y) slice with `np.rot90` (anterior up, subject's right on the right).
4. Crop/zero-pad all slices to one square field of view: the bounding box of the pixels above
   5 % of the central slice's 99.9th percentile (union over the slices), centred, side = larger
   extent x (1 + 2 x {margin:g}).
5. Resize to 256 x 256 with `skimage.transform.resize(order=3, anti_aliasing=True)`.
6. Divide by the 99.9th percentile of the central 256 x 256 slice; clip to [0, 1].
7. Quantise: `round(65535 x)` as uint16 -> `image_256`.
8. Dequantise the 256 x 256 slices, resize to 128 x 128 with
   `skimage.transform.resize(order=1, anti_aliasing=True)`, clip, quantise -> `image_128`,
   `stack_128`.
9. Write with `np.savez_compressed`.

### Command

```
{command}
```

(`{deb_name}` was fetched with `apt-get download mricron-data` and unpacked with `dpkg -x`.)

## Licence

The Debian copyright file of `mricron-data` (`/usr/share/doc/mricron-data/copyright`, copied
verbatim into `LICENSE-mricron-data.txt`) declares, for all files of the package not listed
otherwise (`Files: *`, which includes `templates/ch2.nii.gz`):

    Files: *
    Copyright: Copyright 2006-2010, Chris Rorden
    License: BSD-3-clause

The BSD-3-clause terms require that redistributions retain the copyright notice, the list of
conditions and the disclaimer: they are in `LICENSE-mricron-data.txt`, which ships next to
`brain.npz`.

The image itself originates from the Montreal Neurological Institute (MNI); please cite:
Holmes CJ, Hoge R, Collins L, Woods R, Toga AW, Evans AC. "Enhancement of MR images using
registration for signal averaging." J Comput Assist Tomogr 22(2):324-333, 1998.
doi:10.1097/00004728-199803000-00032.

## Not shipped

- The MNI ICBM152 2009a T1 template in nilearn's wheel
  (`nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz`): nilearn's own
  dataset description (`nilearn/datasets/description/icbm152_2009.rst`) states
  "License: unknown", and nilearn's BSD-3-Clause licence covers nilearn's code, not this
  third-party image. Not shipped until its licence is confirmed.
- `ch2better.nii.gz` (same package): skull-stripped and denoised/segmented-looking, it lacks the
  single-subject texture that `ch2.nii.gz` has.
"""

LICENSE_HEADER = """\
Licence of the image data in brain.npz
======================================

brain.npz (napari_genreg/samples) is derived from templates/ch2.nii.gz of the Debian package
mricron-data {deb_version}. Below, verbatim, is that package's copyright file
(/usr/share/doc/mricron-data/copyright). The stanza that applies to the image is
"Files: *" (Copyright 2006-2010, Chris Rorden; License: BSD-3-clause); the full BSD-3-clause
text is the last stanza. The other stanzas concern MRIcron's program sources, none of which
is used here.

The image originates from the Montreal Neurological Institute: Holmes CJ et al., J Comput
Assist Tomogr 22(2):324-333, 1998.

------------------------------------------------------------------------------------------

"""


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nifti", type=Path, help="path to ch2.nii.gz from mricron-data")
    parser.add_argument("--copyright", type=Path, help="mricron-data's Debian copyright file")
    parser.add_argument("--deb", type=Path, help="the mricron-data .deb (for its sha256)")
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="output folder")
    args = parser.parse_args(argv)

    s = make_sample(args.nifti)
    out_npz = args.out / "brain.npz"
    np.savez_compressed(out_npz, **{k: v for k, v in s.items() if not k.startswith("_")})

    deb_name = args.deb.name if args.deb else "mricron-data_1.2.20211006+dfsg-4_all.deb"
    deb_version = deb_name.split("_")[1] if "_" in deb_name else "unknown"
    row0, col0, side = s["_box"]
    ks = [int(k) for k in s["slice_index"]]
    text = PROVENANCE.format(
        deb_version=deb_version,
        deb_name=deb_name,
        deb_sha=sha256(args.deb) if args.deb else "not recorded",
        nifti_rel="usr/share/mricron/templates/" + args.nifti.name,
        nifti_name=args.nifti.name,
        shape=" x ".join(str(n) for n in s["_shape"]),
        voxel_mm=s["_voxel_mm"],
        nifti_sha=sha256(args.nifti),
        ks=ks,
        k=ks[1],
        zs=[round(float(z), 1) for z in s["slice_z_mm"]],
        z_mm=Z_MM,
        step=STEP,
        step_mm=STEP * s["_voxel_mm"],
        r0=row0,
        r1=row0 + side - 1,
        c0=col0,
        c1=col0 + side - 1,
        side=side,
        fov_mm=side * s["_voxel_mm"],
        px256=float(s["pixel_mm_256"]),
        px128=float(s["pixel_mm_128"]),
        scale=s["_scale"],
        margin=MARGIN,
        python=".".join(str(n) for n in sys.version_info[:3]),
        numpy=np.__version__,
        nibabel=nib.__version__,
        skimage=skimage.__version__,
        out_sha=sha256(out_npz),
        command=" ".join(
            ["python", "tools/make_samples.py", shlex.quote(str(args.nifti))]
            + (["--copyright", shlex.quote(str(args.copyright))] if args.copyright else [])
            + (["--deb", shlex.quote(str(args.deb))] if args.deb else [])
        ),
    )
    (args.out / "PROVENANCE.md").write_text(text, encoding="utf-8")
    if args.copyright:
        licence = LICENSE_HEADER.format(deb_version=deb_version)
        licence += args.copyright.read_text(encoding="utf-8")
        (args.out / "LICENSE-mricron-data.txt").write_text(licence, encoding="utf-8")
    print(f"wrote {out_npz} ({out_npz.stat().st_size} bytes), slices {ks}")


if __name__ == "__main__":
    main()
