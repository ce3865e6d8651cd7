"""Generator adaptation (latent search, then fine-tuning a copy of the decoder, early-stopped on
held-out k-space), on small problems with a tiny convolutional generator."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from napari_genreg.physics.coils import synthetic_maps
from napari_genreg.physics.operators import masked_fourier, sense
from napari_genreg.solvers.adaptation import generator_adaptation, holdout_split

SIZE = 32


def _decoder(seed: int = 0) -> nn.Module:
    """Latents ``(B, 2, 8, 8)`` to real images ``(B, 32, 32)``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.SiLU(),
        nn.Upsample(scale_factor=4, mode="nearest"),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(8, 1, 3, padding=1),
        nn.Flatten(0, 1),
    )


def _fresh(seed: int = 0) -> nn.Module:
    """A seeded decoder; the global RNG is restored afterwards."""
    with torch.random.fork_rng():
        return _decoder(seed)


def _latent(seed: int = 2) -> torch.Tensor:
    return torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


def _image() -> torch.Tensor:
    """Outside the decoder's range: the output of a perturbed copy (the model mismatch that
    adaptation is for), at a random latent."""
    truth = _fresh()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in truth.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn(p.shape, generator=gen))
        return truth(_latent())[0].to(torch.complex64)


def _mask(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(SIZE, SIZE, generator=gen) < 0.5
    mask[SIZE // 2 - 3 : SIZE // 2 + 3, SIZE // 2 - 3 : SIZE // 2 + 3] = True
    return mask


def _noisy(clean: torch.Tensor, mask: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.complex(
        torch.randn(clean.shape, generator=gen), torch.randn(clean.shape, generator=gen)
    )
    return clean + sigma / 2**0.5 * noise * mask


PHASE = torch.ones(SIZE, SIZE, dtype=torch.complex64)
Z0 = 0.5 * _latent()


def _run(op, y, decoder, *, sigma, seed=0, limit=400, **kwargs):
    kwargs = {"search_iterations": 10, "weight_learning_rate": 3e-3, "learning_rate": 0.1,
              "patience": 10, "warmup": 5, **kwargs}  # fmt: skip
    states = generator_adaptation(
        op, y, decoder, PHASE, Z0, noise_sigma=sigma, lam=1.0,
        generator=torch.Generator().manual_seed(seed), **kwargs,
    )  # fmt: skip
    return list(itertools.islice(states, limit))


def _full_objective(op, y, state, sigma: float, lam: float = 1.0) -> float:
    data = (op(state.x) - y).abs().double().square().sum()
    return float(0.5 / sigma**2 * data + 0.5 * lam * state.z.double().square().sum())


def test_the_callers_decoder_is_never_modified():
    decoder = _fresh()
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    op = masked_fourier(_mask())
    y = op(_image())
    states = _run(op, y, decoder, sigma=0.01, limit=80, patience=1000)
    assert states[-1].iteration == 80  # the weights were adapted for 70 iterations
    after = decoder.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None and p.requires_grad for p in decoder.parameters())
    assert decoder.training  # no mode switched


def test_adaptation_fits_the_data_better_than_the_latent_search():
    op = masked_fourier(_mask())
    y = op(_image())
    sigma = 0.01
    states = _run(op, y, _fresh(), sigma=sigma, limit=300, patience=1000)
    searched, adapted = states[9], states[-1]  # the end of the latent search, the last
    assert searched.iteration == 10
    assert adapted.objective < 0.5 * searched.objective
    # the reported objective is the full data term (held-out samples included) + lam/2 |z|^2
    for state in (searched, adapted):
        assert state.objective == pytest.approx(_full_objective(op, y, state, sigma), rel=1e-4)
    truth = _image()
    assert (adapted.x - truth).norm() < (searched.x - truth).norm()


def test_early_stopping_ends_the_run_at_the_best_held_out_state():
    mask = _mask()
    op = masked_fourier(mask)
    sigma = 0.03  # noisy: fitting the kept samples soon fits their noise
    y = _noisy(op(_image()), mask, sigma)
    states = _run(op, y, _fresh(), sigma=sigma, limit=3000)
    last = states[-1]
    assert last.iteration < 3000  # the generator stopped by itself
    # the same seeded draw as inside the solver
    split = holdout_split(mask, 0.05, torch.Generator().manual_seed(0))

    def held_out(state) -> float:
        return float(((op(state.x) - y).abs().square() * split.holdout).sum())

    adaptation = states[9:]  # from the end of the latent search on
    assert held_out(last) == pytest.approx(min(held_out(s) for s in adaptation), rel=1e-6)
    # found `patience` (10) iterations before the end, then never improved
    found = next(s.iteration for s in adaptation if torch.equal(s.z, last.z))
    assert found > 10 + 5  # after the latent search and the warm-up: adaptation helped
    assert last.iteration - found == 10
    truth = _image()
    assert (last.x - truth).norm() < (states[9].x - truth).norm()
    # going on (a larger patience) finds no better held-out state: the fit to the kept
    # samples has started to overfit
    longer = _run(op, y, _fresh(), sigma=sigma, limit=last.iteration + 40, patience=1000)
    assert longer[-1].iteration == last.iteration + 40
    assert torch.equal(longer[-1].x, last.x)


def test_same_seed_same_result_and_the_global_rng_is_untouched():
    op = masked_fourier(_mask())
    y = _noisy(op(_image()), _mask(), 0.05)
    decoder = _fresh()
    state = torch.get_rng_state()
    a = _run(op, y, decoder, sigma=0.05, limit=40)
    b = _run(op, y, decoder, sigma=0.05, limit=40)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[-1].x, b[-1].x) and torch.equal(a[-1].z, b[-1].z)
    c = _run(op, y, decoder, sigma=0.05, limit=40, seed=1)  # another hold-out set
    assert not torch.equal(a[-1].x, c[-1].x)


def test_multicoil_problems_run():
    maps = synthetic_maps(4, (SIZE, SIZE))
    mask = _mask()
    op = sense(maps, mask)
    y = op(_image())
    states = _run(op, y, _fresh(), sigma=0.01, limit=40, patience=1000)
    assert [s.iteration for s in states] == list(range(1, 41))
    assert all(torch.isfinite(torch.tensor(s.objective)) for s in states)
    assert states[-1].x.shape == (SIZE, SIZE) and states[-1].z.shape == (1, 2, 8, 8)
    assert states[-1].objective < states[9].objective


def test_the_hold_out_set_follows_the_sampling_pattern():
    gen = torch.Generator().manual_seed(0)
    points = _mask()
    split = holdout_split(points, 0.1, gen)
    n = int(points.sum())
    assert int(split.holdout.sum()) == round(0.1 * n)
    assert torch.equal(split.train + split.holdout, points.float())
    # Cartesian lines: whole lines are held out
    lines = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    lines[:, ::3] = True
    split = holdout_split(lines, 0.1, torch.Generator().manual_seed(0))
    held_columns = split.holdout.bool().any(dim=0)
    assert int(held_columns.sum()) == round(0.1 * int(lines.any(dim=0).sum()))
    assert torch.equal(split.holdout.bool(), held_columns[None].expand(SIZE, SIZE))
    # no hold-out: every measured location is fitted; no generator needed
    none = holdout_split(points, 0.0, None)
    assert torch.equal(none.train, points.float()) and not none.holdout.any()
    with pytest.raises(ValueError, match="Generator"):
        holdout_split(points, 0.1, None)
    with pytest.raises(ValueError, match="holdout_fraction"):
        holdout_split(points, 0.7, gen)


def test_without_a_hold_out_set_the_training_objective_decides():
    op = masked_fourier(_mask())
    y = op(_image())
    states = _run(op, y, _fresh(), sigma=0.01, limit=60, holdout_fraction=0.0)
    objectives = [s.objective for s in states[10:]]
    assert all(b <= a for a, b in itertools.pairwise(objectives))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_sigma": 0.0}, "noise_sigma"),
        ({"lam": -1.0}, "lam"),
        ({"weight_learning_rate": 0.0}, "weight_learning_rate"),
        ({"search_iterations": 0}, "search_iterations"),
        ({"patience": 1.5}, "patience"),
    ],
)
def test_invalid_settings_are_refused(kwargs, match):
    op = masked_fourier(_mask())
    arguments = {"noise_sigma": 0.1, "lam": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        next(generator_adaptation(op, op(_image()), _fresh(), PHASE, Z0, **arguments))
