"""ESPIRiT coil maps against the true maps of simulated multi-coil data (and sigpy's ESPIRiT)."""

import itertools
import math

import numpy as np
import pytest
import torch

from napari_genreg.physics.coils import rss, simulate_multicoil, synthetic_maps
from napari_genreg.physics.espirit import (
    MAX_CALIBRATION,
    CoilMaps,
    centred_fully_sampled_box,
    espirit_maps,
    image_space_operator,
    sensitivity_maps,
    signal_kernels,
)
from napari_genreg.physics.masks import make_mask
from napari_genreg.physics.operators import sense
from napari_genreg.samples import load_image
from napari_genreg.solvers import conjugate_gradient

SIZE = 128
COILS = 8
NOISE = 1e-3  # complex Gaussian, per k-space sample; the image maximum is 1


def _phantom(size=SIZE):
    """The brain sample times a smooth phase: complex64 ``(size, size)``, ``size`` 64 or 128."""
    magnitude = torch.from_numpy(load_image("brain", SIZE))
    if size != SIZE:  # the samples come at 128 and 256: average 2x2 blocks for 64
        magnitude = torch.nn.functional.avg_pool2d(magnitude[None], SIZE // size)[0]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.polar(magnitude, 0.8 * xx + 0.5 * yy**2 - 0.3 * xx * yy)


def _ellipse_maps(coils, shape):
    """Other geometry: coils on a tilted ellipse, narrower fall-off, quadratic phase, and NOT
    normalised (the true sensitivities, whose normalised version ESPIRiT estimates)."""
    h, w = shape
    yy = torch.linspace(-1.0, 1.0, h, dtype=torch.float64).view(h, 1)
    xx = torch.linspace(-1.0, 1.0, w, dtype=torch.float64).view(1, w)
    maps = []
    for c in range(coils):
        angle = 2 * math.pi * (c + 0.3) / coils
        ey, ex = 1.1 * math.sin(angle), 1.6 * math.cos(angle)
        cy = 0.9 * ey + 0.4 * ex
        cx = -0.4 * ey + 0.9 * ex
        magnitude = (0.6 + 0.1 * c) * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 1.2)
        phase = 0.7 * (yy - cy) ** 2 - 0.4 * (xx * cx) + 1.3 * c
        maps.append(torch.polar(magnitude, phase))
    return torch.stack(maps).to(torch.complex64)


def _noisy(kspace, seed=0):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((*kspace.shape, 2), generator=gen) * (NOISE / math.sqrt(2))
    return kspace + torch.view_as_complex(noise)


def _inner_support(image, erosion=3):
    """|image| > 10 % of its maximum, eroded by ``erosion`` pixels."""
    support = image.abs() > 0.1 * image.abs().max()
    size = 2 * erosion + 1
    pooled = torch.nn.functional.avg_pool2d(support[None].float(), size, 1, erosion)[0]
    return pooled > 0.999


def _phase_free_error(maps, truth):
    """``|m - t e^{i phi}|`` with ``phi`` the phase of ``sum_c m_c conj(t_c)`` per pixel."""
    phase = (maps * truth.conj()).sum(0)
    phase = phase / phase.abs().clamp_min(1e-12)
    return (maps - truth * phase).abs()


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


@pytest.fixture(scope="module", params=["synthetic", "ellipse"])
def case(request, phantom):
    """(true maps normalised to rss = 1, noisy fully sampled k-space, rss of the true maps)."""
    if request.param == "synthetic":
        truth = synthetic_maps(COILS, phantom.shape)
    else:
        truth = _ellipse_maps(COILS, phantom.shape)
    kspace = _noisy(simulate_multicoil(phantom, truth))
    body = rss(truth, dim=0)
    return truth / body, kspace, body


@pytest.fixture(scope="module")
def fully_sampled_maps(case):
    _, kspace, _ = case
    return espirit_maps(kspace, (24, 24))


def test_espirit_matches_the_true_maps_up_to_a_phase_per_pixel(phantom, case, fully_sampled_maps):
    truth, kspace, _ = case
    maps = fully_sampled_maps
    assert maps.shape == kspace.shape and maps.dtype == kspace.dtype
    inner = _inner_support(phantom)
    assert float(_phase_free_error(maps, truth)[:, inner].max()) < 0.05
    norm = rss(maps, dim=0)
    assert torch.allclose(norm[inner], torch.ones(int(inner.sum())), atol=1e-4)
    # outside the kept region the maps are exactly zero; the rss is 0 or 1
    assert bool(((norm - 1).abs() < 1e-4).logical_or(norm == 0).all())


def test_espirit_maps_are_smooth_inside_the_object(phantom, case, fully_sampled_maps):
    # the per-pixel phase is fixed against a virtual body coil: without that, eigenvectors
    # come with an arbitrary phase per pixel and neighbours would differ by O(1)
    truth, _, _ = case
    inner = _inner_support(phantom)
    both = inner[:, 1:] & inner[:, :-1]
    step = (fully_sampled_maps[:, :, 1:] - fully_sampled_maps[:, :, :-1]).abs()[:, both]
    true_step = (truth[:, :, 1:] - truth[:, :, :-1]).abs()[:, both]
    assert float(step.max()) < 2 * float(true_step.max()) + 0.01


def test_cg_sense_with_espirit_maps_reproduces_the_image(phantom, case, fully_sampled_maps):
    # maps are determined up to a complex factor per pixel: normalised maps see the image
    # times the rss of the true sensitivities (1 for the normalised synthetic maps)
    _, kspace, body = case
    reference = phantom.abs() * body
    mask = torch.ones(phantom.shape, dtype=torch.bool)
    op = sense(fully_sampled_maps, mask)
    states = conjugate_gradient(op.normal, op.adjoint(kspace), rtol=1e-6)
    x = list(itertools.islice(states, 30))[-1].x
    support = phantom.abs() > 0.1 * phantom.abs().max()
    error = (x.abs() - reference)[support]
    psnr = 20 * math.log10(float(reference.max()) / float(error.square().mean().sqrt()))
    assert psnr > 40


def test_espirit_from_the_calibration_region_of_undersampled_data(phantom, case):
    truth, kspace, _ = case
    mask = make_mask("random", phantom.shape, acceleration=4, center_fraction=24 / SIZE, seed=0)
    box = centred_fully_sampled_box(mask)
    assert box[0] == SIZE and box[1] >= 24
    undersampled = kspace * torch.from_numpy(mask)
    maps = espirit_maps(undersampled, mask=mask)
    inner = _inner_support(phantom)
    assert float(_phase_free_error(maps, truth)[:, inner].max()) < 0.05
    # without a mask the non-zero pattern of the data gives the same calibration block
    assert torch.equal(espirit_maps(undersampled), maps)
    chosen = sensitivity_maps(undersampled, mask)
    assert isinstance(chosen, CoilMaps) and chosen.method == "espirit"
    assert torch.equal(chosen.maps, maps)


def test_espirit_agrees_with_sigpy_where_both_are_nonzero(case, fully_sampled_maps):
    mri_app = pytest.importorskip("sigpy.mri.app")
    _, kspace, _ = case
    # sigpy's power iteration needs more than its default 100 steps at the pixels with a small
    # eigenvalue gap (outside the object): 300 bring it to about 1e-3 of the exact eigenvector
    theirs = mri_app.EspiritCalib(
        kspace.numpy(),
        calib_width=24,
        thresh=0.02,
        kernel_width=6,
        crop=0.95,
        max_iter=300,
        show_pbar=False,
    ).run()
    theirs = torch.from_numpy(np.asarray(theirs)).to(torch.complex64)
    ours = fully_sampled_maps
    kept_ours, kept_theirs = rss(ours, dim=0) > 0.5, rss(theirs, dim=0) > 0.5
    assert float((kept_ours == kept_theirs).float().mean()) > 0.995
    both = kept_ours & kept_theirs
    assert float(_phase_free_error(ours, theirs)[:, both].max()) < 0.01


def test_the_image_space_operator_is_hermitian_with_eigenvalues_in_0_1(case):
    _, kspace, _ = case
    calib = kspace[:, SIZE // 2 - 12 : SIZE // 2 + 12, SIZE // 2 - 12 : SIZE // 2 + 12]
    kernels = signal_kernels(calib, 6, 0.02)
    flat = kernels.reshape(len(kernels), -1).to(torch.complex128)
    assert torch.allclose(flat @ flat.mH, torch.eye(len(kernels), dtype=flat.dtype), atol=1e-5)
    gram = image_space_operator(kernels, (40, 36))
    assert gram.shape == (40, 36, COILS, COILS)
    assert torch.allclose(gram, gram.mH, atol=1e-5)
    values = torch.linalg.eigvalsh(gram)
    assert float(values.min()) > -1e-4 and float(values.max()) < 1 + 1e-4


def test_the_image_space_operator_matches_a_direct_evaluation():
    # G(r) = sum_n g_n(r) g_n(r)^H with g_{n,c}(r) = 1/k sum_a K_{n,c}(a) exp(+i w(r).a),
    # evaluated by brute force on a small odd-by-even grid
    gen = torch.Generator().manual_seed(3)
    k, coils, shape = 3, 2, (7, 8)
    kernels = torch.view_as_complex(torch.randn((4, coils, k, k, 2), generator=gen).double())
    gram = image_space_operator(kernels, shape)
    expected = torch.zeros((*shape, coils, coils), dtype=torch.complex128)
    for y, x in itertools.product(range(shape[0]), range(shape[1])):
        wy = 2 * math.pi * (y - shape[0] // 2) / shape[0]
        wx = 2 * math.pi * (x - shape[1] // 2) / shape[1]
        a = torch.arange(k, dtype=torch.float64)
        phase = torch.polar(torch.ones(k, k, dtype=torch.float64), wy * a[:, None] + wx * a)
        g = (kernels * phase).sum(dim=(-2, -1)) / k  # (n, C)
        expected[y, x] = g.T @ g.conj()
    assert torch.allclose(gram, expected, atol=1e-12)


def test_crop_keeps_fewer_pixels_as_it_rises(case):
    _, kspace, _ = case
    kept = [
        int((rss(espirit_maps(kspace, (24, 24), crop=crop), dim=0) > 0.5).sum())
        for crop in (0.0, 0.9, 0.99)
    ]
    assert kept[0] == SIZE * SIZE and kept[0] >= kept[1] >= kept[2]


def test_espirit_does_not_depend_on_the_data_scale():
    kspace = simulate_multicoil(_phantom(64), synthetic_maps(4, (64, 64)))
    kspace = _noisy(kspace)
    maps = espirit_maps(kspace, (20, 20))
    assert torch.allclose(espirit_maps(1e4 * kspace, (20, 20)), maps, atol=1e-4)


def test_espirit_keeps_double_precision_and_runs_on_cuda_when_there_is_one(case):
    _, kspace, _ = case
    maps = espirit_maps(kspace.to(torch.complex128), (24, 24))
    assert maps.dtype == torch.complex128
    if torch.cuda.is_available():
        on_gpu = espirit_maps(kspace.cuda(), (24, 24))
        assert on_gpu.device.type == "cuda"
        inner = rss(maps, dim=0) > 0.5
        assert (
            float(_phase_free_error(on_gpu.cpu(), maps.to(torch.complex64))[:, inner].max()) < 1e-3
        )


def test_too_small_a_centre_falls_back_to_lowres_maps():
    image = _phantom(64)
    kspace = simulate_multicoil(image, synthetic_maps(4, image.shape))
    for centre, expected in ((8, "lowres"), (11, "lowres"), (12, "espirit")):
        mask = make_mask("random", image.shape, acceleration=4, center_fraction=centre / 64, seed=1)
        # make the centre exactly `centre` lines wide
        mask[:, 32 - centre // 2 - 1] = False
        mask[:, 32 - centre // 2 + centre] = False
        assert centred_fully_sampled_box(mask) == (64, centre)
        result = sensitivity_maps(kspace * torch.from_numpy(mask), mask)
        assert result.method == expected
        assert result.maps.shape == kspace.shape
    assert sensitivity_maps(kspace, None, "lowres").method == "lowres"
    assert sensitivity_maps(kspace, None, kernel=4).method == "espirit"


def test_sensitivity_maps_refuse_what_they_cannot_do():
    kspace = simulate_multicoil(_phantom(64), synthetic_maps(4, (64, 64)))
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, 31:34] = True
    with pytest.raises(ValueError, match="at least 4x4"):
        sensitivity_maps(kspace * torch.from_numpy(mask), mask)
    with pytest.raises(ValueError, match="unknown coil map method"):
        sensitivity_maps(kspace, None, "walsh")  # type: ignore[arg-type]


def test_espirit_refuses_bad_input():
    kspace = simulate_multicoil(_phantom(64), synthetic_maps(4, (64, 64)))
    with pytest.raises(ValueError, match="complex tensor"):
        espirit_maps(kspace.real)
    with pytest.raises(ValueError, match="at least as large as the kernel"):
        espirit_maps(kspace, (5, 24))
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, 20:44] = True
    with pytest.raises(ValueError, match="not fully sampled"):
        espirit_maps(kspace, (24, 32), mask=mask)
    with pytest.raises(ValueError, match="kernel"):
        espirit_maps(kspace, (24, 24), kernel=0)
    with pytest.raises(ValueError, match="threshold"):
        espirit_maps(kspace, (24, 24), threshold=1.5)
    with pytest.raises(ValueError, match="crop"):
        espirit_maps(kspace, (24, 24), crop=-0.1)
    with pytest.raises(ValueError, match="zero"):
        espirit_maps(torch.zeros_like(kspace), (24, 24))


def _brute_force_box_is_valid_and_maximal(mask, box):
    h, w = mask.shape

    def full(ny, nx):
        if ny > h or nx > w:
            return False
        y0, x0 = h // 2 - ny // 2, w // 2 - nx // 2
        return bool(mask[y0 : y0 + ny, x0 : x0 + nx].all())

    ny, nx = box
    return full(ny, nx) and not full(ny + 1, nx) and not full(ny, nx + 1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(16, 16), (15, 20)])
def test_the_centred_box_is_fully_sampled_and_cannot_grow(seed, shape):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.9
    mask[shape[0] // 2, shape[1] // 2] = True
    box = centred_fully_sampled_box(mask)
    assert _brute_force_box_is_valid_and_maximal(mask, box)
    assert centred_fully_sampled_box(torch.from_numpy(mask)) == box


def test_the_centred_box_of_simple_masks():
    assert centred_fully_sampled_box(np.ones((10, 12), dtype=bool)) == (10, 12)
    centre_missing = np.ones((10, 12), dtype=bool)
    centre_missing[5, 6] = False
    assert centred_fully_sampled_box(centre_missing) == (0, 0)
    lines = np.zeros((10, 12), dtype=bool)
    lines[:, 4:9] = True  # 5 centred columns: 6 - 5 // 2 = 4
    assert centred_fully_sampled_box(lines) == (10, 5)
    assert MAX_CALIBRATION == 32
