"""SVD coil compression: fewer virtual coils that keep most of the signal energy.

The multi-coil data ``Y`` (``C`` rows, one column per k-space sample) is projected onto its
dominant left singular vectors (F. Huang, S. Vijayakumar, Y. Li, S. Hertel and G. R. Duensing,
"A software channel compression technique for faster reconstruction with many channels",
Magn. Reson. Imaging 26(1):133-141, 2008; M. Buehrer, K. P. Pruessmann, P. Boesiger and
S. Kozerke, "Array compression for MRI with large coil arrays", Magn. Reson. Med.
57(6):1131-1139, 2007, of which this is the data-driven, noise-white special case):

    Y = U Sigma W^H,   T = U[:, :V]^H  (V x C),   y'_v = sum_c T[v, c] y_c.

``T`` has orthonormal rows, ``T T^H = I_V``, so noise that is white across coils stays white,
with the same variance, in the virtual coils, and the kept energy is
``||T Y||^2 / ||Y||^2 = sum_{i<V} sigma_i^2 / sum_i sigma_i^2``. Apply it before estimating the
coil maps: the maps of the virtual coils are ``T`` applied to the physical maps.
"""

from __future__ import annotations

import numbers

import torch


def compression_matrix(
    kspace: torch.Tensor,
    virtual_coils: int | None = None,
    *,
    energy: float = 0.95,
    calibration: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The ``V x C`` SVD coil compression matrix of ``kspace``.

    ``T = U[:, :V]^H`` with ``U`` the left singular vectors of the ``C x N`` data matrix
    (every sample of every leading batch entry is a column), computed from the eigenvectors
    of the ``C x C`` Gram matrix ``Y Y^H`` in double precision. ``V`` is ``virtual_coils``, or
    by default the smallest number with ``sum_{i<V} sigma_i^2 >= energy * sum_i sigma_i^2``.

    Parameters
    ----------
    kspace
        complex tensor, shape ``(..., C, ky, kx)``.
    virtual_coils
        ``V``, ``1 <= V <= C``; ``None`` chooses it by ``energy``.
    energy
        Fraction in ``(0, 1]`` of the singular value energy to keep (ignored when
        ``virtual_coils`` is given).
    calibration
        ``(ny, nx)``: learn ``T`` from the centred block of that size only (the calibration
        region, where the signal is); ``None`` uses all the data.

    Returns
    -------
    torch.Tensor
        complex, shape ``(V, C)``, ``kspace``'s dtype and device, with orthonormal rows. Its
        rows are ordered by decreasing singular value.

    Raises
    ------
    ValueError
        For a ``kspace`` that is not complex with a coil axis, ``virtual_coils`` outside
        ``[1, C]``, ``energy`` outside ``(0, 1]`` or data that is all zero.
    """
    if kspace.ndim < 3 or not kspace.is_complex():
        raise ValueError(
            f"k-space must be a complex tensor of shape (..., coils, ky, kx), got {kspace.dtype} "
            f"{tuple(kspace.shape)}"
        )
    coils, h, w = kspace.shape[-3:]
    if virtual_coils is not None and (
        isinstance(virtual_coils, bool)
        or not isinstance(virtual_coils, numbers.Integral)
        or not 1 <= virtual_coils <= coils
    ):
        raise ValueError(f"virtual_coils must be an integer in [1, {coils}], got {virtual_coils!r}")
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    data = kspace
    if calibration is not None:
        ny, nx = min(int(calibration[0]), h), min(int(calibration[1]), w)
        if ny < 1 or nx < 1:
            raise ValueError(f"the calibration block must not be empty, got {calibration!r}")
        y0, x0 = h // 2 - ny // 2, w // 2 - nx // 2
        data = kspace[..., y0 : y0 + ny, x0 : x0 + nx]
    matrix = data.movedim(-3, 0).reshape(coils, -1)
    gram = (matrix @ matrix.mH).to(torch.complex128)
    power, vectors = torch.linalg.eigh(0.5 * (gram + gram.mH))  # ascending: sigma^2, U
    power, vectors = power.flip(0).clamp_min(0), vectors.flip(1)
    total = float(power.sum())
    if not total > 0:
        raise ValueError("the k-space data is zero: nothing to compress")
    if virtual_coils is None:
        kept = torch.cumsum(power, 0) / total
        # the smallest V reaching the energy; the tolerance absorbs rounding at energy = 1
        virtual_coils = int((kept < energy - 1e-12).sum()) + 1
        virtual_coils = min(virtual_coils, coils)
    return vectors[:, : int(virtual_coils)].mH.to(kspace.dtype)


def compress_coils(
    kspace: torch.Tensor,
    virtual_coils: int | None = None,
    *,
    energy: float = 0.95,
    calibration: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress ``C`` coils to ``V`` virtual coils: ``y'_v = sum_c T[v, c] y_c``.

    ``T`` is :func:`compression_matrix` (orthonormal rows, so white noise stays white with the
    same variance, and ``||y'||^2 = energy kept * ||y||^2`` on the data it was learned from).

    Parameters
    ----------
    kspace
        complex tensor, shape ``(..., C, ky, kx)``.
    virtual_coils, energy, calibration
        See :func:`compression_matrix`.

    Returns
    -------
    compressed : torch.Tensor
        complex, shape ``(..., V, ky, kx)``.
    matrix : torch.Tensor
        complex, shape ``(V, C)``: ``T``.

    Examples
    --------
    >>> kspace = torch.randn(8, 32, 32, dtype=torch.complex64)
    >>> compressed, matrix = compress_coils(kspace, 4)
    >>> compressed.shape, matrix.shape
    (torch.Size([4, 32, 32]), torch.Size([4, 8]))
    """
    matrix = compression_matrix(kspace, virtual_coils, energy=energy, calibration=calibration)
    return apply_compression(kspace, matrix), matrix


def apply_compression(kspace: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``y'_v = sum_c T[v, c] y_c``: ``(..., C, ky, kx), (V, C) -> (..., V, ky, kx)``.

    Acts on k-space, coil images or coil maps alike (it is linear and pointwise in space).
    """
    if matrix.ndim != 2 or matrix.shape[1] != kspace.shape[-3]:
        raise ValueError(
            f"a compression matrix for {kspace.shape[-3]} coils must have shape (V, "
            f"{kspace.shape[-3]}), got {tuple(matrix.shape)}"
        )
    return torch.einsum("vc,...cyx->...vyx", matrix, kspace)
