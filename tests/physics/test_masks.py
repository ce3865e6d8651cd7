"""Tests of the k-space sampling masks; the shared tests run over every entry of MASKS."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from napari_genreg.physics import masks
from napari_genreg.physics.masks import (
    MASKS,
    ONE_D,
    TWO_D,
    MaskFunction,
    PoissonDiscMask,
    RadialMask,
    RandomMask,
    achieved_acceleration,
    default_center_fraction,
    make_mask,
    validate_mask,
)

NAMES = sorted(MASKS)
SHAPES = [(32, 32), (33, 47), (64, 128), (127, 96), (256, 256)]


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------


def test_registry_is_consistent():
    assert ONE_D | TWO_D == set(MASKS)
    assert not ONE_D & TWO_D
    assert {"random", "equispaced", "gaussian1d"} == ONE_D
    assert {"gaussian2d", "poisson", "radial", "spiral"} == TWO_D
    for name, cls in MASKS.items():
        assert cls.name == name
        assert issubclass(cls, MaskFunction)


@pytest.mark.parametrize("name", NAMES)
def test_mask_functions_are_frozen_values(name):
    f = MASKS[name](acceleration=4, center_fraction=0.08)
    assert f == MASKS[name](acceleration=4, center_fraction=0.08)
    assert hash(f) == hash(MASKS[name](acceleration=4, center_fraction=0.08))
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.acceleration = 2  # type: ignore[misc]


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        MaskFunction(acceleration=4, center_fraction=0.08)  # type: ignore[abstract]


def test_a_subclass_overrides_one_method():
    @dataclasses.dataclass(frozen=True)
    class EveryOther(MaskFunction):
        name = "every_other"
        sampling_dims = 1

        def _draw(self, shape, rng):
            mask = np.zeros(shape, dtype=bool)
            mask[:, ::2] = True
            return mask

    mask = EveryOther(acceleration=2, center_fraction=0.25)((8, 8))
    expected = np.zeros((8, 8), dtype=bool)
    expected[:, ::2] = True
    expected[:, 3:5] = True  # round(8 * 0.25) = 2 centre lines around index 4
    np.testing.assert_array_equal(mask, expected)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown mask 'nope'") as info:
        make_mask("nope", (32, 32), acceleration=4)
    for name in NAMES:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        default_center_fraction("nope", 4)


# --------------------------------------------------------------------------------------------
# shared behaviour of every mask
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(32, 32), (33, 47), (64, 20)])
def test_shape_and_dtype(name, shape):
    mask = make_mask(name, shape, acceleration=4, seed=0)
    assert isinstance(mask, np.ndarray)
    assert mask.shape == shape
    assert mask.dtype == np.bool_
    assert mask.any()


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_mask_different_seeds_differ(name):
    draws = [make_mask(name, (64, 64), acceleration=4, seed=s) for s in range(6)]
    np.testing.assert_array_equal(draws[0], make_mask(name, (64, 64), acceleration=4, seed=0))
    # an int seed and a generator made from it give the same mask
    rng_mask = make_mask(name, (64, 64), acceleration=4, seed=np.random.default_rng(0))
    np.testing.assert_array_equal(draws[0], rng_mask)
    # equispaced has few offsets, so two seeds may agree; six seeds cannot all agree
    distinct = {d.tobytes() for d in draws}
    assert len(distinct) > 1 if name == "equispaced" else len(distinct) == len(draws)


@pytest.mark.parametrize("name", NAMES)
def test_a_generator_is_advanced(name):
    rng = np.random.default_rng(5)
    f = MASKS[name](acceleration=4, center_fraction=0.08)
    draws = {f((64, 64), rng).tobytes() for _ in range(6)}
    assert len(draws) > 1


@pytest.mark.parametrize("name", NAMES)
def test_global_random_state_is_untouched(name):
    # reads the legacy global state on purpose: drawing a mask must leave it alone
    np_state = np.random.get_state()  # noqa: NPY002
    torch_state = torch.random.get_rng_state()
    make_mask(name, (48, 40), acceleration=4, seed=3)
    make_mask(name, (48, 40), acceleration=4, seed=np.random.default_rng(3))
    after = np.random.get_state()  # noqa: NPY002
    assert np_state[0] == after[0]
    np.testing.assert_array_equal(np_state[1], after[1])
    assert np_state[2:] == after[2:]
    assert torch.equal(torch_state, torch.random.get_rng_state())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("shape", "fraction"), [((64, 64), 0.1), ((33, 47), 0.08)])
def test_centre_is_fully_sampled(name, shape, fraction):
    f = MASKS[name](acceleration=4, center_fraction=fraction)
    centre = f.center_mask(shape)
    mask = f(shape, seed=1)
    assert centre.any()
    assert mask[centre].all()
    assert mask[shape[0] // 2, shape[1] // 2]  # DC
    cols = np.flatnonzero(centre.any(axis=0))
    assert cols.size == round(shape[1] * fraction)
    assert shape[1] // 2 in cols
    if name in TWO_D:
        rows = np.flatnonzero(centre.any(axis=1))
        assert rows.size == round(shape[0] * fraction)
        assert centre.sum() == rows.size * cols.size
    else:
        assert centre[:, cols].all()


@pytest.mark.parametrize("name", NAMES)
def test_full_sampling_at_acceleration_one(name):
    mask = make_mask(name, (33, 40), acceleration=1, seed=0)
    assert mask.all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"acceleration": 0.5, "center_fraction": 0.08},
        {"acceleration": float("nan"), "center_fraction": 0.08},
        {"acceleration": float("inf"), "center_fraction": 0.08},
        {"acceleration": 4, "center_fraction": 1.0},
        {"acceleration": 4, "center_fraction": -0.1},
    ],
)
def test_bad_parameters_are_refused(name, kwargs):
    with pytest.raises(ValueError):
        MASKS[name](**kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(0, 8), (8,), (8, 8, 8), (8.0, 8), ("a", 8), (True, 8), 8])
def test_bad_shapes_are_refused(name, shape):
    with pytest.raises(ValueError, match="shape"):
        MASKS[name](acceleration=4, center_fraction=0.08)(shape)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [None, 1.5, "0"])
def test_seed_must_be_explicit(name, seed):
    with pytest.raises(TypeError, match="seed"):
        make_mask(name, (16, 16), acceleration=2, seed=seed)


@pytest.mark.parametrize("name", NAMES)
def test_a_centre_larger_than_the_budget_is_refused(name):
    # 1-D: 0.3 of the lines > 1/8; 2-D: 0.5 x 0.5 of the grid > 1/8
    fraction = 0.3 if name in ONE_D else 0.5
    with pytest.raises(ValueError, match="center_fraction"):
        make_mask(name, (64, 64), acceleration=8, center_fraction=fraction)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("acceleration", [2, 4, 8, 16, 40])
def test_default_centre_fits_the_budget(name, acceleration):
    fraction = default_center_fraction(name, acceleration)
    assert 0 < fraction <= 0.08
    mask = make_mask(name, (128, 96), acceleration=acceleration, seed=0)
    assert mask[MASKS[name](acceleration, fraction).center_mask((128, 96))].all()


# --------------------------------------------------------------------------------------------
# 1-D masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ONE_D))
def test_one_d_masks_select_whole_lines_on_the_last_axis(name):
    mask = make_mask(name, (40, 96), acceleration=4, seed=2)
    np.testing.assert_array_equal(mask, np.broadcast_to(mask[0], mask.shape))
    assert 0 < mask[0].sum() < 96


@pytest.mark.parametrize(("n", "acceleration"), [(320, 4), (320, 8), (97, 3), (256, 16)])
def test_random_meets_the_acceleration_in_expectation(n, acceleration):
    fractions = [
        make_mask("random", (1, n), acceleration=acceleration, seed=s).mean() for s in range(300)
    ]
    assert np.mean(fractions) * acceleration == pytest.approx(1.0, rel=0.05)


def test_random_matches_fastmri_probability():
    # fastMRI RandomMaskFunc: p = (n / R - num_low) / (n - num_low) outside the centre
    n, acceleration, fraction = 200, 4, 0.1
    f = RandomMask(acceleration=acceleration, center_fraction=fraction)
    counts = np.array([f((1, n), s)[0].sum() for s in range(400)])
    num_low = round(n * fraction)
    p = (n / acceleration - num_low) / (n - num_low)
    outside = counts - num_low
    assert outside.mean() == pytest.approx(p * (n - num_low), rel=0.03)


@pytest.mark.parametrize("n", [128, 200, 256, 320, 368])
@pytest.mark.parametrize("acceleration", [2, 3, 4, 6, 8])
def test_equispaced_is_close_to_the_acceleration(n, acceleration):
    for seed in range(4):
        mask = make_mask("equispaced", (1, n), acceleration=acceleration, seed=seed)
        assert achieved_acceleration(mask) == pytest.approx(acceleration, rel=0.1)


def test_equispaced_lines_are_equispaced_outside_the_centre():
    f = MASKS["equispaced"](acceleration=4, center_fraction=0.08)
    centre = f.center_mask((1, 320))[0]
    for seed in range(4):
        lines = np.flatnonzero(f((1, 320), seed=seed)[0] & ~centre)
        pairs = itertools.pairwise(lines)
        gaps = [b - a for a, b in pairs if not centre[a:b].any()]
        assert max(gaps) - min(gaps) <= 1  # rounding of a non-integer spacing


@pytest.mark.parametrize("n", [32, 33, 96, 320])
@pytest.mark.parametrize("acceleration", [2, 4, 5.5, 8])
def test_gaussian1d_keeps_an_exact_number_of_lines(n, acceleration):
    for seed in range(3):
        lines = make_mask("gaussian1d", (2, n), acceleration=acceleration, seed=seed)[0]
        assert lines.sum() == max(1, round(n / acceleration))


def test_gaussian1d_density_decreases_from_the_centre():
    counts = sum(
        make_mask("gaussian1d", (1, 256), acceleration=6, seed=s)[0].astype(int) for s in range(200)
    )
    distance = np.abs(np.arange(256) - 128)
    near, far = counts[(distance > 20) & (distance < 40)], counts[distance > 90]
    assert near.mean() > 3 * far.mean()


# --------------------------------------------------------------------------------------------
# 2-D masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TWO_D))
@pytest.mark.parametrize(
    ("shape", "acceleration"), list(itertools.product(SHAPES, [2, 3, 4, 8, 16]))
)
def test_two_d_masks_meet_the_acceleration(name, shape, acceleration):
    mask = make_mask(name, shape, acceleration=acceleration, seed=7)
    assert achieved_acceleration(mask) == pytest.approx(acceleration, rel=0.05)


@pytest.mark.parametrize("name", sorted(TWO_D))
def test_two_d_masks_meet_the_acceleration_on_a_large_grid(name):
    mask = make_mask(name, (512, 384), acceleration=6, seed=0)
    assert achieved_acceleration(mask) == pytest.approx(6, rel=0.05)


@pytest.mark.parametrize("name", ["gaussian2d", "poisson", "radial"])  # spiral: uniform density
def test_variable_density_masks_are_denser_at_the_centre(name):
    shape = (128, 128)
    mask = make_mask(name, shape, acceleration=6, center_fraction=0.0, seed=3)
    radius = masks._normalised_radius(shape)
    assert mask[radius < 0.3].mean() > 1.5 * mask[(radius > 0.6) & (radius < 1.0)].mean()


def test_radial_golden_angle_differs_from_even_spacing():
    even = RadialMask(acceleration=8, center_fraction=0.08)((96, 96), seed=0)
    golden = RadialMask(acceleration=8, center_fraction=0.08, golden_angle=True)((96, 96), 0)
    assert not np.array_equal(even, golden)
    assert achieved_acceleration(golden) == pytest.approx(8, rel=0.05)


def _sequential_poisson_disc(radius, order):
    """The reference: visit the candidates one by one."""
    nx = radius.shape[1]
    accepted = []
    for idx in order:
        y, x = divmod(int(idx), nx)
        if all((y - py) ** 2 + (x - px) ** 2 >= radius[py, px] ** 2 for py, px in accepted):
            accepted.append((y, x))
    mask = np.zeros(radius.shape, dtype=bool)
    for y, x in accepted:
        mask[y, x] = True
    return mask


@pytest.mark.parametrize("seed", range(3))
def test_chunked_poisson_disc_equals_the_sequential_loop(seed):
    rng = np.random.default_rng(seed)
    radius = rng.uniform(0.8, 4.0, size=(24, 30))
    order = rng.permutation(radius.size)[:500]
    expected = _sequential_poisson_disc(radius, order)
    for chunk in (1, 7, 64, 1000):
        np.testing.assert_array_equal(masks._poisson_disc(radius, order, chunk), expected)


def test_poisson_keeps_a_minimum_distance():
    mask = PoissonDiscMask(acceleration=10, center_fraction=0.0)((64, 64), seed=0)
    y, x = np.nonzero(mask)
    d2 = (y[:, None] - y[None, :]) ** 2 + (x[:, None] - x[None, :]) ** 2
    np.fill_diagonal(d2, 10**6)
    assert d2.min() >= 2  # no two samples are 4-neighbours at R = 10


# --------------------------------------------------------------------------------------------
# achieved_acceleration and validate_mask
# --------------------------------------------------------------------------------------------


def test_achieved_acceleration_of_known_masks():
    assert achieved_acceleration(np.ones((4, 4), dtype=bool)) == 1.0
    mask = np.zeros((4, 8), dtype=bool)
    mask[:, ::4] = True
    assert achieved_acceleration(mask) == 4.0
    assert achieved_acceleration([[1, 0, 0], [0, 0, 0]]) == 6.0
    with pytest.raises(ValueError, match="samples nothing"):
        achieved_acceleration(np.zeros((3, 3), dtype=bool))


@pytest.mark.parametrize(
    "mask",
    [
        np.eye(4, dtype=bool),
        np.eye(4, dtype=np.uint8),
        np.eye(4, dtype=np.int64),
        np.eye(4, dtype=np.float32),
        np.eye(4).tolist(),
    ],
)
def test_validate_mask_accepts_bool_and_zero_one(mask):
    out = validate_mask(mask, (4, 4))
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, np.eye(4, dtype=bool))


def test_validate_mask_returns_a_copy():
    mask = np.eye(4, dtype=bool)
    out = validate_mask(mask, (4, 4))
    out[0, 1] = True
    assert not mask[0, 1]


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.ones((4, 5), dtype=bool), "shape"),
        (np.ones((4,), dtype=bool), "2-D"),
        (np.ones((1, 4, 4), dtype=bool), "2-D"),
        (np.where(np.eye(4), np.nan, 1.0), "NaN"),
        (np.full((4, 4), 0.5), "0 or 1"),
        (np.eye(4) * 2, "0 or 1"),
        (-np.eye(4, dtype=int), "0 or 1"),
        (np.full((4, 4), np.inf), "0 or 1"),
        (np.eye(4, dtype=complex), "dtype"),
        (np.full((4, 4), "1"), "dtype"),
        (np.zeros((4, 4), dtype=bool), "samples nothing"),
        (np.zeros((4, 4)), "samples nothing"),
    ],
)
def test_validate_mask_refuses(mask, message):
    with pytest.raises(ValueError, match=message):
        validate_mask(mask, (4, 4))


@pytest.mark.parametrize("acceleration", [0, 0.5, -3, float("nan"), float("inf")])
def test_the_default_centre_refuses_a_bad_acceleration(acceleration):
    for name in ("random", "poisson"):
        with pytest.raises(ValueError, match="acceleration must be"):
            default_center_fraction(name, acceleration)


@pytest.mark.parametrize("name", ["random", "equispaced"])
def test_a_line_mask_that_samples_no_line_says_so(name):
    """At an acceleration above the number of lines the default centre is under a line, and
    the draw keeps none: an error naming the mask and the acceleration, not an empty mask."""
    with pytest.raises(ValueError, match=f"the {name} mask at 1000x samples none of the 128"):
        make_mask(name, (128, 128), acceleration=1000)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_an_acceleration_beyond_one_sample_is_refused(name):
    """Above as many times as there are points (2-D) or lines (1-D) a mask samples less than
    one: refused, naming mask and acceleration (gaussian1d kept one line, the 2-D masks one
    point, and a reconstruction from it was written as a result)."""
    points = 16 if MASKS[name].sampling_dims == 1 else 16 * 16
    with pytest.raises(ValueError, match=rf"the {name} mask at {2 * points}x "):
        make_mask(name, (16, 16), acceleration=2 * points, center_fraction=0.0)
    make_mask(name, (16, 16), acceleration=points / 2, center_fraction=0.0, seed=1)
