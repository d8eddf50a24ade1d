"""napari-nightwatch: search and read the microstructure of paintings through a
joint language-vision-XRF embedding.

The package top level stays light: importing it pulls in neither Qt, napari,
torch nor faiss, so napari starts fast and the reader stays cheap.
"""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-nightwatch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
