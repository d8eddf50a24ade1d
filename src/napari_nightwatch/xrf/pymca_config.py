"""PyMca fit configurations (``.cfg``): read a lab's existing one, write one from ours.

PyMca stores its fit settings as an INI-like file (its ``ConfigDict``): ``[peaks]`` maps
each element to the families fitted (``Fe = K``, ``Pb = L, M``, ``W = L1, L2, L3``),
``[detector]`` holds the calibration (``zero``, ``gain`` in keV) and the peak width
(``noise``: electronic FWHM in keV, ``fano``), ``[fit]`` the fit range in channels
(``xmin``, ``xmax``), the background (``stripflag``, ``stripalgorithm`` 1 = SNIP,
``snipwidth``), escape/sum-peak flags and the excitation energies. Only what our engine
uses is read; everything else (attenuators, matrix, concentrations) is kept verbatim in
:attr:`PyMcaSettings.extra` for provenance. Written by hand over :mod:`configparser`
because PyMca itself is a heavy GUI package that the engine does not depend on.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import NightwatchError
from ..core.spectra import EnergyCalibration
from .lines import LineFamily, get_family
from .model import MN_KA_KEV, Detector

# PyMca family tokens -> our family letter (sub-families fit as the whole family here)
_FAMILY_TOKENS = {
    "K": "K", "KA": "K", "KB": "K",
    "L": "L", "L1": "L", "L2": "L", "L3": "L",
    "M": "M", "M1": "M", "M2": "M", "M3": "M", "M4": "M", "M5": "M",
}
_FANO_CONST = 2.3548**2 * 3.85e-3  # keV: PyMca's width law uses 3.85 eV per pair, like ours


@dataclass
class PyMcaSettings:
    """What a PyMca configuration says, in the engine's objects.

    Attributes
    ----------
    families
        Family names in our spelling (``"Fe-K"``, ``"Pb-L"``), by main-line energy.
    calibration
        Channel -> keV calibration (``zero``, ``gain``).
    detector
        Peak-width model with PyMca's noise and Fano factor.
    excitation_kev
        Highest excitation energy in use (tube voltage or monochromatic energy).
    fit_channels
        ``(xmin, xmax)`` fit range in channels (``None`` when ``use_limit`` is off).
    snip_width
        SNIP half-width in channels when the background is SNIP, else ``None``.
    escape, pileup
        Whether escape and sum peaks are fitted.
    source
        The file read (empty for settings made in memory).
    extra
        Every other section, verbatim (``{section: {key: value}}``).
    """

    families: list[str]
    calibration: EnergyCalibration
    detector: Detector
    excitation_kev: float
    fit_channels: tuple[int, int] | None = None
    snip_width: int | None = None
    escape: bool = True
    pileup: bool = False
    source: str = ""
    extra: dict[str, dict[str, str]] = field(default_factory=dict)

    def line_families(self) -> list[LineFamily]:
        """The families as :class:`LineFamily` objects for this excitation."""
        return [get_family(n, self.excitation_kev) for n in self.families]

    def fit_range_kev(self, n_channels: int) -> tuple[float, float] | None:
        """The fit range in keV on a spectrum of ``n_channels`` (``None`` if not limited)."""
        if self.fit_channels is None:
            return None
        e = self.calibration.energies(n_channels)
        lo = int(np.clip(self.fit_channels[0], 0, n_channels - 1))
        hi = int(np.clip(self.fit_channels[1], 0, n_channels - 1))
        return float(e[lo]), float(e[hi])

    def to_dict(self) -> dict:
        """JSON-able summary (for ``--json`` output and provenance)."""
        return {
            "source": self.source,
            "families": list(self.families),
            "calibration": self.calibration.to_dict(),
            "detector": {"fwhm_mn_ka_ev": self.detector.fwhm_mn_ka_ev, "fano": self.detector.fano},
            "excitation_kev": self.excitation_kev,
            "fit_channels": None if self.fit_channels is None else list(self.fit_channels),
            "snip_width": self.snip_width,
            "escape": self.escape,
            "pileup": self.pileup,
        }


def _parser() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    cp.optionxform = str  # PyMca keys are case-sensitive ("Matrix", "CompoundList")
    return cp


def _float(sec: configparser.SectionProxy, key: str, path: str, default: float | None = None) -> float:
    raw = sec.get(key)
    if raw is None:
        if default is None:
            raise NightwatchError(f"PyMca configuration {path} has no '{key}' in [{sec.name}].")
        return float(default)
    try:
        return float(raw.split(",")[0])
    except ValueError:
        raise NightwatchError(f"PyMca configuration {path}: [{sec.name}] {key} = {raw!r} is not a number.") from None


def _flag(sec: configparser.SectionProxy, key: str, default: bool) -> bool:
    raw = sec.get(key)
    return default if raw is None else raw.strip() not in ("0", "", "False", "false")


def read_pymca_config(path: str | Path, n_channels: int | None = None) -> PyMcaSettings:
    """Read a PyMca fit configuration file.

    Parameters
    ----------
    path
        The ``.cfg`` file.
    n_channels
        Optional spectrum length, only used to check that the fit range fits on it.

    Returns
    -------
    PyMcaSettings

    Raises
    ------
    NightwatchError
        When the file is missing or unreadable, lacks a ``[peaks]``, ``[detector]`` or
        ``[fit]`` section, names an unknown element or family, or holds a non-numeric
        calibration.
    """
    p = Path(path)
    if not p.is_file():
        raise NightwatchError(f"PyMca configuration {p} does not exist.")
    cp = _parser()
    try:
        cp.read_string(p.read_text(encoding="utf-8", errors="replace"), source=str(p))
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise NightwatchError(f"PyMca configuration {p} is not an INI-style PyMca file ({first}).") from None
    for section in ("peaks", "detector", "fit"):
        if not cp.has_section(section):
            raise NightwatchError(f"PyMca configuration {p} has no [{section}] section; expected a PyMca fit .cfg.")
    fit = cp["fit"]
    det = cp["detector"]
    energies = [v.strip() for v in fit.get("energy", "").split(",")]
    flags = [v.strip() for v in fit.get("energyflag", "").split(",")]
    used = []
    for i, v in enumerate(energies):
        if v in ("", "None"):
            continue
        if i < len(flags) and flags[i] == "0":
            continue
        try:
            used.append(float(v))
        except ValueError:
            raise NightwatchError(f"PyMca configuration {p}: [fit] energy value {v!r} is not a number.") from None
    excitation = max(used) if used else 50.0
    families: list[LineFamily] = []
    for element, spec in cp["peaks"].items():
        tokens = [t.strip() for t in spec.split(",") if t.strip()]
        if not tokens:
            raise NightwatchError(f"PyMca configuration {p}: [peaks] {element} names no family.")
        letters = []
        for t in tokens:
            letter = _FAMILY_TOKENS.get(t.upper())
            if letter is None:
                raise NightwatchError(
                    f"PyMca configuration {p}: [peaks] {element} = {spec} names family {t!r}; expected K, Ka, Kb, "
                    "L, L1-L3, M or M1-M5."
                )
            if letter not in letters:
                letters.append(letter)
        for letter in letters:
            try:
                families.append(get_family(f"{element}-{letter}", excitation))
            except NightwatchError as exc:
                raise NightwatchError(f"PyMca configuration {p}: [peaks] {element}: {exc}") from None
    if not families:
        raise NightwatchError(f"PyMca configuration {p}: [peaks] is empty; it must name at least one element.")
    families.sort(key=lambda f: f.main_energy_kev)
    zero = _float(det, "zero", str(p))
    gain = _float(det, "gain", str(p))
    noise = _float(det, "noise", str(p), 0.1)
    fano = _float(det, "fano", str(p), 0.114)
    calibration = EnergyCalibration(zero, gain)
    fwhm_ev = float(np.sqrt(noise**2 + _FANO_CONST * fano * MN_KA_KEV)) * 1000.0
    detector = Detector(fwhm_mn_ka_ev=fwhm_ev, fano=fano, escape=_flag(fit, "escapeflag", True))
    limits = None
    if _flag(fit, "use_limit", True) and "xmin" in fit and "xmax" in fit:
        lo, hi = int(_float(fit, "xmin", str(p))), int(_float(fit, "xmax", str(p)))
        if hi <= lo:
            raise NightwatchError(f"PyMca configuration {p}: [fit] xmin={lo} is not below xmax={hi}.")
        if n_channels is not None and lo >= n_channels:
            raise NightwatchError(
                f"PyMca configuration {p}: fit range starts at channel {lo}, beyond the spectrum's {n_channels}."
            )
        limits = (lo, hi)
    snip_width = None
    if _flag(fit, "stripflag", False) and int(_float(fit, "stripalgorithm", str(p), 0)) == 1:
        snip_width = int(_float(fit, "snipwidth", str(p), 30))
    extra = {s: dict(cp[s]) for s in cp.sections() if s not in ("peaks", "detector", "fit")}
    return PyMcaSettings(
        [f.name for f in families], calibration, detector, float(excitation), limits, snip_width,
        detector.escape, _flag(fit, "sumflag", False), str(p), extra,
    )


def write_pymca_config(
    path: str | Path,
    families: list[str] | list[LineFamily],
    calibration: EnergyCalibration,
    detector: Detector,
    *,
    excitation_kev: float = 50.0,
    fit_channels: tuple[int, int] | None = None,
    snip_width: int | None = 30,
    pileup: bool = False,
) -> Path:
    """Write a PyMca fit configuration that PyMca's ``ConfigDict`` and our reader load.

    Parameters
    ----------
    path
        Output ``.cfg`` file (written whole, then moved into place).
    families
        Family names (``"Pb-L"``) or :class:`LineFamily` objects.
    calibration
        Linear calibration (a quadratic term cannot be expressed and is refused).
    detector
        Peak-width model: written as PyMca's ``noise`` (keV) and ``fano``.
    excitation_kev
        Excitation energy (``[fit] energy``).
    fit_channels
        Fit range in channels, or ``None`` for the whole spectrum.
    snip_width
        SNIP half-width (channels); ``None`` writes a linear-polynomial continuum instead.
    pileup
        Whether PyMca should fit sum peaks.

    Returns
    -------
    Path
        The written file.
    """
    if calibration.quadratic_kev != 0.0:
        raise NightwatchError("A PyMca configuration holds a linear calibration only; this one has a quadratic term.")
    names = [f.name if isinstance(f, LineFamily) else str(f) for f in families]
    if not names:
        raise NightwatchError("No families to write into the PyMca configuration.")
    peaks: dict[str, list[str]] = {}
    for n in names:
        fam = get_family(n, excitation_kev)
        peaks.setdefault(fam.element, [])
        if fam.family not in peaks[fam.element]:
            peaks[fam.element].append(fam.family)
    noise = float(np.sqrt(max(detector.noise_kev2, 0.0)))
    cp = _parser()
    cp["peaks"] = {el: ", ".join(f) for el, f in peaks.items()}
    cp["detector"] = {
        "zero": repr(float(calibration.offset_kev)), "gain": repr(float(calibration.gain_kev)),
        "noise": repr(noise), "fano": repr(float(detector.fano)), "detele": "Si",
        "fixedzero": "0", "fixedgain": "0", "fixednoise": "0", "fixedfano": "0",
        "deltazero": "0.1", "deltagain": "0.001", "deltanoise": "0.05", "deltafano": "0.114",
        "sum": "1e-10", "fixedsum": "0", "deltasum": "1e-08", "ignoreinputcalibration": "0", "nthreshold": "4",
    }
    fit = {
        "energy": f"{float(excitation_kev)!r}", "energyweight": "1.0", "energyflag": "1", "energyscatter": "1",
        "escapeflag": "1" if detector.escape else "0", "sumflag": "1" if pileup else "0",
        "scatterflag": "1", "hypermetflag": "1", "fitweight": "1", "maxiter": "10",
        "deltachi": "0.001", "deltaonepeak": "0.01", "linearfitflag": "0", "fitfunction": "0",
        "strategyflag": "0", "exppolorder": "6", "linpolorder": "1",
    }
    if fit_channels is not None:
        fit.update(use_limit="1", xmin=str(int(fit_channels[0])), xmax=str(int(fit_channels[1])))
    else:
        fit.update(use_limit="0", xmin="0", xmax="16384")
    if snip_width is not None:
        fit.update(stripflag="1", stripalgorithm="1", snipwidth=str(int(snip_width)), continuum="0",
                   stripwidth="1", stripiterations="20000", stripconstant="1.0", stripfilterwidth="1",
                   stripanchorsflag="0", stripanchorslist="0, 0, 0, 0")
    else:
        fit.update(stripflag="0", stripalgorithm="1", snipwidth="30", continuum="1")
    cp["fit"] = fit
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        cp.write(fh)
    tmp.replace(out)
    return out


__all__ = ["PyMcaSettings", "read_pymca_config", "write_pymca_config"]
