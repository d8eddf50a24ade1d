"""lines.py ratios against an independent table: PyMca's (Scofield rates, Krause yields).

Issue 16 item 7: our synthetic painting is made with lines.py itself, so only an outside
table can catch an error in it. Compared per energy window (robust to line naming):
the share of a family's intensity within +-0.25 keV of each of its main lines.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from napari_nightwatch.xrf.lines import get_family

pymca_elements = pytest.importorskip(
    "PyMca5.PyMcaPhysics.xrf.Elements", reason="PyMca5 (test-only dependency) is not installed"
)


# PyMca's tables as shipped: configuring a fit (ClassMcaTheory, as tests/test_xrf_pymca.py
# does) rewrites the rates in place for that configuration's excitation, so a copy is taken
# when this module is collected, before any test runs
_PRISTINE = {el: copy.deepcopy(pymca_elements.Element[el]) for el in ("Fe", "Cu", "As", "Pb", "Hg")}


def _pymca_lines(element: str, family: str) -> tuple[np.ndarray, np.ndarray]:
    d = _PRISTINE[element]
    rays = d[f"{family} xrays"]
    e = np.array([d[r]["energy"] for r in rays], float)
    w = np.array([d[r]["rate"] for r in rays], float)
    return e, w / w.sum()


def _share(e: np.ndarray, w: np.ndarray, centre: float, half: float = 0.25) -> float:
    return float(w[np.abs(e - centre) <= half].sum())


# (family, window centres keV, absolute tolerance on each share) -- tolerances state what
# tables may legitimately differ by: K-beta/K-alpha +-0.03 (Scofield vs xraydb/Elam agree to
# a few %), L windows +-0.06 (subshell vacancy shares and Coster-Kronig yields differ ~10 %),
# M windows +-0.10 (M-shell Coster-Kronig yields are poorly known)
CASES = [
    ("Fe-K", (6.40, 7.06), 0.03),
    ("Cu-K", (8.04, 8.90), 0.03),
    ("As-K", (10.53, 11.73), 0.03),
    ("Pb-L", (10.55, 12.61, 14.77), 0.06),
    ("Hg-L", (9.99, 11.82, 13.83), 0.06),
    ("Pb-M", (1.83, 2.35, 2.44), 0.10),
    ("Hg-M", (1.71, 2.19, 2.28), 0.10),
]


@pytest.mark.parametrize(("name", "centres", "tol"), CASES)
def test_family_shares_match_pymca(name, centres, tol):
    fam = get_family(name, 50.0)
    pe, pw = _pymca_lines(fam.element, fam.family)
    ours_e, ours_w = np.asarray(fam.energies_kev), np.asarray(fam.intensities)
    for c in centres:
        half = 0.06 if fam.family == "M" else 0.25  # M lines are only ~0.1 keV apart
        ours, theirs = _share(ours_e, ours_w, c, half), _share(pe, pw, c, half)
        assert abs(ours - theirs) <= tol, (name, c, ours, theirs)


def test_lead_m_zeta_group_is_present():
    # PyMca: Pb M-zeta (M4N2 + M5N3, 1.82-1.84 keV) is ~8 % of the M lines; xraydb lacks it
    fam = get_family("Pb-M", 50.0)
    share = _share(np.asarray(fam.energies_kev), np.asarray(fam.intensities), 1.83, 0.05)
    pe, pw = _pymca_lines("Pb", "M")
    assert abs(share - _share(pe, pw, 1.83, 0.05)) < 0.02
