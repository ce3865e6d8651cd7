"""k-space sampling masks: 1-D Cartesian line masks and 2-D variable-density patterns.

A mask is a NumPy boolean array of shape ``(ky, kx)``; ``True`` marks a sampled k-space
location. Masks are drawn by immutable :class:`MaskFunction` values, looked up by name in the
:data:`MASKS` registry, or built in one call by :func:`make_mask`::

    >>> mask = make_mask("random", (320, 320), acceleration=4, seed=0)
    >>> mask.shape, mask.dtype
    ((320, 320), dtype('bool'))

Conventions
-----------
- **Centre.** k-space is centred as by :func:`~napari_genreg.physics.fft.fft2c`: DC sits at
  index ``n // 2`` of each axis. A fully sampled centre of ``num_low = round(n * center_fraction)``
  positions on an axis spans the indices ``n // 2 - num_low // 2 ... + num_low - 1``, so it
  always contains DC when ``num_low >= 1``.
- **1-D masks** (:data:`ONE_D`: ``random``, ``equispaced``, ``gaussian1d``) select whole lines,
  fastMRI's convention: every row ``ky`` is sampled at the same subset of positions on the
  **last** axis ``kx`` (the phase-encoding direction of fastMRI's data), so the mask is constant
  along the first axis. ``center_fraction`` is the fraction of the ``kx`` lines kept at the
  centre. ``acceleration`` is met exactly (``gaussian1d``), in expectation (``random``) or up to
  the rounding of an equispaced grid (``equispaced``).
- **2-D masks** (:data:`TWO_D`: ``gaussian2d``, ``poisson``, ``radial``, ``spiral``) follow the
  sigpy / BART conventions of an ``acceleration`` and a fully sampled calibration box: the
  centre box has ``round(ky * center_fraction)`` by ``round(kx * center_fraction)`` samples. The
  pattern's free parameter (a minimum distance, a number of spokes, a number of spiral turns)
  is found by a search, and the mask is then adjusted to exactly ``max(1, round(ky * kx /
  acceleration))`` samples, so the achieved acceleration :func:`achieved_acceleration` is the
  requested one up to that rounding.
- **Normalised radius.** Variable-density patterns use ``rho = sqrt((dy / (ky / 2)) ** 2 +
  (dx / (kx / 2)) ** 2)`` with ``(dy, dx)`` the offset from DC: ``rho = 1`` at the edges of each
  axis and ``sqrt(2)`` in the corners, so non-square grids get elliptical densities.
- **Acceleration** is ``samples / sampled = mask.size / mask.sum()`` (see
  :func:`achieved_acceleration`).
- **Randomness is explicit.** Every draw takes a seed or a :class:`numpy.random.Generator`; the
  same seed gives the same mask and the global NumPy (and torch) random state is never used.
- A centre that alone needs more samples than ``1 / acceleration`` of the grid is refused with a
  ``ValueError``; :func:`default_center_fraction` gives a centre that always fits.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "MASKS",
    "ONE_D",
    "TWO_D",
    "EquispacedMask",
    "Gaussian1DMask",
    "Gaussian2DMask",
    "MaskFunction",
    "PoissonDiscMask",
    "RadialMask",
    "RandomMask",
    "SpiralMask",
    "achieved_acceleration",
    "default_center_fraction",
    "make_mask",
    "validate_mask",
]

#: Largest default centre fraction (fastMRI's value for 4x).
DEFAULT_CENTER_FRACTION = 0.08

#: Golden angle for radial spokes over 180 degrees: ``180 / golden ratio`` (about 111.246 deg).
GOLDEN_ANGLE = math.pi * 2.0 / (1.0 + math.sqrt(5.0))


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """Return ``shape`` as a tuple of two positive Python ints, or raise ``ValueError``."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"mask shape must be a pair (ky, kx), got {shape!r}") from None
    if len(dims) != 2:
        raise ValueError(f"mask shape must be 2-D (ky, kx), got {shape!r}")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            raise ValueError(f"mask shape must hold positive integers, got {shape!r}")
    return int(dims[0]), int(dims[1])


def _make_rng(seed: int | np.random.Generator) -> np.random.Generator:
    """A generator from an int seed, or the given generator itself (never the global RNG)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"seed must be a non-negative int or a numpy.random.Generator, got {seed!r}"
        )
    return np.random.default_rng(int(seed))


def _centre_span(n: int, fraction: float) -> slice:
    """Indices of the ``round(n * fraction)`` centre positions of an axis of length ``n``."""
    num_low = min(n, round(n * fraction))
    start = n // 2 - num_low // 2
    return slice(start, start + num_low)


def _target_count(shape: tuple[int, int], acceleration: float) -> int:
    """Number of samples of a 2-D mask: ``max(1, round(ky * kx / acceleration))``."""
    return max(1, round(shape[0] * shape[1] / acceleration))


def _check_acceleration(acceleration: object) -> None:
    if isinstance(acceleration, bool) or not (
        isinstance(acceleration, numbers.Real) and acceleration >= 1
    ):
        raise ValueError(f"acceleration must be a number >= 1, got {acceleration!r}")
    if not math.isfinite(acceleration):
        raise ValueError(f"acceleration must be finite, got {acceleration!r}")


def _check_budget(kept: int, budget: float, what: str) -> None:
    if kept > budget + 1e-9:
        raise ValueError(
            f"the fully sampled centre keeps {kept} {what}, more than the {budget:g} that the "
            "acceleration allows; lower center_fraction (see default_center_fraction)"
        )


def _normalised_radius(shape: tuple[int, int]) -> np.ndarray:
    """``rho`` of the module docstring, shape ``(ky, kx)``: 0 at DC, 1 at the axis edges."""
    ny, nx = shape
    dy = (np.arange(ny) - ny // 2) / (ny / 2)
    dx = (np.arange(nx) - nx // 2) / (nx / 2)
    return np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)


def _weighted_without_replacement(
    log_weight: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of ``count`` items drawn without replacement with probabilities ``∝ weight``.

    Successive sampling by exponential keys (Efraimidis & Spirakis): item ``i`` gets the key
    ``E_i / w_i`` with ``E_i ~ Exp(1)``, and the ``count`` smallest keys win. Computed in log
    space, so weights far in a Gaussian's tail stay ordered.
    """
    if count <= 0:
        return np.zeros(0, dtype=np.intp)
    if count >= log_weight.size:
        return np.arange(log_weight.size)
    keys = np.log(rng.standard_exponential(log_weight.size)) - log_weight
    return np.argpartition(keys, count - 1)[:count]


def _match_count(
    mask: np.ndarray,
    target: int,
    key: np.ndarray,
    protected: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Adjust ``mask`` to exactly ``target`` samples.

    Removes the sampled, unprotected points of largest ``key`` or adds the unsampled points of
    smallest ``key``; ties are broken at random. ``mask``, ``key`` and ``protected`` have the
    same shape; ``target >= protected.sum()`` is required.
    """
    flat = mask.ravel().copy()
    key = key.ravel()
    tie = rng.random(flat.size)
    count = int(np.count_nonzero(flat))
    if count > target:
        cand = np.flatnonzero(flat & ~protected.ravel())
        order = cand[np.lexsort((tie[cand], key[cand]))]
        flat[order[order.size - (count - target) :]] = False
    elif count < target:
        cand = np.flatnonzero(~flat)
        order = cand[np.lexsort((tie[cand], key[cand]))]
        flat[order[: target - count]] = True
    return flat.reshape(mask.shape)


def _rasterise(u: np.ndarray, v: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Mark the grid points nearest to normalised coordinates ``(v, u)`` (any equal shapes).

    ``u`` runs along ``kx`` and ``v`` along ``ky``; ``(0, 0)`` is DC and ``±1`` the axis
    edges (pixel ``n // 2 + u * n / 2``). Points off the grid are dropped.
    """
    ny, nx = shape
    px = np.rint(nx // 2 + u.ravel() * (nx / 2)).astype(np.intp)
    py = np.rint(ny // 2 + v.ravel() * (ny / 2)).astype(np.intp)
    inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
    mask = np.zeros(shape, dtype=bool)
    mask[py[inside], px[inside]] = True
    return mask


# --------------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskFunction(abc.ABC):
    """A sampling pattern: an immutable value that draws boolean masks of shape ``(ky, kx)``.

    Subclasses set :attr:`name` and :attr:`sampling_dims` and override :meth:`_draw` only;
    :meth:`__call__` validates, makes the generator and adds the fully sampled centre.

    Parameters
    ----------
    acceleration
        Requested acceleration ``R >= 1``: about ``1 / R`` of k-space is sampled.
    center_fraction
        Fraction ``0 <= f < 1`` of the relevant axis kept fully sampled at the centre: of the
        ``kx`` lines for 1-D masks, of each axis (a box) for 2-D masks.
    """

    acceleration: float
    center_fraction: float

    name: ClassVar[str]
    #: 1 for Cartesian line masks (a subset of ``kx``), 2 for 2-D patterns.
    sampling_dims: ClassVar[int]

    def __post_init__(self) -> None:
        _check_acceleration(self.acceleration)
        if not (isinstance(self.center_fraction, numbers.Real) and 0 <= self.center_fraction < 1):
            raise ValueError(f"center_fraction must be in [0, 1), got {self.center_fraction!r}")

    def __call__(self, shape: tuple[int, int], seed: int | np.random.Generator = 0) -> np.ndarray:
        """Draw a mask.

        Parameters
        ----------
        shape
            ``(ky, kx)``, positive integers.
        seed
            An int seed (the same seed gives the same mask) or a
            :class:`numpy.random.Generator`, which is advanced. The global RNG is never used.

        Returns
        -------
        numpy.ndarray
            bool, shape ``(ky, kx)``, with :meth:`center_mask` included.
        """
        shape = _check_shape(shape)
        rng = _make_rng(seed)
        mask = np.asarray(self._draw(shape, rng), dtype=bool)
        if mask.shape != shape:
            raise RuntimeError(f"{type(self).__name__} drew shape {mask.shape}, not {shape}")
        points, unit = (shape[1], "kx lines") if self.sampling_dims == 1 else (mask.size, "points")
        if points / self.acceleration < 1:  # what was drawn is no sampling at this acceleration
            raise ValueError(
                f"the {self.name} mask at {self.acceleration:g}x asks for "
                f"{points / self.acceleration:.3g} of the {points} k-space {unit}, fewer than "
                "one: lower the acceleration"
            )
        return mask | self.center_mask(shape)

    def center_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The fully sampled centre alone: bool, shape ``(ky, kx)``.

        All rows of the ``round(kx * f)`` centre columns for 1-D masks; the
        ``round(ky * f)`` by ``round(kx * f)`` centre box for 2-D masks.
        """
        ny, nx = _check_shape(shape)
        centre = np.zeros((ny, nx), dtype=bool)
        cols = _centre_span(nx, self.center_fraction)
        if self.sampling_dims == 1:
            centre[:, cols] = True
        else:
            centre[_centre_span(ny, self.center_fraction), cols] = True
        return centre

    @abc.abstractmethod
    def _draw(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """Draw the pattern: bool, shape ``(ky, kx)``; the centre is OR-ed in afterwards."""


# --------------------------------------------------------------------------------------------
# 1-D Cartesian line masks
# --------------------------------------------------------------------------------------------


class _LineMask(MaskFunction):
    """1-D masks: draw a line pattern over ``kx`` and repeat it along ``ky``."""

    sampling_dims: ClassVar[int] = 1

    def _draw(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        nx = shape[1]
        centre = _centre_span(nx, self.center_fraction)
        num_low = centre.stop - centre.start
        _check_budget(num_low, nx / self.acceleration, "kx lines")
        lines = self._draw_lines(nx, num_low, centre, rng)
        if num_low == 0 and not lines.any():  # no centre, and n / R below a line or a draw of none
            raise ValueError(
                f"the {self.name} mask at {self.acceleration:g}x samples none of the {nx} kx "
                "lines (its centre is under one line at this acceleration): lower the "
                "acceleration, set a centre fraction or change the seed"
            )
        return np.broadcast_to(lines, shape).copy()

    @abc.abstractmethod
    def _draw_lines(
        self, n: int, num_low: int, centre: slice, rng: np.random.Generator
    ) -> np.ndarray:
        """Bool, shape ``(n,)``: the sampled ``kx`` lines (the centre is added later)."""


@dataclass(frozen=True)
class RandomMask(_LineMask):
    """Random lines, fastMRI ``RandomMaskFunc`` semantics.

    ``num_low = round(n * center_fraction)`` centre lines are always kept; every line is kept
    independently with probability ``p = (n / R - num_low) / (n - num_low)``, so the expected
    number of lines, centre included, is ``n / R``. The acceleration is met in expectation.
    Without a centre (``center_fraction = 0``, or a default centre of less than a line at a high
    acceleration) a draw may sample nothing: that is a ``ValueError`` naming the acceleration.
    """

    name: ClassVar[str] = "random"

    def _draw_lines(
        self, n: int, num_low: int, centre: slice, rng: np.random.Generator
    ) -> np.ndarray:
        # Same probability as fastMRI's subsample.RandomMaskFunc: the draw covers all lines
        # and the centre is OR-ed in, which the subtraction of num_low accounts for.
        if num_low >= n:
            return np.ones(n, dtype=bool)
        prob = (n / self.acceleration - num_low) / (n - num_low)
        return rng.random(n) < prob


@dataclass(frozen=True)
class EquispacedMask(_LineMask):
    """Equispaced lines, fastMRI ``EquispacedMaskFractionFunc`` semantics.

    Lines sit every ``a = R (n - num_low) / (n - num_low R)`` positions (rounded to the grid)
    from a random integer offset in ``[0, round(a))``; the spacing is widened from ``R`` so that
    the fraction of lines, centre included, is about ``1 / R``.
    """

    name: ClassVar[str] = "equispaced"

    def _draw_lines(
        self, n: int, num_low: int, centre: slice, rng: np.random.Generator
    ) -> np.ndarray:
        lines = np.zeros(n, dtype=bool)
        free = n - num_low * self.acceleration
        if free <= 1e-9:  # the centre alone uses the whole budget
            return lines
        # fastMRI's adjusted acceleration: (n - num_low) / a lines fall outside the centre
        # and num_low inside, n / R in all.
        spacing = self.acceleration * (n - num_low) / free
        offset = int(rng.integers(0, max(1, round(spacing))))
        positions = np.rint(np.arange(offset, n - 0.5, spacing)).astype(np.intp)
        lines[positions] = True
        return lines


@dataclass(frozen=True)
class Gaussian1DMask(_LineMask):
    """Variable-density lines drawn without replacement with Gaussian weights.

    Exactly ``max(1, round(n / R))`` lines, centre included: the lines outside the centre are
    drawn without replacement with weights ``exp(-(k - n // 2)^2 / (2 (std n)^2))``.

    Parameters
    ----------
    std
        Standard deviation of the Gaussian density as a fraction of ``n`` (default ``1/6``:
        the axis edges lie three standard deviations from DC).
    """

    std: float = 1.0 / 6.0
    name: ClassVar[str] = "gaussian1d"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std!r}")

    def _draw_lines(
        self, n: int, num_low: int, centre: slice, rng: np.random.Generator
    ) -> np.ndarray:
        lines = np.zeros(n, dtype=bool)
        lines[centre] = True
        outside = np.flatnonzero(~lines)
        extra = max(1, round(n / self.acceleration)) - num_low
        k = outside - n // 2
        log_weight = -(k**2) / (2.0 * (self.std * n) ** 2)
        lines[outside[_weighted_without_replacement(log_weight, extra, rng)]] = True
        return lines


# --------------------------------------------------------------------------------------------
# 2-D masks
# --------------------------------------------------------------------------------------------


class _PatternMask(MaskFunction):
    """2-D masks: a calibration box plus a pattern matched to the exact sample count."""

    sampling_dims: ClassVar[int] = 2

    def _draw(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        centre = self.center_mask(shape)
        target = _target_count(shape, self.acceleration)
        _check_budget(int(np.count_nonzero(centre)), target, "samples")
        if target >= centre.size:
            return np.ones(shape, dtype=bool)
        return self._draw_pattern(shape, target, centre, rng)

    @abc.abstractmethod
    def _draw_pattern(
        self,
        shape: tuple[int, int],
        target: int,
        centre: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Bool, shape ``(ky, kx)``, with exactly ``target`` samples including ``centre``."""


@dataclass(frozen=True)
class Gaussian2DMask(_PatternMask):
    """Points drawn without replacement (successive sampling) from a 2-D Gaussian density.

    Exactly ``max(1, round(ky kx / R))`` samples, calibration box included; the others are drawn
    without replacement with weights ``exp(-dy^2 / (2 (std ky)^2) - dx^2 / (2 (std kx)^2))``.

    Parameters
    ----------
    std
        Standard deviation as a fraction of each axis (default ``1/6``).
    """

    std: float = 1.0 / 6.0
    name: ClassVar[str] = "gaussian2d"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.std > 0:
            raise ValueError(f"std must be positive, got {self.std!r}")

    def _draw_pattern(
        self,
        shape: tuple[int, int],
        target: int,
        centre: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        ny, nx = shape
        dy = (np.arange(ny) - ny // 2) / (self.std * ny)
        dx = (np.arange(nx) - nx // 2) / (self.std * nx)
        log_weight = -0.5 * (dy[:, None] ** 2 + dx[None, :] ** 2)
        outside = np.flatnonzero(~centre)
        extra = target - int(np.count_nonzero(centre))
        chosen = _weighted_without_replacement(log_weight.ravel()[outside], extra, rng)
        mask = centre.copy()
        mask.ravel()[outside[chosen]] = True
        return mask


def _poisson_disc(radius: np.ndarray, order: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Greedy grid Poisson-disc selection (random sequential adsorption).

    The candidates ``order`` (flat indices, in priority order) are visited in turn; a candidate
    is accepted unless an earlier accepted point ``p`` lies closer than ``radius[p]``. The result
    is a maximal set, the same as that of the sequential loop, computed chunk by chunk: a chunk
    is first tested against a map of blocked points, then its own conflicts are resolved in
    order, then the discs of its accepted points are stamped into the map.

    Parameters
    ----------
    radius
        Minimum distance in pixels around each grid point, shape ``(ky, kx)``.
    order
        Flat indices of the candidates, shape ``(m,)``.

    Returns
    -------
    numpy.ndarray
        bool, shape ``(ky, kx)``: the accepted points.
    """
    ny, nx = radius.shape
    flat_radius = radius.ravel()
    reach = math.ceil(float(flat_radius[order].max())) if order.size else 0
    oy, ox = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    dist = np.hypot(oy, ox).ravel()
    by_dist = np.argsort(dist, kind="stable")
    oy, ox, dist = oy.ravel()[by_dist], ox.ravel()[by_dist], dist[by_dist]

    blocked = np.zeros(ny * nx, dtype=bool)
    accepted = np.zeros(ny * nx, dtype=bool)
    for start in range(0, order.size, chunk):
        cand = order[start : start + chunk]
        cand = cand[~blocked[cand]]
        if cand.size == 0:
            continue
        y, x = np.divmod(cand, nx)
        r = flat_radius[cand]
        if cand.size > 1:
            d2 = (y[:, None] - y[None, :]) ** 2 + (x[:, None] - x[None, :]) ** 2
            conflict = np.triu(d2 < (r * r)[:, None], 1)  # conflict[i, j]: i blocks j
            rows = np.flatnonzero(conflict.any(axis=1))
            if rows.size:
                keep = np.ones(cand.size, dtype=bool)
                for i in rows:
                    if keep[i]:
                        keep &= ~conflict[i]
                cand, y, x, r = cand[keep], y[keep], x[keep], r[keep]
        accepted[cand] = True
        m = int(np.searchsorted(dist, r.max(), side="left"))
        sy = y[:, None] + oy[None, :m]
        sx = x[:, None] + ox[None, :m]
        ok = (dist[None, :m] < r[:, None]) & (sy >= 0) & (sy < ny) & (sx >= 0) & (sx < nx)
        blocked[(sy * nx + sx)[ok]] = True
    return accepted.reshape(ny, nx)


@dataclass(frozen=True)
class PoissonDiscMask(_PatternMask):
    """Variable-density Poisson-disc sampling, like ``sigpy.mri.poisson`` and BART's ``poisson``.

    Samples keep a minimum distance (in pixels) that grows with the normalised k-space radius
    ``rho``: ``r(rho) = s (1 + falloff rho)``, so the density falls as about ``1 / r^2`` from the
    centre outwards. The points are placed by random sequential adsorption on the grid (a
    maximal Poisson-disc set; every grid point is visited once in random order), the scale
    ``s`` is searched (log-log secant with bisection safeguard) until the pattern has slightly
    more than the target number of samples, and the excess is removed uniformly at random,
    which keeps the minimum distance and the density profile. The calibration box is added on
    top and takes no part in the distance test.

    Parameters
    ----------
    falloff
        Slope of the minimum distance with ``rho`` (default 2: the distance at the axis edges is
        3 times that at DC, the density about 9 times lower).
    """

    falloff: float = 2.0
    name: ClassVar[str] = "poisson"

    #: Stop the search once the pattern overshoots the target by at most this fraction.
    _overshoot: ClassVar[float] = 0.03
    _max_draws: ClassVar[int] = 12

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.falloff >= 0:
            raise ValueError(f"falloff must be non-negative, got {self.falloff!r}")

    def _draw_pattern(
        self,
        shape: tuple[int, int],
        target: int,
        centre: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        profile = 1.0 + self.falloff * _normalised_radius(shape)
        outside = np.flatnonzero(~centre)
        order = outside[rng.permutation(outside.size)]
        need = target - int(np.count_nonzero(centre))
        if need <= 0:
            return centre.copy()

        def count(scale: float) -> tuple[int, np.ndarray]:
            points = _poisson_disc(scale * profile, order)
            return int(np.count_nonzero(points)), points

        # Initial guess: a jammed random packing of discs of diameter r covers about 0.55 of
        # the plane, i.e. about 0.7 / r^2 points per pixel; aim a little above the target.
        density = need / outside.size
        scale = math.sqrt(0.66 / density) / float(np.mean(profile[~centre]))
        lo: tuple[float, int] | None = None  # (scale, count) with count >= need
        hi: tuple[float, int] | None = None  # (scale, count) with count < need
        best = (-1, centre)  # the draw to keep: fewest samples >= need, else the most
        for _ in range(self._max_draws):
            n, points = count(scale)
            if n >= need:
                if best[0] < need or n < best[0]:
                    best = (n, points)
                if lo is None or scale > lo[0]:
                    lo = (scale, n)
                if n <= need * (1 + self._overshoot):
                    break
            else:
                if n > best[0]:
                    best = (n, points)
                if hi is None or scale < hi[0]:
                    hi = (scale, n)
            scale = self._next_scale(lo, hi, need)
        mask = best[1] | centre  # if short of the target, _match_count tops it up at random
        return _match_count(mask, target, rng.random(shape), centre, rng)

    @staticmethod
    def _next_scale(lo: tuple[float, int] | None, hi: tuple[float, int] | None, need: int) -> float:
        """Next scale to try: secant in ``log count`` against ``log scale``, safeguarded."""
        # the count goes about as 1 / scale^2; aim 1 % above the target
        if lo is None:
            s, n = hi  # type: ignore[misc]
            return s * min(max(math.sqrt(max(n, 1) / (1.01 * need)), 0.5), 0.98)
        if hi is None:
            s, n = lo
            return s * max(min(math.sqrt(n / (1.01 * need)), 2.0), 1.01)
        (s0, n0), (s1, n1) = lo, hi
        if n1 > 0 and n0 > n1:
            slope = (math.log(n1) - math.log(n0)) / (math.log(s1) - math.log(s0))
            guess = math.exp(math.log(s0) + (math.log(need * 1.01) - math.log(n0)) / slope)
            if s0 < guess < s1:
                # keep a step away from the ends so that the bracket shrinks
                return min(max(guess, s0 + 0.05 * (s1 - s0)), s1 - 0.05 * (s1 - s0))
        return math.sqrt(s0 * s1)


def _smallest_reaching(
    draw: Callable[[float], np.ndarray],
    need: int,
    start: float,
    upper: float,
    *,
    integer: bool,
    tolerance: float = 0.02,
    steps: int = 40,
) -> np.ndarray:
    """Search a parameter ``t`` for a pattern ``draw(t)`` with a few more than ``need`` samples.

    Assumes the count grows (roughly) with ``t`` in ``[0, upper]`` (``[1, upper]`` for
    ``integer``). Brackets the target by doubling or halving from ``start``, then bisects until
    the smallest ``t`` found with at least ``need`` samples overshoots by at most
    ``tolerance``. The pattern returned has at least ``need`` samples unless even
    ``draw(upper)`` has fewer.
    """
    lower = 1 if integer else 0.0

    def clip(t: float) -> float:
        t = min(max(t, lower), upper)
        return float(round(t)) if integer else t

    def reaches(pattern: np.ndarray) -> bool:
        return bool(np.count_nonzero(pattern) >= need)

    t = clip(start)
    pattern = draw(t)
    lo: float | None = None
    hi: float | None = None
    best = pattern
    if reaches(pattern):
        hi = t
        while lo is None and t > lower:
            t = clip(t / 2 if t / 2 > 1e-3 else lower)
            pattern = draw(t)
            if reaches(pattern):
                hi, best = t, pattern
            else:
                lo = t
        if lo is None:
            return best
    else:
        lo = t
        while hi is None:
            if t >= upper:
                return best
            t = clip(2 * t if t > 0 else 1.0)
            pattern = draw(t)
            if reaches(pattern):
                hi, best = t, pattern
            else:
                lo = t
    for _ in range(steps):
        if np.count_nonzero(best) <= need * (1 + tolerance):
            break
        mid = (lo + hi) // 2 if integer else 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        pattern = draw(mid)
        if reaches(pattern):
            hi, best = mid, pattern
        else:
            lo = mid
    return best


@dataclass(frozen=True)
class RadialMask(_PatternMask):
    """Cartesian-rasterised radial spokes through DC.

    Each spoke is a full line through the centre at angle ``theta`` in normalised coordinates
    (``(cos theta, sin theta)`` in ``(u, v)`` of the module docstring, so it spans the whole
    grid, corners included), rasterised to the nearest grid points at half-pixel steps. The
    angles are ``theta_0 + i pi / N`` (evenly spaced over 180 degrees) or, with
    ``golden_angle``, ``theta_0 + i * 111.246... deg``; ``theta_0`` is drawn from the
    generator. The number of spokes ``N`` is the smallest (by bisection) that reaches the
    target count; the excess samples of largest radius are then removed, which trims the
    spokes' ends to a common radius.

    Parameters
    ----------
    golden_angle
        Golden-angle increments instead of even spacing.
    """

    golden_angle: bool = False
    name: ClassVar[str] = "radial"

    def _draw_pattern(
        self,
        shape: tuple[int, int],
        target: int,
        centre: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        ny, nx = shape
        theta0 = rng.uniform(0.0, math.pi)
        extent = math.sqrt(2.0)
        step = 1.0 / max(ny, nx)  # half a pixel in normalised units
        t = np.arange(-extent, extent + step, step)

        def draw(spokes: int) -> np.ndarray:
            i = np.arange(spokes)
            increment = GOLDEN_ANGLE if self.golden_angle else math.pi / spokes
            theta = theta0 + i * increment
            u = np.cos(theta)[:, None] * t[None, :]
            v = np.sin(theta)[:, None] * t[None, :]
            return _rasterise(u, v, shape) | centre

        # a spoke crosses about max(ny, nx) grid points
        guess = target / max(ny, nx)
        mask = _smallest_reaching(draw, target, guess, 4 * (ny + nx), integer=True)
        return _match_count(mask, target, _normalised_radius(shape), centre, rng)


@dataclass(frozen=True)
class SpiralMask(_PatternMask):
    """Cartesian-rasterised Archimedean spiral interleaves.

    Interleave ``j`` of ``J`` is ``rho(tau) = sqrt(2) tau``, ``theta(tau) = 2 pi T tau / J +
    2 pi j / J + theta_0`` for ``tau`` in ``[0, 1]`` (normalised coordinates, out to the
    corners; points off the grid are dropped), so the ``J`` interleaves together make ``T``
    evenly spaced rings. ``theta_0`` is drawn from the generator. The number of turns ``T`` is
    the smallest (by bisection) that reaches the target count; the excess samples of largest
    radius are then removed.

    Parameters
    ----------
    interleaves
        Number of interleaves ``J`` (default 4).
    """

    interleaves: int = 4
    name: ClassVar[str] = "spiral"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.interleaves, bool) or not (
            isinstance(self.interleaves, numbers.Integral) and self.interleaves >= 1
        ):
            raise ValueError(f"interleaves must be a positive int, got {self.interleaves!r}")

    def _draw_pattern(
        self,
        shape: tuple[int, int],
        target: int,
        centre: np.ndarray,
        rng: np.random.Generator,
    ) -> np.ndarray:
        ny, nx = shape
        theta0 = rng.uniform(0.0, 2.0 * math.pi)
        extent = math.sqrt(2.0)
        step = 1.0 / max(ny, nx)  # half a pixel in normalised units
        offsets = theta0 + 2.0 * math.pi * np.arange(self.interleaves) / self.interleaves

        def draw(turns: float) -> np.ndarray:
            sweep = 2.0 * math.pi * turns / self.interleaves
            # the arc length of one interleave is at most extent * sqrt(1 + sweep^2)
            points = math.ceil(extent * math.hypot(1.0, sweep) / step) + 1
            tau = np.linspace(0.0, 1.0, points)
            rho = extent * tau
            theta = offsets[:, None] + sweep * tau[None, :]
            return _rasterise(rho * np.cos(theta), rho * np.sin(theta), shape) | centre

        # the rings of a disc of radius n / 2 pixels spaced 1 pixel apart hold about
        # pi n^2 / 4 points, so T rings hold about pi T n / 2
        guess = 2 * target / (math.pi * max(ny, nx))
        # rings half a pixel apart cover the grid out to the corners
        max_turns = extent * max(ny, nx)
        mask = _smallest_reaching(draw, target, guess, max_turns, integer=False)
        return _match_count(mask, target, _normalised_radius(shape), centre, rng)


# --------------------------------------------------------------------------------------------
# registry and functions
# --------------------------------------------------------------------------------------------

#: The registry of mask kinds, ``name -> class``.
MASKS: dict[str, type[MaskFunction]] = {
    cls.name: cls
    for cls in (
        RandomMask,
        EquispacedMask,
        Gaussian1DMask,
        Gaussian2DMask,
        PoissonDiscMask,
        RadialMask,
        SpiralMask,
    )
}
#: Names of the 1-D (Cartesian line) masks.
ONE_D: frozenset[str] = frozenset(n for n, c in MASKS.items() if c.sampling_dims == 1)
#: Names of the 2-D masks.
TWO_D: frozenset[str] = frozenset(n for n, c in MASKS.items() if c.sampling_dims == 2)


def _lookup(name: str) -> type[MaskFunction]:
    try:
        return MASKS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(MASKS))
        raise ValueError(f"unknown mask {name!r}; valid names: {valid}") from None


def default_center_fraction(name: str, acceleration: float) -> float:
    """The centre fraction :func:`make_mask` uses when none is given.

    ``0.08`` (fastMRI's 4x value), capped so that the centre takes at most half the sampling
    budget: ``min(0.08, 0.5 / R)`` of the ``kx`` lines for 1-D masks, and a box of
    ``min(0.08, sqrt(0.5 / R))`` of each axis for 2-D masks (``0.08`` up to ``R = 78``).

    Raises
    ------
    ValueError
        For an unknown ``name`` or an acceleration that is no finite number ``>= 1``.
    """
    cls = _lookup(name)
    _check_acceleration(acceleration)
    if cls.sampling_dims == 1:
        return min(DEFAULT_CENTER_FRACTION, 0.5 / acceleration)
    return min(DEFAULT_CENTER_FRACTION, math.sqrt(0.5 / acceleration))


def make_mask(
    name: str,
    shape: tuple[int, int],
    *,
    acceleration: float,
    center_fraction: float | None = None,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """Draw a mask of the registered kind ``name``.

    Parameters
    ----------
    name
        A key of :data:`MASKS`.
    shape
        ``(ky, kx)``.
    acceleration
        Requested acceleration ``R >= 1``.
    center_fraction
        Fully sampled centre (see :class:`MaskFunction`); ``None`` gives
        :func:`default_center_fraction`.
    seed
        Int seed or :class:`numpy.random.Generator`.

    Returns
    -------
    numpy.ndarray
        bool, shape ``(ky, kx)``.

    Raises
    ------
    ValueError
        For an unknown ``name`` (the message lists the valid names) or invalid parameters.
    """
    cls = _lookup(name)
    if center_fraction is None:
        center_fraction = default_center_fraction(name, acceleration)
    return cls(acceleration=acceleration, center_fraction=center_fraction)(shape, seed)


def achieved_acceleration(mask: np.ndarray) -> float:
    """``mask.size / mask.sum()``: the number of k-space locations per sampled one.

    Parameters
    ----------
    mask
        Boolean (or 0/1) array of any shape.

    Raises
    ------
    ValueError
        If the mask samples nothing.
    """
    mask = np.asarray(mask)
    sampled = int(np.count_nonzero(mask))
    if sampled == 0:
        raise ValueError("mask samples nothing")
    return mask.size / sampled


def validate_mask(mask: npt.ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    """Check a user-supplied or drawn mask and return it as a new bool array.

    Parameters
    ----------
    mask
        Array-like of shape ``shape``: booleans, or integers / floats that are all 0 or 1.
    shape
        Expected ``(ky, kx)``.

    Returns
    -------
    numpy.ndarray
        bool copy, shape ``(ky, kx)``.

    Raises
    ------
    ValueError
        For a wrong number of dimensions or shape, a non-numeric dtype, NaN, values other than
        0 and 1, or a mask that samples nothing.
    """
    shape = _check_shape(shape)
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"mask must be 2-D (ky, kx), got {arr.ndim}-D with shape {arr.shape}")
    if arr.shape != shape:
        raise ValueError(f"mask has shape {arr.shape}, expected {shape}")
    if arr.dtype == np.bool_:
        out = arr.astype(bool, copy=True)
    elif np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
            raise ValueError("mask contains NaN")
        bad = (arr != 0) & (arr != 1)
        if bad.any():
            examples = np.unique(arr[bad])[:3].tolist()
            raise ValueError(f"mask values must be 0 or 1 (or booleans), found {examples}")
        out = arr == 1
    else:
        raise ValueError(f"mask must be boolean or 0/1 numbers, got dtype {arr.dtype}")
    if not out.any():
        raise ValueError("mask samples nothing")
    return out
