"""Identification evidence from a cube's pixels: does a family have a map of its own?

A sum spectrum cannot tell a weak element from a change in the line ratios of the strong
families around it: As-K (10.54 / 11.73 keV) under Pb-L alpha and Hg-L beta, P-K under
Ca-K's escape peak, or a 1 % misfit of Hg-L beta posing as Br-K. Line ratios that are
wrong by a constant factor (the table, thick-paint absorption in an average matrix) make
residuals whose map is the map of the family whose lines they belong to. A pigment
element has a map of its own (smalt's arsenic follows the blue, not the lead white).

So the pixels are fitted with the accepted families, and the residual of every channel is
regressed on the maps of the terms that reach that channel (each family's and scatter
peak's fitted areas, where its template is non-negligible, and a constant): a line-ratio
correction of any of them, constant over the painting, is absorbed that way. A candidate
family is then fitted pixel by pixel to what is left, and its chi-square drop over all
pixels is compared with what noise alone gives (a non-negative amplitude per pixel:
n/2 on average, standard deviation sqrt(1.25 n)). The candidates are taken in forward
selection (the largest drop first, refitting after each) and every family kept this way is
checked again with all the others kept (leave one out).

What this cannot see, by construction: an element whose map equals the map of a family
sharing its channels (the sulphur of vermilion under Hg-M). The sum spectrum has to carry
such a family alone (:data:`~napari_nightwatch.xrf.identify.SUM_ONLY_DROP`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .lines import LineFamily
from .model import Detector, lines_spectrum

#: drop of a family's own map, in standard deviations of the noise-only drop, at which the
#: pixels confirm it (confidence 0.5 there, 0.75 at twice, 0.875 at three times). On the
#: independent generator (2304 pixels) the phantoms left after the sum-spectrum pass reach
#: 24-29 and the weakest painted families 127 (P-K) and over 1000 (As-K, Sn-L, Pb-M, Hg-M)
SPATIAL_Z = 50.0
#: the test uses at most this many pixel spectra (a seeded random sample): the drop of a
#: map grows with the number of pixels, so the threshold above is for a few thousand
MAX_PIXELS = 4096
#: fewer pixel spectra than this: no pixel evidence (the sum spectrum decides alone)
MIN_PIXELS = 256
#: least correlation over the pixels between the map of a family's main line group and the
#: map of its other lines for its map to count (see :func:`map_drops`)
MIN_LINE_CONSISTENCY = 0.5


def spatial_confidence(z: float) -> float:
    """Confidence 0..1 of a family whose own map drops chi-square by ``z`` noise standard deviations."""
    return float(1.0 - 0.5 ** (max(z, 0.0) / SPATIAL_Z))


def sample_pixels(spectra: np.ndarray, max_pixels: int = MAX_PIXELS, seed: int = 0) -> np.ndarray:
    """The valid rows of ``spectra`` (no NaN/negative counts), at most ``max_pixels`` of them (seeded sample)."""
    y = np.asarray(spectra)
    with np.errstate(invalid="ignore"):
        y = y[(y >= 0).all(axis=1)]
    if y.shape[0] > max_pixels:
        keep = np.sort(np.random.default_rng(seed).choice(y.shape[0], max_pixels, replace=False))
        y = y[keep]
    return np.asarray(y, dtype=np.float64)


def _dilate(mask: np.ndarray, pad: int) -> np.ndarray:
    return np.convolve(mask.astype(np.float64), np.ones(2 * pad + 1), mode="same") > 0.5


def map_drops(
    energies_kev: np.ndarray,
    spectra: np.ndarray,
    accepted: Sequence[LineFamily],
    candidates: Sequence[LineFamily],
    *,
    detector: Detector,
    excitation_kev: float,
    tube_kev,
    templates: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Drop of each candidate's own map beyond the accepted families, in noise standard deviations.

    Parameters
    ----------
    energies_kev
        Channel energies (E,).
    spectra
        (n, E) valid pixel spectra (see :func:`sample_pixels`).
    accepted
        Families fitted to every pixel first (at least one).
    candidates
        Families to judge (not in ``accepted``).
    detector, excitation_kev, tube_kev
        As for :func:`~napari_nightwatch.xrf.fit.build_fit_model`.
    templates
        Optional cache ``{name: template on the whole axis}``, filled as needed.

    Returns
    -------
    dict
        ``{name: z}`` for every candidate with most of its lines inside the fit range;
        at most 0 where the maps of its main line group and of its other lines disagree
        (correlation < :data:`MIN_LINE_CONSISTENCY`).
    """
    from .fit import build_fit_model, fit_spectra

    e = np.asarray(energies_kev, dtype=np.float64)
    y = np.asarray(spectra, dtype=np.float64)
    n = y.shape[0]
    lowest = min(float(np.min(f.energies_kev[f.intensities > 0.01])) for f in [*accepted, *candidates])
    min_kev = max(lowest - 0.5, 0.6, float(e[0]))
    model = build_fit_model(e, list(accepted), detector=detector, mean_spectrum=y.mean(axis=0),
                            excitation_kev=excitation_kev, tube_kev=tube_kev, min_kev=min_kev)
    lo, hi = model.lo, model.hi
    fit = fit_spectra(y, model)
    terms = np.nan_to_num(fit.terms)
    fitted = terms @ model.design.T
    resid = y[:, lo:hi] - fitted
    # line-ratio corrections: each channel's residual regressed on the maps of the family
    # and scatter terms that reach it (2 FWHM around where their template is > 0.1 % of its
    # peak) and a constant; the smooth background terms reach everywhere and are left out
    step = float(np.median(np.diff(e)))
    pad = int(2.0 * float(detector.fwhm_kev(10.0)) / step) + 1
    idx = [i for i, name in enumerate(model.term_names) if not name.startswith("background")]
    design = model.design[:, idx]
    maps = terms[:, idx]
    reach = np.stack([_dilate(design[:, k] > 1e-3 * design[:, k].max(), pad) for k in range(len(idx))], axis=1)
    # channels reached by the same terms share one regression (normal equations of the
    # constant and those maps, from one Gram matrix of all maps)
    groups: dict[bytes, list[int]] = {}
    for c in range(hi - lo):
        groups.setdefault(reach[c].tobytes(), []).append(c)
    basis = np.concatenate([np.ones((n, 1)), maps], axis=1)
    scale = np.maximum(np.abs(basis).max(axis=0), 1e-12)
    basis = basis / scale  # comparable columns: the small solves stay well conditioned
    gram = basis.T @ basis
    cross = basis.T @ resid
    for key, chans in groups.items():
        use = np.concatenate([[0], 1 + np.flatnonzero(np.frombuffer(key, dtype=bool))])
        g = gram[np.ix_(use, use)]
        coef = np.linalg.lstsq(g, cross[np.ix_(use, chans)], rcond=1e-10)[0]
        corr = basis[:, use] @ coef
        resid[:, chans] -= corr
        fitted[:, chans] += corr
    # Poisson weights of the expected counts (the fit plus the ratio corrections): then noise
    # alone gives each pixel's drop the distribution of max(N(0,1), 0)^2 (mean 1/2,
    # variance 5/4), whatever the counts
    w = 1.0 / np.maximum(fitted, 1.0)
    # the fit has already taken the part of a candidate's template that its own columns can
    # make (As-K alpha under Pb-L alpha): the residual's noise along the template is smaller
    # by the fraction of the template's weighted norm that the design can reproduce, so the
    # drop is scaled by what is left (then noise alone gives the null distribution above)
    w0 = model.weights
    gram_inv = np.linalg.pinv(model.design.T @ (model.design * w0[:, None]))
    names, cols, frees = [], [], []
    for f in candidates:
        full = _template(templates, f.name, f, e, detector)
        t = full[lo:hi]
        if full.sum() <= 0 or t.sum() < 0.5 * full.sum():
            continue
        proj = model.design.T @ (w0 * t)
        free = 1.0 - float(proj @ gram_inv @ proj) / float(t @ (w0 * t))
        if free < 1e-3:
            continue  # the accepted terms make this template: nothing of its own can show
        t = _unit_column(t)
        names.append(f.name)
        cols.append(t)
        frees.append(free)
    if not names:
        return {}
    # every candidate at once: per pixel, the weighted amplitude of its template in what is left
    tmat = np.stack(cols, axis=1)  # (channels, candidates)
    tw = (w @ tmat**2) * np.asarray(frees)[None, :]
    amp = ((resid * w) @ tmat) / tw
    z = _noise_z(amp, tw, n)
    # an L or M family whose lines split into a main group and others (L-alpha / L-beta)
    # must have the same map in both: residuals of thick-paint matrix effects under
    # Pb-L / Hg-L have a map at one line and another (or none) at the next. On the
    # independent generator every phantom with a map agreed at <= 0.32 (Au-L -0.40 with
    # map_z 72 on a 128 x 128 cube); painted families with two resolved groups, 0.85-0.98
    cons = _line_consistency(names, candidates, e, detector, lo, hi, resid, w, templates)
    for i, name in enumerate(names):
        if cons.get(name) is not None and cons[name] < MIN_LINE_CONSISTENCY:
            z[i] = min(z[i], 0.0)
    return {name: float(v) for name, v in zip(names, z, strict=True)}


def _template(templates: dict | None, key: str, fam, e: np.ndarray, detector, lines=None) -> np.ndarray:
    """A family's (or some of its lines') spectrum on the whole axis, from the cache ``templates`` if given."""
    full = templates.get(key) if templates is not None else None
    if full is None:
        full = lines_spectrum(fam, e, detector, lines)
        if templates is not None:
            templates[key] = full
    return full


def _unit_column(t: np.ndarray) -> np.ndarray:
    """A template as a fit column: unit sum, channels below 0.1 % of its peak set to 0."""
    return np.where(t > 1e-3 * max(t.max(), 1e-300), t / max(t.sum(), 1e-300), 0.0)


def _noise_z(amp: np.ndarray, tw: np.ndarray, n: int):
    """z of the summed per-pixel drops ``max(amp, 0)^2 tw`` (axis 0) against noise alone
    (mean n/2, variance 5n/4: see :func:`map_drops`)."""
    return (np.sum(np.maximum(amp, 0.0) ** 2 * tw, axis=0) - 0.5 * n) / np.sqrt(1.25 * n)


def _line_consistency(names, candidates, e, detector, lo, hi, resid, w, templates) -> dict[str, float | None]:
    """Per candidate, the correlation over pixels of its main group's map and its other lines' map
    (``None`` where fewer than 10 % of its intensity lies outside the main group, or where the
    other lines' map is indistinguishable from noise)."""
    by_name = {f.name: f for f in candidates}
    cols, owners = [], []
    out: dict[str, float | None] = {}
    for name in names:
        f = by_name[name]
        ec, wt = np.asarray(f.energies_kev), np.asarray(f.intensities)
        main = np.abs(ec - f.main_energy_kev) <= float(detector.fwhm_kev(f.main_energy_kev))
        # L and M families only: their groups lie keV apart (L-alpha 9.7, L-beta 11.4, L-gamma
        # 13.4 keV for Au), each a map of its own; a K-beta sits 0.1-1 keV above K-alpha and,
        # for light elements, under heavy elements' M lines, whose misfit then decides its
        # "map" (S K-beta under Hg-M / Pb-M disagreed with S K-alpha on 128 x 128 cubes)
        if f.family == "K" or main.all() or wt[~main].sum() < 0.1 * wt.sum():
            out[name] = None
            continue
        for part, sel in (("main", main), ("rest", ~main)):
            cols.append(_unit_column(_template(templates, f"{name}/{part}", f, e, detector, sel)[lo:hi]))
        owners.append(name)
    if not owners:
        return out
    tmat = np.stack(cols, axis=1)
    tw = w @ tmat**2
    amp = ((resid * w) @ tmat) / np.maximum(tw, 1e-300)
    n = resid.shape[0]
    for k, name in enumerate(owners):
        a, b = amp[:, 2 * k], amp[:, 2 * k + 1]
        # where the other lines' map is noise alone (a weak K-beta: S-K's), it cannot
        # contradict the main one: no verdict
        z_rest = _noise_z(b, tw[:, 2 * k + 1], n)
        if z_rest < 3.0 or a.std() == 0 or b.std() == 0:
            out[name] = None
            continue
        out[name] = float(np.corrcoef(a, b)[0, 1])
    return out


def select_by_maps(
    energies_kev: np.ndarray,
    spectra: np.ndarray,
    accepted: Sequence[LineFamily],
    candidates: Sequence[LineFamily],
    **kw,
) -> dict[str, float]:
    """Forward selection of candidates by their own maps, then a leave-one-out check.

    Parameters
    ----------
    energies_kev, spectra, accepted, candidates, kw
        As for :func:`map_drops`.

    Returns
    -------
    dict
        ``{name: z}``: for candidates kept, their leave-one-out drop (the others kept
        fitted); for the rest, the drop they showed when last judged.
    """
    kw.setdefault("templates", {})
    kept: list[LineFamily] = []
    rest = list(candidates)
    seen: dict[str, float] = {}
    if not accepted or not rest:
        return seen
    while rest:
        z = map_drops(energies_kev, spectra, [*accepted, *kept], rest, **kw)
        if not z:
            break
        seen.update(z)
        best = max(z, key=z.get)
        if z[best] < SPATIAL_Z:
            break
        kept += [f for f in rest if f.name == best]
        rest = [f for f in rest if f.name != best]
    for f in kept:
        others = [g for g in kept if g.name != f.name]
        seen.update(map_drops(energies_kev, spectra, [*accepted, *others], [f], **kw))
    return seen


__all__ = ["MAX_PIXELS", "MIN_PIXELS", "SPATIAL_Z", "map_drops", "sample_pixels", "select_by_maps",
           "spatial_confidence"]
