"""The pixels' evidence for identification (xrf.spatial; issue 12).

Ground truth: a lead-white field with arsenic either painted with a map of its own, or only
as a 3 % misfit of Pb-L's line ratios shaped like As-K (what a sum spectrum cannot tell
apart from arsenic). Only the first has a map of its own.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_nightwatch.xrf.lines import get_family
from napari_nightwatch.xrf.model import Detector, lines_spectrum
from napari_nightwatch.xrf.spatial import (
    SPATIAL_Z,
    map_drops,
    sample_pixels,
    select_by_maps,
    spatial_confidence,
)

E = np.linspace(0.0, 20.0, 1024)
DET = Detector()
KW = {"detector": DET, "excitation_kev": 40.0, "tube_kev": None}


def _smooth_field(rng, side, lo, hi):
    """A smooth random field in [lo, hi] (blurred noise), like a pigment's distribution."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.normal(size=(side, side)), 4.0)
    f = (f - f.min()) / (f.max() - f.min())
    return (lo + (hi - lo) * f).ravel()


def _cube(arsenic: str, seed: int = 0, side: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pb = _smooth_field(rng, side, 2e3, 2e4)
    t_pb = lines_spectrum(get_family("Pb-L", 40.0), E, DET)
    t_as = lines_spectrum(get_family("As-K", 40.0), E, DET)
    t_pb, t_as = t_pb / t_pb.sum(), t_as / t_as.sum()
    lam = pb[:, None] * t_pb[None] + 2.0  # + a flat background
    if arsenic == "painted":
        as_map = _smooth_field(rng, side, 0.0, 1.0) ** 3 * 0.2 * pb.mean()  # its own map, ~3 % of Pb on average
        lam += as_map[:, None] * t_as[None]
    elif arsenic == "ratio misfit":
        lam += 0.03 * pb[:, None] * t_as[None]  # follows the lead exactly: Pb-L's own lines, mis-tabulated
    return rng.poisson(lam).astype(np.float64)


def test_a_painted_element_has_a_map_of_its_own():
    z = map_drops(E, _cube("painted"), [get_family("Pb-L", 40.0)], [get_family("As-K", 40.0)], **KW)
    # measured 430-990 over seeds 0, 1, 3; 50 is the threshold
    assert z["As-K"] > 5 * SPATIAL_Z


def test_a_line_ratio_misfit_has_no_map_of_its_own():
    # the 3 % As-K-shaped misfit is 30x the per-pixel noise of bright pixels in the sum
    # spectrum, but it follows the Pb map: the projection on the Pb-L map absorbs it
    z = map_drops(E, _cube("ratio misfit"), [get_family("Pb-L", 40.0)], [get_family("As-K", 40.0)], **KW)
    # noise alone gives 0 +- 1 (slightly below: the projection removes a little noise too)
    assert abs(z["As-K"]) < 5.0


def test_noise_alone_gives_no_map():
    z = map_drops(E, _cube("absent", seed=3), [get_family("Pb-L", 40.0)],
                  [get_family("As-K", 40.0), get_family("Hg-L", 40.0)], **KW)
    for name, v in z.items():
        assert abs(v) < 5.0, (name, v)  # standard normal under the null; 5 sd never by chance here


def test_forward_selection_keeps_only_the_painted_family():
    z = select_by_maps(E, _cube("painted", seed=1), [get_family("Pb-L", 40.0)],
                       [get_family("As-K", 40.0), get_family("Hg-L", 40.0), get_family("Br-K", 40.0)], **KW)
    assert z["As-K"] >= SPATIAL_Z
    # Hg-L (its L-beta at 11.8 keV beside As K-beta) and Br-K take nothing once As-K is kept
    assert z["Hg-L"] < SPATIAL_Z and z["Br-K"] < SPATIAL_Z


def test_spatial_confidence_scale():
    assert spatial_confidence(-3.0) == 0.0
    assert spatial_confidence(SPATIAL_Z) == pytest.approx(0.5)
    assert spatial_confidence(2 * SPATIAL_Z) == pytest.approx(0.75)


def test_sample_pixels_drops_bad_rows_and_caps_the_count():
    y = np.ones((5000, 8))
    y[3, 2] = np.nan
    y[7, 1] = -1.0
    out = sample_pixels(y, max_pixels=4096)
    assert out.shape == (4096, 8) and np.isfinite(out).all() and (out >= 0).all()
    assert np.array_equal(sample_pixels(y[:100]), np.delete(y[:100], [3, 7], axis=0))
    # seeded: the same sample every time
    assert np.array_equal(sample_pixels(np.arange(50000.0).reshape(-1, 10)),
                          sample_pixels(np.arange(50000.0).reshape(-1, 10)))


def _au_cube(consistent: bool, seed: int = 0, side: int = 48) -> np.ndarray:
    """Lead white plus Au-L-shaped signal whose L-alpha group and other lines follow one map
    (gold) or two unrelated maps (what thick-paint matrix residuals under Pb-L look like)."""
    rng = np.random.default_rng(seed)
    fam = get_family("Au-L", 40.0)
    ec = np.asarray(fam.energies_kev)
    main = np.abs(ec - fam.main_energy_kev) <= float(DET.fwhm_kev(fam.main_energy_kev))
    pb = _smooth_field(rng, side, 2e3, 2e4)
    t_pb = lines_spectrum(get_family("Pb-L", 40.0), E, DET)
    t_main, t_rest = lines_spectrum(fam, E, DET, main), lines_spectrum(fam, E, DET, ~main)
    a = _smooth_field(rng, side, 0.0, 1.0) ** 2 * 2e3
    b = a if consistent else _smooth_field(rng, side, 0.0, 1.0) ** 2 * 2e3
    lam = pb[:, None] * (t_pb / t_pb.sum())[None] + 2.0
    lam += a[:, None] * (t_main / (t_main.sum() + t_rest.sum()))[None]
    lam += b[:, None] * (t_rest / (t_main.sum() + t_rest.sum()))[None]
    return rng.poisson(lam).astype(np.float64)


def test_an_l_family_needs_the_same_map_at_its_separate_lines():
    acc, cand = [get_family("Pb-L", 40.0)], [get_family("Au-L", 40.0)]
    real = map_drops(E, _au_cube(True), acc, cand, **KW)["Au-L"]
    mixed = map_drops(E, _au_cube(False), acc, cand, **KW)["Au-L"]
    assert real > 5 * SPATIAL_Z  # gold: one map at L-alpha and at L-beta/gamma
    # two unrelated maps: a large drop, but not one element's pattern (held at 0)
    assert mixed <= 0.0
