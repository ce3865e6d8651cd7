"""The napari plugin: reader, sample data and the Reconstruct widget.

This is the only layer of the package that imports napari or Qt. It holds no numerics: it turns
records from :mod:`napari_genreg.io` into layer data and back (``_layers``, ``_reader``,
``_sample_data``), and drives :mod:`napari_genreg.recon` from the Reconstruct widget, whose
model (``_session``) knows nothing of Qt and whose Qt part (``_reconstruct_widget``) only wires
controls to it.
"""
