"""Forward model of an energy-dispersive XRF spectrum.

``spectrum = sum_f a_f * family_template_f + scatter + continuum``: every template is
a *unit-area* shape over the channels (its values sum to 1 for the part inside the
energy axis), so a fitted amplitude is directly the number of counts a family put
into the spectrum. The synthetic painting simulates its cube with these functions
and :mod:`napari_nightwatch.xrf.fit` inverts them.

Peaks are Gaussians integrated over each channel's width (exact areas even for wide
channels), with the usual width law ``FWHM^2 = noise^2 + 2.3548^2 * F * eps * E``
and silicon escape peaks (``E - 1.74 keV``) whose strength follows the Reed-Ware
formula with xraydb attenuation coefficients.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import NightwatchError
from .lines import LineFamily

_SIGMA_PER_FWHM = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: Mn K-alpha (keV): the energy at which detector resolution is quoted
MN_KA_KEV = 5.8988
_ELECTRON_MASS_KEV = 510.999
#: Rh K-alpha1 and K-beta1 (keV): the usual MA-XRF tube anode
RH_K_KEV = (20.216, 22.724)


@dataclass(frozen=True)
class Detector:
    """An energy-dispersive silicon detector.

    Parameters
    ----------
    fwhm_mn_ka_ev
        Peak width (FWHM, eV) at Mn K-alpha (5.9 keV).
    fano
        Fano factor of silicon.
    escape
        Whether Si K escape peaks are added to every line.
    pair_energy_ev
        Energy per electron-hole pair in silicon (eV).
    escape_kev
        Energy of the Si K-alpha line carried away by an escape event.
    """

    fwhm_mn_ka_ev: float = 140.0
    fano: float = 0.114
    escape: bool = True
    pair_energy_ev: float = 3.85
    escape_kev: float = 1.740

    def __post_init__(self) -> None:
        if not (np.isfinite(self.fwhm_mn_ka_ev) and 40.0 <= self.fwhm_mn_ka_ev <= 1000.0):
            raise NightwatchError(
                f"Detector FWHM at Mn K-alpha {self.fwhm_mn_ka_ev} eV is not between 40 and 1000 eV."
            )
        if not (0.0 < self.fano < 1.0):
            raise NightwatchError(f"Detector Fano factor {self.fano} must be between 0 and 1.")

    @property
    def noise_kev2(self) -> float:
        """Electronic-noise part of FWHM^2 (keV^2), from the width at Mn K-alpha."""
        fano_part = (2.3548**2) * self.fano * self.pair_energy_ev * 1e-3 * MN_KA_KEV
        # a width below the Fano limit is physically impossible; clamp to a tiny noise
        return max((self.fwhm_mn_ka_ev * 1e-3) ** 2 - fano_part, 1e-6)

    def fwhm_kev(self, energy_kev) -> np.ndarray:
        """Peak FWHM (keV) at ``energy_kev`` (Fano statistics + electronic noise)."""
        e = np.clip(np.asarray(energy_kev, dtype=np.float64), 0.0, None)
        return np.sqrt(self.noise_kev2 + (2.3548**2) * self.fano * self.pair_energy_ev * 1e-3 * e)

    def sigma_kev(self, energy_kev) -> np.ndarray:
        """Gaussian standard deviation (keV) at ``energy_kev``."""
        return self.fwhm_kev(energy_kev) * _SIGMA_PER_FWHM

    def escape_fraction(self, energy_kev) -> np.ndarray:
        """Fraction of photons of ``energy_kev`` that end in the Si escape peak.

        Reed & Ware (1972) for a thick Si detector at normal incidence:
        ``0.5 * w_K * (1 - 1/J) * (1 - r ln(1 + 1/r))`` with ``r = mu(E_SiKa)/mu(E)``.
        """
        e = np.atleast_1d(np.asarray(energy_kev, dtype=np.float64))
        out = np.zeros_like(e)
        if not self.escape:
            return out
        above = e > 1.839  # Si K edge
        if above.any():
            out[above] = _escape_reed_ware(tuple(np.round(e[above], 4)))
        return out


@functools.lru_cache(maxsize=256)
def _si_constants() -> tuple[float, float, float]:
    import xraydb

    edge = xraydb.xray_edge("Si", "K")
    mu_ka = float(xraydb.mu_elam("Si", 1740.0))
    return float(edge.fyield), float(edge.jump_ratio), mu_ka


@functools.lru_cache(maxsize=4096)
def _escape_reed_ware(energies: tuple[float, ...]) -> np.ndarray:
    import xraydb

    wk, jump, mu_ka = _si_constants()
    mu_e = np.asarray(xraydb.mu_elam("Si", np.asarray(energies) * 1000.0), dtype=np.float64)
    r = mu_ka / mu_e
    return 0.5 * wk * (1.0 - 1.0 / jump) * (1.0 - r * np.log1p(1.0 / r))


def check_axis(energies_kev: np.ndarray) -> np.ndarray:
    """The energy axis as float64, checked: 1-D, at least 8 channels, finite, increasing."""
    e = np.asarray(energies_kev, dtype=np.float64)
    if e.ndim != 1 or e.size < 8:
        raise NightwatchError(f"The energy axis must be a 1-D array of at least 8 channels; got shape {e.shape}.")
    if not np.isfinite(e).all() or np.any(np.diff(e) <= 0):
        raise NightwatchError("The energy axis must be finite and strictly increasing (check the calibration).")
    return e


def channel_edges(e: np.ndarray) -> np.ndarray:
    """(E + 1,) channel boundaries: midpoints between centres, extrapolated at both ends."""
    mid = 0.5 * (e[1:] + e[:-1])
    return np.concatenate([[e[0] - (mid[0] - e[0])], mid, [e[-1] + (e[-1] - mid[-1])]])


def gaussian_peaks(
    energies_kev: np.ndarray,
    centres_kev: np.ndarray,
    areas: np.ndarray,
    sigmas_kev: np.ndarray,
) -> np.ndarray:
    """Sum of Gaussians integrated over each channel's width.

    Parameters
    ----------
    energies_kev
        Channel centre energies (E,).
    centres_kev, areas, sigmas_kev
        One value per peak (P,): position, total area (counts), standard deviation.

    Returns
    -------
    np.ndarray
        (E,) counts per channel; a peak fully inside the axis contributes its area.
    """
    from scipy.special import erf

    e = check_axis(energies_kev)
    edges = channel_edges(e)
    c = np.asarray(centres_kev, dtype=np.float64)
    a = np.asarray(areas, dtype=np.float64)
    s = np.asarray(sigmas_kev, dtype=np.float64)
    out = np.zeros(e.size)
    for ci, ai, si in zip(c, a, s, strict=True):
        if ai == 0:
            continue
        # only channels within 6 sigma matter: keeps the cost per peak small on 4096 channels
        lo = max(int(np.searchsorted(edges, ci - 6 * si)) - 1, 0)
        hi = min(int(np.searchsorted(edges, ci + 6 * si)) + 1, edges.size - 1)
        if hi <= lo:
            continue
        cdf = 0.5 * (1.0 + erf((edges[lo : hi + 1] - ci) / (np.sqrt(2.0) * si)))
        out[lo:hi] += ai * np.diff(cdf)
    return out


def lines_spectrum(fam: LineFamily, energies_kev: np.ndarray, detector: Detector,
                   lines: np.ndarray | None = None) -> np.ndarray:
    """Un-normalised spectrum of a family's lines (all, or the boolean selection ``lines``) with their
    Si escape peaks, on channel energies ``energies_kev`` (lines and escapes below 0.05 keV left out)."""
    ec = np.asarray(fam.energies_kev, dtype=np.float64)
    w = np.asarray(fam.intensities, dtype=np.float64)
    if lines is not None:
        ec, w = ec[lines], w[lines]
    esc = detector.escape_fraction(ec)
    centres = np.concatenate([ec, ec - detector.escape_kev])
    areas = np.concatenate([w * (1.0 - esc), w * esc])
    keep = (areas > 0) & (centres > 0.05)
    return gaussian_peaks(energies_kev, centres[keep], areas[keep], detector.sigma_kev(centres[keep]))


def family_template(fam: LineFamily, energies_kev: np.ndarray, detector: Detector | None = None) -> np.ndarray:
    """Unit-area spectrum of one line family, with its Si escape peaks.

    Parameters
    ----------
    fam
        The line family.
    energies_kev
        Channel energies (E,).
    detector
        Peak-width and escape model (default :class:`Detector`).

    Returns
    -------
    np.ndarray
        (E,) float64 summing to 1 over the channels.

    Raises
    ------
    NightwatchError
        When none of the family's lines falls inside the energy axis.
    """
    det = detector or Detector()
    e = check_axis(energies_kev)
    if fam.main_energy_kev < e[0] or fam.main_energy_kev > e[-1]:
        raise NightwatchError(
            f"The energy axis {e[0]:.2f}-{e[-1]:.2f} keV does not reach the main line of {fam.name} "
            f"({fam.main_energy_kev:.2f} keV)."
        )
    t = lines_spectrum(fam, e, det)
    total = t.sum()
    if total <= 0:
        raise NightwatchError(f"The family {fam.name} has no intensity inside the energy axis.")
    return t / total


def compton_energy_kev(energy_kev, angle_deg: float) -> np.ndarray:
    """Energy of a photon Compton-scattered by ``angle_deg``."""
    e = np.asarray(energy_kev, dtype=np.float64)
    return e / (1.0 + e / _ELECTRON_MASS_KEV * (1.0 - np.cos(np.deg2rad(angle_deg))))


def scatter_templates(
    energies_kev: np.ndarray,
    detector: Detector | None = None,
    tube_kev: float | Sequence[float] = RH_K_KEV,
    angle_deg: float | tuple[float, float] = (90.0, 135.0),
    doppler_kev: float = 0.25,
) -> np.ndarray:
    """Unit-area Rayleigh and Compton peaks of the tube lines.

    Parameters
    ----------
    energies_kev
        Channel energies (E,).
    detector
        Peak-width model.
    tube_kev
        Tube line energies (keV); Rh K-alpha and K-beta by default.
    angle_deg
        Scattering angle, or the (min, max) range seen by a wide detector; the Compton
        peak sits at the mid-angle and is widened by the spread of angles.
    doppler_kev
        Extra Compton width (standard deviation, keV at 20 keV, scaled with energy)
        from the electrons' momentum (Doppler broadening).

    Returns
    -------
    np.ndarray
        (2 * n_lines, E): Rayleigh of each tube line, then Compton of each tube line.
        Rows with less than 5% of their peak inside the axis are all zero.
    """
    det = detector or Detector()
    e = check_axis(energies_kev)
    tubes = np.atleast_1d(np.asarray(tube_kev, dtype=np.float64))
    if isinstance(angle_deg, (tuple, list)):
        a_lo, a_hi = float(angle_deg[0]), float(angle_deg[1])
    else:
        a_lo = a_hi = float(angle_deg)
    a_mid = 0.5 * (a_lo + a_hi)
    rows = []
    for t in tubes:
        rows.append(gaussian_peaks(e, [t], [1.0], det.sigma_kev([t])))
    for t in tubes:
        ec = float(compton_energy_kev(t, a_mid))
        # spread of Compton energies over the angle range, as a uniform -> std dev
        spread = abs(float(compton_energy_kev(t, a_lo) - compton_energy_kev(t, a_hi))) / np.sqrt(12.0)
        sig = float(np.sqrt(det.sigma_kev(ec) ** 2 + spread**2 + (doppler_kev * t / 20.0) ** 2))
        rows.append(gaussian_peaks(e, [ec], [1.0], [sig]))
    out = np.stack(rows)
    sums = out.sum(axis=1, keepdims=True)
    return np.divide(out, sums, out=np.zeros_like(out), where=sums > 0.05)


def continuum(
    energies_kev: np.ndarray,
    excitation_kev: float = 50.0,
    absorption_kev: float = 2.0,
) -> np.ndarray:
    """Smooth bremsstrahlung-like continuum, unit area over the channels.

    Kramers' law ``(E0 - E) / E`` for the scattered tube continuum, rolled off at low
    energy by air/window absorption ``exp(-(absorption_kev / E)^3)``.

    Parameters
    ----------
    energies_kev
        Channel energies (E,).
    excitation_kev
        Tube voltage (keV): the continuum ends there.
    absorption_kev
        Energy where the low-energy roll-off reaches ``1/e``.

    Returns
    -------
    np.ndarray
        (E,) float64 summing to 1.
    """
    e = check_axis(energies_kev)
    ep = np.clip(e, 1e-3, None)
    shape = np.clip(excitation_kev - ep, 0.0, None) / ep * np.exp(-((absorption_kev / ep) ** 3))
    total = shape.sum()
    if total <= 0:
        raise NightwatchError(
            f"The continuum for a {excitation_kev} keV excitation is empty on the axis {e[0]:.2f}-{e[-1]:.2f} keV."
        )
    return shape / total


def pileup_template(
    fam_a: LineFamily, fam_b: LineFamily, energies_kev: np.ndarray, detector: Detector | None = None
) -> np.ndarray:
    """Unit-area sum (pile-up) peaks of two families: every pair of lines, weights multiplied."""
    det = detector or Detector()
    e = check_axis(energies_kev)
    ea, wa = np.asarray(fam_a.energies_kev), np.asarray(fam_a.intensities)
    eb, wb = np.asarray(fam_b.energies_kev), np.asarray(fam_b.intensities)
    centres = (ea[:, None] + eb[None, :]).ravel()
    areas = (wa[:, None] * wb[None, :]).ravel()
    keep = areas > 1e-3 * areas.max()
    t = gaussian_peaks(e, centres[keep], areas[keep], det.sigma_kev(centres[keep]))
    total = t.sum()
    return t / total if total > 0 else t


def simulate_spectra(
    energies_kev: np.ndarray,
    families: Sequence[LineFamily],
    areas: np.ndarray,
    *,
    detector: Detector | None = None,
    scatter_areas: np.ndarray | None = None,
    continuum_areas: np.ndarray | None = None,
    excitation_kev: float = 50.0,
    rng: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """Poisson counts of n spectra from the forward model (tests and benchmarks).

    Parameters
    ----------
    energies_kev
        Channel energies (E,).
    families
        F line families.
    areas
        (n, F) expected counts per family.
    detector
        Peak model.
    scatter_areas
        (n, 2 * n_tube_lines) expected counts of the :func:`scatter_templates` rows.
    continuum_areas
        (n,) expected continuum counts.
    excitation_kev
        Tube voltage of the continuum.
    rng
        Generator or seed; ``None`` returns the expected counts without noise.

    Returns
    -------
    np.ndarray
        (n, E) float32 counts.
    """
    det = detector or Detector()
    e = check_axis(energies_kev)
    a = np.atleast_2d(np.asarray(areas, dtype=np.float64))
    t = np.stack([family_template(f, e, det) for f in families])
    lam = a @ t
    if scatter_areas is not None:
        lam += np.atleast_2d(np.asarray(scatter_areas, dtype=np.float64)) @ scatter_templates(e, det)
    if continuum_areas is not None:
        lam += np.asarray(continuum_areas, dtype=np.float64).reshape(-1, 1) * continuum(e, excitation_kev)[None]
    if rng is None:
        return lam.astype(np.float32)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return gen.poisson(lam).astype(np.float32)
