"""Identification and sum-spectrum refinement together, as a fit of real data needs them.

Identification with tabulated line ratios and a guessed peak width leaves residuals
around every strong line (a 3 % width error on a sum spectrum of 1e8 counts is tens of
sigma), and such residuals pass for small phantom families (Al-K next to the Pb/Hg
M-zeta and Si-K lines). So identification runs twice:

1. a first pass proposes the families it is sure of (``Identification.trusted``: strong, a
   large drop of chi-square, or, for a cube, a map of its own over the pixels);
2. the sum spectrum is refined with them (:func:`~napari_nightwatch.xrf.refine.refine_sum_spectrum`:
   calibration, detector width, each family's line-group ratios);
3. a second pass judges every candidate against the *refined* families, detector and
   calibration: a family is proposed only for signal the accepted families cannot explain.

:func:`analyse_spectrum` does this for one spectrum (a single measurement or a cube's sum
spectrum) and finally refines the proposed families once more, which gives the
templates of the per-pixel fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import NightwatchError
from ..core.spectra import EnergyCalibration
from .identify import (
    DEFAULT_INSTRUMENT,
    STRONG_CONFIDENCE,
    Identification,
    excitable_families,
    identify_cube,
    identify_elements,
    instrument_families,
    present_families,
)
from .lines import LineFamily, get_family
from .model import RH_K_KEV, Detector
from .refine import Refinement, refine_sum_spectrum


@dataclass
class SpectrumAnalysis:
    """Outcome of :func:`analyse_spectrum`.

    Attributes
    ----------
    identifications
        Second-pass identification (every candidate with a non-zero area).
    families
        The families to fit (proposed sample families, then instrument families), with
        refined line ratios, by main-line energy.
    refinement
        The final sum-spectrum refinement with ``families`` (``None`` when nothing was found).
    """

    identifications: list[Identification]
    families: tuple[LineFamily, ...]
    refinement: Refinement | None

    @property
    def sample_families(self) -> list[str]:
        return present_families(self.identifications)

    @property
    def instrument_families(self) -> list[str]:
        return instrument_families(self.identifications)


def default_candidates(energies_kev: np.ndarray, excitation_kev: float, min_kev: float = 0.9) -> list[LineFamily]:
    """Every K/L/M family the excitation reaches with its main line on the axis (as identification uses)."""
    e = np.asarray(energies_kev, dtype=np.float64)
    lo_e = max(float(e[0]), min_kev - 0.2)
    hi_e = min(float(e[-1]), float(excitation_kev))
    if hi_e - lo_e <= 0.3:
        raise NightwatchError(
            f"The energy axis {e[0]:.2f}-{e[-1]:.2f} keV holds no line an XRF fit could use "
            f"(lines from {min_kev} keV up to the {excitation_kev} keV excitation); check the calibration."
        )
    return excitable_families(e, excitation_kev, min_kev)


def analyse_spectrum(
    energies_kev: np.ndarray,
    spectrum: np.ndarray,
    *,
    max_spectrum: np.ndarray | None = None,
    pixel_spectra: np.ndarray | None = None,
    detector: Detector | None = None,
    calibration: EnergyCalibration | None = None,
    excitation_kev: float = 50.0,
    tube_kev: float | Sequence[float] | None = RH_K_KEV,
    families: Sequence[LineFamily] | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    instrument: Sequence[str] = DEFAULT_INSTRUMENT,
    refine_ratios: bool = True,
) -> SpectrumAnalysis:
    """Identify the families of a spectrum and refine calibration, width and line ratios.

    Parameters
    ----------
    energies_kev
        Channel energies (E,) from the nominal calibration.
    spectrum
        Counts (E,): one measurement or a cube's sum spectrum.
    max_spectrum
        Optional channel-wise maximum of a cube (small bright spots).
    pixel_spectra
        Optional (n, E) pixel spectra of a cube (all or a sample): weak families under
        strong ones are also looked for in partial sums
        (:func:`~napari_nightwatch.xrf.identify.identify_cube`).
    detector
        Starting detector (e.g. from :func:`~napari_nightwatch.xrf.calibration.estimate_detector`).
    calibration
        The nominal calibration behind ``energies_kev`` (refined copy in the result).
    excitation_kev, tube_kev
        Tube voltage and tube line energies (``None``: no scatter peaks).
    families
        Fit these families instead of identifying (still refined), in this order;
        ``include`` is added after them.
    include, exclude, instrument
        As for :func:`~napari_nightwatch.xrf.identify.identify_elements`.
    refine_ratios
        Refine the line-group ratios (calibration and width are always refined).

    Returns
    -------
    SpectrumAnalysis

    Raises
    ------
    NightwatchError
        For NaN/negative/infinite counts, an axis that holds no line, or bad family names.
    """
    det = detector or Detector()
    e = np.asarray(energies_kev, dtype=np.float64)
    y = np.asarray(spectrum, dtype=np.float64)
    if y.shape != e.shape:
        raise NightwatchError(f"The spectrum has shape {y.shape}; expected {e.shape} like the energy axis.")
    if not np.isfinite(y).all() or (y < 0).any():
        raise NightwatchError("The spectrum contains NaN, infinite or negative counts; expected counts >= 0.")
    default_candidates(e, excitation_kev)  # one sentence when the axis holds no line at all
    refine_kw = {"detector": det, "excitation_kev": excitation_kev, "tube_kev": tube_kev,
                 "refine_ratios": refine_ratios}
    if families is not None:
        fams = list(families)
        names = {f.name for f in fams}
        # the user's order is kept (it is the order of the maps), included families last
        fams += [f for f in (get_family(n, excitation_kev) for n in include) if f.name not in names]
        ref = refine_sum_spectrum(e, y, fams, calibration=calibration, **refine_kw)
        return SpectrumAnalysis([], ref.families, ref)
    tags = {"include": include, "exclude": exclude, "instrument": instrument}

    def identify(axis, det_, candidates=None, flexible=()):
        kw = {"detector": det_, "excitation_kev": excitation_kev, "tube_kev": tube_kev, "candidates": candidates,
              "flexible": flexible, **tags}
        if pixel_spectra is not None:
            return identify_cube(axis, pixel_spectra, sum_spectrum=y, max_spectrum=max_spectrum, **kw)
        return identify_elements(axis, y, max_spectrum=max_spectrum, **kw)

    first = identify(e, det)
    strong = [r for r in first if r.trusted]
    if not strong:
        fams = _families_of(first, excitation_kev, tube_kev)
        if not fams:
            return SpectrumAnalysis(first, (), None)
        ref = refine_sum_spectrum(e, y, fams, calibration=calibration, **refine_kw)
        return SpectrumAnalysis(first, ref.families, ref)
    strong_fams = sorted((get_family(r.name, excitation_kev) for r in strong), key=lambda f: f.main_energy_kev)
    ref1 = refine_sum_spectrum(e, y, strong_fams, **refine_kw)
    refined = {f.name: f for f in ref1.families}
    cands = [refined.get(f.name, f) for f in default_candidates(ref1.energies_kev, excitation_kev)]
    second = identify(ref1.energies_kev, ref1.detector, cands, tuple(refined))
    fams = _families_of(second, excitation_kev, tube_kev)
    if not fams:
        return SpectrumAnalysis(second, (), None)
    ref = refine_sum_spectrum(e, y, fams, calibration=calibration, **refine_kw)
    return SpectrumAnalysis(second, ref.families, ref)


def _families_of(ids: Sequence[Identification], excitation_kev: float,
                 tube_kev: float | Sequence[float] | None = RH_K_KEV) -> list[LineFamily]:
    """Proposed sample families and confidently seen instrument families, by main-line energy.

    An instrument family whose main line is a tube line (Rh-K of an Rh anode) is left to
    the Rayleigh scatter terms of the fit: both together would be the same column twice.
    """
    tubes = [] if tube_kev is None else [float(t) for t in np.atleast_1d(tube_kev)]
    out = [get_family(n, excitation_kev) for n in present_families(ids)]
    for n in instrument_families(ids):
        f = get_family(n, excitation_kev)
        if not any(abs(f.main_energy_kev - t) < 0.1 for t in tubes):
            out.append(f)
    return sorted(out, key=lambda f: f.main_energy_kev)


__all__ = ["STRONG_CONFIDENCE", "SpectrumAnalysis", "analyse_spectrum", "default_candidates"]
