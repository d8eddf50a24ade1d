"""The XRF spectral engine: line library, detector model, calibration, element
identification, fast per-pixel fitting and element maps (numpy/dask only)."""

from .lines import LineFamily, get_family, line_families, parse_families
from .model import Detector, continuum, family_template, scatter_templates

__all__ = [
    "Detector",
    "LineFamily",
    "continuum",
    "family_template",
    "get_family",
    "line_families",
    "parse_families",
    "scatter_templates",
]
