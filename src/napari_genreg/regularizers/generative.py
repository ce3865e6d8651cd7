r"""The generative regulariser with a learned image covariance (Duff, Campbell, Simpson, Ehrhardt).

.. math::

    R(x) = \inf_z \; \log\det\Sigma(z) + \tfrac12 \|P x - G(z)\|^2_{\Sigma(z)^{-1}}
           + \tfrac12 \|z\|^2

with a VAE decoder :math:`z \mapsto (G(z), \Sigma(z))` (:class:`~napari_genreg.models.vae.VAE`)
and :math:`P = \operatorname{diag}(\overline{p})` the removal of a smooth image phase
:math:`p = e^{i\varphi}` (unit modulus, ``(H, W)``). :class:`GenerativeRegularizer` evaluates
the bracket at a given pair ``(x, z)`` and provides what the x-step of the alternating
minimisation (:mod:`napari_genreg.solvers.alternating`) needs: :math:`G(z)`, the precision
:math:`P^H \Sigma^{-1} P` as a callable, its diagonal, and :math:`P^H \Sigma^{-1} G(z)`.

Units. The priors know real magnitudes in [0, 1]; ``x`` here is already *normalised* (divided by
the problem's intensity scale, :mod:`napari_genreg.recon.generative` does that and restores it).

Complex images against a real prior. The prior sees :math:`u = P x = \overline{p}\, x`, which is
close to real and non-negative when the phase estimate is good. The residual
:math:`r = u - G(z)` is complex and its Mahalanobis norm counts both parts,

.. math::

    \|r\|^2_{\Sigma^{-1}} = (\operatorname{Re} r)^T \Sigma^{-1} (\operatorname{Re} r)
                          + (\operatorname{Im} r)^T \Sigma^{-1} (\operatorname{Im} r),

because :math:`\Sigma^{-1}` is a real matrix applied to the real and the imaginary part
(:meth:`~napari_genreg.models.covariance.Covariance.precision`). The imaginary part is therefore
penalised towards zero with the same learned precision as the real part: the prior says "this
image is real after phase removal", which is what pulls the reconstruction's phase onto the
estimate :math:`p` where the data leave it free. The operator
:math:`v \mapsto P^H \Sigma^{-1} P v` is complex-linear, Hermitian and positive definite.

Shapes: images ``(H, W)`` with ``H`` and ``W`` multiples of ``2**downsamplings`` of the model
(pad first: :func:`napari_genreg.recon.generative` does), latents ``(B, c, H / f, W / f)``; every
method accepts a leading batch ``B`` of latents (restarts) with images ``(H, W)`` or
``(B, H, W)``.

Examples
--------
>>> import torch
>>> from napari_genreg.models.vae import VAE, VAEConfig
>>> model = VAE(VAEConfig(covariance="diagonal", image_size=32, base_channels=4))
>>> prior = GenerativeRegularizer(model, torch.ones(32, 32, dtype=torch.complex64))
>>> z = prior.encode(torch.rand(32, 32))
>>> decoded = prior.decode(z)
>>> prior.value(torch.rand(32, 32, dtype=torch.complex64), z).shape
torch.Size([1])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from napari_genreg.models.covariance import (
    Covariance,
    DiagonalCovariance,
    IdentityCovariance,
    StructuredCovariance,
)
from napari_genreg.models.vae import VAE

__all__ = ["Decoded", "GenerativeRegularizer", "PriorTerms", "precision_diagonal"]


class Decoded(NamedTuple):
    """The decoder's output at a latent.

    Attributes
    ----------
    mean
        :math:`G(z)`, real, shape ``(B, H, W)``.
    covariance
        :math:`\\Sigma(z)`, a batch of ``B`` covariances.
    """

    mean: Tensor
    covariance: Covariance


class PriorTerms(NamedTuple):
    """The three terms of the regulariser's bracket, each float64 of shape ``(B,)``.

    Attributes
    ----------
    logdet
        :math:`\\log\\det\\Sigma(z)`.
    mahalanobis
        :math:`\\|Px - G(z)\\|^2_{\\Sigma(z)^{-1}}` (real and imaginary parts).
    latent
        :math:`\\|z\\|^2`.
    """

    logdet: Tensor
    mahalanobis: Tensor
    latent: Tensor

    def value(self) -> Tensor:
        """The bracket :math:`\\log\\det\\Sigma + \\tfrac12 \\|Px - G\\|^2_{\\Sigma^{-1}}
        + \\tfrac12\\|z\\|^2`."""
        return self.logdet + 0.5 * self.mahalanobis + 0.5 * self.latent


def _logdet64(covariance: Covariance) -> Tensor:
    """:math:`\\log\\det\\Sigma` accumulated in float64, shape ``(B,)``."""
    if isinstance(covariance, StructuredCovariance):
        return -2.0 * covariance.log_diagonal.double().sum(dim=(-2, -1))
    if isinstance(covariance, DiagonalCovariance):
        return covariance.log_variance.double().sum(dim=(-2, -1))
    if isinstance(covariance, IdentityCovariance):
        h, w = covariance.shape
        return 2.0 * h * w * covariance.log_scale.double()
    return covariance.logdet().double()


def precision_diagonal(covariance: Covariance) -> Tensor:
    r"""The diagonal of the precision :math:`\Sigma^{-1} = L L^T`, shape ``(B, H, W)``.

    :math:`(L L^T)_{ii} = \sum_j L_{ij}^2`: for the structured factor the squared diagonal plus
    the squared off-diagonal weights whose neighbour lies inside the image; :math:`1 / s^2` and
    :math:`1 / v_i` for the identity and diagonal variants. Used as the Jacobi preconditioner of
    the x-step.
    """
    if isinstance(covariance, IdentityCovariance):
        b = covariance.batch_size
        inv = torch.exp(-2.0 * covariance.log_scale)[:, None, None]
        return inv.expand(b, *covariance.shape).contiguous()
    if isinstance(covariance, DiagonalCovariance):
        return torch.exp(-covariance.log_variance)
    if isinstance(covariance, StructuredCovariance):
        h, w = covariance.shape
        out = torch.exp(2.0 * covariance.log_diagonal)
        if torch.is_grad_enabled() and (
            covariance.off_diagonal.requires_grad or covariance.log_diagonal.requires_grad
        ):
            rows = torch.arange(h, device=covariance.device)[:, None]
            cols = torch.arange(w, device=covariance.device)[None, :]
            for m, (dy, dx) in enumerate(covariance.offsets):
                inside = (rows + dy >= 0) & (rows + dy < h) & (cols + dx >= 0) & (cols + dx < w)
                out = out + covariance.off_diagonal[:, m].square() * inside
            return out
        for m, (dy, dx) in enumerate(covariance.offsets):
            # the pixels whose neighbour (row + dy, col + dx) lies inside the image
            rows = slice(max(0, -dy), max(0, h - max(0, dy)))
            cols = slice(max(0, -dx), max(0, w - max(0, dx)))
            out[:, rows, cols].add_(covariance.off_diagonal[:, m, rows, cols].square())
        return out
    raise TypeError(f"no precision diagonal for {type(covariance).__name__}")


@dataclass(frozen=True, eq=False)
class GenerativeRegularizer:
    r"""The generative regulariser of a VAE, on images of one size with one phase estimate.

    An immutable value: it holds the model (never modified: no parameter is changed, no flag
    set, no mode switched; gradients are taken with respect to ``z`` only) and the phase.

    Parameters
    ----------
    model
        the VAE; its decoder gives :math:`G(z)` and :math:`\Sigma(z)`.
    phase
        :math:`p`, complex unit-modulus ``(H, W)`` on the model's device; ``H`` and ``W``
        multiples of the model's ``2**downsamplings``.
    head
        ``"configured"`` for the model's own covariance, ``"identity"`` for its learned
        :math:`s^2 I` (every decoder has one: the ``vae-identity`` method uses it).

    Raises
    ------
    ValueError
        For a phase that is not complex ``(H, W)`` or a size the model does not accept.
    """

    model: VAE
    phase: Tensor
    head: Literal["configured", "identity"] = "configured"
    _phase_conj: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, VAE):
            raise ValueError(f"model must be a VAE, got {type(self.model).__name__}")
        if not isinstance(self.phase, Tensor) or not self.phase.is_complex():
            raise ValueError("phase must be a complex tensor of unit modulus, shape (H, W)")
        if self.phase.ndim != 2:
            raise ValueError(f"phase must have shape (H, W), got {tuple(self.phase.shape)}")
        self.model.check_image_shape(tuple(self.phase.shape))
        if self.head not in ("configured", "identity"):
            raise ValueError(f"head must be 'configured' or 'identity', got {self.head!r}")
        phase = self.phase.detach().to(self.dtype.to_complex())
        object.__setattr__(self, "phase", phase)
        # the conjugate stored once (not a lazy view conjugated on every multiply)
        object.__setattr__(self, "_phase_conj", phase.conj().resolve_conj())

    # -- properties --------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """The image shape ``(H, W)``."""
        return (int(self.phase.shape[0]), int(self.phase.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        """The real dtype of the model's parameters."""
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(c, H / f, W / f)``: one latent without its batch axis."""
        return self.model.latent_shape(self.shape)

    @property
    def kind(self) -> str:
        """The covariance used: ``"identity"``, ``"diagonal"`` or ``"structured"``."""
        return "identity" if self.head == "identity" else self.model.config.covariance

    # -- phase -------------------------------------------------------------------------------

    def remove_phase(self, x: Tensor) -> Tensor:
        r""":math:`P x = \overline{p}\, x` in the model's complex dtype, ``(..., H, W)``."""
        return x.to(self.phase.dtype) * self._phase_conj

    def restore_phase(self, u: Tensor) -> Tensor:
        r""":math:`P^H u = p\, u`, complex ``(..., H, W)``."""
        return u.to(self.phase.dtype) * self.phase

    # -- the decoder -------------------------------------------------------------------------

    def encode(self, magnitude: Tensor) -> Tensor:
        r"""The posterior mean :math:`\mu(|x|)` of the encoder, without gradients.

        Parameters
        ----------
        magnitude
            real (or complex: its modulus is taken) ``(H, W)`` or ``(B, H, W)``, normalised to
            about [0, 1].

        Returns
        -------
        ``z``, shape ``(B, c, H / f, W / f)``.
        """
        m = magnitude.abs() if magnitude.is_complex() else magnitude
        m = m.to(device=self.device, dtype=self.dtype)
        if m.ndim == 2:
            m = m[None]
        with torch.no_grad():
            mu, _ = self.model.encode(m)
        return mu.detach()

    def decode(self, z: Tensor) -> Decoded:
        r""":math:`(G(z), \Sigma(z))`, differentiable with respect to ``z``.

        Parameters
        ----------
        z
            ``(B, c, H / f, W / f)``.
        """
        mean, covariance = self.model.decoder(self.model._check_latent(z), self.head)
        return Decoded(mean, covariance)

    def decode_mean(self, z: Tensor) -> Tensor:
        r"""Only :math:`G(z)`, ``(B, H, W)`` (no covariance head evaluated)."""
        return self.model.decode_mean(z)

    # -- the regulariser ---------------------------------------------------------------------

    def _residual(self, x: Tensor, mean: Tensor) -> Tensor:
        u = self.remove_phase(x)
        if u.ndim == 2:
            u = u.expand(mean.shape[0], *u.shape)
        return u - mean.to(u.dtype)

    def terms(self, x: Tensor, z: Tensor, decoded: Decoded | None = None) -> PriorTerms:
        r"""The terms of the bracket at ``(x, z)``, differentiable with respect to ``z``.

        Parameters
        ----------
        x
            normalised complex image ``(H, W)`` or ``(B, H, W)``.
        z
            ``(B, c, h, w)``.
        decoded
            :meth:`decode` of ``z`` if already computed.

        Returns
        -------
        :class:`PriorTerms`, each ``(B,)`` float64.
        """
        if decoded is None:
            decoded = self.decode(z)
        r = self._residual(x, decoded.mean)
        lt = decoded.covariance.factor_t(r)
        mahalanobis = torch.view_as_real(lt).double().square().sum(dim=(-3, -2, -1))
        latent = z.double().square().sum(dim=(-3, -2, -1))
        return PriorTerms(_logdet64(decoded.covariance), mahalanobis, latent)

    def value(self, x: Tensor, z: Tensor) -> Tensor:
        r"""The bracket :math:`\log\det\Sigma(z) + \tfrac12\|Px - G(z)\|^2_{\Sigma^{-1}} +
        \tfrac12\|z\|^2`, float64 ``(B,)``; its minimum over ``z`` is :math:`R(x)`."""
        with torch.no_grad():
            return self.terms(x, z).value()

    # -- what the x-step needs ---------------------------------------------------------------

    def precision(self, decoded: Decoded, v: Tensor) -> Tensor:
        r""":math:`P^H \Sigma^{-1} P v` for complex ``v`` of shape ``(H, W)``; batch size 1."""
        u = self.remove_phase(v)[None]
        return self.restore_phase(decoded.covariance.precision(u)[0]).to(v.dtype)

    def prior_rhs(self, decoded: Decoded) -> Tensor:
        r""":math:`P^H \Sigma^{-1} G(z)`, complex ``(H, W)``; batch size 1."""
        # Sigma^-1 is real: applied to the real mean, not to a complex copy with a zero part
        return self.restore_phase(decoded.covariance.precision(decoded.mean)[0])

    def precision_diagonal(self, decoded: Decoded) -> Tensor:
        r"""The diagonal of :math:`P^H \Sigma^{-1} P` (equal to that of :math:`\Sigma^{-1}`,
        ``P`` being diagonal and unitary), real ``(H, W)``; batch size 1."""
        return precision_diagonal(decoded.covariance)[0]

    def constant_variance(self, decoded: Decoded) -> float | None:
        r""":math:`s^2` when :math:`\Sigma = s^2 I` (then :math:`P^H\Sigma^{-1}P = I / s^2`
        and the x-step has a closed form), ``None`` otherwise; batch size 1."""
        covariance = decoded.covariance
        if isinstance(covariance, IdentityCovariance):
            return math.exp(2.0 * float(covariance.log_scale[0]))
        return None
