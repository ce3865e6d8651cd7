"""The covariance family against dense linear algebra on small images (float64).

The structured factor is rebuilt here from its definition with a plain double loop over pixels
and offsets, independently of the module, and every operation is compared with the dense
matrices built from it.
"""

from __future__ import annotations

import math

import pytest
import torch

from napari_genreg.models.covariance import (
    MAX_DENSE_PIXELS,
    SOLVE_GROWTH_LIMIT,
    Covariance,
    DiagonalCovariance,
    IdentityCovariance,
    StructuredCovariance,
    UnstableFactorError,
    split_signs,
    stencil_offsets,
)

DTYPE = torch.float64


# --------------------------------------------------------------------------------------------
# Independent dense references
# --------------------------------------------------------------------------------------------


def reference_factor(log_diagonal: torch.Tensor, off_diagonal: torch.Tensor, k: int):
    """Dense L (B, N, N) from the definition: a double loop over pixels and stencil offsets."""
    b, h, w = log_diagonal.shape
    r = (k - 1) // 2
    before_centre = [
        (dy, dx) for dy in range(-r, 1) for dx in range(-r, r + 1) if (dy, dx) < (0, 0)
    ]
    n = h * w
    factor = torch.zeros(b, n, n, dtype=log_diagonal.dtype)
    for row in range(h):
        for col in range(w):
            i = row * w + col
            factor[:, i, i] = torch.exp(log_diagonal[:, row, col])
            for m, (dy, dx) in enumerate(before_centre):
                nr, nc = row + dy, col + dx
                if 0 <= nr < h and 0 <= nc < w:
                    factor[:, i, nr * w + nc] = off_diagonal[:, m, row, col]
    return factor


def random_structured(k: int, h: int, w: int, batch: int = 2, seed: int = 0, scale: float = 0.4):
    gen = torch.Generator().manual_seed(seed)
    m = (k * k - 1) // 2
    log_diagonal = 0.3 * torch.randn(batch, h, w, generator=gen, dtype=DTYPE)
    off_diagonal = scale * torch.randn(batch, m, h, w, generator=gen, dtype=DTYPE)
    return StructuredCovariance(log_diagonal, off_diagonal, k)


def random_identity(h: int, w: int, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return IdentityCovariance(0.5 * torch.randn(batch, generator=gen, dtype=DTYPE), (h, w))


def random_diagonal(h: int, w: int, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return DiagonalCovariance(0.5 * torch.randn(batch, h, w, generator=gen, dtype=DTYPE))


def reference(cov) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense (factor, Sigma) for any variant, built without the module's dense methods."""
    b, (h, w) = cov.batch_size, cov.shape
    n = h * w
    if isinstance(cov, StructuredCovariance):
        factor = reference_factor(cov.log_diagonal, cov.off_diagonal, cov.stencil)
    elif isinstance(cov, DiagonalCovariance):
        factor = torch.diag_embed(torch.exp(-0.5 * cov.log_variance).reshape(b, n))
    else:
        factor = torch.exp(-cov.log_scale)[:, None, None] * torch.eye(n, dtype=DTYPE)
    sigma = torch.linalg.inv(factor @ factor.mT)
    return factor, sigma


def flat(x: torch.Tensor) -> torch.Tensor:
    """(..., B, H, W) -> (..., B, N, 1)."""
    return x.flatten(-2)[..., None]


STRUCTURED_CASES = [(3, 5, 6), (5, 7, 7), (7, 5, 6), (5, 3, 9), (7, 2, 3), (3, 1, 4)]


def all_variants():
    return [
        pytest.param(lambda: random_identity(5, 6), id="identity"),
        pytest.param(lambda: random_diagonal(5, 6), id="diagonal"),
        *(
            pytest.param(lambda k=k, h=h, w=w: random_structured(k, h, w), id=f"k{k}-{h}x{w}")
            for k, h, w in STRUCTURED_CASES
        ),
    ]


# --------------------------------------------------------------------------------------------
# The stencil
# --------------------------------------------------------------------------------------------


def test_stencil_offsets_are_the_neighbours_before_the_centre_in_raster_order():
    assert stencil_offsets(3) == [(-1, -1), (-1, 0), (-1, 1), (0, -1)]
    for k, m in [(3, 4), (5, 12), (7, 24)]:
        offsets = stencil_offsets(k)
        assert len(offsets) == m == (k * k - 1) // 2
        assert offsets == sorted(offsets)  # raster order of the stencil
        r = (k - 1) // 2
        assert all(dy < 0 or (dy == 0 and dx < 0) for dy, dx in offsets)
        assert all(abs(dy) <= r and abs(dx) <= r for dy, dx in offsets)


@pytest.mark.parametrize("k", [0, 1, 2, 4, -3, 5.0, True])
def test_stencil_offsets_refuse_even_or_small_stencils(k):
    with pytest.raises(ValueError, match="stencil"):
        stencil_offsets(k)


# --------------------------------------------------------------------------------------------
# Every variant against dense linear algebra
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", all_variants())
def test_is_a_covariance(make):
    assert isinstance(make(), Covariance)


@pytest.mark.parametrize("make", all_variants())
def test_logdet_and_mahalanobis_match_dense(make):
    cov = make()
    _, sigma = reference(cov)
    sign, logabsdet = torch.linalg.slogdet(sigma)
    assert torch.all(sign > 0)
    torch.testing.assert_close(cov.logdet(), logabsdet)
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(3, cov.batch_size, *cov.shape, generator=gen, dtype=DTYPE)
    expected = (flat(r).mT @ torch.linalg.inv(sigma) @ flat(r))[..., 0, 0]
    torch.testing.assert_close(cov.mahalanobis(r), expected)
    torch.testing.assert_close(cov.mahalanobis(r[0]), expected[0])


@pytest.mark.parametrize("make", all_variants())
def test_linear_maps_match_dense(make):
    cov = make()
    factor, sigma = reference(cov)
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(2, 3, cov.batch_size, *cov.shape, generator=gen, dtype=DTYPE)

    def check(result, matrix):
        assert result.shape == v.shape
        torch.testing.assert_close(flat(result), matrix @ flat(v))

    check(cov.precision(v), torch.linalg.inv(sigma))
    check(cov.factor(v), factor)
    check(cov.factor_t(v), factor.mT)
    lower = isinstance(cov, StructuredCovariance)
    eye = torch.eye(factor.shape[-1], dtype=DTYPE).expand_as(factor)
    check(cov.solve_factor(v), torch.linalg.solve_triangular(factor, eye, upper=not lower))
    check(cov.solve_factor_t(v), torch.linalg.solve_triangular(factor.mT, eye, upper=lower))


@pytest.mark.parametrize("make", all_variants())
def test_columns_variance_correlation_and_dense_match_dense(make):
    cov = make()
    _, sigma = reference(cov)
    b, (h, w) = cov.batch_size, cov.shape
    torch.testing.assert_close(cov.dense(), sigma)
    variance = torch.diagonal(sigma, dim1=-2, dim2=-1)
    torch.testing.assert_close(cov.variance(), variance.reshape(b, h, w))
    for pixel in {(0, 0), (h // 2, w // 2), (h - 1, w - 1), (h - 1, 0), (0, w - 1)}:
        p = pixel[0] * w + pixel[1]
        column = cov.column(pixel)
        assert column.shape == (b, h, w)
        torch.testing.assert_close(column.reshape(b, -1), sigma[:, :, p])
        expected = sigma[:, :, p] / torch.sqrt(variance[:, p, None] * variance)
        torch.testing.assert_close(cov.correlation(pixel).reshape(b, -1), expected)


@pytest.mark.parametrize("make", all_variants())
def test_complex_inputs_are_mapped_part_by_part(make):
    cov = make()
    factor, sigma = reference(cov)
    gen = torch.Generator().manual_seed(3)
    parts = torch.randn(2, cov.batch_size, *cov.shape, generator=gen, dtype=DTYPE)
    v = torch.complex(parts[0], parts[1])
    assert v.dtype == torch.complex128
    precision = torch.linalg.inv(sigma).to(v.dtype)
    result = cov.precision(v)
    assert result.dtype == v.dtype
    torch.testing.assert_close(flat(result), precision @ flat(v))
    torch.testing.assert_close(flat(cov.factor_t(v)), factor.mT.to(v.dtype) @ flat(v))
    expected = (flat(v).mH @ precision @ flat(v))[..., 0, 0]
    torch.testing.assert_close(cov.mahalanobis(v), expected.real)
    back = cov.solve_factor(cov.factor(v))
    torch.testing.assert_close(back, v)


# --------------------------------------------------------------------------------------------
# Structured specifics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "h", "w"), STRUCTURED_CASES)
def test_structured_dense_factor_matches_the_definition(k, h, w):
    cov = random_structured(k, h, w)
    expected = reference_factor(cov.log_diagonal, cov.off_diagonal, k)
    torch.testing.assert_close(cov.dense_factor(), expected)


def test_structured_off_diagonals_pointing_outside_the_image_are_ignored():
    cov = random_structured(5, 4, 5)
    changed = cov.off_diagonal.clone()
    for m, (dy, dx) in enumerate(stencil_offsets(5)):
        for row in range(4):
            for col in range(5):
                if not (0 <= row + dy < 4 and 0 <= col + dx < 5):
                    changed[:, m, row, col] += 10.0
    assert not torch.equal(changed, cov.off_diagonal)
    other = StructuredCovariance(cov.log_diagonal, changed, 5)
    torch.testing.assert_close(other.dense(), cov.dense())
    torch.testing.assert_close(other.column((2, 2)), cov.column((2, 2)))
    torch.testing.assert_close(other.variance(), cov.variance())
    v = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(13), dtype=DTYPE)
    torch.testing.assert_close(other.factor_t(v), cov.factor_t(v))
    torch.testing.assert_close(other.solve_factor(v), cov.solve_factor(v))


def test_an_unstable_factor_is_an_error_not_a_column():
    """Weights beyond diagonal dominance can make the recursion explode: each pixel three times
    its left neighbour grows by 3**15 across a row of 16; the solves say so."""
    h, w = 4, 16
    log_diagonal = torch.zeros(1, h, w, dtype=DTYPE)
    off = torch.zeros(1, 4, h, w, dtype=DTYPE)
    left = stencil_offsets(3).index((0, -1))
    off[:, left] = -3.0  # L[i, i - 1] = -3: x_i = e_i + 3 x_{i-1}
    unstable = StructuredCovariance(log_diagonal, off, 3)
    with pytest.raises(FloatingPointError, match="unstable"):
        unstable.column((0, 0))
    with pytest.raises(FloatingPointError, match="unstable"):
        unstable.sample(1, torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match="unstable"):
        unstable.variance()
    # batched with a stable factor whose right-hand side is far larger: still caught
    both = StructuredCovariance(
        log_diagonal.repeat(2, 1, 1), torch.cat([torch.zeros_like(off), off]), 3
    )
    rhs = torch.zeros(2, h, w, dtype=DTYPE)
    rhs[0, 0, 0], rhs[1, 0, 0] = 1e12, 1.0
    with pytest.raises(UnstableFactorError, match="grew by"):
        both.solve_factor(rhs)
    assert issubclass(UnstableFactorError, ValueError)  # the CLI and the GUI report it
    with pytest.raises(ValueError, match="non-finite"):
        both.solve_factor(torch.full((2, h, w), math.nan, dtype=DTYPE))
    # beyond dominance but stable (each pixel 1.2 times its left neighbour: 1.2**15 = 15)
    off[:, left] = -1.2
    column = StructuredCovariance(log_diagonal, off, 3).column((0, 0))
    assert torch.isfinite(column).all() and column.abs().max() < SOLVE_GROWTH_LIMIT


def test_column_of_a_large_structured_image_matches_a_dense_column_of_the_precision_inverse():
    # 30 x 40 (N = 1200): many row chunks and a column far from the top.
    cov = random_structured(5, 30, 40, batch=1, scale=0.2)
    column = cov.column((21, 7))
    e = torch.zeros(1, 30, 40, dtype=DTYPE)
    e[0, 21, 7] = 1.0
    torch.testing.assert_close(cov.precision(column), e, atol=1e-10, rtol=0)


def test_exact_variance_of_a_wider_image_matches_dense():
    cov = random_structured(5, 9, 40, batch=1, scale=0.3)
    _, sigma = reference(cov)
    torch.testing.assert_close(
        cov.variance().reshape(1, -1), torch.diagonal(sigma, dim1=-2, dim2=-1)
    )


def test_monte_carlo_variance_is_within_its_stated_error():
    cov = random_structured(5, 16, 16, batch=1, scale=0.3)
    exact = cov.variance()
    samples = 256
    estimate = cov.variance(samples=samples, generator=torch.Generator().manual_seed(4))
    relative = estimate / exact - 1.0
    stated = math.sqrt(2.0 / samples)  # the documented relative standard error
    rms = relative.square().mean().sqrt().item()
    assert 0.6 * stated < rms < 1.4 * stated
    assert relative.abs().max().item() < 5 * stated
    correlation = cov.correlation((8, 3), variance=estimate)
    assert correlation[0, 8, 3] == 1.0
    with pytest.raises(ValueError, match="variance must have shape"):
        cov.correlation((8, 3), variance=estimate[0])


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: random_structured(3, 4, 4, batch=1, scale=0.5), id="structured-3"),
        pytest.param(lambda: random_structured(5, 4, 4, batch=1, scale=0.5), id="structured-5"),
        pytest.param(lambda: random_diagonal(4, 4, batch=1), id="diagonal"),
        pytest.param(lambda: random_identity(4, 4, batch=1), id="identity"),
    ],
)
def test_empirical_covariance_of_samples_matches_sigma(make):
    cov = make()
    _, sigma = reference(cov)
    n = 20000
    x = cov.sample(n, torch.Generator().manual_seed(5))
    assert x.shape == (n, 1, 4, 4)
    x = x.reshape(n, 16)
    sigma = sigma[0]
    empirical = x.mT @ x / n
    var = torch.diagonal(sigma)
    standard_error = torch.sqrt((var[:, None] * var[None, :] + sigma.square()) / n)
    assert torch.all((empirical - sigma).abs() < 5 * standard_error)
    assert torch.all(x.mean(0).abs() < 5 * torch.sqrt(var / n))


def test_sampling_uses_only_the_given_generator():
    cov = random_structured(5, 6, 7)
    state = torch.get_rng_state()
    first = cov.sample(4, torch.Generator().manual_seed(6))
    estimate = cov.variance(samples=8, generator=torch.Generator().manual_seed(6))
    second = cov.sample(4, torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)
    assert estimate.shape == (2, 6, 7)
    with pytest.raises(ValueError, match="generator"):
        cov.variance(samples=8)
    with pytest.raises(ValueError, match="Generator"):
        cov.sample(4, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        cov.sample(0, torch.Generator())


def test_split_signs():
    c = torch.tensor([[-2.0, 0.0, 3.0], [1.5, -0.5, 0.0]])
    positive, negative = split_signs(c)
    torch.testing.assert_close(positive - negative, c)
    assert torch.all(positive >= 0) and torch.all(negative >= 0)
    assert torch.all(positive * negative == 0)
    torch.testing.assert_close(positive, torch.tensor([[0.0, 0.0, 3.0], [1.5, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="real"):
        split_signs(torch.zeros(2, dtype=torch.complex64))


def test_float32_agrees_with_float64():
    cov = random_structured(5, 12, 10, batch=1, scale=0.3)
    single = StructuredCovariance(cov.log_diagonal.float(), cov.off_diagonal.float(), 5)
    for a, b in [
        (single.column((6, 4)), cov.column((6, 4))),
        (single.variance(), cov.variance()),
        (single.logdet(), cov.logdet()),
    ]:
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def _gradcheck_inputs(seed: int, *shapes):
    gen = torch.Generator().manual_seed(seed)
    return [
        (0.3 * torch.randn(*shape, generator=gen, dtype=DTYPE)).requires_grad_() for shape in shapes
    ]


def test_structured_gradients_match_finite_differences():
    log_diagonal, off_diagonal = _gradcheck_inputs(7, (2, 3, 4), (2, 12, 3, 4))
    r = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(8), dtype=DTYPE)

    def logdet(ld, off):
        return StructuredCovariance(ld, off, 5).logdet()

    def mahalanobis(ld, off):
        return StructuredCovariance(ld, off, 5).mahalanobis(r)

    for fn in (logdet, mahalanobis):
        assert torch.autograd.gradcheck(fn, (log_diagonal, off_diagonal))


def test_gradients_flow_through_the_solves():
    log_diagonal, off_diagonal = _gradcheck_inputs(14, (1, 3, 3), (1, 4, 3, 3))

    def column(ld, off):
        return StructuredCovariance(ld, off, 3).column((1, 2))

    def variance(ld, off):
        return StructuredCovariance(ld, off, 3).variance()

    for fn in (column, variance):
        assert torch.autograd.gradcheck(fn, (log_diagonal, off_diagonal))


def test_diagonal_and_identity_gradients_match_finite_differences():
    (log_variance,) = _gradcheck_inputs(9, (2, 3, 4))
    (log_scale,) = _gradcheck_inputs(10, (2,))
    r = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(11), dtype=DTYPE)
    assert torch.autograd.gradcheck(lambda lv: DiagonalCovariance(lv).logdet(), (log_variance,))
    assert torch.autograd.gradcheck(
        lambda lv: DiagonalCovariance(lv).mahalanobis(r), (log_variance,)
    )
    assert torch.autograd.gradcheck(
        lambda ls: IdentityCovariance(ls, (3, 4)).logdet(), (log_scale,)
    )
    assert torch.autograd.gradcheck(
        lambda ls: IdentityCovariance(ls, (3, 4)).mahalanobis(r), (log_scale,)
    )


def test_gradient_of_the_objective_converges_under_a_shrinking_step():
    # 1/2 ||r||^2_{Sigma^-1} + log det Sigma along a random direction: the central-difference
    # error falls like step^2.
    cov = random_structured(5, 6, 5, batch=1, scale=0.3)
    gen = torch.Generator().manual_seed(12)
    r = torch.randn(1, 6, 5, generator=gen, dtype=DTYPE)
    directions = [
        torch.randn(p.shape, generator=gen, dtype=DTYPE)
        for p in (cov.log_diagonal, cov.off_diagonal)
    ]

    def objective(ld, off):
        c = StructuredCovariance(ld, off, 5)
        return (0.5 * c.mahalanobis(r) + c.logdet()).sum()

    params = [cov.log_diagonal.clone().requires_grad_(), cov.off_diagonal.clone().requires_grad_()]
    objective(*params).backward()
    analytic = sum((p.grad * d).sum() for p, d in zip(params, directions, strict=True)).item()
    errors = []
    for step in (1e-1, 1e-2, 1e-3):
        plus = objective(*(p.detach() + step * d for p, d in zip(params, directions, strict=True)))
        minus = objective(*(p.detach() - step * d for p, d in zip(params, directions, strict=True)))
        errors.append(abs((plus - minus).item() / (2 * step) - analytic))
    assert errors[1] < 0.02 * errors[0] and errors[2] < 0.02 * errors[1] + 1e-9


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------


def test_structured_refuses_inconsistent_parameters():
    ld = torch.zeros(2, 5, 6)
    with pytest.raises(ValueError, match=r"M, H, W\) = \(2, 12, 5, 6\)"):
        StructuredCovariance(ld, torch.zeros(2, 4, 5, 6), 5)  # M for k = 3
    with pytest.raises(ValueError, match="off_diagonal must have shape"):
        StructuredCovariance(ld, torch.zeros(2, 12, 5, 7), 5)  # W mismatch
    with pytest.raises(ValueError, match="off_diagonal must have shape"):
        StructuredCovariance(ld, torch.zeros(1, 12, 5, 6), 5)  # B mismatch
    with pytest.raises(ValueError, match="off_diagonal must have shape"):
        StructuredCovariance(ld, torch.zeros(2, 12, 5), 5)
    for k in (4, 1, 2, 6.0):
        with pytest.raises(ValueError, match="odd integer >= 3"):
            StructuredCovariance(ld, torch.zeros(2, 12, 5, 6), k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_diagonal must have shape"):
        StructuredCovariance(torch.zeros(5, 6), torch.zeros(1, 12, 5, 6), 5)
    with pytest.raises(ValueError, match="real floating"):
        StructuredCovariance(ld.long(), torch.zeros(2, 12, 5, 6), 5)
    with pytest.raises(ValueError, match="same dtype"):
        StructuredCovariance(ld, torch.zeros(2, 12, 5, 6, dtype=DTYPE), 5)


def test_diagonal_and_identity_refuse_bad_parameters():
    with pytest.raises(ValueError, match="log_variance must have shape"):
        DiagonalCovariance(torch.zeros(5, 6))
    with pytest.raises(ValueError, match="real floating"):
        DiagonalCovariance(torch.zeros(1, 5, 6, dtype=torch.complex64))
    with pytest.raises(ValueError, match="log_scale must have shape"):
        IdentityCovariance(torch.zeros(2, 1), (5, 6))
    for shape in [(5,), (0, 6), (5, 6, 1), (5.0, 6)]:
        with pytest.raises(ValueError, match="shape must be a pair"):
            IdentityCovariance(torch.zeros(2), shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", all_variants())
def test_methods_refuse_wrong_inputs(make):
    cov = make()
    b, (h, w) = cov.batch_size, cov.shape
    with pytest.raises(ValueError, match=r"\(\.\.\., B, H, W\)"):
        cov.mahalanobis(torch.zeros(b, h, w + 1, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"\(\.\.\., B, H, W\)"):
        cov.precision(torch.zeros(b + 1, h, w, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"\(\.\.\., B, H, W\)"):
        cov.solve_factor_t(torch.zeros(h, w, dtype=DTYPE))
    with pytest.raises(ValueError, match="dtype"):
        cov.factor(torch.zeros(b, h, w, dtype=torch.float32))
    with pytest.raises(ValueError, match="outside"):
        cov.column((h, 0))
    with pytest.raises(ValueError, match="pair of ints"):
        cov.correlation((0.0, 1))  # type: ignore[arg-type]


def test_dense_refuses_large_images():
    side = math.isqrt(MAX_DENSE_PIXELS) + 1
    for cov in [
        random_structured(3, side, side, batch=1),
        random_diagonal(side, side, batch=1),
        random_identity(side, side, batch=1),
    ]:
        with pytest.raises(ValueError, match="dense"):
            cov.dense()
