"""The XRF "third door": spectra into the image-text space, and composition out of it.

- :mod:`.split`: train / validation / test tiles by spatial blocks (no leakage).
- :mod:`.train`: :func:`train_xrf_bridge` pairs each tile with the XRF data under it
  (:mod:`napari_nightwatch.xrf.pairing`), trains the spectrum encoder with the
  symmetric InfoNCE loss against the frozen image embeddings, and the inverse head.
- :mod:`.models`: saved bridges (``models/<encoder_id>/``): list, load, cache.
- :mod:`.query`: :func:`spectrum_query_vector`, a cube pixel, region or spectrum file
  as a vector in the image model's space.
- :mod:`.predict`: :func:`predict_xrf_maps`, element maps from the photograph,
  validated on held-out blocks (metrics in :mod:`napari_nightwatch.xrf.metrics`).
"""

from .models import XrfBridge, list_xrf_encoders, load_xrf_bridge, open_tile_embeddings
from .predict import (
    MAX_RELATIVE_SPREAD,
    MIN_ELEMENT_R,
    export_predicted_maps,
    predict_elements,
    predict_xrf_maps,
)
from .query import query_input, spectrum_query_vector
from .split import TEST, TRAIN, UNPAIRED, VAL, spatial_block_split
from .train import train_xrf_bridge

__all__ = [
    "MAX_RELATIVE_SPREAD",
    "MIN_ELEMENT_R",
    "TEST",
    "TRAIN",
    "UNPAIRED",
    "VAL",
    "XrfBridge",
    "export_predicted_maps",
    "list_xrf_encoders",
    "load_xrf_bridge",
    "open_tile_embeddings",
    "predict_elements",
    "predict_xrf_maps",
    "query_input",
    "spatial_block_split",
    "spectrum_query_vector",
    "train_xrf_bridge",
]
