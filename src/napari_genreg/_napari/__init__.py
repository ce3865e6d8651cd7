"""The napari plugin: reader, sample data and (later) widgets.

This is the only layer of the package that imports napari or Qt. It holds no numerics: it turns
records from :mod:`napari_genreg.io` into layer data and back.
"""
