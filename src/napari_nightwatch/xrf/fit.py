"""Fast per-pixel linear fitting of XRF spectra on line-family templates.

Every spectrum ``y`` (channels in the fit range) is modelled as ``A @ x`` with
``x >= 0``: the columns of ``A`` are the unit-area family templates, the Rayleigh
and Compton scatter peaks and smooth background terms (the continuum shape, the
SNIP background of the mean spectrum and a few wide cubic B-splines), or, with
``background="snip"``, each pixel's own SNIP background is subtracted first.

Least squares is weighted once for the whole cube by the inverse mean spectrum (the
Poisson variance of an average pixel), so the normal matrix ``G = A^T W A`` is shared
by all pixels and the work per pixel is one matrix product ``b = y @ (W A)`` plus a
small non-negative solve. The non-negative solve is an active-set method batched
over pixels: pixels that share the same set of active terms are solved together with
one cached inverse, so there is no Python loop per pixel.

Uncertainties are the Poisson propagation through the linear estimator,
``var(x_k) = sum_e M_ke^2 * model_e`` with ``M = G^-1 A^T W`` (the unconstrained
estimator); reduced chi-square is Pearson's ``sum (y - m)^2 / max(m, 1) / dof``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import NightwatchError
from .background import snip, snip_width_channels
from .lines import LineFamily
from .model import RH_K_KEV, Detector, continuum, family_template, scatter_templates

BACKGROUND_MODES = ("basis", "snip")


#: a pair of families whose areas' errors correlate by at least this much (on the weighted
#: normal matrix) gets a per-pixel error correlation map; uncorrelated pairs are not worth a map
OVERLAP_RHO = 0.05
#: at most this many pairs (the most correlated), to bound the per-pixel cost and the store
MAX_OVERLAP_PAIRS = 24
#: spectra are fitted in sub-batches of about this many bytes of float64 channels (cache-sized)
SUB_BATCH_BYTES = 4e6


@dataclass(eq=False)
class FitModel:
    """The linear model shared by every pixel of a cube (see :func:`build_fit_model`).

    Attributes
    ----------
    energies_kev
        Energy of every channel of the cube (E,).
    families
        The fitted line families, in output order.
    lo, hi
        Fit range as channel indices ``[lo, hi)``.
    design
        (hi - lo, k) columns: families first, then scatter and background terms.
    term_names
        Name of each column.
    weights
        Channel weights (hi - lo,) of the least squares.
    background
        "basis" or "snip".
    snip_width
        SNIP half-window in channels (used when ``background == "snip"``).
    """

    energies_kev: np.ndarray
    families: tuple[LineFamily, ...]
    detector: Detector
    lo: int
    hi: int
    design: np.ndarray
    term_names: tuple[str, ...]
    weights: np.ndarray
    background: str
    snip_width: int
    gram: np.ndarray = field(init=False, repr=False)
    gram_scaled: np.ndarray = field(init=False, repr=False)
    column_scale: np.ndarray = field(init=False, repr=False)
    projector: np.ndarray = field(init=False, repr=False)
    estimator_sq: np.ndarray = field(init=False, repr=False)
    nonneg: np.ndarray = field(init=False, repr=False)
    variance_matrix: np.ndarray = field(init=False, repr=False)
    design_t: np.ndarray = field(init=False, repr=False)
    design_t32: np.ndarray = field(init=False, repr=False)
    overlap_pairs: tuple[tuple[int, int], ...] = field(init=False, repr=False)
    covariance_matrix: np.ndarray = field(init=False, repr=False)
    estimator_cross: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        a = np.asarray(self.design, dtype=np.float64)
        aw = a * self.weights[:, None]
        gram = a.T @ aw
        # Jacobi scaling: unit-area peaks and wide background terms differ by orders of
        # magnitude in weighted norm; solving in scaled units keeps the normal matrix's
        # condition number down to what the overlap of the shapes really costs
        # (non-negativity is unchanged by a positive diagonal scaling).
        d = np.diag(gram)
        if not np.all(d > 0):
            raise NightwatchError("A fit term is zero over the fit range; it cannot be fitted.")
        self.column_scale = 1.0 / np.sqrt(d)
        self.gram = gram
        self.gram_scaled = gram * np.outer(self.column_scale, self.column_scale)
        # float64 so a pixel's right-hand side does not depend on which other pixels share
        # its batch: float32 BLAS sums the channel products in a batch-size-dependent order
        self.projector = aw
        try:
            ginv = np.linalg.inv(gram)
        except np.linalg.LinAlgError as exc:
            raise NightwatchError(
                "The fit terms are linearly dependent on this energy axis (two families with identical lines?)."
            ) from exc
        m = ginv @ aw.T  # (k, E_fit) unconstrained estimator
        self.estimator_sq = m * m
        self.variance_matrix = self.estimator_sq @ a  # (k, k): var = x @ variance_matrix.T
        self.design_t = np.ascontiguousarray(a.T)
        self.design_t32 = self.design_t.astype(np.float32)
        # overlapping families (Pb-L / As-K, S-K / Pb-M / Hg-M, ...): the pairs whose areas'
        # errors are correlated by the fit, judged on the weighted normal matrix; their
        # per-pixel covariance sum_e M_ie M_je expected_e collapses like the variance
        nf = len(self.families)
        dg = np.sqrt(np.diag(ginv)[:nf])
        rho0 = ginv[:nf, :nf] / np.outer(dg, dg)
        cand = [(abs(float(rho0[i, j])), i, j) for i in range(nf) for j in range(i + 1, nf)
                if abs(rho0[i, j]) >= OVERLAP_RHO]
        self.overlap_pairs = tuple(sorted((i, j) for _r, i, j in sorted(cand, reverse=True)[:MAX_OVERLAP_PAIRS]))
        if self.overlap_pairs:
            ii = np.array([p[0] for p in self.overlap_pairs])
            jj = np.array([p[1] for p in self.overlap_pairs])
            self.estimator_cross = m[ii] * m[jj]  # (P, E_fit)
            self.covariance_matrix = self.estimator_cross @ a  # (P, k): cov = x @ covariance_matrix.T
        else:
            self.estimator_cross = np.zeros((0, a.shape[0]))
            self.covariance_matrix = np.zeros((0, a.shape[1]))
        # element families must be >= 0; scatter and smooth background terms are nuisance
        # terms left free, which lets the solver eliminate them exactly (Schur complement)
        self.nonneg = np.arange(a.shape[1]) < len(self.families)

    @property
    def overlap_names(self) -> list[str]:
        """``"A/B"`` for every overlapping pair whose per-pixel error correlation is reported."""
        return [f"{self.families[i].name}/{self.families[j].name}" for i, j in self.overlap_pairs]

    @property
    def condition_number(self) -> float:
        """2-norm condition number of the (Jacobi-scaled) normal matrix the solver works on."""
        return float(np.linalg.cond(self.gram_scaled))

    @property
    def n_families(self) -> int:
        return len(self.families)

    @property
    def family_names(self) -> list[str]:
        return [f.name for f in self.families]

    @property
    def n_terms(self) -> int:
        return self.design.shape[1]

    @property
    def n_channels(self) -> int:
        return int(self.energies_kev.size)

    def describe(self) -> dict:
        """JSON-able description (provenance of maps made with this model)."""
        return {
            "families": self.family_names,
            "terms": list(self.term_names),
            "fit_range_kev": [float(self.energies_kev[self.lo]), float(self.energies_kev[self.hi - 1])],
            "background": self.background,
            "snip_width": int(self.snip_width),
            "detector": {
                "fwhm_mn_ka_ev": self.detector.fwhm_mn_ka_ev,
                "fano": self.detector.fano,
                "escape": self.detector.escape,
            },
        }


def bspline_basis(x: np.ndarray, n: int) -> np.ndarray:
    """(len(x), n) uniform cubic B-splines spanning ``x``: smooth non-negative bumps."""
    from scipy.interpolate import BSpline

    k = 3
    lo, hi = float(x[0]), float(x[-1])
    inner = np.linspace(lo, hi, n - k + 1)
    step = inner[1] - inner[0]
    t = np.concatenate([lo - step * np.arange(k, 0, -1), inner, hi + step * np.arange(1, k + 1)])
    dm = BSpline.design_matrix(np.clip(x, lo, hi), t, k).toarray()
    return dm[:, k : k + n] if dm.shape[1] > n else dm


def smooth_background_basis(shapes: np.ndarray, weights: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """A weighted-orthonormal basis of the span of smooth background shapes.

    The continuum, the mean spectrum's SNIP background and wide B-splines are nearly
    collinear (the splines almost span the other two), which made the normal matrix
    ill-conditioned (condition ~1e5) and the fitted areas sensitive to rounding. The
    background terms are free nuisance terms, so any basis of the same span gives the
    same family areas; an orthonormal one (under the fit weights) costs nothing in
    conditioning. Directions with a singular value below ``rtol`` of the largest carry
    no shape the data could tell apart from the others and are dropped.

    Parameters
    ----------
    shapes
        (channels, m) background shapes over the fit range.
    weights
        (channels,) least-squares weights of the fit.
    rtol
        Relative singular-value cut.

    Returns
    -------
    np.ndarray
        (channels, r) columns ``B`` with ``B^T W B = I``, ``r <= m``.
    """
    sw = np.sqrt(np.asarray(weights, dtype=np.float64))
    u, sv, _ = np.linalg.svd(np.asarray(shapes, dtype=np.float64) * sw[:, None], full_matrices=False)
    keep = sv > rtol * sv[0]
    basis = u[:, keep] / sw[:, None]
    # a sign convention so the basis (and the stored terms) is reproducible across LAPACKs
    signs = np.sign(basis.sum(axis=0))
    signs[signs == 0] = 1.0
    return basis * signs


def build_fit_model(
    energies_kev: np.ndarray,
    families: Sequence[LineFamily],
    *,
    detector: Detector | None = None,
    mean_spectrum: np.ndarray | None = None,
    excitation_kev: float = 50.0,
    background: str = "basis",
    n_background: int = 8,
    min_kev: float | None = None,
    max_kev: float | None = None,
    tube_kev: float | Sequence[float] | None = RH_K_KEV,
    pileup: bool = False,
) -> FitModel:
    """Build the shared linear model for fitting spectra on this energy axis.

    Parameters
    ----------
    energies_kev
        Channel energies of the spectra (E,).
    families
        Line families to fit (at least one).
    detector
        Peak-width/escape model.
    mean_spectrum
        Mean spectrum per pixel (E,): sets the least-squares weights and, for
        ``background="basis"``, adds its SNIP background as a background shape.
    excitation_kev
        Tube voltage, for the continuum shape.
    background
        "basis" (background terms fitted per pixel, fast) or "snip" (each pixel's
        SNIP background subtracted before fitting).
    n_background
        Number of B-spline background terms (basis mode).
    min_kev, max_kev
        Fit range; by default from 0.5 keV below the lowest line of the families to
        just above the highest line or the tube's scatter peaks.
    tube_kev
        Tube line energies for the scatter terms; ``None`` for no scatter terms.
    pileup
        Add sum (pile-up) peaks of the three strongest families in the mean spectrum
        as nuisance terms (count-rate effects of strong lines; needs ``mean_spectrum``).

    Returns
    -------
    FitModel
    """
    det = detector or Detector()
    if background not in BACKGROUND_MODES:
        raise NightwatchError(f"background={background!r} is not one of {BACKGROUND_MODES}.")
    e = np.asarray(energies_kev, dtype=np.float64)
    families = tuple(families)
    if not families:
        raise NightwatchError("No line families to fit; give at least one, e.g. 'Pb-L'.")
    names = [f.name for f in families]
    if len(set(names)) != len(names):
        raise NightwatchError(f"The family list {names} names a family twice.")
    # the family templates check that each main line lies on the axis
    templates = [family_template(f, e, det) for f in families]
    significant = [f.energies_kev[f.intensities > 0.01] for f in families]
    lowest = min(float(s.min()) for s in significant)
    highest = max(float(s.max()) for s in significant)
    tubes = [] if tube_kev is None else [float(t) for t in np.atleast_1d(tube_kev)]
    if min_kev is None:
        min_kev = max(lowest - 0.5, 0.6, float(e[0]))
    if max_kev is None:
        top = highest + 0.6
        in_axis = [t for t in tubes if t + 0.5 <= e[-1]]
        if in_axis:
            top = max(top, max(in_axis) + 0.8)
        max_kev = min(top, float(e[-1]))
    lo = int(np.searchsorted(e, min_kev, side="left"))
    hi = int(np.searchsorted(e, max_kev, side="right"))
    if hi - lo < 16:
        raise NightwatchError(
            f"The fit range {min_kev:.2f}-{max_kev:.2f} keV covers only {hi - lo} channels of the energy axis "
            f"{e[0]:.2f}-{e[-1]:.2f} keV; the axis is too short for the lines asked for."
        )
    cols = [t[lo:hi] for t in templates]
    term_names = list(names)
    if tubes:
        sc = scatter_templates(e, det, tube_kev=tubes)
        labels = [f"rayleigh-{t:.2f}" for t in tubes] + [f"compton-{t:.2f}" for t in tubes]
        for row, label in zip(sc, labels, strict=True):
            part = row[lo:hi]
            if part.sum() > 0.3:  # a scatter peak mostly outside the range cannot be fitted
                cols.append(part)
                term_names.append(label)
    mean = None
    if mean_spectrum is not None:
        mean = np.asarray(mean_spectrum, dtype=np.float64)
        if mean.shape != e.shape:
            raise NightwatchError(
                f"The mean spectrum has {mean.shape} channels; expected {e.shape} like the energy axis."
            )
        if not np.isfinite(mean).all() or (mean < 0).any():
            raise NightwatchError("The mean spectrum contains NaN or negative counts.")
    if mean is not None and mean.sum() > 0:
        # Poisson variance of the average pixel; a small floor keeps empty channels finite
        smooth = np.convolve(mean, np.ones(5) / 5, mode="same")[lo:hi]
        floor = max(1e-3 * float(smooth.max()), 1e-9)
        weights = 1.0 / np.maximum(smooth, floor)
        weights /= weights.mean()
    else:
        weights = np.ones(hi - lo)
    width = snip_width_channels(e, det)
    if background == "basis":
        shapes = []
        cont = continuum(e, excitation_kev)[lo:hi]
        if cont.sum() > 1e-6:
            shapes.append(cont / cont.sum())
        if mean is not None and mean.sum() > 0:
            bg = snip(mean, width=min(width, (hi - lo) // 2 - 1))[lo:hi]
            if bg.sum() > 0:
                shapes.append(bg / bg.sum())
        basis = bspline_basis(e[lo:hi], int(n_background))
        shapes.extend(basis[:, i] / basis[:, i].sum() for i in range(basis.shape[1]))
        smooth_terms = smooth_background_basis(np.stack(shapes, axis=1), weights)
        for i in range(smooth_terms.shape[1]):
            cols.append(smooth_terms[:, i])
            term_names.append(f"background-{i}")
    if pileup and mean is not None and mean.sum() > 0:
        from .model import pileup_template

        # strongest families in the mean spectrum, from a quick fit (families >= 0)
        a0 = np.stack(cols, 1)
        fam_mask = np.arange(a0.shape[1]) < len(families)
        trial = batched_nnls(a0.T @ (a0 * weights[:, None]), ((mean[lo:hi] * weights) @ a0)[None], fam_mask)[0]
        top = [int(i) for i in np.argsort(-trial[: len(families)])[:3] if trial[i] > 0]
        for i, ti in enumerate(top):
            for tj in top[i:]:
                t = pileup_template(families[ti], families[tj], e, det)[lo:hi]
                if t.sum() > 0.3:
                    cols.append(t / t.sum())
                    term_names.append(f"pileup-{families[ti].name}+{families[tj].name}")
    design = np.stack(cols, axis=1)
    return FitModel(e, families, det, lo, hi, design, tuple(term_names), weights, background, width)


# ---------------------------------------------------------------- batched non-negative solve
def _masked_solve(g: np.ndarray, b: np.ndarray, passive: np.ndarray) -> np.ndarray:
    """Solve ``G_PP x_P = b_P`` (``x = 0`` outside P) for every row with its own set P.

    One batched LAPACK call: the inactive rows/columns of each row's matrix are
    replaced by the identity, so all systems share one shape.
    """
    k = g.shape[0]
    pp = passive[:, :, None] & passive[:, None, :]
    m = np.where(pp, g[None], 0.0)
    idx = np.arange(k)
    m[:, idx, idx] = np.where(passive, np.diag(g)[None], 1.0)
    return np.linalg.solve(m, np.where(passive, b, 0.0)[..., None])[..., 0]


def _nnls_all_constrained(g: np.ndarray, b: np.ndarray, max_iter: int) -> np.ndarray:
    """Batched Lawson-Hanson NNLS on the normal equations, warm-started.

    Phase 1 drops negative terms from the unconstrained solution until every row is
    feasible (cheap, and usually already the answer). Phase 2 is Lawson-Hanson from that
    feasible point: re-admit the inactive term with the largest gradient, and when the
    new solution turns a term negative, step only as far as stays feasible and drop the
    term that hits zero. Each step is one batched solve over the rows concerned.
    """
    n, k = b.shape
    x = b @ np.linalg.inv(g)
    passive = np.ones((n, k), dtype=bool)
    for _ in range(k + 1):  # phase 1: the passive set shrinks each time, so <= k rounds
        neg = (x < 0) & passive
        bad = np.flatnonzero(neg.any(axis=1))
        if bad.size == 0:
            break
        passive[bad] &= ~neg[bad]
        x[bad] = _masked_solve(g, b[bad], passive[bad])
    x = np.where(passive, np.clip(x, 0.0, None), 0.0)
    diag = np.diag(g)
    scale = np.maximum(np.abs(b).max(axis=1), 1.0) ** 2
    for _ in range(max_iter):  # phase 2: Lawson-Hanson outer loop
        grad = b - x @ g
        gain = np.where(~passive & (grad > 0), grad * grad / diag, 0.0)
        cand = gain > 1e-12 * scale[:, None]
        rows = np.flatnonzero(cand.any(axis=1))
        if rows.size == 0:
            break
        j = np.argmax(np.where(cand[rows], gain[rows], -1.0), axis=1)
        passive[rows, j] = True
        for _inner in range(k + 1):
            z = _masked_solve(g, b[rows], passive[rows])
            xr, pr = x[rows], passive[rows]
            neg = pr & (z <= 0)
            has_neg = neg.any(axis=1)
            done = ~has_neg
            x[rows[done]] = np.where(pr[done], z[done], 0.0)
            if not has_neg.any():
                break
            r = rows[has_neg]
            xr, zr, nr = xr[has_neg], z[has_neg], neg[has_neg]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(nr, xr / (xr - zr), np.inf)
            alpha = np.clip(ratio.min(axis=1, keepdims=True), 0.0, 1.0)
            xn = xr + alpha * (zr - xr)
            hit = passive[r] & ((xn <= 1e-12 * np.abs(xr).max(axis=1, keepdims=True)) | (nr & (ratio <= alpha)))
            passive[r] &= ~hit
            x[r] = np.where(passive[r], np.clip(xn, 0.0, None), 0.0)
            rows = r
    return np.clip(x, 0.0, None)


def batched_nnls(
    gram: np.ndarray,
    rhs: np.ndarray,
    nonneg: np.ndarray | None = None,
    *,
    max_iter: int | None = None,
) -> np.ndarray:
    """Solve ``min 1/2 x^T G x - b^T x`` with ``x_j >= 0`` for constrained j, many ``b`` at once.

    Free terms are eliminated first (Schur complement), so the active-set loop only
    sees the constrained ones. The active-set loop starts from the unconstrained
    solution, drops terms that come out negative, re-admits the inactive term whose
    gradient says it would lower the cost most (the KKT condition) and repeats; each
    step is one batched solve over the rows that changed, with no loop per row.

    Parameters
    ----------
    gram
        (k, k) symmetric positive-definite matrix ``A^T W A``.
    rhs
        (n, k) right-hand sides ``A^T W y``.
    nonneg
        (k,) bool, True for terms constrained to be >= 0 (default: all).
    max_iter
        Iteration cap (default ``3 k``); the constrained result is clipped to ``>= 0``.

    Returns
    -------
    np.ndarray
        (n, k) solutions.
    """
    g = np.asarray(gram, dtype=np.float64)
    b = np.atleast_2d(np.asarray(rhs, dtype=np.float64))
    k = g.shape[0]
    con = np.ones(k, bool) if nonneg is None else np.asarray(nonneg, bool)
    c = np.flatnonzero(con)
    f = np.flatnonzero(~con)
    max_iter = 3 * k if max_iter is None else int(max_iter)
    x = np.zeros_like(b)
    if f.size == 0:
        return _nnls_all_constrained(g, b, max_iter)
    gff_inv = np.linalg.inv(g[np.ix_(f, f)])
    if c.size == 0:
        x[:, f] = b[:, f] @ gff_inv
        return x
    g_cf = g[np.ix_(c, f)]
    coupling = gff_inv @ g_cf.T  # (f, c)
    schur = g[np.ix_(c, c)] - g_cf @ coupling
    b_c = b[:, c] - b[:, f] @ coupling
    xc = _nnls_all_constrained(schur, b_c, max_iter)
    x[:, c] = xc
    x[:, f] = (b[:, f] - xc @ g_cf) @ gff_inv
    return x


# ---------------------------------------------------------------- fitting spectra
@dataclass
class SpectraFit:
    """Result of :func:`fit_spectra` for n spectra.

    Attributes
    ----------
    areas
        (n, n_families) fitted counts per family (NaN for masked spectra).
    uncertainty
        (n, n_families) standard uncertainty of the areas (counts).
    chi2
        (n,) reduced chi-square.
    terms
        (n, k) every fitted coefficient (families, scatter, background).
    valid
        (n,) False where the spectrum was masked (NaN, infinite or negative counts).
    correlation
        (n, P) correlation of the area errors of each overlapping pair
        (``model.overlap_pairs``, e.g. Pb-L / As-K): near -1, the fit cannot tell the two
        apart in that pixel; near 0, they are separated.
    """

    areas: np.ndarray
    uncertainty: np.ndarray
    chi2: np.ndarray
    terms: np.ndarray
    valid: np.ndarray
    correlation: np.ndarray | None = None


def fit_spectra(spectra: np.ndarray, model: FitModel, *, max_iter: int | None = None) -> SpectraFit:
    """Fit many spectra at once (no loop per spectrum).

    Parameters
    ----------
    spectra
        (n, E) or (E,) counts on the model's energy axis. Spectra with NaN, infinite
        or negative counts are masked (NaN results), not fatal.
    model
        From :func:`build_fit_model`.
    max_iter
        Active-set iteration cap (see :func:`batched_nnls`).

    Returns
    -------
    SpectraFit
    """
    y_all = np.asarray(spectra)
    single = y_all.ndim == 1
    y_all = np.atleast_2d(y_all)
    if y_all.shape[-1] != model.n_channels:
        raise NightwatchError(
            f"The spectra have {y_all.shape[-1]} channels but the fit model expects {model.n_channels}."
        )
    # the per-channel passes after the solve (fitted spectrum, residual, chi-square) are
    # memory-bound: in sub-batches of ~4 MB of float64 they stay in cache (1.5x faster on
    # 4096 spectra here). Every step is per spectrum, so the results do not change.
    rows = max(64, int(SUB_BATCH_BYTES // (8 * (model.hi - model.lo))))
    if y_all.shape[0] > rows:
        parts = [fit_spectra(y_all[i : i + rows], model, max_iter=max_iter) for i in range(0, y_all.shape[0], rows)]
        corr = None if parts[0].correlation is None else np.concatenate([p.correlation for p in parts])
        return SpectraFit(*(np.concatenate([getattr(p, f) for p in parts])
                            for f in ("areas", "uncertainty", "chi2", "terms", "valid")), corr)
    y = np.ascontiguousarray(y_all[:, model.lo : model.hi], dtype=np.float32)
    with np.errstate(invalid="ignore"):
        # NaN >= 0 is False, so this one pass catches NaN and negative counts
        valid = (y >= 0).all(axis=1)
    bg = None
    if model.background == "snip":
        # SNIP only needs its window beyond the fit range, not the whole axis
        w = model.snip_width
        a, b = max(model.lo - 2 * w, 0), min(model.hi + 2 * w, y_all.shape[1])
        part = np.asarray(y_all[:, a:b], dtype=np.float32)
        if not valid.all():
            part = np.where(valid[:, None], np.nan_to_num(part, nan=0.0, posinf=0.0), 0.0).astype(np.float32)
        bg = snip(part, width=min(w, (b - a - 1) // 2))[:, model.lo - a : model.hi - a].astype(np.float32)
        target = y - bg
    else:
        target = y
    # float64 accumulation: the result of a pixel must not depend on its batch (see FitModel)
    rhs = target.astype(np.float64) @ model.projector
    valid &= np.isfinite(rhs).all(axis=1)  # +inf counts
    if not valid.all():
        rhs[~valid] = 0.0
        target = np.where(valid[:, None], target, 0.0).astype(np.float32)
        if bg is not None:
            bg = np.where(valid[:, None], bg, 0.0).astype(np.float32)
    # solve in Jacobi-scaled units (x = D z), then back to counts
    scale = model.column_scale
    x = batched_nnls(model.gram_scaled, rhs * scale, model.nonneg, max_iter=max_iter) * scale
    # Poisson propagation var(x_k) = sum_e M_ke^2 * expected_e, with expected = A x (+ bg):
    # the A x part collapses to a (k, k) matrix, so it costs nothing per channel
    var = x @ model.variance_matrix.T
    if bg is not None:
        var += bg.astype(np.float64) @ model.estimator_sq.T
    np.clip(var, 0.0, None, out=var)
    corr = None
    if model.overlap_pairs:
        cov = x @ model.covariance_matrix.T
        if bg is not None:
            cov += bg.astype(np.float64) @ model.estimator_cross.T
        ii = [p[0] for p in model.overlap_pairs]
        jj = [p[1] for p in model.overlap_pairs]
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.clip(cov / np.sqrt(var[:, ii] * var[:, jj]), -1.0, 1.0)
    # chi-square in float32 (half the memory traffic of these per-channel passes): a
    # goodness-of-fit figure needs ~1e-5 relative precision, not the areas' float64
    work = x.astype(np.float32) @ model.design_t32  # (n, E_fit) fitted, then reused in place
    denom = np.add(work, bg) if bg is not None else work.copy()
    np.maximum(denom, 1.0, out=denom)
    np.subtract(target, work, out=work)
    np.multiply(work, work, out=work)
    np.divide(work, denom, out=work)
    n_active = (x[:, : model.n_families] > 0).sum(axis=1) + (model.n_terms - model.n_families)
    dof = np.maximum(model.hi - model.lo - n_active, 1)
    chi2 = work.sum(axis=1) / dof
    nf = model.n_families
    areas = x[:, :nf].copy()
    sigma = np.sqrt(var[:, :nf])
    areas[~valid] = np.nan
    sigma[~valid] = np.nan
    chi2 = chi2.astype(np.float64)
    chi2[~valid] = np.nan
    x[~valid] = np.nan
    if corr is not None:
        corr[~valid] = np.nan
    if single:
        return SpectraFit(areas[0], sigma[0], chi2[:1], x[0], valid[:1], None if corr is None else corr[0])
    return SpectraFit(areas, sigma, chi2, x, valid, corr)


def fit_block(block: np.ndarray, model: FitModel, with_correlation: bool = False) -> np.ndarray:
    """Fit one (..., E) block of a cube; returns (..., 2 * n_families + 1 [+ P]) float32.

    The last axis holds the areas, then their uncertainties, then reduced chi-square, then
    (``with_correlation``) the error correlation of each of the model's ``overlap_pairs``.
    """
    shape = block.shape[:-1]
    res = fit_spectra(np.asarray(block).reshape(-1, block.shape[-1]), model)
    parts = [res.areas, res.uncertainty, res.chi2[:, None]]
    if with_correlation and res.correlation is not None:
        parts.append(res.correlation)
    out = np.concatenate(parts, axis=1).astype(np.float32)
    return out.reshape(shape + (out.shape[-1],))


def fit_cube(cube, model: FitModel):
    """Lazy per-pixel fit of a (y, x, E) cube with dask ``map_blocks``.

    Parameters
    ----------
    cube
        numpy or dask array (y, x, E); re-chunked so each block holds whole spectra.
    model
        From :func:`build_fit_model`.

    Returns
    -------
    dask.array.Array
        (y, x, 2 * n_families + 1) float32: areas, uncertainties, reduced chi-square.
        Memory while computing is bounded by the block size times the workers.
    """
    import dask.array as da

    arr = cube if isinstance(cube, da.Array) else da.from_array(cube, chunks=(64, 64, -1))
    if arr.ndim != 3:
        raise NightwatchError(f"An MA-XRF cube must be (y, x, energy); got {arr.ndim} dimensions.")
    arr = arr.rechunk({2: -1})
    n_out = 2 * model.n_families + 1
    return arr.map_blocks(
        fit_block, model, dtype=np.float32, chunks=arr.chunks[:2] + ((n_out,),), meta=np.empty((0, 0, 0), np.float32)
    )


__all__ = [
    "BACKGROUND_MODES",
    "FitModel",
    "SpectraFit",
    "batched_nnls",
    "build_fit_model",
    "fit_block",
    "fit_cube",
    "fit_spectra",
]
