"""The XRF "third door": spectra into the image-text space, and composition out of it.

- :mod:`.split`: train / validation / test tiles by spatial blocks (no leakage).
- :mod:`.train`: :func:`train_xrf_bridge` pairs each tile with the XRF data under it
  (:mod:`napari_nightwatch.xrf.pairing`), trains the spectrum encoder with the
  symmetric InfoNCE loss against the frozen image embeddings, and the inverse head.
- :mod:`.models`: saved bridges (``models/<encoder_id>/``): list, load, cache.
- :mod:`.query`: :func:`spectrum_query_vector`, a cube pixel, region or spectrum file
  as a vector in the image model's space.
- :mod:`.baselines`: colour-statistics kNN and colour + texture ridge on the same
  tiles and split, and the per-element choice among all methods by validation r.
- :mod:`.predict`: :func:`predict_xrf_maps`, element maps from the photograph,
  validated on held-out blocks (metrics in :mod:`napari_nightwatch.xrf.metrics`).
"""

from .baselines import BASELINES, colour_statistics, texture_descriptors
from .models import XrfBridge, list_xrf_encoders, load_xrf_bridge, open_tile_embeddings
from .predict import (
    MAX_RELATIVE_SPREAD,
    METHODS,
    MIN_ELEMENT_R,
    export_predicted_maps,
    predict_xrf_maps,
    scan_next_map,
)
from .query import query_input, spectrum_query_vector
from .split import TEST, TRAIN, UNPAIRED, VAL, spatial_block_split
from .train import train_xrf_bridge

__all__ = [
    "BASELINES",
    "METHODS",
    "colour_statistics",
    "texture_descriptors",
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
    "predict_xrf_maps",
    "query_input",
    "scan_next_map",
    "spatial_block_split",
    "spectrum_query_vector",
    "train_xrf_bridge",
]
