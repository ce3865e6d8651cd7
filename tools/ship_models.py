"""Copy trained models into the package and write their model cards.

``python tools/ship_models.py --runs .cache-builtin/runs --data .cache-builtin/dataset128``
copies ``model.safetensors`` and ``config.json`` of each run folder (identity, diagonal,
structured) to ``src/napari_genreg/models/builtin/<kind>/`` and writes ``MODEL_CARD.md`` beside
them from the model's own config (training command, metrics) and the dataset manifest
(sources, licences, split). The optimiser state of the runs is not shipped.
``--only KIND=RUN_DIR`` (repeatable) ships just those kinds, each from its own folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

BUILTIN = Path(__file__).parents[1] / "src" / "napari_genreg" / "models" / "builtin"


def _initialised(config: dict) -> str:
    source = config["training"].get("initialised_from")
    if not source:
        return ""
    if isinstance(source, dict):
        what = (
            "the shipped identity model, whose encoder and mean are its stage 1"
            if Path(source["path"]).parts[-2:] == ("builtin", "identity")
            else "the identity model's run after its stage 1"
        )
        return (
            f", starting from the encoder and mean of `{source['path']}` ({what}, weights "
            f"sha256 `{source['weights_sha256'][:16]}...`), so the three models share one stage 1"
        )
    return f", starting from the encoder and mean of `{source}`"


def card(kind: str, config: dict, manifest: dict) -> str:
    metrics = config["metrics"]
    history = metrics.get("history", [])
    lines = [
        f"# napari-genreg builtin prior: `{kind}` covariance",
        "",
        "A small VAE (architecture `{}`, {:,} parameters, {:.2f} MB of float32 weights) whose "
        "decoder predicts a mean image G(z) and the covariance Sigma(z) of the image around "
        "it: {}.".format(
            config["model"]["architecture"],
            config["weights"]["num_parameters"],
            config["weights"]["bytes"] / 1e6,
            {
                "identity": "Sigma = s^2 I with one learned scalar s",
                "diagonal": "a per-pixel variance map",
                "structured": "the precision Sigma^-1 = L L^T with L sparse lower-triangular on "
                f"a {config['model']['stencil']}x{config['model']['stencil']} stencil "
                "(Dorta et al., CVPR 2018)",
            }[kind],
        ),
        "",
        "## Sizes",
        "",
        config["accepted_sizes"],
        "",
        "## Training",
        "",
        "```",
        config["command"],
        "```",
        "",
        "Staged as in Dorta et al.: encoder and mean first (identity likelihood), then the "
        "covariance head alone by Gaussian negative log-likelihood"
        + _initialised(config)
        + ". Augmentation: flips, rotations, zoom, elastic deformation, bias fields, gamma, "
        "intensity scaling and noise (see `napari_genreg.training.data`).",
        "",
        "## Validation",
        "",
        f"Negative ELBO on the validation split after the last epoch: "
        f"**{metrics['val_bits_per_dim']:.4f} bits/dim** ({metrics['bits_per_dim_convention']}). "
        "`python benchmarks/prior_nll.py` measures all three models on the same split "
        "(`benchmarks/results/prior_nll.md`).",
        "",
        "| epoch | stage | train loss (nats/pixel) | validation bits/dim |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {h['epoch']} | {h['stage']} | {h['train_loss']:.4f} | {h['val_bits_per_dim']:.4f} |"
        for h in history
    ]
    lines += [
        "",
        "## Data",
        "",
        f"{manifest['size']}x{manifest['size']} magnitude slices in [0, 1] from real MRI volumes "
        "that ship inside public packages, split by volume (content sha256 "
        f"`{manifest['content_sha256']}`):",
        "",
        "| source | split | modality | subject | licence (as found) | slices |",
        "|---|---|---|---|---|---|",
    ]
    for s in manifest["sources"]:
        counts = s.get("slices", {})
        total = sum(counts.values()) if isinstance(counts, dict) else counts
        lines.append(
            f"| {s['name']} | {s['split']} | {s.get('modality', '?')} | "
            f"{s.get('subject', '?')} | {s['licence']} | {total} |"
        )
    lines += [
        "",
        "What the model has seen: T1-weighted brain templates and averages in axial, coronal "
        "and sagittal planes, plus a few EPI and DWI b0 slices. It has not seen a single real "
        "subject's T1 in training (Colin27 is held out for validation and is the demo sample), "
        "knees, other organs, pathology, or other contrasts beyond those few EPI/DWI slices; "
        "expect it to be a weaker prior there. nilearn lists the MNI152 2009a template's "
        "licence as unknown; the MNI's own terms for its ICBM templates are permissive "
        "(copyright notice retained), but we could not confirm them at the source.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument(
        "--only", action="append", default=[], metavar="KIND=RUN_DIR", help="ship only these"
    )
    args = parser.parse_args()
    manifest = json.loads((args.data / "manifest.json").read_text())
    kinds = ("identity", "diagonal", "structured")
    runs = {kind: args.runs / kind for kind in kinds}
    if args.only:
        if any(item.partition("=")[0] not in kinds or "=" not in item for item in args.only):
            parser.error(f"--only takes KIND=RUN_DIR with KIND one of {', '.join(kinds)}")
        runs = dict(item.split("=", 1) for item in args.only)
    for kind, run in runs.items():
        run = Path(run)
        config = json.loads((run / "config.json").read_text())
        dest = BUILTIN / kind
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / "model.safetensors", dest / "model.safetensors")
        shutil.copyfile(run / "config.json", dest / "config.json")
        (dest / "MODEL_CARD.md").write_text(card(kind, config, manifest))
        print(f"shipped {kind}: {config['metrics']['val_bits_per_dim']:.4f} bits/dim")


if __name__ == "__main__":
    main()
