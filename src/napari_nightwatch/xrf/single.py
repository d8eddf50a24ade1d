"""Fit one XRF spectrum file: identification, refinement, a linear fit, a table and a plot.

What ``nightwatch fit-spectrum`` and the XRF widget's "open a spectrum file" call. The
spectrum is read with :func:`~napari_nightwatch.io.xrf_files.read_spectrum` (``.spx``,
``.mca``, ``.msa``, ``.spe``, ``.hspy``, ...); the calibration, detector, excitation and
fit range come from a PyMca configuration, from the caller, or from the file. Escape,
pile-up and tube lines are explained before any element is proposed
(:func:`~napari_nightwatch.xrf.identify.identify_elements`), then calibration, peak
width and line-group ratios are refined on the spectrum
(:func:`~napari_nightwatch.xrf.refine.refine_sum_spectrum`) and the refined families
are fitted linearly, which gives each family's area and its Poisson uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.spectra import EnergyCalibration
from .analysis import analyse_spectrum
from .calibration import estimate_detector
from .fit import build_fit_model, fit_spectra
from .identify import Identification
from .lines import LineFamily, parse_families
from .model import RH_K_KEV, Detector


@dataclass
class SingleSpectrumFit:
    """Outcome of :func:`fit_spectrum_file`.

    Attributes
    ----------
    source
        The spectrum file.
    energies_kev
        Refined energy of every channel (E,).
    counts
        Measured counts (E,).
    fitted
        Fitted model over the fit range, NaN outside it (E,).
    families
        The fitted families (refined ratios), in table order.
    origins
        ``"sample"``, ``"instrument"`` or ``"included"`` per family.
    areas, uncertainties
        Counts per family and their standard uncertainty.
    chi2
        Reduced chi-square of the fit.
    calibration
        The refined calibration.
    identifications
        Every identification candidate (empty when the families were given).
    refinement
        The refinement record (:meth:`~napari_nightwatch.xrf.refine.Refinement.to_dict`).
    settings
        Where calibration, detector and excitation came from.
    """

    source: str
    energies_kev: np.ndarray
    counts: np.ndarray
    fitted: np.ndarray
    families: tuple[LineFamily, ...]
    origins: tuple[str, ...]
    areas: np.ndarray
    uncertainties: np.ndarray
    chi2: float
    calibration: EnergyCalibration
    identifications: list[Identification] = field(default_factory=list)
    refinement: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per family: name, origin, area, uncertainty, main line (keV)."""
        return [
            {"family": f.name, "origin": o, "area": float(a), "uncertainty": float(u),
             "main_line_kev": round(float(f.main_energy_kev), 4)}
            for f, o, a, u in zip(self.families, self.origins, self.areas, self.uncertainties, strict=True)
        ]

    def table_text(self) -> str:
        """The table as fixed-width text."""
        rows = [f"{'family':<7} {'origin':<10} {'main keV':>8} {'area':>12} {'+-':>10}"]
        for r in self.table():
            rows.append(f"{r['family']:<7} {r['origin']:<10} {r['main_line_kev']:>8.3f} {r['area']:>12.1f} "
                        f"{r['uncertainty']:>10.1f}")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "families": self.table(),
            "sample_families": [f.name for f, o in zip(self.families, self.origins, strict=True) if o != "instrument"],
            "instrument_families": [f.name for f, o in zip(self.families, self.origins, strict=True)
                                    if o == "instrument"],
            "chi2": float(self.chi2),
            "calibration": self.calibration.to_dict(),
            "refinement": self.refinement,
            "settings": self.settings,
            "identification": [r.to_dict() for r in self.identifications if r.confidence > 0.05],
        }


def fit_spectrum_file(
    path: str | Path,
    *,
    elements: str | Sequence[str] = "auto",
    pymca_config: str | Path | None = None,
    calibration: EnergyCalibration | None = None,
    excitation_kev: float | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    scatter_kev: Sequence[float] | None = None,
) -> SingleSpectrumFit:
    """Identify and fit the families of one spectrum file.

    Parameters
    ----------
    path
        The spectrum file (any format :func:`~napari_nightwatch.io.xrf_files.read_spectrum` reads).
    elements
        ``"auto"`` (identify), ``"config"`` (the families of ``pymca_config``) or family
        names (``"Fe-K,Cr-K"``).
    pymca_config
        A PyMca ``.cfg``: calibration, detector, excitation and fit range.
    calibration
        Calibration to use (overrides the file's and the configuration's).
    excitation_kev
        Tube voltage / excitation energy (default: the configuration's, else 50 keV).
    include, exclude
        Families always fitted / families or elements never proposed.
    scatter_kev
        Energies of the exciting lines, fitted as Rayleigh/Compton scatter peaks (a
        monochromatic beam: its energy). Default: the configuration's excitation energy,
        else the Rh tube's K lines the excitation can produce.

    Returns
    -------
    SingleSpectrumFit

    Raises
    ------
    NightwatchError
        Unreadable file, no calibration, NaN/negative/infinite counts, a calibration
        that puts no line on the axis, or unknown families.
    """
    from ..io.xrf_files import read_spectrum
    from .pymca_config import read_pymca_config

    p = Path(path)
    settings: dict[str, Any] = {}
    cfg = None
    if pymca_config is not None:
        cfg = read_pymca_config(pymca_config)
        settings["pymca_config"] = str(pymca_config)
    cal = calibration or (cfg.calibration if cfg is not None else None)
    spec = read_spectrum(p, calibration=cal)
    if spec.calibration is None:
        raise NightwatchError(
            f"Spectrum file {p} has no energy calibration; give --pymca-config or --energy-offset-kev and "
            "--energy-gain-kev."
        )
    y = np.asarray(spec.counts, dtype=np.float64)
    if not np.isfinite(y).all() or (y < 0).any():
        raise NightwatchError(f"Spectrum file {p} holds NaN, infinite or negative counts; expected counts >= 0.")
    settings["calibration_from"] = "option" if calibration else ("pymca config" if cfg is not None else "file")
    excitation = float(excitation_kev or (cfg.excitation_kev if cfg is not None else 50.0))
    settings["excitation_kev"] = excitation
    # scatter peaks: the configuration's excitation energy (PyMca's configurations name the
    # exciting line), else the Rh tube's K lines if the voltage can produce them
    if scatter_kev is not None:
        tube = tuple(float(t) for t in scatter_kev) or None
    elif cfg is not None:
        tube = (float(cfg.excitation_kev),)
    else:
        tube = tuple(t for t in RH_K_KEV if t < excitation) or None
    settings["tube_kev"] = None if tube is None else list(tube)
    e = spec.calibration.energies(y.size)
    det: Detector = cfg.detector if cfg is not None else estimate_detector(e, y)
    settings["detector_from"] = "pymca config" if cfg is not None else "measured"
    families = None
    if isinstance(elements, str) and elements.strip().lower() == "config":
        if cfg is None:
            raise NightwatchError("--elements config needs --pymca-config FILE.")
        families = cfg.line_families()
    elif not (isinstance(elements, str) and elements.strip().lower() == "auto"):
        families = parse_families(elements, excitation)
    analysis = analyse_spectrum(e, y, detector=det, calibration=spec.calibration, excitation_kev=excitation,
                                tube_kev=tube, families=families, include=include, exclude=exclude)
    if analysis.refinement is None or not analysis.families:
        raise NightwatchError(f"No element was identified in {p}; give --elements explicitly.")
    ref = analysis.refinement
    fit_range = cfg.fit_range_kev(y.size) if cfg is not None else None
    lo_kev = hi_kev = None
    if fit_range is not None:
        lo_kev, hi_kev = fit_range
    model = build_fit_model(ref.energies_kev, ref.families, detector=ref.detector, mean_spectrum=y,
                            excitation_kev=excitation, tube_kev=tube, min_kev=lo_kev, max_kev=hi_kev, pileup=True)
    res = fit_spectra(y, model)
    fitted = np.full(y.size, np.nan)
    fitted[model.lo : model.hi] = model.design @ res.terms
    by_name = {r.name: r.origin for r in analysis.identifications}
    origins = tuple(by_name.get(f.name, "included" if families is None else "given") for f in ref.families)
    return SingleSpectrumFit(
        str(p), ref.energies_kev, y, fitted, tuple(ref.families), origins, np.asarray(res.areas, float),
        np.asarray(res.uncertainty, float), float(res.chi2[0]), ref.calibration or spec.calibration,
        list(analysis.identifications), ref.to_dict(), settings,
    )


def plot_spectrum_fit(result: SingleSpectrumFit, path: str | Path) -> Path:
    """Write a PNG: spectrum, fit and residual (in sigma), with each family's lines marked.

    Uses matplotlib's Agg backend (no display needed).
    """
    # an Agg canvas of its own: no pyplot, no display, the GUI's backend is left alone
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(path)
    if out.suffix.lower() != ".png":
        raise NightwatchError(f"Plot file {out} must end in .png.")
    if not out.parent.is_dir():
        raise NightwatchError(f"Folder {out.parent} for the plot does not exist.")
    e, y, m = result.energies_kev, result.counts, result.fitted
    ok = np.isfinite(m)
    fig = Figure(figsize=(11, 6.5), dpi=110)
    FigureCanvasAgg(fig)
    ax, axr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.semilogy(e, np.maximum(y, 0.5), lw=0.8, color="0.3", label="spectrum")
    ax.semilogy(e[ok], np.maximum(m[ok], 0.5), lw=1.0, color="C3", label="fit")
    top = float(np.nanmax(y[ok])) if ok.any() else float(y.max())
    colors = [f"C{i % 10}" for i in range(len(result.families))]
    for f, c in zip(result.families, colors, strict=True):
        strong = np.asarray(f.intensities) >= 0.05
        for x in np.asarray(f.energies_kev)[strong]:
            ax.axvline(x, ymax=0.92, color=c, lw=0.6, alpha=0.6)
        ax.text(f.main_energy_kev, top * 1.3, f.name, rotation=90, fontsize=7, color=c, ha="center", va="bottom")
    ax.set_ylabel("counts")
    ax.set_ylim(0.5, top * 8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{Path(result.source).name}: reduced chi2 {result.chi2:.2f}", fontsize=9)
    resid = np.where(ok, (y - np.where(ok, m, 0)) / np.sqrt(np.maximum(np.where(ok, m, 1), 1.0)), np.nan)
    axr.plot(e, resid, lw=0.7, color="0.2")
    axr.axhline(0, color="C3", lw=0.6)
    axr.set_ylabel("residual (sigma)")
    axr.set_xlabel("energy (keV)")
    if ok.any():
        axr.set_xlim(float(e[ok][0]) - 0.2, float(e[ok][-1]) + 0.2)
    fig.tight_layout()
    fig.savefig(out)
    return out


__all__ = ["SingleSpectrumFit", "fit_spectrum_file", "plot_spectrum_fit"]
