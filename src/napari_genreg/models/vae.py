r"""A small fully convolutional VAE whose decoder outputs a mean image and its covariance.

The model of the generative regulariser (``DESIGN.md``): an encoder :math:`q(z \mid x) =
\mathcal N(\mu(x), \operatorname{diag} e^{\text{logvar}(x)})` and a decoder
:math:`p(x \mid z) = \mathcal N(G(z), \Sigma(z))` with a standard normal prior on ``z``. The
covariance :math:`\Sigma(z)` is one member of the family in :mod:`napari_genreg.models.covariance`,
chosen by :attr:`VAEConfig.covariance`:

* ``"identity"``: :math:`\Sigma = s^2 I` with one learned scalar :math:`s`;
* ``"diagonal"``: a per-pixel variance map;
* ``"structured"``: :math:`\Sigma^{-1} = L L^T` with :math:`L` sparse lower-triangular on a
  ``k x k`` stencil (``k`` = 3, 5 or 7; Dorta et al., CVPR 2018).

Architecture (``"conv-vae-v1"``)
--------------------------------
Everything is convolutional, so one set of weights serves any image whose height and width are
multiples of ``f = 2**downsamplings`` (8 by default). Channel widths are
``c_i = min(base_channels * 2**i, max_channels)``, ``i = 0..downsamplings`` (16, 32, 64, 64 by
default); every convolution is ``3 x 3`` with zero padding, followed by SiLU except at the heads.

* Encoder: ``1 -> c_0``; per level ``i = 1..d`` a stride-2 convolution ``c_{i-1} -> c_i`` and one
  ``c_i -> c_i``; a ``1 x 1`` head to ``2 * latent_channels`` (mean and log-variance). The latent
  is spatial: ``z`` is ``(B, latent_channels, H / f, W / f)``, ``(B, 4, 16, 16)`` at 128 x 128
  (1024 numbers, a 16-fold reduction) and ``(B, 4, 32, 32)`` at 256 x 256.
* Decoder trunk: ``latent_channels -> c_d``, ``c_d -> c_d``; per level, nearest-neighbour
  upsampling by 2 and two convolutions ``c_i -> c_{i-1} -> c_{i-1}`` (no transposed
  convolutions, hence no checkerboard artefacts); full-resolution features ``(B, c_0, H, W)``.
* Mean head: one convolution ``c_0 -> 1``, **without** an output non-linearity. A sigmoid would
  keep the mean in [0, 1] but saturates on the (zero) background, which flattens the z-step of
  the reconstruction (gradients through the decoder vanish there); the Gaussian likelihood lives
  on the whole real line anyway, and a mean slightly outside [0, 1] is harmless. The head's bias
  starts at 0.25, about the mean intensity of a brain slice.
* Covariance heads: ``identity`` is one learned scalar (:attr:`Decoder.log_scale`, independent of
  ``z``); ``diagonal`` and ``structured`` read the trunk features through two convolutions
  ``c_0 -> c_0 -> P`` (``P = 1`` or ``1 + M`` with ``M = (k*k - 1) / 2``).

Every decoder also has the scalar :attr:`Decoder.log_scale`: it is the identity covariance used
to train the mean (stage 1 of the Dorta et al. staging, :mod:`napari_genreg.training.losses`),
and it *is* the covariance of an ``identity`` model.

Bounds that keep the covariance usable
--------------------------------------
A raw head output ``u`` becomes a log standard deviation
:math:`\log\sigma = \log\sigma_{min} + (\log\sigma_{max} - \log\sigma_{min})\,
\operatorname{sigmoid}(u)` with ``min_std = 2**-8`` and ``max_std = 1`` by default (images live in
[0, 1]; without a floor the likelihood of an exactly constant background is unbounded). For the
identity head :math:`\log s = \log\sigma`; for the diagonal head
:math:`\text{log\_variance} = 2\log\sigma`; for the structured head
:math:`\text{log\_diagonal} = -\log\sigma` (so the *conditional* standard deviation of a pixel
given the ones before it, :math:`1 / L_{ii}`, lies in ``[min_std, max_std]``) and the ``M``
off-diagonal weights are

.. math::

    w_m = L_{ii}\, \alpha \frac{u_m}{1 + \sum_{m'} |u_{m'}|}, \qquad \alpha =
    \texttt{off\_diagonal\_bound} \ (\text{default } 0.9),

so :math:`\sum_m |w_m| < \alpha L_{ii}`. With the default every row of :math:`L` is strictly
diagonally dominant and the triangular solves of
:class:`~napari_genreg.models.covariance.StructuredCovariance` stay stable in float32 (forward
substitution amplifies by at most :math:`1 / (1 - \alpha) = 10`); the shipped structured prior
uses 2.5 (below). Unlike
a per-weight bound :math:`\alpha \tanh(u_m) / M`, a single neighbour can carry the whole budget
(a strong correlation along one direction, as across an edge).

A bound :math:`\alpha < 1` also keeps the learned covariance nearly free of negative entries on
smooth training images: the conditional regression of their residuals on the stencil needs
magnitudes summing to about 3, with negative coefficients beside the positive ones
(``benchmarks/results/covariance_signs.md``), and a diagonally dominant head spends its budget on
the positive ones. ``off_diagonal_bound`` may therefore be set up to
:data:`MAX_OFF_DIAGONAL_BOUND`: above 1 the solves are no longer stable by construction, so they
check their own amplification and raise when a factor is unstable at some latent
(:data:`~napari_genreg.models.covariance.SOLVE_GROWTH_LIMIT`).

Size
----
With the defaults: 291,802 parameters (identity), 294,267 (diagonal), 294,847 / 296,007 /
297,747 (structured 3 x 3 / 5 x 5 / 7 x 7), about 1.2 MB of float32 weights each
(:meth:`VAE.num_parameters`). One training step of stage 1 (batch 16 at 128 x 128) runs at about
16 images/s on one CPU core (``benchmarks/results/training_throughput.md``).

Examples
--------
>>> import torch
>>> model = VAE(VAEConfig(covariance="structured", stencil=5, image_size=128))
>>> model.latent_shape((128, 128)), model.latent_shape((256, 256))
((4, 16, 16), (4, 32, 32))
>>> mu, logvar = model.encode(torch.zeros(2, 1, 128, 128))
>>> mean, cov = model.decode(mu)
>>> mean.shape, type(cov).__name__, cov.off_diagonal.shape
(torch.Size([2, 128, 128]), 'StructuredCovariance', torch.Size([2, 12, 128, 128]))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from napari_genreg.models._config import config_fields
from napari_genreg.models.covariance import (
    Covariance,
    DiagonalCovariance,
    IdentityCovariance,
    StructuredCovariance,
)

__all__ = [
    "ARCHITECTURE",
    "COVARIANCE_KINDS",
    "STENCILS",
    "VAE",
    "Decoder",
    "Encoder",
    "VAEConfig",
    "VAEOutput",
]

#: The name of the architecture implemented here, recorded in every checkpoint.
ARCHITECTURE = "conv-vae-v1"
#: The covariance heads, one family.
COVARIANCE_KINDS = ("identity", "diagonal", "structured")
#: The stencil widths of the structured head.
STENCILS = (3, 5, 7)
#: The largest ``off_diagonal_bound`` accepted (bounds above 1 trade the guaranteed stability of
#: the triangular solves for a checked one).
MAX_OFF_DIAGONAL_BOUND = 4.0


def _positive_int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _finite_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class VAEConfig:
    """Everything needed to build a :class:`VAE`; stored in every checkpoint.

    Parameters
    ----------
    covariance
        the covariance head: ``"identity"``, ``"diagonal"`` or ``"structured"``.
    stencil
        ``k`` of the structured head's ``k x k`` stencil: 3, 5 or 7 (``M`` = 4, 12 or 24
        off-diagonal weights per pixel). Recorded but unused for the other heads.
    image_size
        the side of the square images the model is trained on (a multiple of
        ``2**downsamplings``). The model accepts any ``H x W`` with both sides multiples of
        ``2**downsamplings`` (:meth:`VAE.check_image_shape`).
    base_channels
        channels at full resolution; doubled at each downsampling up to ``max_channels``.
    max_channels
        the widest layer.
    downsamplings
        number of stride-2 stages: the latent is ``2**downsamplings`` times smaller per side.
    latent_channels
        channels of the spatial latent ``z``.
    min_std, max_std
        bounds of every predicted (conditional) standard deviation, ``0 < min_std < max_std``.
    off_diagonal_bound
        :math:`\\alpha` in ``(0, MAX_OFF_DIAGONAL_BOUND]``: the off-diagonal weights of a row of
        the structured factor sum in absolute value to less than ``alpha`` times its diagonal
        (below 1: stable solves by construction; above: checked, see the module's notes).
    """

    covariance: str = "structured"
    stencil: int = 5
    image_size: int = 128
    base_channels: int = 16
    max_channels: int = 64
    downsamplings: int = 3
    latent_channels: int = 4
    min_std: float = 2.0**-8
    max_std: float = 1.0
    off_diagonal_bound: float = 0.9

    def __post_init__(self) -> None:
        if self.covariance not in COVARIANCE_KINDS:
            raise ValueError(
                f"covariance must be one of {', '.join(COVARIANCE_KINDS)}, got {self.covariance!r}"
            )
        if isinstance(self.stencil, bool) or self.stencil not in STENCILS:
            raise ValueError(f"stencil must be one of {STENCILS}, got {self.stencil!r}")
        _positive_int(self.downsamplings, "downsamplings", 1, 6)
        _positive_int(self.base_channels, "base_channels", 1, 256)
        _positive_int(self.max_channels, "max_channels", self.base_channels, 1024)
        _positive_int(self.latent_channels, "latent_channels", 1, 256)
        _positive_int(self.image_size, "image_size", 1, 1 << 14)
        if self.image_size % self.factor:
            raise ValueError(
                f"image_size must be a multiple of 2**downsamplings = {self.factor}, "
                f"got {self.image_size}"
            )
        low = _finite_float(self.min_std, "min_std")
        high = _finite_float(self.max_std, "max_std")
        if not 0.0 < low < high:
            raise ValueError(f"need 0 < min_std < max_std, got {low} and {high}")
        alpha = _finite_float(self.off_diagonal_bound, "off_diagonal_bound")
        if not 0.0 < alpha <= MAX_OFF_DIAGONAL_BOUND:
            raise ValueError(
                f"off_diagonal_bound must lie in (0, {MAX_OFF_DIAGONAL_BOUND}], got {alpha}"
            )
        object.__setattr__(self, "min_std", low)
        object.__setattr__(self, "max_std", high)
        object.__setattr__(self, "off_diagonal_bound", alpha)

    @property
    def factor(self) -> int:
        """``2**downsamplings``: the image sides must be multiples of it."""
        return 1 << self.downsamplings

    @property
    def num_off_diagonal(self) -> int:
        """``M = (k*k - 1) / 2`` for the structured head, 0 for the others."""
        return (self.stencil**2 - 1) // 2 if self.covariance == "structured" else 0

    @property
    def channels(self) -> tuple[int, ...]:
        """The widths ``c_0, ..., c_d`` of the levels."""
        return tuple(
            min(self.base_channels << i, self.max_channels) for i in range(self.downsamplings + 1)
        )

    def accepted_sizes(self) -> str:
        """The rule for the image sizes the model accepts, in words (for the model card)."""
        f = self.factor
        return (
            f"any H x W with H and W positive multiples of {f} (2**{self.downsamplings}); "
            f"trained on {self.image_size} x {self.image_size}. Other sizes raise ValueError "
            f"(the reconstruction pads the image up to the next multiple of {f}). The network "
            "is fully convolutional, so larger images (256 x 256 and up) are decoded tile-free, "
            "but the prior knows the anatomy at the training field of view and pixel size."
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields, with ``"architecture"``."""
        return {"architecture": ARCHITECTURE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VAEConfig:
        """Rebuild from :meth:`to_dict`, refusing unknown architectures and unknown/missing keys.

        Raises
        ------
        ValueError
            If ``data`` is not a mapping, names another architecture, lacks a field, has an
            unknown field, or holds an invalid value.
        """
        data = config_fields(cls, data, ARCHITECTURE)
        return cls(**data)


class VAEOutput(NamedTuple):
    """What :meth:`VAE.forward` returns for one batch.

    Attributes
    ----------
    mean
        :math:`G(z)`, shape ``(B, H, W)``.
    covariance
        :math:`\\Sigma(z)`, a batch of ``B`` covariances of ``H x W`` images.
    mu, logvar
        the posterior parameters, each ``(B, latent_channels, H / f, W / f)``.
    z
        the latent the decoder saw, same shape as ``mu``.
    """

    mean: Tensor
    covariance: Covariance
    mu: Tensor
    logvar: Tensor
    z: Tensor


def _conv(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)


class Encoder(nn.Module):
    """``x (B, 1, H, W) -> (mu, logvar)``, each ``(B, latent_channels, H / f, W / f)``.

    Parameters
    ----------
    config
        the model configuration.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        c = config.channels
        layers: list[nn.Module] = [_conv(1, c[0]), nn.SiLU()]
        for i in range(1, len(c)):
            layers += [_conv(c[i - 1], c[i], stride=2), nn.SiLU(), _conv(c[i], c[i]), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.head = _conv(c[-1], 2 * config.latent_channels, kernel=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance (clamped to ``[-12, 8]``) of ``x (B, 1, H, W)``."""
        mu, logvar = self.head(self.body(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)


class Decoder(nn.Module):
    """``z (B, latent_channels, h, w) -> (mean (B, H, W), covariance)`` with ``H = f h``.

    Parameters
    ----------
    config
        the model configuration.

    Attributes
    ----------
    trunk
        latent to full-resolution features ``(B, c_0, H, W)``.
    mean_head
        features to the mean image.
    log_scale
        raw parameter of the identity covariance (shape ``(1,)``): the covariance of an
        ``identity`` model and the stage-1 likelihood of the others.
    covariance_head
        features to the raw covariance maps (``None`` for ``identity``).
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        layers: list[nn.Module] = [
            _conv(config.latent_channels, c[-1]),
            nn.SiLU(),
            _conv(c[-1], c[-1]),
            nn.SiLU(),
        ]
        for i in range(len(c) - 1, 0, -1):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                _conv(c[i], c[i - 1]),
                nn.SiLU(),
                _conv(c[i - 1], c[i - 1]),
                nn.SiLU(),
            ]
        self.trunk = nn.Sequential(*layers)
        self.mean_head = _conv(c[0], 1)
        self.log_scale = nn.Parameter(torch.zeros(1))
        self.covariance_head: nn.Sequential | None = None
        if config.covariance != "identity":
            outputs = 1 + config.num_off_diagonal
            self.covariance_head = nn.Sequential(_conv(c[0], c[0]), nn.SiLU(), _conv(c[0], outputs))

    def _log_std(self, raw: Tensor) -> Tensor:
        low, high = math.log(self.config.min_std), math.log(self.config.max_std)
        return low + (high - low) * torch.sigmoid(raw)

    def features(self, z: Tensor) -> Tensor:
        """The trunk's full-resolution features ``(B, c_0, H, W)`` of ``z``."""
        return self.trunk(z)

    def mean(self, features: Tensor) -> Tensor:
        """The mean image ``(B, H, W)`` from the features."""
        return self.mean_head(features)[:, 0]

    def identity_covariance(self, batch: int, shape: tuple[int, int]) -> IdentityCovariance:
        """:math:`s^2 I` with the learned scalar, for ``batch`` images of ``shape``."""
        return IdentityCovariance(self._log_std(self.log_scale).expand(batch), shape)

    def covariance(self, features: Tensor) -> Covariance:
        """The configured covariance of the batch, from the features ``(B, c_0, H, W)``."""
        b, _, h, w = features.shape
        if self.covariance_head is None:
            return self.identity_covariance(b, (h, w))
        raw = self.covariance_head(features)
        log_std = self._log_std(raw[:, 0])
        if self.config.covariance == "diagonal":
            return DiagonalCovariance(2.0 * log_std)
        log_diagonal = -log_std
        u = raw[:, 1:]
        weights = u / (1.0 + u.abs().sum(dim=1, keepdim=True))
        off = (self.config.off_diagonal_bound * torch.exp(log_diagonal))[:, None] * weights
        return StructuredCovariance(log_diagonal, off, self.config.stencil)

    def forward(
        self, z: Tensor, head: Literal["configured", "identity"] = "configured"
    ) -> tuple[Tensor, Covariance]:
        """``(mean (B, H, W), covariance)`` of ``z``; ``head="identity"`` uses :math:`s^2 I`."""
        h = self.features(z)
        mean = self.mean(h)
        if head == "identity":
            return mean, self.identity_covariance(h.shape[0], (h.shape[2], h.shape[3]))
        if head != "configured":
            raise ValueError(f"head must be 'configured' or 'identity', got {head!r}")
        return mean, self.covariance(h)


class VAE(nn.Module):
    """The encoder and the decoder with its covariance head (an ``nn.Module`` only: no training).

    Parameters
    ----------
    config
        the architecture and covariance head.
    generator
        the random generator of the initial weights (default: one seeded with 0). The global
        RNG's state is left as it was.

    Examples
    --------
    >>> import torch
    >>> model = VAE(VAEConfig(covariance="diagonal"))
    >>> out = model(torch.rand(2, 1, 64, 64), eps=torch.zeros(2, 4, 8, 8))
    >>> out.mean.shape, type(out.covariance).__name__
    (torch.Size([2, 64, 64]), 'DiagonalCovariance')
    """

    def __init__(self, config: VAEConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise ValueError(f"config must be a VAEConfig, got {type(config).__name__}")
        self.config = config
        # PyTorch's default initialisation draws from the global RNG: restore its state, and
        # draw the actual weights from `generator` (reset_parameters).
        with torch.random.fork_rng(devices=[]):
            self.encoder = Encoder(config)
            self.decoder = Decoder(config)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw fresh weights: He-uniform convolutions, zero biases, quiet output heads.

        The mean head's bias starts at 0.25; the covariance heads start at zero weights, so the
        first covariance is a constant :math:`\\sigma \\approx 0.06` with no correlation.
        """
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
                bound = math.sqrt(6.0 / fan_in)
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
        self.encoder.head.weight.mul_(0.1)
        self.decoder.mean_head.weight.mul_(0.1)
        self.decoder.mean_head.bias.fill_(0.25)
        self.decoder.log_scale.zero_()
        if self.decoder.covariance_head is not None:
            last = self.decoder.covariance_head[-1]
            assert isinstance(last, nn.Conv2d)
            last.weight.zero_()

    def num_parameters(self) -> int:
        """The number of scalar parameters."""
        return sum(p.numel() for p in self.parameters())

    def check_image_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """Return ``(H, W)`` from a shape ending in ``H, W``, refusing sizes the model cannot take.

        Raises
        ------
        ValueError
            If ``H`` or ``W`` is not a positive multiple of ``2**downsamplings``.
        """
        if len(shape) < 2:
            raise ValueError(f"an image shape needs at least two dimensions, got {shape}")
        h, w = int(shape[-2]), int(shape[-1])
        f = self.config.factor
        if h <= 0 or w <= 0 or h % f or w % f:
            raise ValueError(
                f"the model accepts images whose height and width are positive multiples of "
                f"{f} (2**{self.config.downsamplings}), got {h} x {w}; pad the image first"
            )
        return h, w

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """``(latent_channels, H / f, W / f)`` for images of shape ``(..., H, W)``."""
        h, w = self.check_image_shape(tuple(image_shape))
        f = self.config.factor
        return (self.config.latent_channels, h // f, w // f)

    def _as_batch(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError("x must be a real floating torch.Tensor")
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"x must have shape (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
        self.check_image_shape(tuple(x.shape))
        return x

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior :math:`q(z \\mid x)`.

        Parameters
        ----------
        x
            real magnitudes in [0, 1], shape ``(B, H, W)`` or ``(B, 1, H, W)``.

        Returns
        -------
        ``(mu, logvar)``, each ``(B, latent_channels, H / f, W / f)``.
        """
        return self.encoder(self._as_batch(x))

    def _check_latent(self, z: Tensor) -> Tensor:
        if not isinstance(z, Tensor) or z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(
                f"z must have shape (B, {self.config.latent_channels}, h, w), got {shape}"
            )
        return z

    def decode(self, z: Tensor) -> tuple[Tensor, Covariance]:
        """The likelihood :math:`p(x \\mid z) = \\mathcal N(G(z), \\Sigma(z))`.

        Parameters
        ----------
        z
            shape ``(B, latent_channels, h, w)``.

        Returns
        -------
        ``(mean, covariance)``: the mean ``(B, f h, f w)`` and a batch of ``B`` covariances of
        the configured kind.
        """
        return self.decoder(self._check_latent(z))

    def decode_mean(self, z: Tensor) -> Tensor:
        """Only the mean :math:`G(z)`, shape ``(B, f h, f w)`` (no covariance head evaluated)."""
        return self.decoder.mean(self.decoder.features(self._check_latent(z)))

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor | None) -> Tensor:
        """:math:`z = \\mu + e^{\\text{logvar}/2} \\varepsilon`; ``eps=None`` gives ``z = mu``."""
        if eps is None:
            return mu
        if eps.shape != mu.shape:
            raise ValueError(f"eps must have the shape of mu {tuple(mu.shape)}, got {eps.shape}")
        return mu + torch.exp(0.5 * logvar) * eps.to(mu)

    def forward(
        self,
        x: Tensor,
        eps: Tensor | None = None,
        head: Literal["configured", "identity"] = "configured",
    ) -> VAEOutput:
        """Encode, draw ``z`` with the given noise, decode: one training step's forward pass.

        Parameters
        ----------
        x
            images, ``(B, H, W)`` or ``(B, 1, H, W)``.
        eps
            standard normal noise of the shape of the latent (drawn by the caller from its own
            generator), or ``None`` for ``z = mu``.
        head
            ``"configured"`` for the model's covariance, ``"identity"`` for the learned
            :math:`s^2 I` (stage 1 of training).

        Returns
        -------
        :class:`VAEOutput`.
        """
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, eps)
        mean, covariance = self.decoder(z, head)
        return VAEOutput(mean, covariance, mu, logvar, z)
