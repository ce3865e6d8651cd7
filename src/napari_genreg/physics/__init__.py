"""MRI physics: centred FFTs, linear operators, sampling masks, noise and coil maps.

Pure numerics: torch and NumPy only, native complex tensors, no Qt and no napari.
"""
