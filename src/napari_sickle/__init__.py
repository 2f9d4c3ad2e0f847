"""napari-sickle: blood-smear microscopy in napari.

Importing the package is cheap: torch, napari and Qt are imported only by the modules
that need them.
"""

__version__ = "0.1.0"
