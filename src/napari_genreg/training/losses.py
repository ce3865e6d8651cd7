r"""The training objective of the VAE: the negative ELBO, its two stages, and bits per dimension.

For an image :math:`x` of ``N = H W`` pixels, a posterior :math:`q(z \mid x) = \mathcal N(\mu,
\operatorname{diag}\sigma^2)`, a standard normal prior and the decoder's Gaussian likelihood
:math:`p(x \mid z) = \mathcal N(G(z), \Sigma(z))`, the negative evidence lower bound with one
sample :math:`z = \mu + \sigma \varepsilon` is

.. math::

    -\text{ELBO}(x) = \underbrace{\tfrac12 \big[\log\det\Sigma(z)
        + \|x - G(z)\|^2_{\Sigma(z)^{-1}} + N \log 2\pi\big]}_{\text{Gaussian NLL}}
        + \beta\, \underbrace{\tfrac12 \sum_j \big(\mu_j^2 + \sigma_j^2 - 1
        - \log\sigma_j^2\big)}_{\text{KL}(q \,\|\, \mathcal N(0, I))}

in nats; with :math:`\beta = 1` its expectation over :math:`\varepsilon` is an **upper bound** on
:math:`-\log p(x)`.

Staging (Dorta et al., "Structured Uncertainty Prediction Networks", CVPR 2018)
------------------------------------------------------------------------------
* Stage 1 (:data:`MEAN_STAGE`): encoder, decoder trunk and mean head, with the identity covariance
  :math:`s^2 I` whose scalar :math:`s` is *learned* jointly. The NLL is then
  :math:`N \log s + \|x - G(z)\|^2 / (2 s^2) + \text{const}`: a mean-squared error whose weight
  against the KL term adapts to the reconstruction error (:math:`s^2` tends to the mean squared
  residual), so :math:`\beta` keeps its meaning.
* Stage 2 (:data:`COVARIANCE_STAGE`): encoder, trunk and mean are frozen and only the covariance
  head is trained, by the Gaussian NLL of the configured covariance (the KL term does not depend
  on the head). For an ``identity`` model this stage refines the scalar :math:`s` alone.

:func:`set_stage` switches ``requires_grad`` accordingly and returns the parameters to optimise.

Bits per dimension
------------------
:func:`bits_per_dim` reports :math:`-\text{ELBO} / (N \ln 2)` (``kl_weight = 1``), an upper
bound on the negative log-likelihood per pixel in bits. Convention: the density is that of the
**continuous** image on the [0, 1] intensity scale, with **no** discretisation term. Values can be
negative (a density above 1 on [0, 1]). To compare with benchmarks of 8-bit images, whose pixels
are integers in [0, 255] with a uniform dequantisation, add :math:`\log_2 256 = 8` bits; that
comparison is only indicative here, since these images are not dequantised 8-bit data.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from napari_genreg.models.covariance import Covariance

if TYPE_CHECKING:
    from napari_genreg.models.vae import VAE, VAEOutput

__all__ = [
    "COVARIANCE_STAGE",
    "MEAN_STAGE",
    "ELBOTerms",
    "bits_per_dim",
    "elbo_terms",
    "gaussian_nll",
    "kl_divergence",
    "set_stage",
    "stage_loss",
]

#: Stage 1: encoder and mean with a learned identity covariance.
MEAN_STAGE = 1
#: Stage 2: the covariance head alone, encoder and mean frozen.
COVARIANCE_STAGE = 2

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_nll(x: Tensor, mean: Tensor, covariance: Covariance) -> Tensor:
    r"""Negative log-density of :math:`\mathcal N(\text{mean}, \Sigma)` at ``x``, in nats.

    .. math::

        \tfrac12 \big[\log\det\Sigma + (x - \text{mean})^T \Sigma^{-1} (x - \text{mean})
        + N \log 2\pi\big]

    Parameters
    ----------
    x, mean
        real, shape ``(B, H, W)``; ``x`` may also be ``(B, 1, H, W)``.
    covariance
        a batch of ``B`` covariances of ``H x W`` images.

    Returns
    -------
    tensor ``(B,)``.
    """
    if x.ndim == 4:
        x = x[:, 0]
    n = x.shape[-2] * x.shape[-1]
    return 0.5 * (covariance.logdet() + covariance.mahalanobis(x - mean) + n * _LOG_2PI)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu, e^{\text{logvar}}) \,\|\, \mathcal N(0, I))` in nats.

    Parameters
    ----------
    mu, logvar
        shape ``(B, ...)``.

    Returns
    -------
    tensor ``(B,)``: :math:`\tfrac12 \sum (\mu^2 + e^{\text{logvar}} - 1 - \text{logvar})`.
    """
    return 0.5 * (mu.square() + torch.exp(logvar) - 1.0 - logvar).flatten(1).sum(dim=1)


class ELBOTerms(NamedTuple):
    """The two terms of the negative ELBO of a batch, in nats per image, each ``(B,)``."""

    nll: Tensor
    kl: Tensor

    def negative_elbo(self, kl_weight: float = 1.0) -> Tensor:
        """``nll + kl_weight * kl``, shape ``(B,)``."""
        return self.nll + kl_weight * self.kl


def elbo_terms(x: Tensor, output: VAEOutput) -> ELBOTerms:
    """The NLL and KL terms of a forward pass :class:`~napari_genreg.models.vae.VAEOutput`.

    Parameters
    ----------
    x
        the images that were encoded, ``(B, H, W)`` or ``(B, 1, H, W)``.
    output
        ``model(x, eps, head)``.
    """
    return ELBOTerms(
        gaussian_nll(x, output.mean, output.covariance), kl_divergence(output.mu, output.logvar)
    )


def stage_loss(x: Tensor, output: VAEOutput, stage: int, kl_weight: float = 1.0) -> Tensor:
    """The scalar training loss of a batch: the stage's objective in nats per pixel.

    Stage 1: ``(nll + kl_weight * kl) / N`` averaged over the batch (``output`` from the identity
    head). Stage 2: ``nll / N`` (``output`` from the configured head; the KL term is constant).

    Parameters
    ----------
    x
        images ``(B, H, W)`` or ``(B, 1, H, W)``.
    output
        the forward pass of the batch.
    stage
        :data:`MEAN_STAGE` or :data:`COVARIANCE_STAGE`.
    kl_weight
        :math:`\\beta`, used in stage 1.

    Returns
    -------
    scalar tensor.
    """
    n = x.shape[-2] * x.shape[-1]
    nll = gaussian_nll(x, output.mean, output.covariance)
    if stage == MEAN_STAGE:
        loss = nll + kl_weight * kl_divergence(output.mu, output.logvar)
    elif stage == COVARIANCE_STAGE:
        loss = nll
    else:
        raise ValueError(f"stage must be {MEAN_STAGE} or {COVARIANCE_STAGE}, got {stage!r}")
    return loss.mean() / n


def bits_per_dim(negative_elbo: Tensor, num_pixels: int) -> Tensor:
    r"""Convert a negative ELBO in nats per image to bits per pixel: :math:`/ (N \ln 2)`.

    The result bounds :math:`-\log_2 p(x) / N` from above (continuous density on the [0, 1]
    scale, no discretisation term: add 8 for a comparison with 8-bit benchmarks).

    Parameters
    ----------
    negative_elbo
        nats per image, any shape.
    num_pixels
        ``N = H W``.
    """
    return negative_elbo / (num_pixels * math.log(2.0))


def set_stage(model: VAE, stage: int) -> list[tuple[str, torch.nn.Parameter]]:
    """Freeze everything but the stage's parameters; return those ``(name, parameter)`` pairs.

    Stage 1 trains the encoder, the decoder trunk, the mean head and the identity scale
    ``decoder.log_scale``; stage 2 trains ``decoder.covariance_head`` (``decoder.log_scale`` for
    an ``identity`` model). Everything else gets ``requires_grad = False``.

    Parameters
    ----------
    model
        the VAE (not a DDP wrapper).
    stage
        :data:`MEAN_STAGE` or :data:`COVARIANCE_STAGE`.
    """
    if stage == MEAN_STAGE:

        def trainable(name: str) -> bool:
            return not name.startswith("decoder.covariance_head.")

    elif stage == COVARIANCE_STAGE:
        prefix = (
            "decoder.log_scale"
            if model.decoder.covariance_head is None
            else "decoder.covariance_head."
        )

        def trainable(name: str) -> bool:
            return name.startswith(prefix)

    else:
        raise ValueError(f"stage must be {MEAN_STAGE} or {COVARIANCE_STAGE}, got {stage!r}")
    chosen = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable(name))
        if parameter.requires_grad:
            chosen.append((name, parameter))
    return chosen
