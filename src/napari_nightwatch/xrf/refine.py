"""Sum-spectrum refinement before the per-pixel fit (as PyMca and PyXRF do it).

Tabulated line ratios hold for a thin sample excited by one energy. In thick paint
excited by a polychromatic tube the K-beta/K-alpha and L-beta/L-alpha ratios move by tens
of percent (self-absorption, which subshells the tube spectrum ionises, detector
efficiency), and a linear fit with the wrong ratios puts the misfit into overlapping
families: As-K takes or loses counts under Pb-L. The sum spectrum of a cube holds
millions of counts, enough to measure those ratios, the energy calibration and the peak
width, so they are refined there once and the fast linear per-pixel fit then uses the
refined families.

Each family is split into *line groups* that physics lets move against each other:

* K: K-alpha and K-beta (K-beta/K-alpha free within +-40 %);
* L: the L1, L2 and L3 subshell lines (each within a factor 0.4-2.5 of the main one);
* M: M5, M4, M-zeta and M1-M3 lines (within a factor 0.25-4).

The fit is bounded non-linear least squares (:func:`scipy.optimize.least_squares`) with
the family amplitudes, scatter peaks and smooth background solved linearly inside it
(variable projection). Stage 1 refines the energy calibration (offset, gain) and the
detector (FWHM at Mn K-alpha, Fano factor) with every group's amplitude free; stage 2
refines the group ratios within their bounds, with a weak prior towards the tabulated
values (a group the spectrum says nothing about keeps its tabulated ratio), jointly with
calibration and detector again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..core.errors import NightwatchError
from ..core.spectra import EnergyCalibration
from .background import snip, snip_width_channels
from .fit import batched_nnls, bspline_basis, smooth_background_basis
from .lines import LineFamily
from .model import (
    RH_K_KEV,
    Detector,
    check_axis,
    continuum,
    family_template,
    lines_spectrum,
    scatter_templates,
)

#: bounds of a K-beta group's scale relative to K-alpha: +-40 % between tables and
#: instruments, widened upwards because in lead-rich paint a low-energy K-alpha is absorbed
#: up to 1.3x more than its K-beta above the same edges (xraydb: K-K in lead white)
KBETA_BOUNDS = (0.6, 1.7)
#: bounds of an L/M subshell group's scale relative to the family's main group: vacancy
#: shares of the subshells (Coster-Kronig yields, polychromatic excitation above each
#: edge) differ between tables and instruments by up to about a factor 2
SUBSHELL_BOUNDS = (0.4, 2.5)
#: the same for M groups: M-shell Coster-Kronig yields are poorly known (xraydb has none
#: for most elements) and weak M1-M3 lines differ by up to 4x between tables
M_BOUNDS = (0.25, 4.0)
#: a line group is refined only if other families' fitted counts over its own lines are at
#: most this many times its own (0 turns the check off). On the independent generator the
#: groups above it are Sn-L L1/L2 under Ca K-alpha, K K-beta beside it, P K-beta and Hg M1-3
#: under S-K/Pb-M (ratios 16-124), the refined ones are at most ~12
DOMINANCE = 15.0
#: prior width (in log scale) pulling a group towards its tabulated ratio
PRIOR_SIGMA = 0.3
#: groups carrying less than this share of their family are left at the tabulated ratio
MIN_GROUP_SHARE = 0.005
#: knot spacing of the sum fit's B-spline background (keV): a sum spectrum holds ~1e8
#: counts, so background shape errors of 1 % (tube spectrum, scatter, efficiency) are
#: many sigma; cubic splines this wide (support 4x) still cannot follow a peak of
#: FWHM <= 0.25 keV, and every family's lines are tied together
SPLINE_SPACING_KEV = 0.5


@dataclass
class Refinement:
    """Outcome of :func:`refine_sum_spectrum`.

    Attributes
    ----------
    families
        The input families (same names, same order) with refined intensities.
    detector
        Detector with the refined FWHM and Fano factor.
    energies_kev
        Refined energy of every channel.
    calibration
        Refined channel -> keV calibration (``None`` when none was given).
    offset_shift_kev, gain_factor
        ``E_refined = E + offset_shift_kev + (gain_factor - 1) * E``.
    group_scales
        ``{family: {group: scale}}`` relative to the tabulated ratios (main group = 1).
    chi2_before, chi2_after
        Reduced chi-square of the sum-spectrum fit with tabulated and refined parameters.
    """

    families: tuple[LineFamily, ...]
    detector: Detector
    energies_kev: np.ndarray
    calibration: EnergyCalibration | None
    offset_shift_kev: float
    gain_factor: float
    group_scales: dict[str, dict[str, float]] = field(default_factory=dict)
    chi2_before: float = float("nan")
    chi2_after: float = float("nan")

    def to_dict(self) -> dict:
        """JSON-able record of the refined parameters (provenance of the maps)."""
        return {
            "method": "sum-spectrum refinement (bounded least squares; napari_nightwatch.xrf.refine)",
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "offset_shift_ev": round(self.offset_shift_kev * 1000.0, 3),
            "gain_factor": float(self.gain_factor),
            "detector": {"fwhm_mn_ka_ev": round(self.detector.fwhm_mn_ka_ev, 3), "fano": round(self.detector.fano, 5)},
            "group_scales": {f: {g: round(float(s), 4) for g, s in d.items()} for f, d in self.group_scales.items()},
            "bounds": {"kbeta": list(KBETA_BOUNDS), "subshell": list(SUBSHELL_BOUNDS), "m_groups": list(M_BOUNDS),
                       "prior_sigma": PRIOR_SIGMA},
            "chi2_before": float(self.chi2_before),
            "chi2_after": float(self.chi2_after),
        }


def line_groups(fam: LineFamily) -> tuple[str, ...]:
    """The refinement group of every line of a family (``"Ka"``, ``"L3"``, ``"M1-3"``...)."""
    if fam.family == "K":
        return tuple("Kb" if n.startswith("Kb") else "Ka" for n in fam.line_names) if fam.line_names else (
            ("K",) * len(fam.energies_kev))
    if not fam.initial_levels:
        return (fam.family,) * len(fam.energies_kev)
    if fam.family == "M":
        # M-zeta (M4-N2 + M5-N3, 16 eV apart) is a group of its own: its rate against
        # M-alpha/M-beta differs by tens of percent between tables (xraydb has none)
        names = fam.line_names or ("",) * len(fam.initial_levels)
        return tuple(
            "Mz" if n.startswith("Mz") else ("M1-3" if lv in ("M1", "M2", "M3") else lv)
            for n, lv in zip(names, fam.initial_levels, strict=True)
        )
    return tuple(fam.initial_levels)


def _group_layout(fams: Sequence[LineFamily]) -> list[tuple[int, str, np.ndarray, bool, tuple[float, float]]]:
    """(family index, group, line mask, refined?, bounds) per group; the main group first."""
    out = []
    for fi, f in enumerate(fams):
        groups = np.array(line_groups(f))
        w = np.asarray(f.intensities, dtype=np.float64)
        main = groups[int(np.argmax(w))]
        names = [main] + sorted(set(groups.tolist()) - {main})
        for g in names:
            mask = groups == g
            share = float(w[mask].sum())
            refined = g != main and share >= MIN_GROUP_SHARE
            bounds = {"K": KBETA_BOUNDS, "M": M_BOUNDS}.get(f.family, SUBSHELL_BOUNDS)
            out.append((fi, str(g), mask, refined, bounds))
    return out


class _SumModel:
    """Design of the sum-spectrum fit for one calibration and detector."""

    def __init__(self, e, y, fams, layout, det, lo, hi, excitation_kev, tube_kev, weights, snip_bg):
        self.lo, self.hi = lo, hi
        self.groups = np.stack([lines_spectrum(fams[fi], e, det, m)[lo:hi] for fi, _, m, _, _ in layout], 1)
        nuis = []
        if tube_kev is not None:
            sc = scatter_templates(e, det, tube_kev=tube_kev)[:, lo:hi]
            nuis.extend(r for r in sc if r.sum() > 0.3)
        shapes = []
        cont = continuum(e, excitation_kev)[lo:hi]
        if cont.sum() > 1e-6:
            shapes.append(cont / cont.sum())
        if snip_bg.sum() > 0:
            shapes.append(snip_bg / snip_bg.sum())
        n_spline = int(np.clip((e[hi - 1] - e[lo]) / SPLINE_SPACING_KEV, 6, 80))
        basis = bspline_basis(e[lo:hi], n_spline)
        shapes.extend(basis[:, i] / basis[:, i].sum() for i in range(basis.shape[1]))
        self.nuisance = np.concatenate(
            [np.stack(nuis, 1) if nuis else np.zeros((hi - lo, 0)), smooth_background_basis(np.stack(shapes, 1), weights)],
            axis=1,
        )
        self.weights = weights
        self.y = y[lo:hi]

    def solve(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted fit with ``cols`` >= 0 and free nuisance terms: (residual / sigma, coefficients)."""
        a = np.concatenate([cols, self.nuisance], axis=1)
        aw = a * self.weights[:, None]
        gram = a.T @ aw
        d = np.diag(gram).copy()
        d[d <= 0] = 1.0
        s = 1.0 / np.sqrt(d)
        nonneg = np.arange(a.shape[1]) < cols.shape[1]
        gs = gram * np.outer(s, s) + np.eye(a.shape[1]) * 1e-12
        x = batched_nnls(gs, ((self.y @ aw) * s)[None], nonneg)[0] * s
        return (self.y - a @ x) * np.sqrt(self.weights), x


def _family_columns(groups: np.ndarray, layout, fams, scales: np.ndarray) -> np.ndarray:
    cols = np.zeros((groups.shape[0], len(fams)))
    for k, (fi, *_rest) in enumerate(layout):
        cols[:, fi] += scales[k] * groups[:, k]
    return cols


def refine_sum_spectrum(
    energies_kev: np.ndarray,
    spectrum: np.ndarray,
    families: Sequence[LineFamily],
    *,
    detector: Detector | None = None,
    calibration: EnergyCalibration | None = None,
    excitation_kev: float = 50.0,
    tube_kev: float | Sequence[float] | None = RH_K_KEV,
    refine_calibration: bool = True,
    refine_detector: bool = True,
    refine_ratios: bool = True,
    max_shift_kev: float = 0.1,
    min_kev: float | None = None,
    max_kev: float | None = None,
) -> Refinement:
    """Refine calibration, peak width and each family's line-group ratios on a sum spectrum.

    Parameters
    ----------
    energies_kev
        Channel energies (E,) from the nominal calibration.
    spectrum
        Sum (or mean) spectrum of the cube (E,) counts; the Poisson weights assume counts,
        so pass the sum, not a normalised spectrum.
    families
        The families to be fitted per pixel (e.g. from identification or the user).
    detector
        Starting detector (e.g. :func:`~napari_nightwatch.xrf.calibration.estimate_detector`).
    calibration
        The nominal calibration behind ``energies_kev``; when given, the refined one is
        returned too.
    excitation_kev, tube_kev
        Tube voltage (continuum shape) and tube line energies (scatter peaks).
    refine_calibration, refine_detector, refine_ratios
        Which parameter sets to refine.
    max_shift_kev
        Bound on the energy offset change (keV); the gain moves by at most 1 %.
    min_kev, max_kev
        Fit range; default as :func:`~napari_nightwatch.xrf.fit.build_fit_model`.

    Returns
    -------
    Refinement

    Raises
    ------
    NightwatchError
        For an empty family list, a spectrum of the wrong shape, NaN/negative counts, or
        a fit range shorter than 16 channels.
    """
    from scipy.optimize import least_squares

    e = check_axis(energies_kev)
    fams = tuple(families)
    if not fams:
        raise NightwatchError("No line families to refine; give at least one, e.g. 'Pb-L'.")
    y = np.asarray(spectrum, dtype=np.float64)
    if y.shape != e.shape:
        raise NightwatchError(f"The sum spectrum has shape {y.shape}; expected {e.shape} like the energy axis.")
    if not np.isfinite(y).all() or (y < 0).any():
        raise NightwatchError("The sum spectrum contains NaN, infinite or negative counts.")
    det0 = detector or Detector()
    for f in fams:  # one sentence when a family's main line is off the axis
        family_template(f, e, det0)
    layout = _group_layout(fams)
    # fit range like build_fit_model's, so the refined templates are judged where they are used
    significant = [f.energies_kev[f.intensities > 0.01] for f in fams]
    lowest = min(float(s.min()) for s in significant)
    highest = max(float(s.max()) for s in significant)
    if min_kev is None:
        min_kev = max(lowest - 0.5, 0.6, float(e[0]))
    if max_kev is None:
        # unlike the per-pixel fit, the tube's scatter peaks are left out of the range
        # where possible: their shape (Rh K-alpha1/alpha2, Compton profile) depends on the
        # geometry, and with 1e8 counts their misfit would outweigh every line ratio
        max_kev = min(highest + 0.6, float(e[-1]))
    lo = int(np.searchsorted(e, min_kev, side="left"))
    hi = int(np.searchsorted(e, max_kev, side="right"))
    if hi - lo < 16:
        raise NightwatchError(
            f"The refinement range {min_kev:.2f}-{max_kev:.2f} keV covers only {hi - lo} channels; "
            "the energy axis is too short for the families asked for."
        )
    # Poisson weights of the (lightly smoothed) sum spectrum
    smooth = np.convolve(y, np.ones(5) / 5, mode="same")[lo:hi]
    weights = 1.0 / np.maximum(smooth, 1.0)
    width = snip_width_channels(e, det0)
    snip_bg = snip(y, width=min(width, (hi - lo) // 2 - 1))[lo:hi]

    def axis(p):
        return e + p[0] + (p[1] - 1.0) * e

    def detector_of(p):
        return replace(det0, fwhm_mn_ka_ev=float(p[2]), fano=float(p[3]))

    def model_for(p):
        return _SumModel(axis(p), y, fams, layout, detector_of(p), lo, hi, excitation_kev, tube_kev, weights, snip_bg)

    ones = np.ones(len(layout))
    p0 = np.array([0.0, 1.0, det0.fwhm_mn_ka_ev, det0.fano])
    m0 = model_for(p0)
    n_dof = max(hi - lo - len(fams) - m0.nuisance.shape[1], 1)
    r0, _ = m0.solve(_family_columns(m0.groups, layout, fams, ones))
    chi2_before = float(r0 @ r0) / n_dof

    # stage 1: calibration and detector, every group's amplitude free
    free = [i for i, on in enumerate([refine_calibration, refine_calibration, refine_detector, refine_detector]) if on]
    p = p0.copy()
    lb_p = np.array([-max_shift_kev, 0.99, 40.0, 0.05])
    ub_p = np.array([max_shift_kev, 1.01, 600.0, 0.25])
    steps = np.array([0.01, 0.001, 10.0, 0.01])
    if free:
        lb, ub = lb_p, ub_p
        p[free] = np.clip(p[free], lb[free] + 1e-9, ub[free] - 1e-9)

        def stage1(q):
            pp = p.copy()
            pp[free] = q
            m = model_for(pp)
            return m.solve(m.groups)[0]

        res = least_squares(stage1, p[free], bounds=(lb[free], ub[free]), x_scale=steps[free], diff_step=1e-4,
                            max_nfev=60)
        p[free] = res.x
    m = model_for(p)

    # stage 2: group ratios within their bounds, weak prior towards the tabulated values,
    # jointly with calibration and detector (the low-energy peak width is only pinned
    # down once the crowded 2-4 keV lines have their right ratios)
    idx = [k for k, item in enumerate(layout) if item[3]]
    if idx and DOMINANCE:
        # a group whose own lines sit under a far stronger line of another family (Sn-L's
        # L-beta1 at 3.66 keV under Ca K-alpha at 3.69 keV) is not determined by the sum
        # spectrum: refining it trades the two families' areas; keep its tabulated ratio
        _, x_tab = m.solve(_family_columns(m.groups, layout, fams, ones))
        cols_tab = _family_columns(m.groups, layout, fams, ones) * x_tab[: len(fams)]
        kept = []
        for k in idx:
            fi = layout[k][0]
            own = x_tab[fi] * m.groups[:, k]
            win = own > 0.2 * own.max() if own.max() > 0 else np.zeros(own.shape, bool)
            others = cols_tab[win].sum() - cols_tab[win, fi].sum()
            if not win.any() or others <= DOMINANCE * own[win].sum():
                kept.append(k)
        idx = kept
    scales = ones.copy()
    if refine_ratios and idx:
        lb_r = np.log([layout[k][4][0] for k in idx])
        ub_r = np.log([layout[k][4][1] for k in idx])
        # the prior must weigh against the data's real misfit, not Poisson noise alone: with
        # 1e8 counts, shape errors dominate the residuals, so they are scaled by the reduced
        # chi-square of the most flexible fit (every group free, stage 1)
        r_free, _ = m.solve(m.groups)
        inflate = np.sqrt(max(float(r_free @ r_free) / n_dof, 1.0))
        cache: dict[tuple, _SumModel] = {}
        nf = len(free)

        def model_cached(q):
            key = tuple(np.round(q, 12))
            if key not in cache:
                if len(cache) > 8:
                    cache.clear()
                pp = p.copy()
                pp[free] = q
                cache[key] = model_for(pp)
            return cache[key]

        def stage2(theta):
            mm = model_cached(theta[:nf]) if nf else m
            sc = ones.copy()
            sc[idx] = np.exp(theta[nf:])
            r, _ = mm.solve(_family_columns(mm.groups, layout, fams, sc))
            return np.concatenate([r / inflate, theta[nf:] / PRIOR_SIGMA])

        lb = np.concatenate([lb_p[free], lb_r]) if nf else lb_r
        ub = np.concatenate([ub_p[free], ub_r]) if nf else ub_r
        start = np.concatenate([p[free], np.zeros(len(idx))])
        x_scale = np.concatenate([steps[free], np.full(len(idx), 0.1)])
        res = least_squares(stage2, start, bounds=(lb, ub), x_scale=x_scale, diff_step=1e-4, max_nfev=100)
        p[free] = res.x[:nf]
        scales[idx] = np.exp(res.x[nf:])
        m = model_for(p)
    r1, _ = m.solve(_family_columns(m.groups, layout, fams, scales))
    chi2_after = float(r1 @ r1) / n_dof

    refined = []
    record: dict[str, dict[str, float]] = {}
    for fi, f in enumerate(fams):
        w = np.asarray(f.intensities, dtype=np.float64).copy()
        rec = {}
        for k, (fj, g, mask, _on, _b) in enumerate(layout):
            if fj == fi:
                w[mask] *= scales[k]
                rec[g] = float(scales[k])
        w /= w.sum()
        w.setflags(write=False)
        refined.append(replace(f, intensities=w, main_energy_kev=float(f.energies_kev[int(np.argmax(w))])))
        record[f.name] = rec
    new_cal = None
    if calibration is not None:
        g = float(p[1])
        new_cal = EnergyCalibration(
            float(calibration.offset_kev * g + p[0]), float(calibration.gain_kev * g), float(calibration.quadratic_kev * g)
        )
    return Refinement(
        tuple(refined), detector_of(p), axis(p), new_cal, float(p[0]), float(p[1]), record, chi2_before, chi2_after
    )


__all__ = ["KBETA_BOUNDS", "M_BOUNDS", "SUBSHELL_BOUNDS", "Refinement", "line_groups", "refine_sum_spectrum"]
