r"""The learned baseline ``vn``: a Variational Network (Hammernik et al., MRM 2018) trained end
to end for one sampling setting.

The network (:mod:`napari_genreg.models.vn`) unrolls :math:`T` gradient steps

.. math::

    u_{t+1} = u_t - \sum_i K_{t,i}^T \phi_{t,i}(K_{t,i} u_t)
              - \lambda_t (A P)^H (A P u_t - y / c), \qquad u_0 = (A P)^H y / c,

on the problem prepared exactly as in training (:mod:`napari_genreg.training.vn`): ``A`` the
problem's operator (one coil or SENSE: the data term uses it as it is, so any operator works),
:math:`c` = ``problem.scale`` (the 99th percentile of the zero-filled magnitude) and :math:`P`
= ``problem.phase()`` (the smooth phase estimate from the calibration region; the network was
trained on real magnitudes, like the VAE priors). Stage ``t`` yields
:math:`x_t = c\,P u_t`, on the input's scale.

Contract of a :class:`~napari_genreg.recon.methods.Method`, and where a VN differs
-------------------------------------------------------------------------------------
* Iterations are stages: ``default_iterations`` is the network's :math:`T` (8 for the shipped
  ``builtin:vn``). Fewer iterations return an intermediate stage, which the network was not
  trained to output; more are clamped: the generator ends after stage :math:`T` (the
  reconstruction reports the :math:`T` iterations run). With a ``--model`` network, the default
  is that network's :math:`T` (read from its ``config.json``).
* Objective: a VN minimises no fixed objective (its energy changes from stage to stage), so each
  state reports the data term alone, :math:`\frac{1}{2\sigma^2}\|A x_t - y\|^2` with
  :math:`\sigma` = ``problem.noise_sigma``: the units of every method, without a prior term.
* No weight: ``auto_lam`` is ``None``; a ``lam`` given is ignored (the data weights
  :math:`\lambda_t` are learned).
* The model: ``builtin:vn``, or a directory written by ``napari-genreg train-vn``: inside
  :func:`~napari_genreg.recon.generative.use_model` (the CLI's ``--model``) ``vn`` uses the
  given directory when it holds a variational network and refuses a VAE prior with a
  :class:`~napari_genreg.models.checkpoint.CheckpointError` (run ``vn`` without ``--model``,
  or apart from the ``vae-*`` methods); :func:`vn_method` builds a method with another model.
* The network is trained for one setting (the model card's: 1-D ``random`` mask, 4x, centre
  fraction 0.08, noise 0.01 on [0, 1] images, 128 x 128). It runs on any size, mask, number of
  coils and noise level, but is at its best on its own setting: that is the point the poster
  makes about it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from napari_genreg.models.checkpoint import (
    VN_FORMAT,
    CheckpointError,
    ModelCard,
    load_vn,
    model_format,
    resolve_model_dir,
)
from napari_genreg.models.vn import VariationalNetwork
from napari_genreg.physics.operators import Compose, Diagonal
from napari_genreg.recon.generative import model_override
from napari_genreg.recon.methods import Method
from napari_genreg.recon.problem import Problem
from napari_genreg.solvers import SolverState

__all__ = [
    "BUILTIN_VN",
    "LEARNED_METHODS",
    "VNSolve",
    "clear_vn_cache",
    "load_vn_model",
    "vn_method",
]

#: The shipped network.
BUILTIN_VN = "builtin:vn"
#: Its number of stages: the default iterations of ``vn`` (checked against the model's config
#: when it is loaded: ``tests/recon/test_vn_method.py``).
BUILTIN_VN_STAGES = 8

_CACHE: dict[tuple[str, str, int, int], tuple[VariationalNetwork, ModelCard]] = {}
_CACHE_LOCK = threading.Lock()


def load_vn_model(
    spec: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[VariationalNetwork, ModelCard]:
    """:func:`~napari_genreg.models.checkpoint.load_vn`, loaded once per device and cached
    (keyed by the directory's ``config.json`` modification time and size, so a model saved
    again to the same folder is reloaded). The model is shared: callers must not modify it."""
    directory = resolve_model_dir(spec)
    stat = (directory / "config.json").stat()
    key = (str(directory.resolve()), str(torch.device(device)), stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:  # workers of the viewer load from threads
        if key not in _CACHE:
            _CACHE[key] = load_vn(directory, device=device)
        return _CACHE[key]


def clear_vn_cache() -> None:
    """Forget every cached network."""
    with _CACHE_LOCK:
        _CACHE.clear()


@dataclass(frozen=True)
class VNSolve:
    """The ``solve`` of a ``vn`` method: ``(problem, lam) -> iterator of states``.

    Attributes
    ----------
    model
        ``builtin:vn`` or a directory written by ``napari-genreg train-vn``.
    """

    model: str = BUILTIN_VN

    @property
    def model_spec(self) -> str:
        """The model used now: the override of ``use_model``, else :attr:`model`.

        Raises
        ------
        CheckpointError
            When the override is not a variational network (a VAE prior, say).
        """
        override = model_override()
        if override is None:
            return self.model
        if model_format(override) != VN_FORMAT:
            raise CheckpointError(
                f"--model {override} is a VAE prior, not a variational network: vn needs a "
                "folder written by 'napari-genreg train-vn' (run vn without --model, or "
                "separately from the vae-* methods)"
            )
        return override

    def stages(self) -> int:
        """The stages of the network in use now (from its ``config.json``; no weights loaded)."""
        spec = self.model_spec
        return BUILTIN_VN_STAGES if spec == BUILTIN_VN else _stages_of(spec)

    def __call__(self, problem: Problem, lam: float) -> Iterator[SolverState]:
        network, _ = load_vn_model(self.model_spec, problem.device)
        c = float(problem.scale)
        phase = problem.phase().to(problem.y.dtype)
        op = Compose((problem.op, Diagonal(phase)))
        y = problem.y / c
        data_scale = 0.5 / problem.noise_sigma**2
        with torch.no_grad():
            for t, u in enumerate(network.iterates(y, op), start=1):
                x = (u * phase * c).to(problem.y.dtype)
                residual = problem.op(x) - problem.y
                yield SolverState(t, x, data_scale * float(residual.abs().square().sum()))


def vn_method(
    name: str = "vn", model: str | os.PathLike[str] = BUILTIN_VN, *, stages: int | None = None
) -> Method:
    """A ``vn`` :class:`~napari_genreg.recon.methods.Method` with its own model.

    Parameters
    ----------
    name
        the method's name.
    model
        ``builtin:vn`` or a directory written by ``napari-genreg train-vn`` (loaded lazily, on
        first use, and cached).
    stages
        the default iterations: the network's number of stages (default: read from the
        model's ``config.json``, without loading the weights).

    Examples
    --------
    >>> method = vn_method()
    >>> method.name, method.default_iterations, method.has_lam
    ('vn', 8, False)
    """
    solve = VNSolve(os.fspath(model))
    return Method(
        name,
        "variational network (Hammernik et al. 2018), learned end to end for one sampling "
        "setting (builtin: 1-D random 4x, 1 % noise); one iteration per stage",
        solve.stages() if stages is None else int(stages),
        solve,
        None,
        model_iterations=solve.stages if stages is None else None,
        objective="data term",
        model_format=VN_FORMAT,
    )


def _stages_of(spec: str) -> int:
    import json

    from napari_genreg.models.checkpoint import CONFIG_NAME

    if model_format(spec) != VN_FORMAT:
        raise CheckpointError(
            f"{spec} is a VAE prior, not a variational network: vn needs a folder written by "
            "'napari-genreg train-vn'"
        )
    path = resolve_model_dir(spec) / CONFIG_NAME
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["model"]["stages"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: no number of stages in the configuration") from exc


LEARNED_METHODS: dict[str, Method] = {m.name: m for m in (vn_method(),)}
