"""ESPIRiT coil sensitivities from a fully sampled calibration region.

ESPIRiT (M. Uecker, P. Lai, M. J. Murphy, P. Virtue, M. Elad, J. M. Pauly, S. S. Vasanawala and
M. Lustig, "ESPIRiT — an eigenvalue approach to autocalibrating parallel MRI: where SENSE meets
GRAPPA", Magn. Reson. Med. 71(3):990-1001, 2014) rests on one observation: every ``k x k``
multi-coil patch of fully sampled k-space lies (up to noise) in a low-dimensional subspace, the
*signal subspace* of the calibration matrix, and the projection onto it, moved to the image
domain, is a ``C x C`` matrix per pixel whose eigenvector of eigenvalue 1 is the vector of coil
sensitivities at that pixel. The steps, as implemented here:

1. Calibration matrix ``A``: one row per position of a ``k x k`` window inside the fully sampled
   centre, holding the window's samples of all coils, ``C k^2`` columns ordered
   ``(coil, ky, kx)``.
2. Its right singular vectors ``v_n`` with singular value ``sigma_n > threshold * sigma_max``
   span the signal subspace (computed from the eigendecomposition of ``A^H A``).
3. The rows of ``V_par^H``, each reshaped to ``(C, k, k)``, are k-space kernels ``K_n``. Their
   image-space versions are ``g_{n,c}(r) = 1/k sum_a K_{n,c}(a) exp(+i w(r) . a)`` with
   ``w(r) = 2 pi r / N`` (``r`` the centred pixel coordinate), and the ESPIRiT operator at pixel
   ``r`` is ``G(r) = sum_n g_n(r) g_n(r)^H`` (Hermitian, eigenvalues in ``[0, 1]``).
   ``G`` is a trigonometric polynomial with frequencies in ``[-(k-1), k-1]``: it is sampled
   exactly on a ``(2k-1) x (2k-1)`` grid, turned into its ``(2k-1)^2`` Fourier coefficients and
   evaluated on the full ``(ky, kx)`` grid as a separable product with two small Fourier
   matrices, so the cost does not grow with the number of kernels times the image size.
4. Per pixel, the top eigenvector of ``G(r)`` (batched :func:`torch.linalg.eigh`) is the map;
   pixels whose top eigenvalue is ``<= crop`` are set to zero (no consistent signal there).
5. Eigenvectors carry an arbitrary phase per pixel. It is fixed against a *virtual body coil*:
   ``u``, the top eigenvector of ``sum_r m(r) m(r)^H`` (the coil combination with the most
   energy, a phase-invariant choice), and each pixel is rotated so that ``u^H m(r)`` is real and
   positive. Unlike the phase of one physical coil this reference does not fade where that coil
   is far away, so the maps stay smooth across the field of view.

The maps are normalised, ``sum_c |m_c(r)|^2 = 1`` where kept, so with them ``S^H S = I`` on the
support (see :class:`~napari_genreg.physics.operators.CoilExpand`). Written from the paper's
description; everything runs on the input's device (CPU or CUDA) with native complex tensors.
"""

from __future__ import annotations

import numbers
from typing import Literal, NamedTuple

import numpy as np
import torch

from napari_genreg.physics.coils import lowres_maps

#: Default upper bound on each side of the calibration block taken from a mask: larger blocks
#: cost time (the calibration matrix grows with their area) and add little to smooth maps.
MAX_CALIBRATION = 32

#: :func:`sensitivity_maps` needs a fully sampled centre of at least this many k-space lines in
#: each direction for any estimate at all.
MIN_CALIBRATION = 4

#: Pixels per batch of the per-pixel eigendecomposition (bounds the working memory).
_EIGH_CHUNK = 16384


class CoilMaps(NamedTuple):
    """Coil sensitivities and the method that estimated them.

    Attributes
    ----------
    maps
        complex tensor, shape ``(C, ky, kx)``.
    method
        ``"espirit"`` or ``"lowres"``.
    """

    maps: torch.Tensor
    method: Literal["espirit", "lowres"]


def centred_fully_sampled_box(mask: torch.Tensor | np.ndarray) -> tuple[int, int]:
    """The centred, fully sampled block of ``mask`` grown from the centre, as ``(rows, columns)``.

    "Centred" follows the convention of the centred FFT and of
    :class:`~napari_genreg.physics.operators.Crop`: a block of ``(ny, nx)`` covers rows
    ``ky//2 - ny//2 .. ky//2 - ny//2 + ny`` (and likewise columns), so it contains the zero
    frequency and can be cut out with that convention. The block grows from the centre sample
    one row and one column at a time while the new row or column is fully sampled; the blocks
    are nested, so a row that cannot be added now never can be later, and the result is
    maximal (no row or column can be added), though not always the one of largest area.

    Parameters
    ----------
    mask
        boolean (or 0/1) tensor or array, shape ``(ky, kx)``.

    Returns
    -------
    tuple of int
        ``(ny, nx)``; ``(0, 0)`` when the centre sample itself is not sampled.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a sampling mask must be 2-D (ky, kx), got shape {m.shape}")
    m = m != 0
    h, w = m.shape
    cy, cx = h // 2, w // 2
    if not m[cy, cx]:
        return (0, 0)
    ny = nx = 1
    grown = True
    while grown:
        grown = False
        x0 = cx - nx // 2
        if ny < h:
            # block(n + 1) adds the row above block(n) when n is odd, the row below when even
            row = cy - (ny + 1) // 2 if ny % 2 else cy - ny // 2 + ny
            if m[row, x0 : x0 + nx].all():
                ny, grown = ny + 1, True
        y0 = cy - ny // 2
        if nx < w:
            col = cx - (nx + 1) // 2 if nx % 2 else cx - nx // 2 + nx
            if m[y0 : y0 + ny, col].all():
                nx, grown = nx + 1, True
    return (ny, nx)


def espirit_maps(
    kspace: torch.Tensor,
    calibration: tuple[int, int] | None = None,
    *,
    kernel: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
    mask: torch.Tensor | np.ndarray | None = None,
) -> torch.Tensor:
    """ESPIRiT coil sensitivities (one set of maps), Uecker et al., MRM 71:990, 2014.

    With ``A`` the calibration matrix of ``kernel x kernel`` patches and ``V_par`` its right
    singular vectors above ``threshold * sigma_max``, the maps at pixel ``r`` solve

        G(r) m(r) = lambda(r) m(r),   G(r) = sum_n g_n(r) g_n(r)^H,

    for the largest ``lambda(r)``, where ``g_n(r) in C^C`` is the image-space version of the
    kernel ``n`` (see the module docstring). ``m(r)`` is kept where ``lambda(r) > crop`` and set
    to zero elsewhere, and its phase is fixed against a virtual body coil.

    Parameters
    ----------
    kspace
        complex tensor, shape ``(C, ky, kx)``, centred (zero frequency at ``(ky//2, kx//2)``);
        unsampled locations may hold anything outside the calibration block.
    calibration
        ``(ny, nx)``: the size of the centred, fully sampled block to calibrate from (clipped to
        the k-space shape). Default: :func:`centred_fully_sampled_box` of ``mask``, each side
        capped at :data:`MAX_CALIBRATION`; without a mask the pattern of non-zero samples
        (``kspace != 0`` in any coil) is taken for it.
    kernel
        ``k``: the side of the k-space kernels (patches).
    threshold
        Relative singular value threshold: singular vectors with ``sigma > threshold *
        sigma_max`` span the signal subspace.
    crop
        Eigenvalue threshold in ``[0, 1]``: maps are zero where the top eigenvalue is not above
        it.
    mask
        boolean (or 0/1) tensor or array, shape ``(ky, kx)``: the sampling pattern, used for the
        default ``calibration`` (and checked against an explicit one).

    Returns
    -------
    torch.Tensor
        complex, shape ``(C, ky, kx)``, same dtype and device as ``kspace``; ``sum_c |m_c|^2``
        is 1 where kept and 0 elsewhere.

    Raises
    ------
    ValueError
        For a ``kspace`` that is not complex ``(C, ky, kx)``, a calibration block smaller than
        the kernel or not fully sampled according to ``mask``, or parameters out of range.

    Examples
    --------
    >>> from napari_genreg.physics.coils import simulate_multicoil, synthetic_maps
    >>> image = torch.zeros(64, 64, dtype=torch.complex64)
    >>> image[16:48, 12:52] = 1
    >>> kspace = simulate_multicoil(image, synthetic_maps(4, (64, 64)))
    >>> espirit_maps(kspace, (24, 24)).shape
    torch.Size([4, 64, 64])
    """
    if kspace.ndim != 3 or not kspace.is_complex():
        raise ValueError(
            f"k-space must be a complex tensor of shape (coils, ky, kx), got {kspace.dtype} "
            f"{tuple(kspace.shape)}"
        )
    if isinstance(kernel, bool) or not isinstance(kernel, numbers.Integral) or kernel < 1:
        raise ValueError(f"kernel must be a positive integer, got {kernel!r}")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    if not 0 <= crop <= 1:
        raise ValueError(f"crop must be in [0, 1], got {crop!r}")
    _, h, w = kspace.shape

    if calibration is None:
        pattern = (kspace != 0).any(dim=0) if mask is None else mask
        box = centred_fully_sampled_box(pattern)
        ny, nx = min(box[0], MAX_CALIBRATION), min(box[1], MAX_CALIBRATION)
    else:
        ny, nx = min(int(calibration[0]), h), min(int(calibration[1]), w)
        if mask is not None:
            box = centred_fully_sampled_box(mask)
            if ny > box[0] or nx > box[1]:
                raise ValueError(
                    f"the {ny}x{nx} calibration block is not fully sampled: the mask's fully "
                    f"sampled centre is {box[0]}x{box[1]}"
                )
    if ny < kernel or nx < kernel:
        raise ValueError(
            f"the calibration block ({ny}x{nx}) must be at least as large as the kernel "
            f"({kernel}x{kernel})"
        )

    y0, x0 = h // 2 - ny // 2, w // 2 - nx // 2
    calib = kspace[:, y0 : y0 + ny, x0 : x0 + nx]
    kernels = signal_kernels(calib, kernel, threshold)
    maps, eigenvalue = _top_eigenvectors(kernels, (h, w))
    maps = torch.where(eigenvalue > crop, maps, 0)
    return _fix_phase(maps)


def signal_kernels(calibration: torch.Tensor, kernel: int, threshold: float) -> torch.Tensor:
    """The k-space kernels spanning the signal subspace of the calibration matrix.

    The calibration matrix ``A`` has one row per position ``p`` of a ``k x k`` window inside the
    block, ``A[p, (c, a)] = y_c(p + a)``, shape ``((ny-k+1)(nx-k+1), C k^2)``. With
    ``A = U Sigma V^H`` the kept rows of ``V^H`` (``sigma_n > threshold * sigma_max``) are the
    kernels. ``V`` and ``sigma^2`` come from the eigendecomposition of the ``C k^2 x C k^2``
    Gram matrix ``A^H A`` (formed in the input's precision, decomposed in double precision):
    ``O(P (C k^2)^2)`` to form for ``P`` rows, ``O((C k^2)^3)`` to decompose.

    Parameters
    ----------
    calibration
        complex tensor, shape ``(C, ny, nx)``: the fully sampled centre of k-space.
    kernel
        ``k``.
    threshold
        Relative singular value threshold.

    Returns
    -------
    torch.Tensor
        complex, shape ``(n, C, k, k)`` (``calibration``'s dtype), orthonormal as vectors of
        ``C k^2`` entries.
    """
    coils, ny, nx = calibration.shape
    if not 1 <= kernel <= min(ny, nx):
        raise ValueError(f"kernel {kernel} does not fit the {ny}x{nx} calibration block")
    patches = calibration.unfold(1, kernel, 1).unfold(2, kernel, 1)  # (C, py, px, k, k)
    matrix = patches.permute(1, 2, 0, 3, 4).reshape(-1, coils * kernel * kernel)
    gram = (matrix.mH @ matrix).to(torch.complex128)
    power, vectors = torch.linalg.eigh(gram)  # ascending; power = sigma^2
    power, vectors = power.flip(0), vectors.flip(1)
    if not float(power[0]) > 0:
        raise ValueError("the calibration region is zero: nothing to calibrate from")
    keep = power > threshold**2 * power[0]
    rows = vectors[:, keep].mH  # rows of V^H
    return rows.reshape(-1, coils, kernel, kernel).to(calibration.dtype)


def image_space_operator(kernels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The ESPIRiT operator in the image domain: one ``C x C`` matrix per pixel.

        G(r) = sum_n g_n(r) g_n(r)^H,
        g_{n,c}(r) = 1/k sum_a K_{n,c}(a) exp(+i w(r) . a),   w(r) = 2 pi r / (ky, kx),

    with ``r`` the centred pixel coordinate (index minus ``(ky//2, kx//2)``), the convention of
    :func:`~napari_genreg.physics.fft.ifft2c`. Each entry of ``G`` is a trigonometric polynomial
    with frequencies ``d in [-(k-1), k-1]^2``: it is sampled on a ``(2k-1)^2`` grid, where the
    samples determine it exactly, its coefficients ``c_d`` are taken by an FFT, and
    ``G(r) = sum_d c_d exp(i w(r) . d)`` is evaluated on the full grid as a separable product
    with the ``(ky, 2k-1)`` and ``(kx, 2k-1)`` Fourier matrices. The cost is
    ``O(C^2 ky kx k)``, independent of the number of kernels.

    Parameters
    ----------
    kernels
        complex tensor, shape ``(n, C, k, k)``: orthonormal k-space kernels.
    shape
        ``(ky, kx)``: the image grid.

    Returns
    -------
    torch.Tensor
        complex, shape ``(ky, kx, C, C)``: ``G[y, x]``, Hermitian, with eigenvalues in
        ``[0, 1]`` (up to rounding).
    """
    partial, rows = _operator_factors(kernels, shape)
    return _operator_rows(partial, rows)


def _operator_factors(
    kernels: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``G(r)``'s coefficients transformed along ``kx``, and the Fourier matrix along ``ky``.

    Returns ``(C, C, 2k-1, kx)`` and ``(ky, 2k-1)``; :func:`_operator_rows` finishes ``G``.
    """
    _, _, k, _ = kernels.shape
    h, w = shape
    m = 2 * k - 1
    # samples of the kernels' transforms at w = 2 pi r' / m (an unscaled inverse DFT) ...
    samples = torch.fft.ifft2(kernels, s=(m, m), norm="forward")
    product = torch.einsum("ncyx,ndyx->cdyx", samples, samples.conj()) / (k * k)
    # ... give the coefficients c_d exactly; after the shift, index i holds d = i - (k - 1)
    coefficients = torch.fft.fftshift(torch.fft.fft2(product, norm="forward"), dim=(-2, -1))
    along_y, along_x = (_fourier_matrix(n, k, kernels) for n in (h, w))
    partial = torch.einsum("cdab,xb->cdax", coefficients, along_x)
    return partial, along_y


def _operator_rows(partial: torch.Tensor, along_y: torch.Tensor) -> torch.Tensor:
    """Rows ``along_y``'s rows of ``G``: ``(C, C, 2k-1, kx), (rows, 2k-1) -> (rows, kx, C, C)``."""
    return torch.einsum("ya,cdax->yxcd", along_y, partial)


def _fourier_matrix(n: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """``E[j, i] = exp(2 pi i (j - n//2) d / n)`` with ``d = i - (k - 1)``: shape ``(n, 2k-1)``."""
    position = torch.arange(n, dtype=torch.float64, device=like.device) - n // 2
    frequency = torch.arange(-(k - 1), k, dtype=torch.float64, device=like.device)
    angle = (2 * torch.pi / n) * torch.outer(position, frequency)
    return torch.polar(torch.ones_like(angle), angle).to(like.dtype)


def _top_eigenvectors(
    kernels: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenvector and eigenvalue of ``G(r)`` at every pixel, a block of rows at a time.

    Returns ``(C, ky, kx)`` unit vectors and real ``(ky, kx)`` eigenvalues.
    """
    coils = kernels.shape[1]
    h, w = shape
    partial, along_y = _operator_factors(kernels, shape)
    vectors = kernels.new_empty((h, w, coils))
    values = kernels.real.new_empty((h, w))
    step = max(1, _EIGH_CHUNK // w)
    for start in range(0, h, step):
        block = _operator_rows(partial, along_y[start : start + step])
        eigenvalues, eigenvectors = torch.linalg.eigh(block)  # ascending, lower triangle used
        values[start : start + step] = eigenvalues[..., -1]
        vectors[start : start + step] = eigenvectors[..., -1]
    return vectors.permute(2, 0, 1), values


def _fix_phase(maps: torch.Tensor) -> torch.Tensor:
    """Rotate each pixel's map so that a virtual body coil ``u^H m(r)`` is real and positive.

    ``u`` is the top eigenvector of ``sum_r m(r) m(r)^H`` (invariant to the per-pixel phases);
    pixels where ``u^H m(r)`` vanishes (the cropped ones) are left as they are.
    """
    coils = maps.shape[0]
    flat = maps.reshape(coils, -1)
    energy = (flat @ flat.mH).to(torch.complex128)
    _, vectors = torch.linalg.eigh(0.5 * (energy + energy.mH))
    body = vectors[:, -1].to(maps.dtype)
    reference = (body.conj().view(coils, 1, 1) * maps).sum(dim=0)
    magnitude = reference.abs()
    rotation = torch.where(
        magnitude > 0, reference.conj() / magnitude.clamp_min(torch.finfo(magnitude.dtype).tiny), 1
    )
    return maps * rotation


def sensitivity_maps(
    kspace: torch.Tensor,
    mask: torch.Tensor | np.ndarray | None,
    method: Literal["espirit", "lowres"] = "espirit",
    *,
    kernel: int = 6,
    threshold: float = 0.02,
    crop: float = 0.95,
) -> CoilMaps:
    """Coil sensitivities from the fully sampled centre of (possibly undersampled) k-space.

    The calibration block is :func:`centred_fully_sampled_box` of ``mask`` (without a mask, of
    the non-zero pattern of ``kspace``), each side capped at :data:`MAX_CALIBRATION`. The rule:

    - ``method="espirit"``: :func:`espirit_maps` when the block has at least ``2 * kernel``
      lines in both directions (so the calibration matrix has at least ``(k+1)^2`` rows);
      otherwise :func:`~napari_genreg.physics.coils.lowres_maps` from the same block, silently:
      the returned ``method`` says which one ran.
    - ``method="lowres"``: :func:`~napari_genreg.physics.coils.lowres_maps` from the block.

    Parameters
    ----------
    kspace
        complex tensor, shape ``(C, ky, kx)``, centred, zero where not sampled.
    mask
        boolean (or 0/1) tensor or array, shape ``(ky, kx)``, or ``None``.
    method
        ``"espirit"`` or ``"lowres"``.
    kernel, threshold, crop
        Passed to :func:`espirit_maps`.

    Returns
    -------
    CoilMaps
        ``maps``: complex ``(C, ky, kx)``; ``method``: the method that ran.

    Raises
    ------
    ValueError
        For an unknown ``method``, or a fully sampled centre smaller than
        :data:`MIN_CALIBRATION` lines in either direction.
    """
    if method not in ("espirit", "lowres"):
        raise ValueError(f"unknown coil map method {method!r}; valid: 'espirit', 'lowres'")
    pattern = (kspace != 0).any(dim=0) if mask is None else mask
    box = centred_fully_sampled_box(pattern)
    if min(box) < MIN_CALIBRATION:
        raise ValueError(
            f"coil sensitivities need a fully sampled centre of at least {MIN_CALIBRATION}x"
            f"{MIN_CALIBRATION} k-space samples (found {box[0]}x{box[1]})"
        )
    calibration = (min(box[0], MAX_CALIBRATION), min(box[1], MAX_CALIBRATION))
    if method == "espirit" and min(calibration) >= 2 * kernel:
        maps = espirit_maps(kspace, calibration, kernel=kernel, threshold=threshold, crop=crop)
        return CoilMaps(maps, "espirit")
    return CoilMaps(lowres_maps(kspace, calibration), "lowres")
