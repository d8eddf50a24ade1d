"""An independent MA-XRF cube generator, with physics deliberately unlike ``xrf.lines``/``xrf.model``.

The engine is otherwise only ever judged on spectra made by its own forward model. This
generator shares nothing with it but xraydb's raw tables, and differs on purpose:

* **line ratios**: xraydb's per-subshell branching ratios, but the vacancy share of each
  subshell comes from a fixed textbook table (no jump-ratio split, no Coster-Kronig),
  times xraydb's fluorescence yield; M families get an Mzeta group (M4-N2, M5-N3) that
  xraydb lacks; then every family's groups (K-beta against K-alpha, each L and M subshell
  against the strongest) are scaled by a seeded random factor in [0.7, 1.3];
* **thick sample**: each pixel is a mixture of 8 pigments in an oil binder; every line is
  self-absorbed in that pixel's own matrix (xraydb mass attenuation), so K-beta/K-alpha
  and L-beta/L-alpha change from pixel to pixel;
* **polychromatic tube**: a 40 kV Rh tube (Kramers continuum through a Be window plus the
  Rh K lines) excites each subshell with what lies above its own edge, and is scattered
  (Rayleigh + Compton, with Doppler broadening) into the spectrum as its background;
* **detector**: Be window, Si dead layer, finite Si thickness and an air path set the
  efficiency; Gaussian peaks sampled at channel centres (not integrated) with the
  generator's own noise and Fano factor; Si escape peaks;
* **calibration**: the true calibration differs from the nominal one given to the fitter.

:func:`make_cube` returns the counts, the per-pixel truth (expected counts of each family
at the detector) and :func:`oracle_fit`, a linear least-squares fit with the generator's own
templates (lines of the cube's mean matrix, exact detector, calibration and scatter
shapes): the best a template fit can do on these data.

Importable from tests and benchmarks (``sys.path`` must hold the ``tests`` folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: pigments as element mass fractions (the rest is light matrix: O, C)
PIGMENTS: dict[str, dict[str, float]] = {
    "lead white": {"Pb": 0.80},
    "smalt": {"K": 0.10, "Co": 0.07, "As": 0.05},
    "vermilion": {"Hg": 0.862, "S": 0.138},
    "gypsum": {"Ca": 0.233, "S": 0.186},
    "umber": {"Fe": 0.35, "Mn": 0.10},
    "azurite": {"Cu": 0.55},
    "lead-tin yellow": {"Pb": 0.66, "Sn": 0.19},
    "bone black": {"Ca": 0.27, "P": 0.125},
}
#: the painted line families (12 elements) and what the generator emits
FAMILIES = (
    "P-K", "Pb-M", "Hg-M", "S-K", "K-K", "Sn-L", "Ca-K", "Mn-K", "Fe-K", "Co-K", "Cu-K", "Hg-L", "As-K", "Pb-L",
)
ELEMENTS = tuple(sorted({e for p in PIGMENTS.values() for e in p}))
#: textbook vacancy shares per subshell (no Coster-Kronig): deliberately not lines.py's rule
_SUBSHELL_SHARE = {"K": 1.0, "L1": 0.15, "L2": 0.30, "L3": 0.55,
                   "M1": 0.04, "M2": 0.08, "M3": 0.18, "M4": 0.30, "M5": 0.40}
_FAMILY_SHELLS = {"K": ("K",), "L": ("L1", "L2", "L3"), "M": ("M1", "M2", "M3", "M4", "M5")}
TUBE_KV = 40.0
RH_LINES_KEV = ((20.216, 1.0), (20.074, 0.5), (22.724, 0.25))
#: true detector: electronic noise FWHM (keV) and Fano factor (unlike the fitter's default)
NOISE_FWHM_KEV = 0.065
FANO = 0.125
TRUE_OFFSET_KEV, TRUE_GAIN_KEV = -0.020, 0.01150
#: what the fitter is told: 8 eV and 0.09 % off (about 25 eV at 20 keV)
NOMINAL_OFFSET_KEV, NOMINAL_GAIN_KEV = -0.012, 0.011510
N_CHANNELS = 2048
_COMPTON_ANGLE_DEG = 110.0
_E0 = np.arange(1.0, TUBE_KV, 0.25)  # excitation grid (keV)
_E0_SCATTER = np.arange(1.0, TUBE_KV, 0.02)  # scatter grid: finer than a peak width, so no ripple


@dataclass
class IndependentCube:
    """A cube of the independent generator with its ground truth.

    Attributes
    ----------
    cube
        (ny, nx, E) float32 Poisson counts.
    energies_kev
        Nominal channel energies (what a user's file would say).
    true_energies_kev
        The generator's true channel energies.
    families
        Family names, e.g. ``"Pb-L"`` (truth columns in this order).
    truth
        (ny, nx, F) expected counts of each family at the detector (escape peaks included).
    amounts
        (ny, nx, n_elements) element mass fractions; order :data:`ELEMENTS`.
    lines
        Per family: (energies keV, relative intensities in the mean matrix, subshell names).
    templates
        (F, E) the generator's own unit-area family templates (mean matrix, true axis).
    scatter
        (S, E) unit-area scatter/background shapes (Rayleigh, Compton, tube continuum).
    ratio_factors
        Per family: the random factor applied to each line group.
    """

    cube: np.ndarray
    energies_kev: np.ndarray
    true_energies_kev: np.ndarray
    families: tuple[str, ...]
    truth: np.ndarray
    amounts: np.ndarray
    lines: dict[str, tuple[np.ndarray, np.ndarray, tuple[str, ...]]]
    templates: np.ndarray
    scatter: np.ndarray
    ratio_factors: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def spectra(self) -> np.ndarray:
        return self.cube.reshape(-1, self.cube.shape[-1])

    @property
    def truth_flat(self) -> np.ndarray:
        return self.truth.reshape(-1, self.truth.shape[-1])


def _line_table(element: str, family: str) -> list[tuple[str, str, float, float]]:
    """(group, subshell, energy keV, branching x yield x share) of the family's lines."""
    import xraydb

    edges = xraydb.xray_edges(element)
    out = []
    for shell in _FAMILY_SHELLS[family]:
        if shell not in edges or edges[shell].energy / 1000.0 > TUBE_KV:
            continue
        fy = max(float(edges[shell].fyield), 1e-4)
        for name, line in xraydb.xray_lines(element, shell).items():
            w = float(line.intensity) * fy * _SUBSHELL_SHARE[shell]
            if w <= 0 or line.energy < 800.0:
                continue
            group = ("Ka" if name.startswith("Ka") else "Kb") if family == "K" else shell
            out.append((group, shell, line.energy / 1000.0, w))
        if family == "M" and shell in ("M4", "M5"):
            # Mzeta (M4-N2, M5-N3): missing from xraydb, ~8 % of the M lines in Scofield's rates
            lower = "N2" if shell == "M4" else "N3"
            if lower in edges:
                e_z = (edges[shell].energy - edges[lower].energy) / 1000.0
                main = sum(x[3] for x in out if x[1] == shell)
                out.append((shell, shell, e_z, 0.09 * main))
    return out


def _sigma_kev(e_kev: np.ndarray) -> np.ndarray:
    fwhm = np.sqrt(NOISE_FWHM_KEV**2 + 2.3548**2 * FANO * 3.85e-3 * np.clip(e_kev, 0, None))
    return fwhm / 2.3548


def _escape_fraction(e_kev: np.ndarray) -> np.ndarray:
    """Reed-Ware Si escape fraction, coded here from xraydb (not model.py's)."""
    import xraydb

    e = np.asarray(e_kev, float)
    edge = xraydb.xray_edge("Si", "K")
    r = float(xraydb.mu_elam("Si", 1740.0)) / np.asarray(xraydb.mu_elam("Si", np.clip(e, 1.0, None) * 1000.0))
    f = 0.5 * edge.fyield * (1 - 1 / edge.jump_ratio) * (1 - r * np.log1p(1 / r))
    return np.where(e > 1.839, f, 0.0)


def _peaks(e_axis: np.ndarray, centres: np.ndarray, areas: np.ndarray, sigmas: np.ndarray | None = None) -> np.ndarray:
    """(P, E) Gaussians sampled at channel centres times channel width (not integrated)."""
    s = _sigma_kev(centres) if sigmas is None else sigmas
    gain = np.gradient(e_axis)
    z = (e_axis[None, :] - centres[:, None]) / s[:, None]
    return areas[:, None] * np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * s[:, None]) * gain[None, :]


def _line_shapes(e_axis: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """(L, E) response to one photon of each line: peak plus its Si escape peak."""
    esc = _escape_fraction(energies)
    main = _peaks(e_axis, energies, 1.0 - esc)
    e_esc = energies - 1.740
    ok = e_esc > 0.3
    out = main
    if ok.any():
        out[ok] += _peaks(e_axis, e_esc[ok], esc[ok])
    return out


def detector_efficiency(e_kev: np.ndarray) -> np.ndarray:
    """Be 12.5 um window, 0.1 um Si dead layer, 450 um Si, 1 cm air."""
    import xraydb

    ev = np.asarray(e_kev, float) * 1000.0
    t = np.exp(-xraydb.material_mu("Be", ev, density=1.848) * 12.5e-4)
    t *= np.exp(-xraydb.material_mu("Si", ev, density=2.33) * 0.1e-4)
    t *= np.exp(-xraydb.material_mu("air", ev) * 1.0)
    return t * (1 - np.exp(-xraydb.material_mu("Si", ev, density=2.33) * 450e-4))


def tube_spectrum(e0: np.ndarray) -> np.ndarray:
    """Photons per keV of the 40 kV Rh tube on the grid ``e0`` (Kramers + Rh K lines)."""
    import xraydb

    step = float(e0[1] - e0[0])
    kramers = np.clip(TUBE_KV - e0, 0, None) / e0
    out = kramers * np.exp(-xraydb.material_mu("Be", e0 * 1000.0, density=1.848) * 0.0125)
    for e_line, w in RH_LINES_KEV:
        out[int(np.argmin(np.abs(e0 - e_line)))] += 4.0 * w / step
    return out


def _pigment_fractions(rng: np.random.Generator, ny: int, nx: int) -> np.ndarray:
    """(ny, nx, 8) smooth pigment mixtures: mostly one or two pigments per pixel."""
    from scipy.ndimage import gaussian_filter

    k = len(PIGMENTS)
    fields = np.stack([gaussian_filter(rng.normal(size=(ny, nx)), 4.0, mode="wrap") for _ in range(k)], -1)
    fields /= fields.std(axis=(0, 1), keepdims=True)
    fields[..., 0] += 0.6  # lead white is the most common: mixed into most areas, over smalt too
    w = np.exp(2.2 * fields)
    return w / w.sum(-1, keepdims=True)


def make_cube(seed: int = 0, size: int = 48, counts: float = 1.5e4) -> IndependentCube:
    """A seeded (size, size, 2048) cube with ground truth and the generator's own templates.

    Parameters
    ----------
    seed
        Seeds the painting layout, the line-ratio perturbation and the Poisson noise.
    size
        Pixels per side.
    counts
        Scale of the fluorescence (about the counts of a lead-white pixel's Pb-L).
    """
    import xraydb

    rng = np.random.default_rng(seed)
    frac = _pigment_fractions(rng, size, size) * 0.75  # 25 % oil binder (C, H, O)
    npx = size * size
    pig_names = list(PIGMENTS)
    amounts = np.zeros((npx, len(ELEMENTS)))
    for pi, name in enumerate(pig_names):
        for el, w in PIGMENTS[name].items():
            amounts[:, ELEMENTS.index(el)] += frac.reshape(npx, -1)[:, pi] * w
    light = 1.0 - amounts.sum(1)  # O and C, as O (one light absorber is enough here)

    # lines of each family, with the random group factors
    lines_e, lines_w, lines_fam, lines_el, lines_shell = [], [], [], [], []
    factors: dict[str, dict[str, float]] = {}
    for fname in FAMILIES:
        el, fam = fname.split("-")
        table = _line_table(el, fam)
        groups = sorted({g for g, *_ in table})
        strongest = max(groups, key=lambda g: sum(x[3] for x in table if x[0] == g))
        # internal ratios: every group but the strongest scaled by +-30 %
        f = {g: 1.0 if g == strongest else float(rng.uniform(0.7, 1.3)) for g in groups}
        factors[fname] = f
        for g, shell, e, w in table:
            lines_e.append(e)
            lines_w.append(w * f[g])
            lines_fam.append(FAMILIES.index(fname))
            lines_el.append(ELEMENTS.index(el))
            lines_shell.append(shell)
    le = np.array(lines_e)
    lw = np.array(lines_w)
    lfam = np.array(lines_fam)
    lel = np.array(lines_el)
    edge = np.array([xraydb.xray_edges(ELEMENTS[i])[s].energy / 1000.0 for i, s in zip(lel, lines_shell, strict=True)])

    # mass attenuation of each pixel's matrix at the line energies and on the tube grid
    def mu_matrix(ev):
        m = np.stack([np.asarray(xraydb.mu_elam(el, ev)) for el in ELEMENTS], 0)  # (n_el, n_e)
        return amounts @ m + light[:, None] * np.asarray(xraydb.mu_elam("O", ev))[None]

    mu_lines = mu_matrix(le * 1000.0)  # (px, L)
    mu_e0 = mu_matrix(_E0 * 1000.0)  # (px, G)
    tube = tube_spectrum(_E0)
    photo = np.stack([np.asarray(xraydb.mu_elam(el, _E0 * 1000.0, kind="photo")) for el in ELEMENTS], 0)
    # thick-sample yield, 45 deg in and out: sum over E0 of tube * tau * [E0 > edge] / (mu(E0) + mu(E))
    excite = tube[None, :] * photo[lel] * (_E0[None, :] > edge[:, None])  # (L, G)
    denom = mu_e0[:, None, :] + mu_lines[:, :, None]  # (px, L, G)
    yield_ = (excite[None] / denom).sum(-1)  # (px, L)
    eff = detector_efficiency(le)
    per_line = amounts[:, lel] * yield_ * lw[None] * eff[None]  # (px, L)
    # one overall scale: lead white's Pb-L about `counts`
    pb_l = FAMILIES.index("Pb-L")
    ref = per_line[:, lfam == pb_l].sum(1)
    scale = counts / np.percentile(ref, 90)
    per_line *= scale

    true_e = TRUE_OFFSET_KEV + TRUE_GAIN_KEV * np.arange(N_CHANNELS)
    nominal_e = NOMINAL_OFFSET_KEV + NOMINAL_GAIN_KEV * np.arange(N_CHANNELS)
    shapes = _line_shapes(true_e, le)  # (L, E)
    lam = per_line @ shapes
    truth = np.zeros((npx, len(FAMILIES)))
    np.add.at(truth.T, lfam, per_line.T)

    # scatter of the whole tube spectrum, thick sample: at each tube energy E0 the pixel's
    # coherent (incoherent) cross-section over its attenuation in and out, so the scattered
    # background falls steeply at low energy where the paint absorbs (unlike a fixed shape)
    grid = _E0_SCATTER

    def sigma_matrix(kind):
        m = np.stack([np.asarray(xraydb.mu_elam(el, grid * 1000.0, kind=kind)) for el in ELEMENTS], 0)
        return amounts @ m + light[:, None] * np.asarray(xraydb.mu_elam("O", grid * 1000.0, kind=kind))[None]

    mu_g = mu_matrix(grid * 1000.0)
    tube_g = tube_spectrum(grid)
    ec = grid / (1 + grid / 511.0 * (1 - np.cos(np.deg2rad(_COMPTON_ANGLE_DEG))))
    mu_ec = mu_matrix(ec * 1000.0)
    step = float(grid[1] - grid[0])
    w_tube = tube_g * step
    ray_w = w_tube[None] * sigma_matrix("coh") / (2 * mu_g) * detector_efficiency(grid)[None]  # (px, G)
    comp_w = w_tube[None] * sigma_matrix("incoh") / (mu_g + mu_ec) * detector_efficiency(ec)[None]
    ray_shapes = _peaks(true_e, grid, np.ones_like(grid), np.sqrt(_sigma_kev(grid) ** 2 + step**2 / 12))
    comp_shapes = _peaks(true_e, ec, np.ones_like(ec), np.sqrt(_sigma_kev(ec) ** 2 + (0.012 * ec) ** 2 + step**2 / 12))
    sc = ray_w @ ray_shapes + comp_w @ comp_shapes  # (px, E)
    # scatter + tube continuum: about as many counts as the fluorescence
    sc *= 1.5 * counts / np.median(sc.sum(1))
    lam += sc
    mean_ray = ray_w.mean(0) @ ray_shapes
    mean_comp = comp_w.mean(0) @ comp_shapes
    scatter = np.stack([mean_ray / mean_ray.sum(), mean_comp / mean_comp.sum()])

    cube = rng.poisson(lam).astype(np.float32).reshape(size, size, N_CHANNELS)
    # the generator's own templates: line intensities of the mean matrix
    templates = np.zeros((len(FAMILIES), N_CHANNELS))
    lines = {}
    mean_line = per_line.mean(0)
    for fi, fname in enumerate(FAMILIES):
        sel = lfam == fi
        t = mean_line[sel] @ shapes[sel]
        templates[fi] = t / t.sum()
        w = mean_line[sel] / mean_line[sel].sum()
        lines[fname] = (le[sel], w, tuple(s for s, k in zip(lines_shell, sel, strict=True) if k))
    return IndependentCube(
        cube, nominal_e, true_e, FAMILIES, truth.reshape(size, size, -1), amounts.reshape(size, size, -1),
        lines, templates, scatter, factors,
    )


def oracle_fit(ic: IndependentCube, min_kev: float = 0.9, max_kev: float = 23.0, n_spline: int = 6) -> np.ndarray:
    """(n_pixels, F) family areas from least squares on the generator's own templates.

    Weighted like the engine (inverse mean spectrum), families >= 0, plus the exact
    scatter shapes and a few wide B-splines (the per-pixel matrix changes the scatter
    shape a little).
    """
    from scipy.interpolate import BSpline

    from napari_nightwatch.xrf.fit import batched_nnls

    e = ic.true_energies_kev
    lo, hi = int(np.searchsorted(e, min_kev)), int(np.searchsorted(e, max_kev))
    y = ic.spectra[:, lo:hi].astype(np.float64)
    x = e[lo:hi]
    k = 3
    inner = np.linspace(x[0], x[-1], n_spline - k + 1)
    st = inner[1] - inner[0]
    knots = np.concatenate([x[0] - st * np.arange(k, 0, -1), inner, x[-1] + st * np.arange(1, k + 1)])
    spl = BSpline.design_matrix(x, knots, k).toarray()
    a = np.concatenate([ic.templates[:, lo:hi].T, ic.scatter[:, lo:hi].T, spl], axis=1)
    mean = np.convolve(y.mean(0), np.ones(5) / 5, mode="same")
    w = 1.0 / np.maximum(mean, 1e-3 * mean.max())
    aw = a * w[:, None]
    gram = a.T @ aw
    d = 1 / np.sqrt(np.diag(gram))
    nonneg = np.arange(a.shape[1]) < len(ic.families)
    sol = batched_nnls(gram * np.outer(d, d), (y @ aw) * d, nonneg) * d
    return sol[:, : len(ic.families)]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two maps (flattened)."""
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])
