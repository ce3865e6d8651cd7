"""Sample data for napari's File > Open Sample menu."""

from __future__ import annotations

from napari_genreg._napari._layers import LayerData, kspace_layer, reference_layer


def brain() -> list[LayerData]:
    """A real brain slice (Colin27 T1, 128x128) and its simulated single-coil k-space.

    The k-space has complex noise of sigma 0.01 relative to the image maximum, seed 0.
    """
    from napari_genreg.io import simulate_kspace
    from napari_genreg.samples import load_image

    data = simulate_kspace(
        load_image("brain", 128)[None], noise_sigma=0.01, seed=0, source="sample:brain"
    )
    return [reference_layer(data, "brain"), kspace_layer(data, "brain k-space")]
