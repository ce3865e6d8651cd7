"""Choosing the torch device a reconstruction runs on."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Devices usable here, best first (``"cuda"`` / ``"mps"`` only when present), then cpu."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then the CPU; a named device must exist.

    Raises
    ------
    ValueError
        For an unknown name, or a device that this machine does not have.
    """
    name = name.lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind != "cpu" and kind not in available_devices():
        raise ValueError(
            f"device {name!r} is not available on this machine (available: "
            f"{', '.join(available_devices())})"
        )
    return torch.device(name)
