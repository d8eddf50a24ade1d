"""The XRF spectral engine: line library, detector model, calibration, element
identification, fast per-pixel fitting and element maps (numpy/dask only).

Main entry points: :func:`line_families` / :func:`get_family` (lines),
:func:`family_template` & co. (forward model), :func:`identify_elements`,
:func:`refine_calibration`, :func:`build_fit_model` + :func:`fit_spectra` (fitting),
:func:`fit_store` / :func:`load_element_maps` / :func:`export_tiffs` (maps in a
painting store), :func:`mean_spectrum` / :func:`spectrum_from_file` (query spectra),
:func:`refine_sum_spectrum` / :func:`analyse_spectrum` (sum-spectrum refinement with
identification), :func:`fit_spectrum_file` (one spectrum file) and
:func:`read_pymca_config` / :func:`write_pymca_config` (PyMca interoperability).
"""

from .analysis import SpectrumAnalysis, analyse_spectrum
from .calibration import CalibrationResult, check_axis_covers_lines, estimate_detector, refine_calibration
from .fit import FitModel, SpectraFit, batched_nnls, build_fit_model, fit_cube, fit_spectra
from .identify import Identification, identify_elements, present_families
from .lines import LineFamily, get_family, line_families, parse_families
from .maps import (
    export_tiffs,
    family_color_hex,
    family_colormap,
    fit_store,
    load_element_maps,
    load_uncertainty,
)
from .model import Detector, continuum, family_template, scatter_templates, simulate_spectra
from .pymca_config import PyMcaSettings, read_pymca_config, write_pymca_config
from .refine import Refinement, refine_sum_spectrum
from .single import SingleSpectrumFit, fit_spectrum_file, plot_spectrum_fit
from .spectra import mean_spectrum, rebin_spectrum, spectrum_from_file, write_spectrum_csv

__all__ = [
    "CalibrationResult",
    "PyMcaSettings",
    "Refinement",
    "SingleSpectrumFit",
    "SpectrumAnalysis",
    "analyse_spectrum",
    "check_axis_covers_lines",
    "fit_spectrum_file",
    "plot_spectrum_fit",
    "read_pymca_config",
    "refine_sum_spectrum",
    "write_pymca_config",
    "Detector",
    "FitModel",
    "Identification",
    "LineFamily",
    "SpectraFit",
    "batched_nnls",
    "build_fit_model",
    "continuum",
    "estimate_detector",
    "export_tiffs",
    "family_color_hex",
    "family_colormap",
    "family_template",
    "fit_cube",
    "fit_spectra",
    "fit_store",
    "get_family",
    "identify_elements",
    "line_families",
    "load_element_maps",
    "load_uncertainty",
    "mean_spectrum",
    "parse_families",
    "present_families",
    "rebin_spectrum",
    "refine_calibration",
    "scatter_templates",
    "simulate_spectra",
    "spectrum_from_file",
    "write_spectrum_csv",
]
