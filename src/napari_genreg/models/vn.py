r"""A Variational Network (Hammernik et al., MRM 2018): unrolled gradient steps with learned
filters, activations and data weights.

Each of the ``T`` stages takes one gradient step on a learned energy (a Fields-of-Experts
regulariser plus the data term):

.. math::

    x_{t+1} = x_t - \sum_{i=1}^{N} K_{t,i}^T \phi_{t,i}(K_{t,i} x_t)
              - \lambda_t A^H (A x_t - y), \qquad t = 0, \dots, T-1,

from :math:`x_0 = A^H y`. :math:`K_{t,i}` is a ``k x k`` convolution of the image's real and
imaginary parts (2 channels) to one response, :math:`K_{t,i}^T` its exact adjoint (the
transposed convolution with the same weights, zero padding), :math:`\phi_{t,i}` a learned
scalar activation and :math:`\lambda_t > 0` a learned data weight. ``A`` is *any* linear
operator with ``forward`` and ``adjoint`` (:class:`Operator`): single-coil ``M F``, SENSE
``M F S``, or either composed with a phase or a crop. Nothing depends on the image size.

Parameterisation (``"vn-rbf-v1"``)
----------------------------------
* Filters: each :math:`K_{t,i}` is stored as an unconstrained ``(2, k, k)`` tensor ``v`` and used
  as :math:`k = (v - \bar v) / \|v - \bar v\|` (zero mean per channel, unit norm), the
  constraints of Hammernik et al. written as a reparameterisation instead of a projection. A
  zero-mean filter ignores constant offsets; the activation carries the scale.
* Activations: radial basis functions, as in the paper,

  .. math:: \phi(z) = \sum_{j=1}^{J} w_j \exp\!\Big(-\frac{(z - \mu_j)^2}{2\gamma^2}\Big),

  with ``J`` centres :math:`\mu_j` evenly spaced on ``[-I, I]`` and :math:`\gamma` their spacing.
  Evaluating ``J`` Gaussians at every filter response costs ``J`` passes over the largest
  tensors of the network, so :math:`\phi` is tabulated (per stage and filter, differentiably in
  ``w``) on :attr:`VNConfig.table_points` points over :math:`[-I - 4\gamma, I + 4\gamma]` and
  interpolated linearly; beyond the table :math:`\phi = 0` (less than :math:`e^{-8}` of the
  weights). The interpolation error is of the order of :math:`10^{-4}` of the weights' scale
  (``tests/models/test_vn.py`` compares the table with the direct sum).
* Data weights: :math:`\lambda_t = e^{\rho_t}`.

Complex images and real networks meet in exactly two functions, :func:`complex_to_channels` and
:func:`channels_to_complex`; everything else sees native complex tensors.

Units
-----
The network has no notion of intensity: it is trained on images normalised by
:func:`intensity_scale` of their zero-filled reconstruction (as
:attr:`napari_genreg.recon.problem.Problem.scale`) and must be applied the same way.

Examples
--------
>>> import torch
>>> class Fourier:
...     def forward(self, x):
...         return torch.fft.fft2(x, norm="ortho")
...     def adjoint(self, y):
...         return torch.fft.ifft2(y, norm="ortho")
>>> model = VariationalNetwork(VNConfig(stages=2, filters=4, kernel_size=3))
>>> y = torch.randn(1, 16, 24, dtype=torch.complex64)
>>> model(y, Fourier()).shape
torch.Size([1, 16, 24])
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_genreg.models._config import config_fields

__all__ = [
    "ARCHITECTURE",
    "Operator",
    "VNConfig",
    "VNStage",
    "VariationalNetwork",
    "channels_to_complex",
    "complex_to_channels",
    "intensity_scale",
]

#: The name of the architecture implemented here, recorded in every checkpoint.
ARCHITECTURE = "vn-rbf-v1"
#: The quantile of the zero-filled magnitude that normalises the images (as ``Problem.scale``).
SCALE_QUANTILE = 0.99
#: Half-width of the table beyond the outermost centres, in units of the Gaussians' width.
_TABLE_MARGIN = 4.0


class Operator(Protocol):
    """What the network needs of the forward model ``A``: a linear map and its adjoint.

    Both act on the last two axes and broadcast over leading ones, like every
    :class:`napari_genreg.physics.operators.LinearOperator`.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``A x``: complex images ``(..., H, W)`` to measurements."""

    def adjoint(self, y: Tensor) -> Tensor:
        """``A^H y``: measurements to complex images ``(..., H, W)``."""


def _int_in(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _positive_float(value: object, name: str) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if not ok or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class VNConfig:
    """Everything needed to build a :class:`VariationalNetwork`; stored in every checkpoint.

    Parameters
    ----------
    stages
        ``T``, the number of unrolled gradient steps (each with its own parameters).
    filters
        ``N``, filters (and activations) per stage.
    kernel_size
        ``k``, odd side of the filters.
    rbf_centres
        ``J``, Gaussians per activation.
    rbf_range
        ``I``: the centres span ``[-I, I]`` (filter responses of normalised images).
    table_points
        points of the table through which the activations are evaluated.
    init_slope
        ``a``: the activations start as the linear :math:`\\phi(z) = a z` on ``[-I, I]``
        (a quadratic regulariser).
    init_data_weight
        :math:`\\lambda_t` at initialisation.
    """

    stages: int = 8
    filters: int = 24
    kernel_size: int = 7
    rbf_centres: int = 31
    rbf_range: float = 1.0
    table_points: int = 1025
    init_slope: float = 0.01
    init_data_weight: float = 0.5

    def __post_init__(self) -> None:
        _int_in(self.stages, "stages", 1, 100)
        _int_in(self.filters, "filters", 1, 1024)
        _int_in(self.kernel_size, "kernel_size", 1, 31)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        _int_in(self.rbf_centres, "rbf_centres", 2, 1024)
        _int_in(self.table_points, "table_points", 16, 1 << 16)
        object.__setattr__(self, "rbf_range", _positive_float(self.rbf_range, "rbf_range"))
        object.__setattr__(self, "init_slope", _positive_float(self.init_slope, "init_slope"))
        object.__setattr__(
            self, "init_data_weight", _positive_float(self.init_data_weight, "init_data_weight")
        )

    @property
    def rbf_width(self) -> float:
        """:math:`\\gamma`, the spacing of the centres (and the Gaussians' standard deviation)."""
        return 2.0 * self.rbf_range / (self.rbf_centres - 1)

    def accepted_sizes(self) -> str:
        """The rule for the image sizes the model accepts, in words (for the model card)."""
        return (
            "any H x W (every layer is a convolution with zero padding); trained at one size, "
            "sampling pattern and noise level (see the model card), and best there"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields, with ``"architecture"``."""
        return {"architecture": ARCHITECTURE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VNConfig:
        """Rebuild from :meth:`to_dict`, refusing unknown architectures and unknown/missing keys.

        Raises
        ------
        ValueError
            If ``data`` is not a mapping, names another architecture, lacks a field, has an
            unknown field, or holds an invalid value.
        """
        data = config_fields(cls, data, ARCHITECTURE)
        return cls(**data)


# --------------------------------------------------------------------------------------------
# The network boundary: complex images <-> real channels


def complex_to_channels(x: Tensor) -> Tensor:
    """Complex images ``(B, H, W)`` as real channels ``(B, 2, H, W)`` (real, imaginary).

    The one place where complex images enter the network (with :func:`channels_to_complex`,
    the one where they leave it).
    """
    if not x.is_complex() or x.ndim != 3:
        raise ValueError(f"expected complex images (B, H, W), got {x.dtype} {tuple(x.shape)}")
    return torch.view_as_real(x).permute(0, 3, 1, 2)


def channels_to_complex(u: Tensor) -> Tensor:
    """Real channels ``(B, 2, H, W)`` as complex images ``(B, H, W)``."""
    if u.is_complex() or u.ndim != 4 or u.shape[1] != 2:
        raise ValueError(f"expected real channels (B, 2, H, W), got {u.dtype} {tuple(u.shape)}")
    return torch.complex(u[:, 0], u[:, 1])


def intensity_scale(zero_filled: Tensor) -> Tensor:
    """The 99th percentile of ``|zero_filled|`` over the last two axes: ``(...)``.

    The definition of :attr:`napari_genreg.recon.problem.Problem.scale`; the network sees
    images divided by it, in training and in reconstruction.
    """
    flat = zero_filled.abs().float().flatten(-2)
    return torch.quantile(flat, SCALE_QUANTILE, dim=-1)


# --------------------------------------------------------------------------------------------
# The network


def _gaussians(points: Tensor, centres: Tensor, width: float) -> Tensor:
    """``exp(-(p - mu_j)^2 / (2 gamma^2))``: ``(P, J)``."""
    return torch.exp(-0.5 * ((points[:, None] - centres[None, :]) / width) ** 2)


class VNStage(nn.Module):
    r"""One stage: :math:`x - \sum_i K_i^T \phi_i(K_i x) - \lambda A^H(A x - y)`.

    Parameters
    ----------
    config
        the model configuration.
    generator
        seeds the filters' initialisation (``None``: a generator seeded with 0; the global
        RNG is never used).

    Attributes
    ----------
    filters
        raw filters ``(N, 2, k, k)`` (see :meth:`kernels`).
    rbf_weights
        :math:`w_{ij}`, ``(N, J)``.
    log_data_weight
        :math:`\rho = \log\lambda`, a scalar.
    """

    def __init__(self, config: VNConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        n, k, j = config.filters, config.kernel_size, config.rbf_centres
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        self.filters = nn.Parameter(torch.randn((n, 2, k, k), generator=generator))
        centres = torch.linspace(-config.rbf_range, config.rbf_range, j, dtype=torch.float64)
        gram = _gaussians(centres, centres, config.rbf_width)
        # The weights whose activation interpolates a z at the centres: phi(z) ~ a z.
        linear = torch.linalg.solve(gram, config.init_slope * centres)
        self.rbf_weights = nn.Parameter(linear.float().expand(n, j).clone())
        self.log_data_weight = nn.Parameter(torch.tensor(math.log(config.init_data_weight)))
        margin = config.rbf_range + _TABLE_MARGIN * config.rbf_width
        grid = torch.linspace(-margin, margin, config.table_points, dtype=torch.float64)
        self.register_buffer("centres", centres.float(), persistent=False)
        self.register_buffer(
            "basis", _gaussians(grid, centres, config.rbf_width).float(), persistent=False
        )
        self.table_margin = margin

    @property
    def data_weight(self) -> Tensor:
        """:math:`\\lambda = e^\\rho`."""
        return self.log_data_weight.exp()

    def kernels(self) -> Tensor:
        """The filters in use: zero mean per channel, unit norm per filter, ``(N, 2, k, k)``."""
        v = self.filters - self.filters.mean(dim=(2, 3), keepdim=True)
        norm = v.flatten(1).norm(dim=1).clamp_min(1e-12)
        return v / norm[:, None, None, None]

    def activation(self, z: Tensor) -> Tensor:
        r""":math:`\phi_i(z)` for responses ``z (B, N, H, W)``: the table of :math:`\phi_i`,
        interpolated linearly (``grid_sample``; differentiable in ``z`` and in the weights)."""
        table = self.rbf_weights @ self.basis.T  # (N, P)
        b, n, h, w = z.shape
        position = (z / self.table_margin).transpose(0, 1).reshape(n, 1, b * h * w, 1)
        grid = torch.cat([position, torch.zeros_like(position)], dim=-1)
        values = F.grid_sample(
            table.view(n, 1, 1, -1).to(z.dtype),
            grid,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        )
        return values.view(n, b, h, w).transpose(0, 1)

    def regulariser_gradient(self, x: Tensor) -> Tensor:
        r""":math:`\sum_i K_i^T \phi_i(K_i x)` for complex images ``x (B, H, W)``."""
        kernels = self.kernels()
        padding = self.config.kernel_size // 2
        u = complex_to_channels(x).to(kernels.dtype)
        response = F.conv2d(u, kernels, padding=padding)
        back = F.conv_transpose2d(self.activation(response), kernels, padding=padding)
        return channels_to_complex(back).to(x.dtype)

    def forward(self, x: Tensor, aty: Tensor, op: Operator) -> Tensor:
        """One step from ``x (B, H, W)``; ``aty`` is :math:`A^H y`, same shape."""
        data = op.adjoint(op.forward(x)) - aty
        return x - self.regulariser_gradient(x) - self.data_weight * data


class VariationalNetwork(nn.Module):
    """The unrolled network: :attr:`VNConfig.stages` :class:`VNStage` s.

    Parameters
    ----------
    config
        the model configuration.
    generator
        seeds the initial weights (``None``: a generator seeded with 0; the global RNG is
        never used).
    """

    def __init__(self, config: VNConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        self.stages = nn.ModuleList(VNStage(config, generator) for _ in range(config.stages))

    def num_parameters(self) -> int:
        """The number of trained numbers."""
        return sum(p.numel() for p in self.parameters())

    def iterates(self, y: Tensor, op: Operator, x0: Tensor | None = None) -> Iterator[Tensor]:
        """The image after each stage, ``T`` complex tensors shaped like ``x0``.

        Parameters
        ----------
        y
            measurements (complex, what ``op.forward`` returns), normalised.
        op
            ``A``: any :class:`Operator` from images ``(..., H, W)`` to ``y``'s space.
        x0
            the starting image (default :math:`A^H y`), complex ``(H, W)`` or ``(B, H, W)``.
        """
        aty = op.adjoint(y)
        x = aty if x0 is None else x0
        single = x.ndim == 2
        if single:
            x, aty = x.unsqueeze(0), aty.unsqueeze(0)
        for stage in self.stages:
            x = stage(x, aty, _Batched(op, single))
            yield x[0] if single else x

    def forward(self, y: Tensor, op: Operator, x0: Tensor | None = None) -> Tensor:
        """The image after the last stage (see :meth:`iterates`)."""
        return deque(self.iterates(y, op, x0), maxlen=1)[0]


@dataclass(frozen=True)
class _Batched:
    """``op`` applied to a batch of one when the caller's images have no batch axis."""

    op: Operator
    single: bool

    def forward(self, x: Tensor) -> Tensor:
        return self.op.forward(x[0]).unsqueeze(0) if self.single else self.op.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.op.adjoint(y[0]).unsqueeze(0) if self.single else self.op.adjoint(y)
