"""Overhead of napari_genreg's operator objects over the same arithmetic in bare ``torch.fft``.

One call is a forward followed by an adjoint, ``A^H (A x)``, on a complex64 image of batch 1:

- ``masked_fourier(mask)``: ``A = M F``;
- ``sense(maps, mask)`` with 8 coils: ``A = M F S``.

The bare version does the same arithmetic in plain torch: ``ifftshift``, ``fft2(norm="ortho")``,
``fftshift``, the float32 mask multiply (twice: forward and adjoint) and, for SENSE, the coil
multiply and the conjugate-multiply-and-sum. Times are medians of many calls after a warm-up,
with all functions of a table row called in turn, round after round, on the CPU with torch
limited to ``--threads`` threads (default 1). The target is ours within 20 % of bare.

Everything is measured twice. First with glibc's default ``malloc``, which hands the 1-7 MB
temporaries of a SENSE call back to the kernel when they are freed, so that the next call
page-faults them in again (the minor page faults per call are counted); how often that happens
depends on the history of allocations, not on the code timed. Then with ``mallopt`` told to keep
freed memory (``M_MMAP_THRESHOLD`` 32 MiB, ``M_TRIM_THRESHOLD`` 1 GiB), which removes the page
faults and leaves the arithmetic and the Python overhead.

With freed memory kept, a third table splits one call of ours into its steps (each timed on
its own, in the same rounds as the whole call) and times variants of the bare version, to show
where the time goes and what a change in ``src`` would buy: a complex64 mask (a float32 mask is
promoted to complex64 on every multiply), ``conj(maps)`` stored once instead of conjugated per
call, and, for even sizes, the four fftshift/ifftshift copies replaced by sign patterns folded
into the mask and the image or coil maps, ``fft2c(x)[k] = (-1)^(k - N/2) fft2((-1)^n x)[k]`` on
each axis, with the multiplies on temporaries done in place.

Run: ``.venv/bin/python benchmarks/operator_overhead.py`` (about 2 minutes on 2 cores); writes
``benchmarks/results/operator_overhead.json`` and ``.md``. ``--quick`` is a smoke run writing
``operator_overhead_quick.*``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time
from collections.abc import Callable

import _machine

# torch and napari_genreg are imported inside the functions, after main() has pinned the thread
# pools (_machine.pin_threads).

NAME = "operator_overhead"
SIZES = (128, 256, 320)
COILS = 8
TARGET_OVERHEAD = 0.20
DIMS = (-2, -1)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (no page faults); False if not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(
        libc.mallopt(m_trim_threshold, 1 << 30)
    )


def make_inputs(size: int):
    """Image (1, H, W), coil maps (C, H, W), complex64, and a 4x 1-D random mask (seed 0)."""
    import torch

    from napari_genreg.physics.masks import make_mask

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, size, size), dtype=torch.complex64, generator=gen)
    maps = torch.randn((COILS, size, size), dtype=torch.complex64, generator=gen)
    maps = maps / maps.abs().square().sum(dim=0).sqrt()
    mask = make_mask("random", (size, size), acceleration=4, seed=0)
    return x, maps, mask


def bare_functions(maps, mask_np) -> dict[str, Callable]:
    """The bare torch versions of ``A^H (A x)`` and the variants of the second table.

    The chequerboard variants use, for even sizes ``N = 2h`` on each axis,
    ``fft2c(x)[k] = (-1)^(k - h) fft2((-1)^n x)[k]``: the four shifts become two sign
    patterns, one folded into the mask and one into the image (or the coil maps).
    """
    import torch

    fft = torch.fft
    mask = torch.from_numpy(mask_np).to(torch.float32)
    mask_c = mask.to(torch.complex64)
    maps_conj = maps.conj().resolve_conj()
    ny, nx = mask.shape
    sign_y = 1 - 2 * (torch.arange(ny) % 2)
    sign_x = 1 - 2 * (torch.arange(nx) % 2)
    chequer = (sign_y[:, None] * sign_x[None, :]).to(torch.complex64)  # (-1)^n image side
    k_sign = chequer * (-1) ** (ny // 2 + nx // 2)  # (-1)^(k - h) k-space side
    mask_signed = mask_c * k_sign
    maps_signed = maps * chequer
    maps_signed_conj = maps_signed.conj().resolve_conj()

    def fft2c(x):
        return fft.fftshift(fft.fft2(fft.ifftshift(x, dim=DIMS), norm="ortho"), dim=DIMS)

    def ifft2c(k):
        return fft.fftshift(fft.ifft2(fft.ifftshift(k, dim=DIMS), norm="ortho"), dim=DIMS)

    def single(x, m=mask):
        return ifft2c(fft2c(x) * m * m)

    def single_chequer(x):
        k = fft.fft2(x * chequer, norm="ortho") * mask_signed
        return fft.ifft2(k * mask_signed, norm="ortho") * chequer

    def sense(x, m=mask, conj=None):
        k = fft2c(x.unsqueeze(-3) * maps) * m
        im = ifft2c(k * m)
        return (im * (maps.conj() if conj is None else conj)).sum(dim=-3)

    def sense_chequer(x):
        k = fft.fft2(x.unsqueeze(-3) * maps_signed, norm="ortho") * mask_signed
        return (fft.ifft2(k * mask_signed, norm="ortho") * maps_signed_conj).sum(dim=-3)

    def sense_chequer_in_place(x):
        k = fft.fft2(x.unsqueeze(-3) * maps_signed, norm="ortho")
        k.mul_(mask_signed).mul_(mask_signed)
        return fft.ifft2(k, norm="ortho").mul_(maps_signed_conj).sum(dim=-3)

    return {
        "single": single,
        "single_complex_mask": lambda x: single(x, mask_c),
        "single_chequer": single_chequer,
        "sense": sense,
        "sense_conj_cached": lambda x: sense(x, mask, maps_conj),
        "sense_complex_mask_conj_cached": lambda x: sense(x, mask_c, maps_conj),
        "sense_chequer": sense_chequer,
        "sense_chequer_in_place": sense_chequer_in_place,
    }


def steps_of_ours(op, x) -> dict[str, Callable[[], object]]:
    """Each step of ``op.adjoint(op(x))`` as a separate call, in order."""
    from torch import fft

    from napari_genreg.physics.operators import CoilExpand

    steps, value = {}, x
    for part in reversed(op.ops):
        steps[f"forward {type(part).__name__}"] = (part.forward, value)
        value = part.forward(value)
    for part in op.ops:
        steps[f"adjoint {type(part).__name__}"] = (part.adjoint, value)
        value = part.adjoint(value)
    out = {}
    for name, (f, v) in steps.items():
        out[name] = lambda f=f, v=v: f(v)
        if name == "forward FFT2c":
            out["  of which ifftshift + fftshift (roll copies)"] = lambda v=v: fft.fftshift(
                fft.ifftshift(v, dim=DIMS), dim=DIMS
            )
    if isinstance(op.ops[-1], CoilExpand):
        maps = op.ops[-1].maps
        y = steps["adjoint CoilExpand"][1]
        maps_conj = maps.conj().resolve_conj()
        out["  of which y * maps.conj()"] = lambda: y * maps.conj()
        out["  the same with conj(maps) stored"] = lambda: y * maps_conj
    return out


def bench_size(size: int, threads: int, seconds: float, warmup: int, detail: bool) -> list[dict]:
    """Ours against bare for both operators at one size; with ``detail`` also steps, variants."""
    import torch

    from napari_genreg.physics.operators import masked_fourier, sense

    torch.set_num_threads(threads)
    x, maps, mask = make_inputs(size)
    bare = bare_functions(maps, mask)
    sense_name = f"sense, {COILS} coils"
    ops = {"masked_fourier": masked_fourier(mask), sense_name: sense(maps, mask)}
    bare_of = {"masked_fourier": bare["single"], sense_name: bare["sense"]}
    variants = {
        "masked_fourier": ("single_complex_mask", "single_chequer"),
        sense_name: (
            "sense_conj_cached",
            "sense_complex_mask_conj_cached",
            "sense_chequer",
            "sense_chequer_in_place",
        ),
    }
    rows = []
    for name, op in ops.items():
        fns = {"ours": lambda op=op: op.adjoint(op(x)), "bare": lambda f=bare_of[name]: f(x)}
        expected = fns["bare"]()
        torch.testing.assert_close(fns["ours"](), expected)  # same arithmetic, not timing
        if detail:
            for v in variants[name]:
                torch.testing.assert_close(bare[v](x), expected)
                fns[v] = lambda f=bare[v]: f(x)
            steps = steps_of_ours(op, x)
            fns.update({f"step {k}": f for k, f in steps.items()})
        timed, rounds = _machine.round_robin(fns, seconds * (len(fns) / 2) ** 0.5, warmup)
        (ours_t, ours_f), (bare_t, bare_f) = timed["ours"], timed["bare"]
        row = {
            "operator": name,
            "size": size,
            "threads": threads,
            "repeats": rounds,
            "ours_us": 1e6 * ours_t,
            "bare_us": 1e6 * bare_t,
            "overhead": ours_t / bare_t - 1.0,
            "within_target": ours_t <= (1 + TARGET_OVERHEAD) * bare_t,
            "ours_page_faults_per_call": ours_f,
            "bare_page_faults_per_call": bare_f,
        }
        if detail:
            row["steps_us"] = {k: 1e6 * timed[f"step {k}"][0] for k in steps}
            row["bare_variants_us"] = {v: 1e6 * timed[v][0] for v in variants[name]}
        rows.append(row)
        print(
            f"{name} {size} threads={threads}: ours {1e6 * ours_t:.0f} us, "
            f"bare {1e6 * bare_t:.0f} us ({100 * (ours_t / bare_t - 1):+.1f} %), "
            f"page faults per call {ours_f:.0f} / {bare_f:.0f}",
            flush=True,
        )
    return rows


VARIANT_LABELS = {
    "single_complex_mask": "bare, complex64 mask (no float-to-complex promotion)",
    "single_chequer": "bare, chequerboard signs instead of the 4 shifts, complex64 mask",
    "sense_conj_cached": "bare, conj(maps) cached",
    "sense_complex_mask_conj_cached": "bare, conj(maps) cached and complex64 mask",
    "sense_chequer": "bare, chequerboard signs folded into maps and mask (no shifts)",
    "sense_chequer_in_place": "bare, as above with the multiplies on temporaries in place",
}


def _overhead_table(rows: list[dict]) -> list[str]:
    lines = [
        "| operator | size | threads | calls | ours (us) | bare torch.fft (us) | overhead "
        "| within 20 % | page faults per call, ours / bare |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['operator']} | {r['size']} | {r['threads']} | {r['repeats']} "
            f"| {r['ours_us']:.0f} | {r['bare_us']:.0f} | {100 * r['overhead']:+.1f} % "
            f"| {'yes' if r['within_target'] else '**no**'} "
            f"| {r['ours_page_faults_per_call']:.0f} / {r['bare_page_faults_per_call']:.0f} |"
        )
    return lines


def markdown(result: dict) -> str:
    lines = [
        "## Operator overhead: `A^H (A x)` of ours vs the same arithmetic in bare `torch.fft`",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {_machine.machine_line(result['machine'])}, "
        f"at end {result['load_average_end'][0]:.2f}.  ",
        "complex64, batch 1, CPU, 4x 1-D random mask (float32 after construction); median of "
        "the number of calls shown after a warm-up, all functions of a row called in turn. "
        f"Target: ours within {100 * TARGET_OVERHEAD:.0f} % of bare.",
        "",
        "With glibc's default `malloc` (freed temporaries go back to the kernel and are "
        "page-faulted in again on the next call):",
        "",
        *_overhead_table(result["default_malloc"]),
        "",
    ]
    tuned = result["freed_memory_kept"]
    if not tuned:
        return "\n".join(lines)
    lines += [
        "With `mallopt(M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=1 GiB)` (freed memory kept "
        "for reuse, so no page faults):",
        "",
        *_overhead_table(tuned),
        "",
        "Where the time goes (freed memory kept): each step of ours timed alone (us, median), "
        "and variants of the bare version that a change in `src` could adopt.",
        "",
    ]
    first = [r for r in tuned if r["threads"] == tuned[0]["threads"]]
    for name in dict.fromkeys(r["operator"] for r in first):
        group = [r for r in first if r["operator"] == name]
        lines += [
            f"{name}, {group[0]['threads']} thread(s):",
            "",
            "| step | " + " | ".join(str(r["size"]) for r in group) + " |",
            "|---" * (len(group) + 1) + "|",
        ]
        for step in group[0]["steps_us"]:
            values = " | ".join(f"{r['steps_us'][step]:.0f}" for r in group)
            label = step if step.startswith(" ") else f"ours: {step}"
            lines.append(f"| {label.strip()} | {values} |")
        total = [sum(v for k, v in r["steps_us"].items() if not k.startswith(" ")) for r in group]
        lines.append("| ours: sum of the steps | " + " | ".join(f"{t:.0f}" for t in total) + " |")
        lines.append(
            "| ours: whole call | " + " | ".join(f"{r['ours_us']:.0f}" for r in group) + " |"
        )
        lines.append("| bare | " + " | ".join(f"{r['bare_us']:.0f}" for r in group) + " |")
        for variant in group[0]["bare_variants_us"]:
            values = " | ".join(f"{r['bare_variants_us'][variant]:.0f}" for r in group)
            lines.append(f"| {VARIANT_LABELS[variant]} | {values} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128 px only, short timings")
    parser.add_argument(
        "--threads", default="1", help="comma-separated torch thread counts (default: 1)"
    )
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="time spent per ours/bare comparison"
    )
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    _machine.pin_threads(threads[0])
    sizes, warmup = SIZES, 20
    if args.quick:
        sizes, args.seconds, warmup = (128,), 0.3, 3
    machine = _machine.machine_info()
    command = _machine.command_line()
    start = time.perf_counter()
    default_malloc = [
        row
        for n in threads
        for size in sizes
        for row in bench_size(size, n, args.seconds, warmup, False)
    ]
    kept = keep_freed_memory()
    tuned = (
        [
            row
            for n in threads
            for size in sizes
            for row in bench_size(size, n, args.seconds, warmup, True)
        ]
        if kept
        else []
    )
    result = {
        "benchmark": NAME,
        "command": command,
        "machine": machine,
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "wall_time_s": time.perf_counter() - start,
        "settings": {"threads": threads, "seconds_per_comparison": args.seconds},
        "default_malloc": default_malloc,
        "freed_memory_kept": tuned,
    }
    stem = NAME + ("_quick" if args.quick else "")
    _machine.publish(stem, result, markdown(result))


if __name__ == "__main__":
    main()
