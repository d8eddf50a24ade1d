"""X-ray fluorescence line families (K, L, M per element) from xraydb.

A *line family* is every line of one element that starts from the same shell
(``Pb-L`` = L1, L2 and L3 lines of lead). Relative intensities inside a family
combine xraydb's per-subshell branching ratios with the share of vacancies each
subshell receives (photo-absorption jump ratios, Coster-Kronig transfers) and its
fluorescence yield, so one amplitude per family describes a thin-sample spectrum.
Matrix absorption (which changes K-beta/K-alpha or L-beta/L-alpha ratios in thick
paint) is not modelled here; the identifier tolerates it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..core.errors import NightwatchError

#: atomic numbers covered by the library (Na .. U)
Z_MIN, Z_MAX = 11, 92
_FAMILY_SHELLS = {"K": ("K",), "L": ("L1", "L2", "L3"), "M": ("M1", "M2", "M3", "M4", "M5")}
# lines weaker than this fraction of their family are dropped: below any detection limit
_MIN_REL_INTENSITY = 2e-3
# M-zeta (M4-N2, M5-N3, about 1.8 keV for Pb) is missing from xraydb's line table. Its
# share of the M4 and M5 subshell's radiative rate, from Scofield's rates as tabulated by
# PyMca 5.9.7 (``Elements.Element[el]["M4N2"]["rate"]`` / all M4 lines) at these Z; below
# Z = 64 the 4f shell is empty, M-alpha/M-beta do not exist and xraydb's own M lines hold.
_MZETA_Z = (64.0, 70.0, 74.0, 78.0, 82.0, 92.0)
_MZETA_M4 = (0.150, 0.149, 0.130, 0.122, 0.118, 0.116)
_MZETA_M5 = (0.0995, 0.0932, 0.0749, 0.0677, 0.0624, 0.0562)


@dataclass(frozen=True, eq=False)
class LineFamily:
    """The lines of one element's K, L or M shell.

    Attributes
    ----------
    name
        ``"<element>-<family>"``, e.g. ``"Pb-L"``.
    element
        Chemical symbol, e.g. ``"Pb"``.
    family
        ``"K"``, ``"L"`` or ``"M"``.
    energies_kev
        Line energies in keV (sorted ascending).
    intensities
        Relative intensities of the lines; they sum to 1.
    main_energy_kev
        Energy of the strongest line.
    line_names
        Siegbahn names of the lines (``"La1"``, ``"Kb1"``, ...), same order.
    edge_kev
        Lowest absorption edge of the family (what the excitation must exceed).
    initial_levels
        Subshell each line starts from (``"L3"``, ``"M5"``, ``"K"``), same order; empty
        for families built by hand.
    """

    name: str
    element: str
    family: str
    energies_kev: np.ndarray
    intensities: np.ndarray
    main_energy_kev: float
    line_names: tuple[str, ...] = ()
    edge_kev: float = 0.0
    initial_levels: tuple[str, ...] = ()

    @property
    def z(self) -> int:
        """Atomic number."""
        import xraydb

        return int(xraydb.atomic_number(self.element))

    def __repr__(self) -> str:
        return f"LineFamily({self.name}, main {self.main_energy_kev:.3f} keV, {len(self.energies_kev)} lines)"


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[dict, dict]:
    """xraydb's line and Coster-Kronig tables, read in two queries.

    The per-call xraydb functions issue one SQL query each (about 2 ms); the full
    library needs thousands of them, so the two small tables are read once instead.
    """
    import xraydb

    db = xraydb.get_xraydb()
    ck: dict[tuple[str, str, str], float] = {}
    t = db.tables["Coster_Kronig"]
    for r in db.query(t).all():
        ck[(str(r.element), str(r.initial_level), str(r.final_level))] = float(r.total_transition_probability)
    lines: dict[tuple[str, str], list[tuple[str, float, float]]] = {}
    t = db.tables["xray_transitions"]
    for r in db.query(t).all():
        lines.setdefault((str(r.element), str(r.initial_level)), []).append(
            (str(r.siegbahn_symbol), float(r.emission_energy), float(r.intensity))
        )
    return lines, ck


def _vacancy_shares(element: str, family: str, excitation_kev: float) -> dict[str, float]:
    """Relative vacancy creation x fluorescence yield for each subshell of a family.

    Photo-absorption above all edges of the shell is split between subshells with the
    jump-ratio rule: the deepest subshell takes ``(J-1)/J`` of what reaches it, the
    rest passes on to the next. Coster-Kronig transfers then move L1/L2 (M) vacancies
    to shallower subshells before they fluoresce.
    """
    import xraydb

    edges = xraydb.xray_edges(element)
    shells = [s for s in _FAMILY_SHELLS[family] if s in edges and edges[s].energy / 1000.0 < excitation_kev]
    share: dict[str, float] = {}
    passing = 1.0
    for s in shells:  # ordered deepest (highest energy) first
        j = max(float(edges[s].jump_ratio), 1.0 + 1e-6)
        share[s] = passing * (j - 1.0) / j
        passing /= j
    if family in ("L", "M"):
        # Coster-Kronig: vacancies in deeper subshells migrate to shallower ones
        ck = _tables()[1]
        for i, si in enumerate(shells):
            for sj in shells[i + 1 :]:
                # no entry for light elements / some M shells: no transfer
                f = ck.get((element, si, sj), 0.0)
                if f > 0:
                    share[sj] += f * share[si]
                    share[si] *= 1.0 - f
    out = {}
    for s, v in share.items():
        fy = float(edges[s].fyield) if edges[s].fyield > 0 else 1e-4
        out[s] = v * fy
    return out


@functools.lru_cache(maxsize=1024)
def _raw_lines(
    element: str, family: str, excitation_kev: float
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], float, tuple[str, ...]]:
    """Every line of a family with its absolute weight (the slow xraydb part, cached)."""
    import xraydb

    shares = _vacancy_shares(element, family, excitation_kev)
    energies, weights, names, levels = [], [], [], []
    table = _tables()[0]
    edges = xraydb.xray_edges(element) if shares else {}
    z = float(xraydb.atomic_number(element))
    for shell, w_shell in shares.items():
        rows = table.get((element, shell), [])
        for lname, energy_ev, intensity in rows:
            w = w_shell * intensity
            if w > 0:
                energies.append(energy_ev / 1000.0)
                weights.append(w)
                names.append(lname)
                levels.append(shell)
        if family == "M" and shell in ("M4", "M5") and z >= _MZETA_Z[0] and rows:
            lower = "N2" if shell == "M4" else "N3"
            share = float(np.interp(z, _MZETA_Z, _MZETA_M4 if shell == "M4" else _MZETA_M5))
            total = w_shell * sum(r[2] for r in rows)
            if lower in edges and total > 0:
                energies.append((edges[shell].energy - edges[lower].energy) / 1000.0)
                # xraydb's lines of the subshell are the other (1 - share) of its rate
                weights.append(total * share / (1.0 - share))
                names.append("Mz")
                levels.append(shell)
    edge = 0.0
    if shares:
        edge = min(edges[s].energy for s in shares) / 1000.0
    return np.asarray(energies, float), np.asarray(weights, float), tuple(names), float(edge), tuple(levels)


@functools.lru_cache(maxsize=4096)
def _build_family(element: str, family: str, excitation_kev: float, min_kev: float, max_kev: float) -> LineFamily | None:
    e_all, w_all, names_all, edge, levels_all = _raw_lines(element, family, excitation_kev)
    if e_all.size == 0:
        return None
    inside = (e_all >= min_kev) & (e_all <= max_kev)
    if not inside.any():
        return None
    keep = inside & (w_all >= _MIN_REL_INTENSITY * w_all[inside].max())
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(e_all[idx], kind="stable")]
    e, w = e_all[idx].copy(), w_all[idx] / w_all[idx].sum()
    names = tuple(names_all[i] for i in idx)
    levels = tuple(levels_all[i] for i in idx)
    main = float(e[np.argmax(w)])
    e.setflags(write=False)
    w.setflags(write=False)
    return LineFamily(f"{element}-{family}", element, family, e, w, main, names, float(edge), levels)


def _normalise_element(el: str) -> str:
    import xraydb

    s = str(el).strip()
    s = s[:1].upper() + s[1:].lower()
    try:
        z = int(xraydb.atomic_number(s))
    except Exception:
        z = 0
    if not (Z_MIN <= z <= Z_MAX):
        raise NightwatchError(
            f"Element {el!r} is not a chemical symbol between Na (Z={Z_MIN}) and U (Z={Z_MAX})."
        )
    return s


def line_families(
    elements: Iterable[str] | None = None,
    excitation_kev: float = 50.0,
    min_kev: float = 0.9,
    max_kev: float | None = None,
) -> list[LineFamily]:
    """All K/L/M line families the excitation can excite, with main lines in range.

    Parameters
    ----------
    elements
        Chemical symbols (``"Pb"``) or family names (``"Pb-L"``); ``None`` means every
        element from Na to U.
    excitation_kev
        Highest photon energy of the exciting beam (tube voltage); families whose
        absorption edge lies above it are left out.
    min_kev, max_kev
        Energy window (keV) that the family's main line and kept lines must fall in;
        ``max_kev`` defaults to ``excitation_kev``.

    Returns
    -------
    list of LineFamily
        Sorted by main-line energy.
    """
    if excitation_kev <= 0:
        raise NightwatchError(f"Excitation energy {excitation_kev} keV must be positive.")
    hi = float(excitation_kev if max_kev is None else max_kev)
    if elements is None:
        import xraydb

        wanted = [(xraydb.atomic_symbol(z), None) for z in range(Z_MIN, Z_MAX + 1)]
    else:
        wanted = []
        for item in elements:
            if "-" in str(item):
                fam = get_family(str(item), excitation_kev)
                wanted.append((fam.element, fam.family))
            else:
                wanted.append((_normalise_element(item), None))
    out: list[LineFamily] = []
    seen = set()
    for el, only in wanted:
        for fam in ("K", "L", "M") if only is None else (only,):
            f = _build_family(el, fam, float(excitation_kev), float(min_kev), hi)
            if f is None or not (min_kev <= f.main_energy_kev <= hi) or f.name in seen:
                continue
            seen.add(f.name)
            out.append(f)
    out.sort(key=lambda f: f.main_energy_kev)
    return out


_NAME = re.compile(r"^\s*([A-Za-z]{1,2})\s*[-_ ]?\s*([KLMklm])\s*$")


def get_family(name: str, excitation_kev: float = 50.0) -> LineFamily:
    """One line family by name, e.g. ``"Pb-L"``, ``"fe-k"`` or ``"HgM"``.

    Raises
    ------
    NightwatchError
        When the name is not ``<element>-<K|L|M>``, the element is unknown, or the
        family has no line the excitation can produce above 0.1 keV.
    """
    m = _NAME.match(str(name))
    if not m:
        raise NightwatchError(f"Line family {name!r} is not of the form <element>-<K|L|M>, e.g. 'Pb-L'.")
    el = _normalise_element(m.group(1))
    fam = m.group(2).upper()
    f = _build_family(el, fam, float(excitation_kev), 0.1, float(excitation_kev))
    if f is None:
        raise NightwatchError(
            f"Line family {name!r} has no lines above 0.1 keV that a {excitation_kev} keV excitation can produce."
        )
    return f


def parse_families(spec: str | Iterable[str], excitation_kev: float = 50.0) -> list[LineFamily]:
    """Families from a comma-separated string or a list of names (``"Pb-L,Hg-L"``)."""
    items = [s for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if str(s).strip()]
    if not items:
        raise NightwatchError("The element list is empty; give names like 'Pb-L,Fe-K' or 'auto'.")
    return [get_family(s, excitation_kev) for s in items]
