"""napari-genreg: MRI reconstruction regularised by generative models with image covariance.

The package is layered (see ``pyproject.toml``'s import-linter contracts):

``physics``        FFTs, linear operators (masked Fourier, SENSE), sampling masks, noise, coils
``regularizers``   total variation, wavelets (later: generative priors)
``solvers``        CG, PDHG, FISTA: generators that yield small frozen states
``io``             the loaded-data record, readers and writers
``recon``          the reconstruction application: methods, automatic weights, the run loop
``cli``            the ``napari-genreg`` command
``_napari``        the napari plugin (the only layer that imports Qt or napari)

Importing the package imports neither torch nor Qt; submodules load them when used.
"""

__version__ = "0.1.0"
