"""Training throughput of the VAE on the CPU: images per second at 128 x 128, batch 16.

For each covariance head (the default architecture, ``napari_genreg.models.vae``), timed at each
``--threads`` (median of repetitions after a warm-up; random images in [0, 1], float32):

- ``forward+backward``: the configured head's negative ELBO (Gaussian NLL + KL) through the whole
  model, every parameter trainable, then ``backward()``: the figure the model size was chosen by;
- ``stage 1 step``: one optimisation step of training stage 1 (encoder, trunk and mean with the
  learned identity covariance; forward, backward, Adam); the same for every head;
- ``stage 2 step``: one step of stage 2 (the covariance head alone, the rest frozen).

From these, the last column estimates the training time of one model on 1000 images x 10 epochs
per stage (stage 1 then stage 2), the budget being three models on 2 CPU cores. Parameter
counts and weight sizes are listed too.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/training_throughput.py`` (a few minutes on
2 cores); writes ``benchmarks/results/training_throughput.json`` and ``.md``. ``--quick`` is a
smoke run that only prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import _machine

NAME = "training_throughput"
SIZE = 128
BATCH = 16
#: (label, covariance, stencil); stage 1 is timed once (it is the same for every head).
HEADS = (
    ("identity", "identity", 5),
    ("diagonal", "diagonal", 5),
    ("structured 3x3", "structured", 3),
    ("structured 5x5", "structured", 5),
    ("structured 7x7", "structured", 7),
)
FULL_HEADS = ("identity", "diagonal", "structured 5x5")


def _median_s(fn, repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _cases(threads: int, quick: bool) -> list[dict]:
    import torch

    from napari_genreg.models.vae import VAE, VAEConfig
    from napari_genreg.training.losses import elbo_terms, set_stage, stage_loss

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, SIZE, SIZE, generator=gen)
    repeats = 2 if quick else 5
    rows = []

    def record(label: str, case: str, model: VAE, fn) -> None:
        median, times = _median_s(fn, repeats, warmup=1)
        rows.append(
            {
                "head": label,
                "case": case,
                "threads": threads,
                "images_per_s": round(BATCH / median, 2),
                "best_images_per_s": round(BATCH / min(times), 2),
                "median_step_s": round(median, 4),
                "parameters": model.num_parameters(),
                "weights_mb": round(4 * model.num_parameters() / 1e6, 3),
                "repeats": repeats,
            }
        )
        print(
            f"{threads} thread(s) {label:15s} {case:17s} {BATCH / median:7.1f} images/s",
            flush=True,
        )

    for label, kind, stencil in HEADS:
        model = VAE(VAEConfig(covariance=kind, stencil=stencil, image_size=SIZE))
        eps = torch.randn((BATCH, *model.latent_shape((SIZE, SIZE))), generator=gen)
        if label in FULL_HEADS:

            def full(model=model, eps=eps) -> None:
                for p in model.parameters():
                    p.requires_grad_(True)
                    p.grad = None
                model.zero_grad(set_to_none=True)
                terms = elbo_terms(x, model(x, eps))
                terms.negative_elbo(1.0).mean().backward()

            record(label, "forward+backward", model, full)

        def step(stage: int, model=model, eps=eps):
            chosen = set_stage(model, stage)
            optimizer = torch.optim.Adam([p for _, p in chosen], lr=1e-3)
            head = "identity" if stage == 1 else "configured"

            def run() -> None:
                loss = stage_loss(x, model(x, eps, head), stage)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            return run

        if label == "identity":
            record("any head", "stage 1 step", model, step(1))
        record(label, "stage 2 step", model, step(2))
    return rows


def _estimate_minutes(rows: list[dict], threads: int, head: str) -> float:
    stage1 = next(r for r in rows if r["case"] == "stage 1 step" and r["threads"] == threads)
    stage2 = next(
        r
        for r in rows
        if r["case"] == "stage 2 step" and r["threads"] == threads and r["head"] == head
    )
    images = 1000 * 10
    return (images / stage1["images_per_s"] + images / stage2["images_per_s"]) / 60


def markdown(result: dict) -> str:
    rows = result["rows"]
    threads = list(dict.fromkeys(r["threads"] for r in rows))
    lines = [
        "# VAE training throughput on the CPU (128 x 128, batch 16)",
        "",
        f"Machine: {_machine.machine_line(result['machine'])}, "
        f"load average at the end {result['load_average_end'][0]:.2f}.",
        "",
        f"Command: `{result['command']}`",
        "",
        "Images per second (median of "
        f"{rows[0]['repeats']} steps after a warm-up; best step in brackets), float32, default "
        "architecture (`conv-vae-v1`: base 16 channels, 3 downsamplings, latent 4 x 16 x 16). "
        "`forward+backward`: negative ELBO of the configured head through the whole model; "
        "`stage 1 step` / `stage 2 step`: one training step (forward, backward, Adam) of each "
        "stage (stage 2 trains only the covariance head). The CPU is shared with other jobs: "
        "compare rows of the same run only.",
        "",
        "| head | case | parameters | weights (MB) | "
        + " | ".join(f"{t} thread(s)" for t in threads)
        + " |",
        "|---|---|---|---|" + "---|" * len(threads),
    ]
    keys = list(dict.fromkeys((r["head"], r["case"]) for r in rows))
    for head, case in keys:
        cells = []
        for t in threads:
            row = next(r for r in rows if (r["head"], r["case"], r["threads"]) == (head, case, t))
            cells.append(f"{row['images_per_s']:.1f} ({row['best_images_per_s']:.1f})")
        first = next(r for r in rows if (r["head"], r["case"]) == (head, case))
        lines.append(
            f"| {head} | {case} | {first['parameters']:,} | {first['weights_mb']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "Estimated training time of one model, 1000 images x (10 epochs of stage 1 + 10 of "
        "stage 2), from the step rates above (no data loading or validation):",
        "",
    ]
    for t in threads:
        estimates = ", ".join(
            f"{label} {_estimate_minutes(rows, t, label):.1f} min" for label, _, _ in HEADS
        )
        lines.append(f"- {t} thread(s): {estimates}")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run that only prints")
    parser.add_argument(
        "--threads",
        default=None,
        help="comma-separated torch thread counts (default: 1 and all CPUs)",
    )
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    threads = (
        sorted({1, cpus}) if args.threads is None else [int(t) for t in args.threads.split(",")]
    )
    _machine.pin_threads(max(threads))
    machine = _machine.machine_info()
    command = _machine.command_line()
    start = time.perf_counter()
    rows = [row for n in threads for row in _cases(n, args.quick)]
    result = {
        "benchmark": NAME,
        "command": command,
        "machine": machine,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "wall_time_s": round(time.perf_counter() - start, 1),
        "settings": {"threads": threads, "size": SIZE, "batch": BATCH, "dtype": "float32"},
        "rows": rows,
    }
    _machine.publish(NAME, result, markdown(result), record=not args.quick)


if __name__ == "__main__":
    main()
