"""The reconstruction application: problems from loaded data, the registry of methods, and
the loop that drives them. The CLI and the napari widgets both use exactly this."""

from napari_genreg.recon.devices import available_devices, resolve_device
from napari_genreg.recon.methods import METHODS, Method
from napari_genreg.recon.problem import Problem, build_problem, compress
from napari_genreg.recon.run import (
    ReconstructionError,
    Result,
    check_model,
    get_method,
    iterate,
    reconstruct,
    resolve_lam,
    run,
)

__all__ = [
    "METHODS",
    "Method",
    "Problem",
    "ReconstructionError",
    "Result",
    "available_devices",
    "build_problem",
    "check_model",
    "compress",
    "get_method",
    "iterate",
    "reconstruct",
    "resolve_device",
    "resolve_lam",
    "run",
]
