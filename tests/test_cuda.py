"""The GPU paths: every method, multi-coil data, covariance inspection and training on CUDA.

Skipped where torch sees no CUDA device (CI, the development machine). Run on a GPU machine
with ``pytest tests/test_cuda.py``; ``NAPARI_GENREG_TEST_DEVICE=cpu`` runs the same checks with
the CPU standing in for the accelerator (to check the tests themselves). Results must match
the CPU's to the precision of float32 arithmetic (cuDNN may use TF32 for convolutions, hence
the tolerances).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_genreg.io import KSpaceData, Metadata, simulate_kspace
from napari_genreg.models.checkpoint import load_model
from napari_genreg.physics.coils import simulate_multicoil, synthetic_maps
from napari_genreg.physics.masks import make_mask
from napari_genreg.recon import METHODS, build_problem, reconstruct
from napari_genreg.recon.devices import resolve_device
from napari_genreg.samples import load_stack

DEVICE = os.environ.get("NAPARI_GENREG_TEST_DEVICE", "cuda")

pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA device"
)


def _single_coil(device: str):
    image = load_stack("brain")[1]
    mask = make_mask("poisson", image.shape, acceleration=6, seed=0)
    data = simulate_kspace(image[None], noise_sigma=0.01, seed=1, source="colin27")
    return build_problem(data, mask, device=device)


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="auto picks CUDA only where it exists")
def test_auto_picks_cuda():
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_gives_the_cpu_result_on_cuda(name):
    iterations = min(METHODS[name].default_iterations, 5)
    cpu = reconstruct(_single_coil("cpu"), name, iterations=iterations)
    gpu = reconstruct(_single_coil(DEVICE), name, iterations=iterations)
    assert gpu.iterations == cpu.iterations
    assert np.isfinite(gpu.image).all()
    assert abs(gpu.metrics.psnr - cpu.metrics.psnr) < 0.3
    scale = float(np.abs(cpu.image).max())
    assert float(np.abs(gpu.image - cpu.image).max()) < 0.1 * scale


@pytest.mark.parametrize("name", ["tv", "vae-structured"])
def test_multicoil_on_cuda(name):
    image = load_stack("brain")[0]
    maps = synthetic_maps(4, image.shape)
    kspace = simulate_multicoil(torch.from_numpy(image).to(torch.complex64), maps).numpy()
    data = KSpaceData(kspace[None], image[None], None, Metadata("multicoil", image.shape, 1e-3))
    mask = make_mask("random", image.shape, acceleration=4, seed=0)
    cpu = reconstruct(build_problem(data, mask, device="cpu"), name, iterations=5)
    gpu = reconstruct(build_problem(data, mask, device=DEVICE), name, iterations=5)
    assert abs(gpu.metrics.psnr - cpu.metrics.psnr) < 0.3


def test_covariance_inspection_on_cuda():
    from napari_genreg.recon.covariance import inspect_covariance

    problem = _single_coil(DEVICE)
    result = reconstruct(problem, "vae-structured", iterations=3)
    views = []
    for device in (DEVICE, "cpu"):
        model, _ = load_model(result.model, device=device)
        generator = torch.Generator(device).manual_seed(0)
        views.append(
            inspect_covariance(
                model, result.latent, (64, 64), generator=generator, scale=problem.scale
            )
        )
    gpu, cpu = views
    for name in ("column", "variance", "correlation"):
        reference = getattr(cpu, name)
        tolerance = 0.02 * float(np.abs(reference).max())
        np.testing.assert_allclose(getattr(gpu, name), reference, atol=tolerance)
