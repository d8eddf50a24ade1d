"""Energy calibration and peak width from a measured spectrum.

:func:`refine_calibration` locates the strong, isolated line blends of known families
in a (sum) spectrum, fits each with a Gaussian, and fits offset and gain (optionally
a quadratic term) of channel -> energy to them; residuals are reported in eV.
:func:`estimate_detector` measures the peak width and returns a
:class:`~napari_nightwatch.xrf.model.Detector` that matches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import NightwatchError
from ..core.spectra import EnergyCalibration
from .background import snip, snip_width_channels
from .lines import LineFamily
from .model import MN_KA_KEV, RH_K_KEV, Detector, compton_energy_kev

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass
class CalibrationResult:
    """Outcome of :func:`refine_calibration`.

    Attributes
    ----------
    calibration
        The refined calibration (the input one when too few peaks were found).
    refined
        Whether a refinement was fitted.
    residuals_ev
        Fitted minus tabulated energy (eV) per line blend used, by label (``"Fe-K 6.40"``).
    rms_ev, max_abs_ev
        Root-mean-square and largest absolute residual in eV (NaN when not refined).
    shift_ev
        How far the refinement moved the energy of the spectrum's middle channel (eV).
    """

    calibration: EnergyCalibration
    refined: bool
    residuals_ev: dict[str, float] = field(default_factory=dict)
    rms_ev: float = float("nan")
    max_abs_ev: float = float("nan")
    shift_ev: float = 0.0

    def to_dict(self) -> dict:
        return {
            "calibration": self.calibration.to_dict(),
            "refined": self.refined,
            "residuals_ev": {k: round(float(v), 2) for k, v in self.residuals_ev.items()},
            "rms_ev": None if not np.isfinite(self.rms_ev) else round(float(self.rms_ev), 2),
            "max_abs_ev": None if not np.isfinite(self.max_abs_ev) else round(float(self.max_abs_ev), 2),
            "shift_ev": round(float(self.shift_ev), 2),
        }


def _check(spectrum: np.ndarray, n: int | None = None) -> np.ndarray:
    y = np.asarray(spectrum, dtype=np.float64)
    if y.ndim != 1 or y.size < 64:
        raise NightwatchError(f"Expected a 1-D spectrum of at least 64 channels; got shape {y.shape}.")
    if n is not None and y.size != n:
        raise NightwatchError(f"The spectrum has {y.size} channels; expected {n}.")
    if not np.isfinite(y).all():
        raise NightwatchError("The spectrum contains NaN or infinite counts.")
    if (y < 0).any():
        raise NightwatchError(f"The spectrum contains negative counts (minimum {y.min():g}).")
    if y.sum() <= 0:
        raise NightwatchError("The spectrum has zero counts.")
    return y


def _fit_gaussian(ch: np.ndarray, net: np.ndarray, var: np.ndarray, c0: float, s0: float) -> tuple[float, float, float] | None:
    """(centre, sigma, area) of a Gaussian on a flat residual background, or None."""
    from scipy.optimize import curve_fit

    def g(x, a, c, s, b):
        return a * np.exp(-0.5 * ((x - c) / s) ** 2) + b

    a0 = max(float(net[np.argmin(np.abs(ch - c0))]), 1.0)
    try:
        p, _ = curve_fit(
            g, ch, net, p0=[a0, c0, s0, 0.0], sigma=np.sqrt(np.maximum(var, 1.0)),
            bounds=([0, ch[0], 0.3 * s0, -np.inf], [np.inf, ch[-1], 3.0 * s0, np.inf]), maxfev=2000,
        )
    except (RuntimeError, ValueError):
        return None
    a, c, s, _ = p
    return float(c), float(abs(s)), float(a * abs(s) * np.sqrt(2 * np.pi))


def _blends(
    fams: Sequence[LineFamily], det: Detector, areas: Sequence[float] | None = None, min_share: float = 0.08
) -> list[tuple[str, float, str]]:
    """(label, centroid keV, family) of each family's resolved line blends.

    Lines closer than half a FWHM are merged (K-alpha1/alpha2, ...); a blend is dropped
    when lines of its own family or of another family (weighted by the families'
    ``areas`` when given) within 1.2 FWHM carry >= 5 % of its counts: its centroid
    would move with them.
    """
    amount = np.ones(len(fams)) if areas is None else np.asarray(areas, dtype=np.float64)
    out = []
    for fi, f in enumerate(fams):
        e = np.asarray(f.energies_kev)
        w = np.asarray(f.intensities)
        used = np.zeros(e.size, bool)
        for i in np.argsort(-w):
            if used[i]:
                continue
            fwhm = float(det.fwhm_kev(e[i]))
            grp = (~used) & (np.abs(e - e[i]) <= 0.5 * fwhm)
            used |= grp
            share = float(w[grp].sum())
            if share < min_share:
                continue
            centre = float((e[grp] * w[grp]).sum() / w[grp].sum())
            counts = share * amount[fi]
            near_same = (~grp) & (np.abs(e - centre) <= 1.2 * fwhm) & (w >= 0.05 * share)
            near_other = False
            for gi, g in enumerate(fams):
                ge, gw = np.asarray(g.energies_kev), np.asarray(g.intensities)
                # another family's lines, and any family's Si escape peaks (E - 1.74 keV)
                esc_e = ge - det.escape_kev
                esc_w = gw * det.escape_fraction(ge)
                near = 0.0
                if gi != fi:
                    near += gw[np.abs(ge - centre) <= 1.2 * fwhm].sum()
                near += esc_w[np.abs(esc_e - centre) <= 1.2 * fwhm].sum()
                if near * amount[gi] >= 0.05 * counts:
                    near_other = True
                    break
            if near_same.any() or near_other:
                continue
            out.append((f"{f.name} {centre:.2f}", centre, f.name))
    return out


def refine_calibration(
    calibration: EnergyCalibration,
    spectrum: np.ndarray,
    families: Sequence[LineFamily],
    *,
    areas: Sequence[float] | None = None,
    detector: Detector | None = None,
    quadratic: bool = False,
    search_kev: float = 0.15,
    min_kev: float = 1.0,
    tol_kev: float = 0.015,
    tube_kev: float | Sequence[float] | None = RH_K_KEV,
) -> CalibrationResult:
    """Refine offset and gain (and optionally a quadratic term) from known peaks.

    Parameters
    ----------
    calibration
        Starting calibration (from the file or the user); must be within about
        ``search_kev`` of the truth at the peaks.
    spectrum
        Sum spectrum (E,) counts.
    families
        Families known to be present (e.g. from identification); their strong,
        isolated line blends are the calibration points.
    areas
        Counts of each family (e.g. ``Identification.area``): decides which blends a
        neighbouring family would disturb. Default: all equal.
    detector
        Peak-width model (sets the fit windows).
    quadratic
        Also fit a quadratic term (needs at least 4 peaks).
    search_kev
        How far from its expected position a peak is looked for.
    min_kev
        Peaks below this energy are not used (noise peak, window absorption).
    tube_kev
        Tube lines: blends near their Rayleigh or Compton peaks are not used (a
        scatter peak's position depends on the geometry, not the calibration).
    tol_kev
        A peak further than this from the consensus calibration is treated as a wrong
        match (a blend with an unidentified neighbour) and left out.

    Returns
    -------
    CalibrationResult
        With ``refined`` False and the input calibration when fewer than 3 (4 for
        quadratic) peaks agree on one calibration.
    """
    det = detector or Detector()
    y = _check(spectrum)
    n = y.size
    e0 = calibration.energies(n)
    width = min(snip_width_channels(e0, det), n // 8)
    net = y - snip(y, width=width)
    ch_all = np.arange(n, dtype=np.float64)
    cal = calibration
    points: list[tuple[str, float, float, float]] = []
    for _ in range(3):  # re-locate the peaks with the improved calibration
        points = []
        for label, energy, _fam in _blends(families, det, areas):
            if energy < min_kev or energy > e0[-1] - 0.2 or _near_scatter(energy, tube_kev, det):
                continue
            c_exp = float(cal.channel(energy))
            gain_here = float(np.interp(c_exp, ch_all[:-1], np.diff(cal.energies(n))))
            half = max(int(search_kev / gain_here), 3)
            a, b = max(int(c_exp) - half, 0), min(int(c_exp) + half + 1, n)
            if b - a < 5:
                continue
            peak = a + int(np.argmax(net[a:b]))
            if net[peak] < 5.0 * np.sqrt(max(y[peak], 1.0)) or peak in (a, b - 1):
                continue
            sig_ch = float(det.sigma_kev(energy)) / gain_here
            w = max(int(1.3 * sig_ch * _FWHM_PER_SIGMA / 2), 2)
            lo, hi = max(peak - w, 0), min(peak + w + 1, n)
            fit = _fit_gaussian(ch_all[lo:hi], net[lo:hi], y[lo:hi], float(peak), max(sig_ch, 0.5))
            if fit is None or not (lo < fit[0] < hi - 1):
                continue
            # centroid precision ~ peak width / sqrt(counts): the fit's weight
            points.append((label, fit[0], energy, np.sqrt(max(fit[2], 1.0)) / max(fit[1], 0.3)))
        need = 4 if quadratic else 3
        if len(points) < need:
            return CalibrationResult(calibration, False)
        chs = np.array([p[1] for p in points])
        ens = np.array([p[2] for p in points])
        wts = np.array([p[3] for p in points])
        keep = _consensus(chs, ens, wts, 2 if quadratic else 1, tol_kev)
        if keep.sum() < need:
            return CalibrationResult(calibration, False)
        coef = np.polyfit(chs[keep], ens[keep], 2 if quadratic else 1, w=wts[keep])
        q, g, o = (coef if quadratic else np.concatenate([[0.0], coef]))
        cal = EnergyCalibration(float(o), float(g), float(q))
        points = [p for p, k in zip(points, keep, strict=True) if k]
    poly = [cal.quadratic_kev, cal.gain_kev, cal.offset_kev]
    res_ev = {p[0]: (float(np.polyval(poly, p[1])) - p[2]) * 1000.0 for p in points}
    vals = np.array(list(res_ev.values()))
    mid = n // 2
    shift = (cal.energies(n)[mid] - e0[mid]) * 1000.0
    return CalibrationResult(cal, True, res_ev, float(np.sqrt(np.mean(vals**2))), float(np.abs(vals).max()), float(shift))


def _near_scatter(energy: float, tube_kev, det: Detector) -> bool:
    if tube_kev is None:
        return False
    for t in np.atleast_1d(np.asarray(tube_kev, dtype=np.float64)):
        lo = float(compton_energy_kev(t, 180.0)) - 2 * float(det.fwhm_kev(t))
        if lo <= energy <= t + 2 * float(det.fwhm_kev(t)):
            return True
    return False


def _consensus(chs: np.ndarray, ens: np.ndarray, wts: np.ndarray, deg: int, tol: float) -> np.ndarray:
    """Inliers of the calibration most peaks agree on (RANSAC over all minimal subsets).

    A least-squares fit is pulled by one wrong match; with the handful of peaks of a
    spectrum, trying every pair (triple for quadratic) is cheap and finds the largest
    set of peaks that one calibration explains within ``tol``; ties go to the stronger peaks.
    """
    from itertools import combinations

    n = chs.size
    best = np.ones(n, bool)
    best_score = (-1, -1.0)
    for subset in combinations(range(n), deg + 1):
        idx = list(subset)
        if np.ptp(chs[idx]) < 1e-9:
            continue
        coef = np.polyfit(chs[idx], ens[idx], deg)
        inl = np.abs(np.polyval(coef, chs) - ens) <= tol
        score = (int(inl.sum()), float(wts[inl].sum()))
        if score > best_score:
            best, best_score = inl, score
    if best.sum() > deg + 1:
        # refit on the consensus and take its inliers (the minimal subset was noisy)
        coef = np.polyfit(chs[best], ens[best], deg, w=wts[best])
        again = np.abs(np.polyval(coef, chs) - ens) <= tol
        if again.sum() >= best.sum():
            best = again
    return best


def calibration_residuals_ev(
    calibration: EnergyCalibration,
    spectrum: np.ndarray,
    families: Sequence[LineFamily],
    *,
    areas: Sequence[float] | None = None,
    detector: Detector | None = None,
) -> dict[str, float]:
    """Residuals (eV) of a calibration at the family peaks, without changing it."""
    det = detector or Detector()
    y = _check(spectrum)
    n = y.size
    e0 = calibration.energies(n)
    net = y - snip(y, width=min(snip_width_channels(e0, det), n // 8))
    ch_all = np.arange(n, dtype=np.float64)
    out = {}
    for label, energy, _ in _blends(families, det, areas):
        c = float(calibration.channel(energy))
        if not (3 < c < n - 4):
            continue
        gain_here = float(np.interp(c, ch_all[:-1], np.diff(e0)))
        sig_ch = float(det.sigma_kev(energy)) / gain_here
        w = max(int(1.3 * sig_ch * _FWHM_PER_SIGMA / 2), 2)
        peak = int(round(c))
        lo, hi = max(peak - w, 0), min(peak + w + 1, n)
        if net[peak] < 5.0 * np.sqrt(max(y[peak], 1.0)):
            continue
        fit = _fit_gaussian(ch_all[lo:hi], net[lo:hi], y[lo:hi], float(peak), max(sig_ch, 0.5))
        if fit is not None and lo < fit[0] < hi - 1:
            out[label] = (float(np.interp(fit[0], ch_all, e0)) - energy) * 1000.0
    return out


def check_axis_covers_lines(
    calibration: EnergyCalibration,
    n_channels: int,
    families: Sequence[LineFamily] | None = None,
    excitation_kev: float = 50.0,
    what: str = "the spectrum",
) -> None:
    """Refuse a calibration whose energy axis holds none of the lines to be fitted.

    The physical bound on a calibration: whatever its offset (Bruker detectors put
    channel 0 at -1.9 keV), the axis ``E(0)..E(n-1)`` must reach the main line of at
    least one family to be fitted, or, with ``families=None``, at least one XRF line
    between Na K-alpha (1.04 keV) and the excitation energy.

    Raises
    ------
    NightwatchError
        One sentence naming the axis and what it should cover.
    """
    lo, hi = calibration.range_kev(int(n_channels))
    if families:
        mains = [f.main_energy_kev for f in families]
        if not any(lo <= m <= hi for m in mains):
            names = ", ".join(f.name for f in families)
            raise NightwatchError(
                f"The energy calibration of {what} puts its {n_channels} channels at {lo:.2f}-{hi:.2f} keV, "
                f"which holds no main line of {names}; check the calibration (offset, gain, keV not eV)."
            )
        return
    na_ka = 1.04
    if hi < na_ka or lo > float(excitation_kev):
        raise NightwatchError(
            f"The energy calibration of {what} puts its {n_channels} channels at {lo:.2f}-{hi:.2f} keV, "
            f"which holds no XRF line between {na_ka} keV and the {excitation_kev} keV excitation; "
            "check the calibration (offset, gain, keV not eV)."
        )


def estimate_detector(
    energies_kev: np.ndarray,
    spectrum: np.ndarray,
    *,
    detector: Detector | None = None,
    n_peaks: int = 6,
    min_kev: float = 1.5,
) -> Detector:
    """A :class:`Detector` whose FWHM at Mn K-alpha matches the spectrum's peaks.

    Fits the strongest peaks above ``min_kev`` with Gaussians, converts each width to
    the equivalent width at Mn K-alpha with the Fano law, and takes the median (blends
    of unresolved lines widen single peaks; the median ignores a few of those).

    Parameters
    ----------
    energies_kev
        Channel energies (E,).
    spectrum
        Spectrum (E,) with reasonably strong peaks.
    detector
        Template for the other detector settings (Fano factor, escape).
    n_peaks
        How many of the strongest peaks to measure.
    min_kev
        Ignore peaks below this energy.

    Returns
    -------
    Detector
        The input detector unchanged when no peak could be measured.
    """
    from dataclasses import replace

    from scipy.signal import find_peaks

    det = detector or Detector()
    e = np.asarray(energies_kev, dtype=np.float64)
    y = _check(spectrum, e.size)
    gain = float(np.median(np.diff(e)))
    net = y - snip(y, width=min(snip_width_channels(e, det), e.size // 8))
    prom = 10.0 * np.sqrt(np.maximum(y, 1.0))
    sig0 = float(det.sigma_kev(6.0)) / gain
    peaks, props = find_peaks(net, prominence=prom, distance=max(int(2 * sig0), 2))
    peaks = peaks[(e[peaks] >= min_kev)]
    if peaks.size == 0:
        return det
    peaks = peaks[np.argsort(-net[peaks])][:n_peaks]
    ch = np.arange(e.size, dtype=np.float64)
    fwhm_mn = []
    fano_part = (2.3548**2) * det.fano * det.pair_energy_ev * 1e-3
    for p in peaks:
        s_ch = float(det.sigma_kev(e[p])) / gain
        w = max(int(2.0 * s_ch), 3)
        lo, hi = max(p - w, 0), min(p + w + 1, e.size)
        fit = _fit_gaussian(ch[lo:hi], net[lo:hi], y[lo:hi], float(p), max(s_ch, 0.5))
        if fit is None:
            continue
        fwhm = fit[1] * gain * _FWHM_PER_SIGMA
        noise2 = fwhm**2 - fano_part * e[p]
        if noise2 <= 0:
            continue
        fwhm_mn.append(np.sqrt(noise2 + fano_part * MN_KA_KEV) * 1000.0)
    if not fwhm_mn:
        return det
    value = float(np.clip(np.median(fwhm_mn), 60.0, 600.0))
    return replace(det, fwhm_mn_ka_ev=value)
