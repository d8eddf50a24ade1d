"""Which elements are in a spectrum: overlap-aware identification with a confidence.

The sum (or max) spectrum, SNIP background removed, is fitted by non-negative least
squares with *every* candidate family at once, so overlapping families compete for the
same counts (Pb-L against As-K at 10.5 keV, S-K against Pb-M and Hg-M near 2.3 keV,
Ba-L against Ti-K near 4.5 keV, Sn-L against Sb-L). Each family is then judged by

1. the significance of its fitted area, with the uncertainty inflated by the local
   misfit around its main line (real spectra never match tabulated line ratios
   exactly; a misfit must not pass as a new element);
2. its secondary lines: where they are resolved from the main line and would be
   detectable, they must be there (As-K needs K-beta at 11.7 keV, Pb-L needs L-beta at
   12.6 keV). Tested by refitting with the family split into its main group and the rest;
3. for M lines, the element's L lines must also be found when the axis shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import NightwatchError
from .background import snip, snip_width_channels
from .fit import bspline_basis
from .lines import LineFamily, line_families
from .model import RH_K_KEV, Detector, continuum, gaussian_peaks, pileup_template, scatter_templates

#: confidence at and above which a family is reported as present
PRESENT_CONFIDENCE = 0.5
#: left out of the default candidates: no stable isotope (never in a painting in
#: detectable amounts) or noble gases other than the argon of air
EXCLUDED_ELEMENTS = frozenset({"Tc", "Pm", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Pa", "Kr", "Xe"})


@dataclass(frozen=True)
class Identification:
    """One proposed line family.

    Attributes
    ----------
    name
        Family name, e.g. ``"Pb-L"``.
    confidence
        0..1; families at or above :data:`PRESENT_CONFIDENCE` are proposed as present.
    area
        Fitted counts of the family in the spectrum.
    significance
        Area over its (misfit-inflated) standard uncertainty.
    secondary_ratio
        Observed / expected intensity of the resolved secondary lines (NaN if none are
        resolvable or detectable).
    main_energy_kev
        Main line energy.
    reason
        Why the confidence is what it is, in words.
    """

    name: str
    confidence: float
    area: float
    significance: float
    secondary_ratio: float
    main_energy_kev: float
    reason: str = ""

    @property
    def present(self) -> bool:
        return self.confidence >= PRESENT_CONFIDENCE

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "confidence": round(float(self.confidence), 4),
            "area": float(self.area),
            "significance": float(self.significance),
            "secondary_ratio": None if not np.isfinite(self.secondary_ratio) else float(self.secondary_ratio),
            "main_energy_kev": float(self.main_energy_kev),
            "reason": self.reason,
        }


def _template_parts(fam: LineFamily, e: np.ndarray, det: Detector, sel: np.ndarray) -> np.ndarray:
    """Template (not normalised) of the lines ``sel`` of a family, with escape peaks."""
    ec = np.asarray(fam.energies_kev)[sel]
    w = np.asarray(fam.intensities)[sel]
    esc = det.escape_fraction(ec)
    centres = np.concatenate([ec, ec - det.escape_kev])
    areas = np.concatenate([w * (1 - esc), w * esc])
    keep = (areas > 0) & (centres > 0.05)
    return gaussian_peaks(e, centres[keep], areas[keep], det.sigma_kev(centres[keep]))


def _main_group(fam: LineFamily, det: Detector) -> np.ndarray:
    """Lines not resolvable from the main line (within one FWHM)."""
    fwhm = float(det.fwhm_kev(fam.main_energy_kev))
    return np.abs(np.asarray(fam.energies_kev) - fam.main_energy_kev) <= fwhm


def _weighted_nnls(a: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    sw = np.sqrt(w)
    # scale columns to unit norm: nnls converges faster and more reliably
    aw = a * sw[:, None]
    norms = np.linalg.norm(aw, axis=0)
    norms[norms == 0] = 1.0
    x, _ = nnls(aw / norms, y * sw, maxiter=50 * a.shape[1])
    return x / norms


def identify_elements(
    energies_kev: np.ndarray,
    spectrum: np.ndarray,
    *,
    max_spectrum: np.ndarray | None = None,
    detector: Detector | None = None,
    excitation_kev: float = 50.0,
    candidates: Sequence[LineFamily] | None = None,
    min_kev: float = 0.9,
    tube_kev: float | Sequence[float] | None = RH_K_KEV,
) -> list[Identification]:
    """Propose the line families present in a sum spectrum, each with a confidence.

    Parameters
    ----------
    energies_kev
        Channel energies (E,).
    spectrum
        Sum spectrum (E,) counts (a single spectrum works too).
    max_spectrum
        Optional max spectrum (channel-wise maximum over the pixels): families found
        only there (small bright spots) are added with their own confidence.
    detector
        Peak-width model; :func:`~napari_nightwatch.xrf.calibration.estimate_detector`
        measures it from the spectrum.
    excitation_kev
        Tube voltage: which families can be excited.
    candidates
        Families to consider; default every K/L/M family from Na to U with its main
        line inside the axis.
    min_kev
        Lowest line energy considered (keV).
    tube_kev
        Tube line energies, fitted as scatter nuisance peaks.

    Returns
    -------
    list of Identification
        Every candidate with a non-zero fitted area, by decreasing confidence; those
        with ``present`` True are the proposal.
    """
    det = detector or Detector()
    e = np.asarray(energies_kev, dtype=np.float64)
    y = _check_spectrum(spectrum, e, "spectrum")
    result = _identify_one(e, y, det, excitation_kev, candidates, min_kev, tube_kev)
    if max_spectrum is not None:
        ym = _check_spectrum(max_spectrum, e, "max_spectrum")
        found = {r.name: r for r in result}
        for r in _identify_one(e, ym, det, excitation_kev, candidates, min_kev, tube_kev):
            old = found.get(r.name)
            if r.present and (old is None or r.confidence > old.confidence):
                found[r.name] = Identification(
                    r.name, r.confidence, r.area, r.significance, r.secondary_ratio, r.main_energy_kev,
                    r.reason + " (max spectrum)",
                )
        result = sorted(found.values(), key=lambda r: -r.confidence)
    return result


def present_families(identifications: Sequence[Identification]) -> list[str]:
    """Names of the families proposed as present, by main-line energy."""
    chosen = [r for r in identifications if r.present]
    return [r.name for r in sorted(chosen, key=lambda r: r.main_energy_kev)]


def _check_spectrum(spectrum: np.ndarray, e: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(spectrum, dtype=np.float64)
    if y.shape != e.shape:
        raise NightwatchError(f"The {what} has shape {y.shape}; expected {e.shape} like the energy axis.")
    if not np.isfinite(y).all():
        raise NightwatchError(f"The {what} contains NaN or infinite counts.")
    if (y < 0).any():
        raise NightwatchError(f"The {what} contains negative counts (minimum {y.min():g}).")
    if y.sum() <= 0:
        raise NightwatchError(f"The {what} has zero counts; there is nothing to identify.")
    return y


def _confidence(z: float) -> float:
    # 0 at 3 sigma, 0.5 at 10 sigma, 0.9 at 26 sigma: sum spectra hold millions of
    # counts, where small line-shape misfits alone reach several sigma
    return float(1.0 - np.exp(-max(z - 3.0, 0.0) / 10.1))


def _identify_one(e, y, det, excitation_kev, candidates, min_kev, tube_kev) -> list[Identification]:
    lo_e = max(float(e[0]), min_kev - 0.2)
    hi_e = min(float(e[-1]), float(excitation_kev))
    if candidates is None:
        fams = line_families(None, excitation_kev=excitation_kev, min_kev=max(min_kev, lo_e + 0.1), max_kev=hi_e - 0.1)
        fams = [f for f in fams if f.element not in EXCLUDED_ELEMENTS]
    else:
        fams = [f for f in candidates if lo_e <= f.main_energy_kev <= hi_e]
    if not fams:
        raise NightwatchError(
            f"No line family has its main line on the energy axis {e[0]:.2f}-{e[-1]:.2f} keV."
        )
    lo = int(np.searchsorted(e, lo_e))
    hi = int(np.searchsorted(e, hi_e, side="right"))
    width = min(snip_width_channels(e, det), max((hi - lo) // 4, 1))
    bg = snip(y, width=width)[lo:hi]
    # the background is fitted, not subtracted: its SNIP estimate (one shape) plus wide
    # B-splines that correct it smoothly, so SNIP's small errors cannot pose as peaks
    yr = y[lo:hi]
    netr = yr
    cols = [_template_parts(f, e, det, np.ones(len(f.energies_kev), bool))[lo:hi] for f in fams]
    keep = [i for i, c in enumerate(cols) if c.sum() > 0.2]  # most of the family on the axis
    fams = [fams[i] for i in keep]
    cols = [cols[i] for i in keep]
    a_fam = np.stack(cols, axis=1)
    nuis = []
    if tube_kev is not None:
        sc = scatter_templates(e, det, tube_kev=tube_kev)[:, lo:hi]
        nuis = [r for r in sc if r.sum() > 0.3]
    if bg.sum() > 0:
        nuis.append(bg / bg.sum())
    cont = continuum(e, excitation_kev)[lo:hi]
    if cont.sum() > 1e-6:
        nuis.append(cont / cont.sum())
    n_spline = int(np.clip((hi_e - lo_e) / 1.0, 6, 32))
    basis = bspline_basis(e[lo:hi], n_spline)
    nuis.extend(basis[:, i] / basis[:, i].sum() for i in range(basis.shape[1]))
    a = np.concatenate([a_fam, np.stack(nuis, axis=1)], axis=1)
    # Poisson weights of the measured counts (background included: it adds noise)
    w = 1.0 / np.maximum(yr, 1.0)
    x = _weighted_nnls(a, netr, w)
    # pile-up: strong lines arriving together make sum peaks (Fe-K + Fe-K at 12.8 keV)
    # that would otherwise pass for heavy-element L lines; add those of the top families
    top = [int(i) for i in np.argsort(-x[: len(fams)])[:3] if x[i] > 0]
    pile = []
    for i, ti in enumerate(top):
        for tj in top[i:]:
            t = pileup_template(fams[ti], fams[tj], e, det)[lo:hi]
            if t.sum() > 0.3:
                pile.append(t)
    if pile:
        a = np.concatenate([a, np.stack(pile, axis=1)], axis=1)
        x = _weighted_nnls(a, netr, w)
    model = a @ x
    nf = len(fams)
    active = np.flatnonzero(x[:nf] > 0)
    if active.size == 0:
        return []
    # covariance of the active families (nuisance terms included in the fit matrix)
    act_all = np.concatenate([active, nf + np.flatnonzero(x[nf:] > 0)])
    aa = a[:, act_all]
    cov = np.linalg.pinv(aa.T @ (aa * w[:, None]))
    sig = np.sqrt(np.clip(np.diag(cov)[: active.size], 0, None))
    resid2 = (netr - model) ** 2 * w
    out: list[Identification] = []
    found_l: set[str] = set()
    pending_m: list[tuple[LineFamily, Identification]] = []
    area_by_name = {fams[j].name: x[j] for j in active}
    for idx, j in enumerate(active):
        fam = fams[j]
        area = float(x[j])
        # misfit inflation: reduced chi2 within +-1.5 FWHM of the main line
        fwhm = float(det.fwhm_kev(fam.main_energy_kev))
        win = np.abs(e[lo:hi] - fam.main_energy_kev) <= 1.5 * fwhm
        chi2 = float(resid2[win].mean()) if win.any() else 1.0
        s = float(sig[idx]) * np.sqrt(max(chi2, 1.0))
        z = area / s if s > 0 else 0.0
        conf = _confidence(z)
        reason = f"{z:.1f} sigma"
        ratio = np.nan
        if conf > 0.05:
            ratio, detectable = _secondary_check(fam, e[lo:hi], netr, w, a, x, j, lo, det, e)
            if detectable and np.isfinite(ratio):
                if ratio < 0.25:
                    conf *= ratio / 0.25
                    reason += f"; secondary lines at {ratio:.2f} of expected"
                else:
                    reason += f"; secondary lines consistent ({ratio:.2f})"
        ident = Identification(fam.name, conf, area, z, ratio, fam.main_energy_kev, reason)
        if fam.family == "M":
            pending_m.append((fam, ident))
        else:
            if ident.present and fam.family == "L":
                found_l.add(fam.element)
            out.append(ident)
    for fam, ident in pending_m:
        l_name = f"{fam.element}-L"
        l_visible = any(f.name == l_name for f in fams) or l_name in area_by_name
        if l_visible and fam.element not in found_l and ident.confidence > 0:
            ident = Identification(
                ident.name, min(ident.confidence, 0.2), ident.area, ident.significance,
                ident.secondary_ratio, ident.main_energy_kev, ident.reason + f"; {l_name} not found",
            )
        out.append(ident)
    return sorted(out, key=lambda r: -r.confidence)


def _secondary_check(fam, e_fit, netr, w, a, x, j, lo, det, e_full) -> tuple[float, bool]:
    """Observed/expected intensity of a family's resolved secondary lines.

    Refits with column ``j`` split into its main group and the other lines; returns the
    ratio of the secondary to main areas over the expected ratio, and whether the
    expected secondary signal would be detectable (> 4 sigma).
    """
    main = _main_group(fam, det)
    if main.all():
        return np.nan, False
    hi = lo + e_fit.size
    t_main = _template_parts(fam, e_full, det, main)[lo:hi]
    t_sec = _template_parts(fam, e_full, det, ~main)[lo:hi]
    if t_main.sum() <= 0 or t_sec.sum() <= 0.05 * (t_main.sum() + t_sec.sum()):
        return np.nan, False
    # refit only the channels the family touches, with the terms that reach them
    both = t_main + t_sec
    fwhm = float(det.fwhm_kev(fam.main_energy_kev))
    rows = np.flatnonzero(both > 1e-3 * both.max())
    gain = float(np.median(np.diff(e_fit)))
    pad = int(2 * fwhm / gain) + 1
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, e_fit.size)
    win = slice(r0, r1)
    others = [i for i in np.flatnonzero(x > 0) if i != j and a[win, i].sum() > 1e-3]
    cols = [a[win, i] for i in others] + [t_main[win], t_sec[win]]
    aa = np.stack(cols, axis=1)
    netr, w = netr[win], w[win]
    xx = _weighted_nnls(aa, netr, w)
    m_area, s_area = xx[-2], xx[-1]
    if m_area <= 0:
        return np.nan, False
    # would the expected secondary lines stand out? compare with their own uncertainty
    cov = np.linalg.pinv(aa.T @ (aa * w[:, None]))
    s_sigma = float(np.sqrt(max(cov[-1, -1], 0.0)))
    # where the secondary lines sit under another element's big peak, that peak's
    # shape misfit, not counting statistics, limits what can be seen: inflate by it
    sec_rows = t_sec[win] > 0.1 * t_sec[win].max()
    resid = (netr - aa @ xx) ** 2 * w
    s_sigma *= float(np.sqrt(max(resid[sec_rows].mean(), 1.0))) if sec_rows.any() else 1.0
    # both parts carry the family's tabulated intensities, so a consistent family gives
    # equal multipliers; the expected secondary multiplier is m_area
    detectable = s_sigma > 0 and m_area / s_sigma > 4.0
    return float(s_area / m_area), bool(detectable)


def identify_cube(
    energies_kev: np.ndarray,
    spectra: np.ndarray,
    *,
    sum_spectrum: np.ndarray | None = None,
    max_spectrum: np.ndarray | None = None,
    detector: Detector | None = None,
    excitation_kev: float = 50.0,
    n_split: int = 3,
    tube_kev: float | Sequence[float] | None = RH_K_KEV,
) -> list[Identification]:
    """Identify families in a cube: sum and max spectra, then partial sums.

    A weak family under a strong one (S-K under Pb-M near 2.3 keV) can be below the
    noise of the whole sum spectrum and yet plain where the strong one is absent. After
    the usual identification, the pixels are fitted with the families found, and for
    each of the ``n_split`` strongest families the spectra of the pixels where it is
    weakest (its lowest quarter) are summed and identified again; families found there
    are added with that confidence.

    Parameters
    ----------
    energies_kev
        Channel energies (E,).
    spectra
        (n, E) pixel spectra (all pixels, or a sample of them for big cubes).
    sum_spectrum, max_spectrum
        Of the whole cube; default from ``spectra``.
    detector, excitation_kev, tube_kev
        As for :func:`identify_elements`.
    n_split
        How many strong families to split the pixels by.

    Returns
    -------
    list of Identification
        By decreasing confidence.
    """
    from .fit import build_fit_model, fit_spectra
    from .lines import get_family

    det = detector or Detector()
    y = np.asarray(spectra, dtype=np.float32).reshape(-1, np.asarray(energies_kev).size)
    with np.errstate(invalid="ignore"):
        y = y[(y >= 0).all(axis=1)]
    total = y.sum(axis=0, dtype=np.float64) if sum_spectrum is None else np.asarray(sum_spectrum, np.float64)
    maxs = (y.max(axis=0) if y.shape[0] else None) if max_spectrum is None else max_spectrum
    ids = identify_elements(energies_kev, total, max_spectrum=maxs, detector=det, excitation_kev=excitation_kev,
                            tube_kev=tube_kev)
    present = [r for r in ids if r.present]
    if not present or y.shape[0] < 64 or n_split < 1:
        return ids
    fams = [get_family(r.name, excitation_kev) for r in present]
    model = build_fit_model(energies_kev, fams, detector=det, mean_spectrum=y.mean(axis=0, dtype=np.float64),
                            excitation_kev=excitation_kev, tube_kev=tube_kev)
    areas = fit_spectra(y, model).areas
    found = {r.name: r for r in ids}
    for k in np.argsort(-np.nansum(areas, axis=0))[:n_split]:
        weak = areas[:, k] <= np.nanpercentile(areas[:, k], 25)
        part = y[weak].sum(axis=0, dtype=np.float64)
        if weak.sum() < 16 or part.sum() <= 0:
            continue
        for r in identify_elements(energies_kev, part, detector=det, excitation_kev=excitation_kev, tube_kev=tube_kev):
            old = found.get(r.name)
            if r.present and (old is None or not old.present):
                found[r.name] = Identification(
                    r.name, r.confidence, r.area, r.significance, r.secondary_ratio, r.main_energy_kev,
                    r.reason + f" (pixels with little {fams[k].name})",
                )
    return sorted(found.values(), key=lambda r: -r.confidence)
