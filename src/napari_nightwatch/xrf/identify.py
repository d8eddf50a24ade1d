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
from dataclasses import dataclass, replace

import numpy as np

from ..core.errors import NightwatchError
from .background import snip, snip_width_channels
from .fit import bspline_basis
from .lines import LineFamily, line_families
from .model import (
    RH_K_KEV,
    Detector,
    continuum,
    gaussian_peaks,
    lines_spectrum,
    pileup_template,
    scatter_templates,
)
from .refine import SPLINE_SPACING_KEV

#: confidence at and above which a family is reported as present
PRESENT_CONFIDENCE = 0.5
#: left out of the default candidates: no stable isotope (never in a painting in
#: detectable amounts) or noble gases other than the argon of air
EXCLUDED_ELEMENTS = frozenset({"Tc", "Pm", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Pa", "Kr", "Xe"})
#: lines an MA-XRF instrument itself puts into spectra, by where they come from: pass the
#: ones of your scanner as ``instrument=`` (the default is the Rh tube anode only, since a
#: collimator's Fe or Ni is also a pigment element elsewhere)
INSTRUMENT_LINES: dict[str, tuple[str, ...]] = {
    "anode Rh": ("Rh-K", "Rh-L"),
    "anode W": ("W-L", "W-M"),
    "anode Mo": ("Mo-K", "Mo-L"),
    "anode Ag": ("Ag-K", "Ag-L"),
    "anode Cr": ("Cr-K",),
    "collimator/shield": ("Ni-K", "Zr-K", "Zr-L", "Ag-K", "Ag-L", "Cu-K", "Fe-K", "Pb-L", "W-L"),
    "detector": ("Zr-K", "Zr-L", "Al-K", "Si-K"),
}
DEFAULT_INSTRUMENT = INSTRUMENT_LINES["anode Rh"]
#: how far (in FWHM) the signal a family explains may peak from its main line: calibration
#: after refinement is good to a few eV (< 0.05 FWHM) and noise moves a >= 10 sigma peak's
#: centre by < 0.1 FWHM, so 0.3 FWHM leaves room for blends that are not exactly tabulated
MAX_MAIN_OFFSET_FWHM = 0.3
#: chi-square drop a family's own line pattern must bring, beyond the families already
#: kept, to be proposed (an information criterion: 25 = the drop of a lone 5-sigma peak)
IC_PENALTY = 25.0
#: model error per channel, as a fraction of the counts, added to the Poisson variance of
#: the identification fits (chi-square weights 1 / (y + (MODEL_ERROR * y)^2), the
#: "systematic error" of spectral fitting). A sum spectrum of 1e8 counts has ~0.1 %
#: Poisson noise per channel, far below how well any tabulated line ratio, peak shape or
#: absorption edge matches a real (thick, polychromatically excited) paint layer: the
#: +-30 % ratio errors of the independent generator leave 1-2 % misfits under strong
#: lines, which without the floor passed for Zn-K, Br-K, Rb-K or Ba-L at 10-20 sigma. On
#: a single spectrum of 1e5 counts (<= 1e3 per channel) it changes the weights by < 40 %.
MODEL_ERROR = 0.02
#: confidence at and above which the sum spectrum alone is sure of a family
STRONG_CONFIDENCE = 0.9
#: most confidence left to a proposed family that the pixels do not confirm (as for
#: families failing a line-pattern check): less when its map shows even less
HELD_CONFIDENCE = 0.2
#: chi-square drop (with the model-error floor) above which the sum spectrum alone is
#: enough to propose a family that is not strong; below it, a cube's pixels must confirm
#: it (:mod:`~napari_nightwatch.xrf.spatial`): 100 = a 10-sigma drop. Measured on the
#: independent generator: phantoms drop chi-square by 26-44, S-K under Hg-M/Pb-M by > 2e4
SUM_ONLY_DROP = 100.0


@dataclass(frozen=True)
class Identification:
    """One proposed line family.

    Attributes
    ----------
    name
        Family name, e.g. ``"Pb-L"``.
    origin
        ``"sample"``, ``"instrument"`` (a line of the tube/collimator/detector: fitted
        as a nuisance, never proposed as a pigment element) or ``"included"`` (asked for
        by the user).
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
    chi2_drop
        How much the family's own line pattern lowered chi-square beyond the families
        kept before it (NaN when it was not judged).
    pattern_ok
        False when a line-pattern check failed (secondary lines missing, main line off
        position, an L family without its excited K lines, M lines without L lines).
    map_z
        For a cube: how far the family's own map over the pixels lowers chi-square beyond
        the families sharing its channels, in standard deviations of what noise gives
        (:mod:`~napari_nightwatch.xrf.spatial`; NaN when not judged).
    """

    name: str
    confidence: float
    area: float
    significance: float
    secondary_ratio: float
    main_energy_kev: float
    reason: str = ""
    origin: str = "sample"
    chi2_drop: float = float("nan")
    pattern_ok: bool = True
    map_z: float = float("nan")

    @property
    def present(self) -> bool:
        """Proposed as a sample family: included by the user, or confident and not an instrument line."""
        return self.origin == "included" or (self.confidence >= PRESENT_CONFIDENCE and self.origin == "sample")

    @property
    def trusted(self) -> bool:
        """Sure enough to refine line ratios with and to fit without further evidence.

        Instrument and included families; sample families that are strong in the sum
        spectrum (:data:`STRONG_CONFIDENCE`), whose pattern drops its chi-square by
        :data:`SUM_ONLY_DROP` or more, or whose map over the pixels confirms them.
        """
        if self.instrument or self.origin == "included":
            return True
        if not self.present:
            return False
        from .spatial import SPATIAL_Z

        return self.confidence >= STRONG_CONFIDENCE or self.chi2_drop >= SUM_ONLY_DROP or self.map_z >= SPATIAL_Z

    @property
    def instrument(self) -> bool:
        """Confidently seen, but a line of the instrument (tube anode, collimator, detector)."""
        return self.confidence >= PRESENT_CONFIDENCE and self.origin == "instrument"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "confidence": round(float(self.confidence), 4),
            "area": float(self.area),
            "significance": float(self.significance),
            "secondary_ratio": None if not np.isfinite(self.secondary_ratio) else float(self.secondary_ratio),
            "main_energy_kev": float(self.main_energy_kev),
            "reason": self.reason,
            "origin": self.origin,
            "chi2_drop": None if not np.isfinite(self.chi2_drop) else float(self.chi2_drop),
            "map_z": None if not np.isfinite(self.map_z) else float(self.map_z),
        }


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
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    instrument: Sequence[str] = DEFAULT_INSTRUMENT,
    flexible: Sequence[str] = (),
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
    include
        Families (``"Pb-L"``) always proposed (origin ``"included"``), whatever the spectrum says.
    exclude
        Families (``"Ar-K"``) or elements (``"Ar"``) never considered.
    instrument
        Families the instrument itself produces (see :data:`INSTRUMENT_LINES`): still
        fitted, so they explain their counts, but tagged ``origin="instrument"`` and not
        proposed as sample elements.
    flexible
        Families already accepted (e.g. refined on the sum spectrum): each of their line
        groups gets a free non-negative term too, so a change of their line ratios
        cannot pass for another family.

    Returns
    -------
    list of Identification
        Every candidate with a non-zero fitted area, by decreasing confidence; those
        with ``present`` True are the proposal.
    """
    det = detector or Detector()
    e = np.asarray(energies_kev, dtype=np.float64)
    y = _check_spectrum(spectrum, e, "spectrum")
    candidates = _filter_candidates(candidates, exclude, excitation_kev, min_kev, e)
    result = _identify_one(e, y, det, excitation_kev, candidates, min_kev, tube_kev, flexible)
    if max_spectrum is not None:
        ym = _check_spectrum(max_spectrum, e, "max_spectrum")
        found = {r.name: r for r in result}
        for r in _identify_one(e, ym, det, excitation_kev, candidates, min_kev, tube_kev, flexible):
            old = found.get(r.name)
            if r.present and (old is None or r.confidence > old.confidence):
                found[r.name] = replace(r, reason=r.reason + " (max spectrum)")
        result = sorted(found.values(), key=lambda r: -r.confidence)
    return tag_origins(result, include=include, instrument=instrument, excitation_kev=excitation_kev)


def _family_key(name: str, excitation_kev: float) -> str:
    """``"fe-k"`` -> ``"Fe-K"`` (checked; an instrument family need not be excitable here)."""
    from .lines import _NAME, _normalise_element

    m = _NAME.match(str(name))
    if not m:
        raise NightwatchError(f"Line family {name!r} is not of the form <element>-<K|L|M>, e.g. 'Pb-L'.")
    return f"{_normalise_element(m.group(1))}-{m.group(2).upper()}"


def _filter_candidates(candidates, exclude, excitation_kev, min_kev, e):
    """The candidate families without the excluded ones (names or whole elements)."""
    if not exclude:
        return candidates
    from .lines import _normalise_element

    drop_fam, drop_el = set(), set()
    for item in exclude:
        if "-" in str(item):
            drop_fam.add(_family_key(str(item), excitation_kev))
        else:
            drop_el.add(_normalise_element(str(item)))
    if candidates is None:
        candidates = excitable_families(e, excitation_kev, min_kev)
    return [f for f in candidates if f.name not in drop_fam and f.element not in drop_el]


def excitable_families(e: np.ndarray, excitation_kev: float, min_kev: float) -> list[LineFamily]:
    """Every excitable family (no unstable or noble-gas element) with its main line on the axis."""
    lo_e = max(float(e[0]), min_kev - 0.2)
    hi_e = min(float(e[-1]), float(excitation_kev))
    fams = line_families(None, excitation_kev=excitation_kev, min_kev=max(min_kev, lo_e + 0.1), max_kev=hi_e - 0.1)
    return [f for f in fams if f.element not in EXCLUDED_ELEMENTS]


def tag_origins(
    identifications: Sequence[Identification],
    *,
    include: Sequence[str] = (),
    instrument: Sequence[str] = DEFAULT_INSTRUMENT,
    excitation_kev: float = 50.0,
) -> list[Identification]:
    """Mark instrument lines and user-included families on an identification list.

    Parameters
    ----------
    identifications
        From :func:`identify_elements` / :func:`identify_cube`.
    include
        Families always proposed (origin ``"included"``; added with confidence 0 if the
        spectrum did not show them).
    instrument
        Families tagged ``"instrument"`` (unless also included).
    excitation_kev
        For resolving the names.

    Returns
    -------
    list of Identification
        By decreasing confidence.
    """
    inc = {_family_key(n, excitation_kev) for n in include}
    ins = {_family_key(n, excitation_kev) for n in instrument} - inc
    out = []
    seen = set()
    for r in identifications:
        seen.add(r.name)
        if r.name in inc:
            r = replace(r, origin="included", reason=(r.reason + "; included by the user").lstrip("; "))
        elif r.name in ins:
            r = replace(r, origin="instrument", reason=(r.reason + "; instrument line").lstrip("; "))
        out.append(r)
    from .lines import get_family

    for name in sorted(inc - seen):
        f = get_family(name, excitation_kev)
        out.append(Identification(name, 0.0, 0.0, 0.0, float("nan"), f.main_energy_kev, "included by the user",
                                  "included"))
    return sorted(out, key=lambda r: -r.confidence)


def instrument_families(identifications: Sequence[Identification]) -> list[str]:
    """Names of the confidently seen instrument families (fit them as nuisance terms)."""
    chosen = [r for r in identifications if r.instrument]
    return [r.name for r in sorted(chosen, key=lambda r: r.main_energy_kev)]


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


def _identify_one(e, y, det, excitation_kev, candidates, min_kev, tube_kev, flexible=()) -> list[Identification]:
    lo_e = max(float(e[0]), min_kev - 0.2)
    hi_e = min(float(e[-1]), float(excitation_kev))
    if candidates is None:
        fams = excitable_families(e, excitation_kev, min_kev)
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
    cols = [lines_spectrum(f, e, det)[lo:hi] for f in fams]
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
    # knots every 0.5 keV, as in the sum-spectrum refinement: the continuum bends fast
    # below 4 keV (window, air, detector efficiency) and steps at absorption edges, and a
    # coarser background leaves bumps that pass for families; a peak (FWHM <= 0.25 keV)
    # is still far narrower than any spline
    n_spline = int(np.clip((hi_e - lo_e) / SPLINE_SPACING_KEV, 6, 80))
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
    # escape peaks: a real detector's escape fraction differs from Reed-Ware's (geometry,
    # thickness), so the strongest families get a free escape term of their own; their
    # escape (Cr-K at 3.67 keV, Fe-K at 4.66 keV) is explained before any element is
    top5 = [int(i) for i in np.argsort(-x[: len(fams)])[:5] if x[i] > 0]
    tails = []
    for ti in top5:
        f = fams[ti]
        ec = np.asarray(f.energies_kev) - det.escape_kev
        ok = ec > 0.3
        if ok.any():
            t = gaussian_peaks(e, ec[ok], np.asarray(f.intensities)[ok], det.sigma_kev(ec[ok]))[lo:hi]
            if t.sum() > 1e-3:
                pile.append(t / t.sum())
        # low-energy tail of the peaks (incomplete charge collection: the "short tail" of
        # a hypermet peak, as PyMca fits it): a Gaussian model leaves it beside every strong
        # line, where it passed for an L family between K lines (Tb-L under Fe-K). A
        # nuisance term of the information criterion only: in the screening fit it would
        # take a weak neighbour's counts (Al-K below Si-K)
        t = _tail_template(f, e, det)[lo:hi]
        if t.sum() > 1e-3:
            tails.append(t / t.sum())
    # accepted families (``flexible``) also get one free non-negative term per line group
    # (K-alpha, K-beta, each L/M subshell): thick paint changes their ratios from pixel to
    # pixel, so a partial sum or the max spectrum has other ratios than the sum spectrum
    # they were refined on, and the difference must not pass for another element
    group_cols, group_owner = [], []
    if flexible:
        from dataclasses import replace as _replace

        from .refine import line_groups

        no_escape = _replace(det, escape=False)

        for fi, f in enumerate(fams):
            if f.name not in flexible:
                continue
            groups = np.array(line_groups(f))
            if f.family == "L":
                # every L line on its own: self-absorption above the L3/L2 edges changes
                # L-gamma against L-beta inside one subshell group (Pb, Hg in thick paint)
                groups = np.array([f"{g}{i}" for i, g in enumerate(groups)])
            for g in sorted(set(groups.tolist())):
                sel = groups == g
                if np.asarray(f.intensities)[sel].sum() < 0.01:
                    continue
                # without their escape peaks: a free line's escape would be free counts 1.74 keV
                # lower, where it could take a real family's place (P-K under Sn-L's escape)
                t = lines_spectrum(f, e, no_escape, sel)[lo:hi]
                if t.sum() > 1e-3:
                    group_cols.append(t / t.sum())
                    group_owner.append(fi)
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
    pre: list[list] = []
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
        cap = 1.0
        ok = True
        if conf > 0.05:
            ratio, detectable = _secondary_check(fam, e[lo:hi], netr, w, a, x, j, lo, det, e)
            if detectable and np.isfinite(ratio):
                if ratio < 0.25:
                    conf *= ratio / 0.25
                    ok = False
                    reason += f"; secondary lines at {ratio:.2f} of expected"
                else:
                    reason += f"; secondary lines consistent ({ratio:.2f})"
        if conf > 0.05:
            # the signal this family explains must peak where its main line is, with the
            # detector's width: a misfit of a neighbour's line shape or an absorption edge
            # of the continuum lies beside it
            own = netr - model + a[:, j] * x[j]
            off = _main_line_offset(fam, e[lo:hi], own, w, det)
            if off is not None and off > MAX_MAIN_OFFSET_FWHM:
                cap = 0.2
                ok = False
                conf = min(conf, cap)
                reason += f"; its main-line signal peaks {off:.2f} FWHM away from {fam.main_energy_kev:.3f} keV"
        pre.append([j, conf, area, z, ratio, reason, cap, ok, float("nan")])
    # information criterion, forward selection: the candidate whose own line pattern lowers
    # chi-square most, beyond what the families kept so far (and the nuisance terms)
    # explain, is kept next, as long as that drop exceeds the penalty; overlapping
    # candidates (S-K and Mo-L at 2.3 keV) thus compete on how much each explains
    if tails:
        a = np.concatenate([a, np.stack(tails, axis=1)], axis=1)
    nuis_idx = list(range(nf, a.shape[1]))
    owner = np.full(a.shape[1], -1)
    if group_cols:
        # the accepted families' free line groups: nuisance terms of this test only (in the
        # screening fit above they would take their own family's counts)
        owner = np.concatenate([owner, np.asarray(group_owner)])
        a = np.concatenate([a, np.stack(group_cols, axis=1)], axis=1)
        nuis_idx = nuis_idx + list(range(a.shape[1] - len(group_cols), a.shape[1]))
    # an L family whose element's K lines are excited and on the axis needs those K lines:
    # K fluorescence yields are 10-20x the L ones there (Mo-L at 2.29 keV without Mo-K at
    # 17.5 keV is S-K's line, not molybdenum). Such a family does not enter the selection.
    seen_k = {fams[p[0]].element for p in pre if fams[p[0]].family == "K" and p[1] >= PRESENT_CONFIDENCE}
    k_on_axis = {f.element for f in fams if f.family == "K"}
    no_k = set()
    for p in pre:
        f = fams[p[0]]
        if f.family == "L" and f.element in k_on_axis and f.element not in seen_k and p[1] > 0.05:
            p[1] = min(p[1], 0.2)
            p[5] += f"; {f.element}-K (excited, on the axis) not found"
            p[7] = False
            no_k.add(p[0])
    items = {p[0]: p for p in pre if p[1] > 0.05 and p[0] not in no_k}
    # the information criterion judges with the model-error floor (see MODEL_ERROR)
    w_ic = 1.0 / (np.maximum(yr, 1.0) + (MODEL_ERROR * yr) ** 2)
    gains = _forward_select(a, list(items), nuis_idx, owner, netr, w_ic, e[lo:hi], det, fams)
    for j, item in items.items():
        gain, local = gains[j]
        item[8] = gain
        if gain > IC_PENALTY:
            # the drop, in units of the misfit left over the family's own lines, is the
            # likelihood-ratio significance of its pattern; where it is higher than the
            # area's z above (diluted by every overlapping candidate of the screening fit),
            # it sets the confidence; the secondary-line and main-line-position checks
            # above keep scaling it down
            z_ic = float(np.sqrt(gain / local))
            item[1] = max(_confidence(z_ic), _confidence(item[3])) * min(1.0, item[1] / max(_confidence(item[3]), 1e-9))
            item[1] = min(item[1], item[6])  # the main-line position check is a hard cap
            item[5] += f"; lowers chi2 by {gain:.0f} ({z_ic:.1f} sigma over its lines)"
        else:
            item[1] = min(item[1], 0.2)
            item[5] += f"; lowers chi2 by only {gain:.0f} (penalty {IC_PENALTY:.0f}) beyond the families kept"
    for j, conf, area, z, ratio, reason, _cap, ok, drop in pre:
        fam = fams[j]
        ident = Identification(fam.name, conf, area, z, ratio, fam.main_energy_kev, reason, chi2_drop=drop,
                               pattern_ok=ok)
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
            ident = replace(ident, confidence=min(ident.confidence, 0.2), pattern_ok=False,
                            reason=ident.reason + f"; {l_name} not found")
        out.append(ident)
    return sorted(out, key=lambda r: -r.confidence)


def _tail_template(fam: LineFamily, e: np.ndarray, det: Detector, slope_sigmas: float = 1.0) -> np.ndarray:
    """Low-energy tail of a family's lines: an exponential of ``slope_sigmas`` detector sigmas
    convolved with the Gaussian (the hypermet short tail), weighted by the line intensities."""
    from scipy.special import erfc

    out = np.zeros_like(e)
    for ec, wt in zip(np.asarray(fam.energies_kev), np.asarray(fam.intensities), strict=True):
        if wt < 1e-3:
            continue
        sig = float(det.sigma_kev(np.asarray([ec]))[0])
        beta = slope_sigmas * sig
        d = e - ec
        with np.errstate(over="ignore", under="ignore"):
            arg = np.minimum(d / beta + sig**2 / (2 * beta**2), 50.0)
            out += wt * 0.5 * np.exp(arg) * erfc(d / (np.sqrt(2) * sig) + sig / (np.sqrt(2) * beta)) / beta
    return out


def _forward_select(a, cands, nuis_idx, owner, y, w, e, det, fams) -> dict[int, tuple[float, float]]:
    """Greedy forward selection of family columns by chi-square drop (lazy evaluation).

    Each candidate is judged over its own channels (where its template is above 0.1 % of
    its peak, padded by 2 FWHM) with the columns that reach them, so one test is a small
    fit. Returns ``{column: (chi2 drop when it was judged, reduced chi2 left over its lines)}``;
    a candidate never kept has the drop it showed last.
    """
    import heapq

    wins = {}
    gain_step = float(np.median(np.diff(e)))
    for j in cands:
        col = a[:, j]
        rows = np.flatnonzero(col > 1e-3 * col.max())
        pad = int(2 * float(det.fwhm_kev(fams[j].main_energy_kev)) / gain_step) + 1
        wins[j] = slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, a.shape[0]))
    reach = np.abs(a) > 1e-9

    def judge(j, kept):
        r = wins[j]
        cols = [c for c in kept + [c for c in nuis_idx if owner[c] != j] if reach[r, c].any()]
        yy, ww = y[r], w[r]
        base, _ = _chi2_of(a[r], cols, yy, ww)
        with_j, resid = _chi2_of(a[r], cols + [j], yy, ww)
        own = a[r, j] > 0.01 * a[r, j].max()
        local = max(float(np.mean(resid[own] ** 2 * ww[own])), 1.0) if own.any() else 1.0
        return base - with_j, local

    kept: list[int] = []
    out: dict[int, tuple[float, float]] = {}
    heap = [(-np.inf, j) for j in cands]
    heapq.heapify(heap)
    while heap:
        _, j = heapq.heappop(heap)
        g, local = judge(j, kept)
        out[j] = (g, local)
        if heap and g < -heap[0][0]:
            heapq.heappush(heap, (-g, j))  # another candidate may explain more now: judge it first
            continue
        if g <= IC_PENALTY:
            for _, k in heap:  # the best remaining drop is below the penalty: none is kept
                out.setdefault(k, judge(k, kept))
            break
        kept.append(j)
    return out


def _chi2_of(a: np.ndarray, cols: list[int], y: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray]:
    """Weighted chi-square and residual of the non-negative fit of ``y`` with the columns ``cols`` of ``a``."""
    x = _weighted_nnls(a[:, cols], y, w)
    r = y - a[:, cols] @ x
    return float(np.sum(r * r * w)), r


def _main_line_offset(fam: LineFamily, e: np.ndarray, own: np.ndarray, w: np.ndarray, det: Detector) -> float | None:
    """How far (in FWHM) the family's own line pattern must shift to best match the signal it explains.

    ``own`` is the spectrum minus every other fitted term. The family's lines near its main
    line (within 2 FWHM), with their intensities and the detector's widths, plus a straight
    background, are fitted at trial shifts within +-1 FWHM; the best shift is returned, or
    ``None`` when the window is too short to tell.
    """
    ec = np.asarray(fam.energies_kev)
    wt = np.asarray(fam.intensities)
    fwhm = float(det.fwhm_kev(fam.main_energy_kev))
    near = np.abs(ec - fam.main_energy_kev) <= 2.0 * fwhm
    win = np.abs(e - fam.main_energy_kev) <= 2.0 * fwhm
    if win.sum() < 7:
        return None
    ew, yw, sw = e[win], own[win], np.sqrt(w[win])
    sig = det.sigma_kev(ec[near])
    best, best_shift = -np.inf, 0.0
    for shift in fwhm * np.linspace(-1.0, 1.0, 41):
        g = np.exp(-0.5 * ((ew[:, None] - ec[near][None] - shift) / sig[None]) ** 2) @ (wt[near] / sig)
        a = np.stack([g, np.ones_like(ew), ew - fam.main_energy_kev], axis=1) * sw[:, None]
        coef, *_ = np.linalg.lstsq(a, yw * sw, rcond=None)
        if coef[0] <= 0:
            continue
        score = -float(np.sum((a @ coef - yw * sw) ** 2))
        if score > best:
            best, best_shift = score, shift
    if not np.isfinite(best):
        return float("inf")
    return abs(best_shift) / fwhm


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
    t_main = lines_spectrum(fam, e_full, det, main)[lo:hi]
    t_sec = lines_spectrum(fam, e_full, det, ~main)[lo:hi]
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
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    instrument: Sequence[str] = DEFAULT_INSTRUMENT,
    candidates: Sequence[LineFamily] | None = None,
    flexible: Sequence[str] = (),
    pixel_evidence: bool = True,
) -> list[Identification]:
    """Identify families in a cube: sum and max spectra, partial sums, then the pixels' maps.

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
    include, exclude, instrument, candidates, flexible
        As for :func:`identify_elements`.
    pixel_evidence
        Judge the families the sum spectrum is not sure of by their own maps over the
        pixels (:mod:`~napari_nightwatch.xrf.spatial`); needs at least
        :data:`~napari_nightwatch.xrf.spatial.MIN_PIXELS` pixel spectra.

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
    tags = {"include": include, "instrument": instrument, "candidates": candidates, "flexible": flexible}
    ids = identify_elements(energies_kev, total, max_spectrum=maxs, detector=det, excitation_kev=excitation_kev,
                            tube_kev=tube_kev, exclude=exclude, **tags)
    present = [r for r in ids if r.present or r.instrument]
    if not present or y.shape[0] < 64:
        return ids
    by_name = {f.name: f for f in candidates or ()}
    if n_split < 1:
        if not pixel_evidence:
            return ids
        return _confirm_by_pixels(ids, energies_kev, y, det, excitation_kev, tube_kev, by_name,
                                  _candidate_pool(candidates, exclude, instrument, excitation_kev, energies_kev))
    fams = [by_name.get(r.name) or get_family(r.name, excitation_kev) for r in present]
    model = build_fit_model(energies_kev, fams, detector=det, mean_spectrum=y.mean(axis=0, dtype=np.float64),
                            excitation_kev=excitation_kev, tube_kev=tube_kev)
    areas = fit_spectra(y, model).areas
    found = {r.name: r for r in ids}
    for k in np.argsort(-np.nansum(areas, axis=0))[:n_split]:
        weak = areas[:, k] <= np.nanpercentile(areas[:, k], 25)
        part = y[weak].sum(axis=0, dtype=np.float64)
        if weak.sum() < 16 or part.sum() <= 0:
            continue
        for r in identify_elements(energies_kev, part, detector=det, excitation_kev=excitation_kev, tube_kev=tube_kev,
                                   exclude=exclude, **tags):
            old = found.get(r.name)
            if r.present and (old is None or not old.present):
                found[r.name] = replace(r, reason=r.reason + f" (pixels with little {fams[k].name})")
    ids = sorted(found.values(), key=lambda r: -r.confidence)
    if pixel_evidence:
        ids = _confirm_by_pixels(ids, energies_kev, y, det, excitation_kev, tube_kev, by_name,
                                 _candidate_pool(candidates, exclude, instrument, excitation_kev, energies_kev))
    return ids


def _candidate_pool(candidates, exclude, instrument, excitation_kev, energies_kev) -> list[LineFamily]:
    """The candidate families identification considers (default list, exclusions applied), instrument lines left out."""
    e = np.asarray(energies_kev, dtype=np.float64)
    pool = _filter_candidates(candidates, exclude, excitation_kev, 0.9, e)
    if pool is None:
        pool = excitable_families(e, excitation_kev, 0.9)
    ins = {_family_key(n, excitation_kev) for n in instrument}
    return [f for f in pool if f.name not in ins]


def _confirm_by_pixels(ids, energies_kev, spectra, det, excitation_kev, tube_kev, by_name,
                       pool) -> list[Identification]:
    """Families that need the pixels' evidence get it (:mod:`~napari_nightwatch.xrf.spatial`).

    Sure without the pixels: instrument and included families, and proposed sample
    families that are strong (confidence >= :data:`STRONG_CONFIDENCE`) or whose pattern
    drops the sum spectrum's chi-square by >= :data:`SUM_ONLY_DROP`. Every other sample
    family whose line checks passed is judged by its own map over the pixels: confirmed,
    its confidence is at least the map's; a proposed family without a map of its own is
    held at :data:`HELD_CONFIDENCE` or below.
    """
    from .lines import get_family
    from .spatial import MIN_PIXELS, SPATIAL_Z, sample_pixels, select_by_maps, spatial_confidence

    px = sample_pixels(spectra)
    if px.shape[0] < MIN_PIXELS:
        return ids
    tubes = [] if tube_kev is None else [float(t) for t in np.atleast_1d(tube_kev)]

    def family(name):
        return by_name.get(name) or get_family(name, excitation_kev)

    accepted = [family(r.name) for r in ids if r.trusted]
    # a tube line's own family (Rh-K of an Rh anode) is the scatter terms' job
    accepted = [f for f in accepted if not any(abs(f.main_energy_kev - t) < 0.1 for t in tubes)]
    # an L family needs its excited K lines, an M family its L lines, where the axis has
    # them (K yields are 10-20x the L ones): Mo-L or Nb-L at 2.2-2.3 keV without Mo-K or
    # Nb-K is a misfit of S-K / Pb-M / Hg-M, whatever map it has
    on_axis = {f.name for f in pool} | {r.name for r in ids}
    found_now = {f.name for f in accepted}

    def possible(name):
        el, fam = name.rsplit("-", 1)
        needs = {"L": f"{el}-K", "M": f"{el}-L"}.get(fam)
        return needs is None or needs not in on_axis or needs in found_now

    judged = [r for r in ids if not r.trusted and r.origin == "sample" and r.pattern_ok and r.area > 0
              and possible(r.name)]
    # families the sum spectrum's fit gave no counts at all (S-K beside a strong Pb-M whose
    # M-group ratios are free) are judged too
    listed = {r.name for r in ids}
    for f in pool:
        if f.name in listed or not possible(f.name):
            continue
        judged.append(Identification(f.name, 0.0, 0.0, 0.0, float("nan"), f.main_energy_kev,
                                     "no counts in the sum spectrum's fit"))
        by_name.setdefault(f.name, f)
    if not accepted or not judged:
        return ids
    ids = list(ids) + [r for r in judged if r.name not in listed]
    z = select_by_maps(energies_kev, px, accepted, [family(r.name) for r in judged], detector=det,
                       excitation_kev=excitation_kev, tube_kev=tube_kev)
    out = []
    judged_names = {r.name for r in judged}
    for r in ids:
        zr = z.get(r.name)
        if r.name not in listed and (zr is None or zr < SPATIAL_Z):
            continue  # not in the sum spectrum's fit, and no map of its own either
        if r.name in judged_names and zr is not None:
            r = replace(r, map_z=zr)
            if zr >= SPATIAL_Z:
                r = replace(r, confidence=max(r.confidence, spatial_confidence(zr)),
                            reason=r.reason + f"; a map of its own over the pixels ({zr:.0f} sd beyond the "
                            "families sharing its channels)")
            elif r.present:
                r = replace(r, confidence=min(r.confidence, max(spatial_confidence(zr), HELD_CONFIDENCE)),
                            reason=r.reason + f"; no map of its own over the pixels ({zr:.0f} sd, "
                            f"{SPATIAL_Z:.0f} needed) and the sum spectrum alone is not enough")
        out.append(r)
    return sorted(out, key=lambda r: -r.confidence)
