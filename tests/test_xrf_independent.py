"""The engine on cubes it was not built from (tests/xrf_independent.py; issue 12).

The independent generator differs from lines.py/model.py on purpose (textbook subshell
shares, +-30 % random internal ratios, thick-sample absorption, polychromatic tube,
detector efficiency, a calibration 8-25 eV off). The per-pixel fit after sum-spectrum
refinement (xrf.refine) must track the truth as well as a least-squares fit with the
generator's own templates (the oracle).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.core.spectra import EnergyCalibration
from napari_nightwatch.xrf.calibration import estimate_detector
from napari_nightwatch.xrf.fit import build_fit_model, fit_spectra
from napari_nightwatch.xrf.lines import get_family
from napari_nightwatch.xrf.refine import KBETA_BOUNDS, line_groups, refine_sum_spectrum
from xrf_independent import (
    NOMINAL_GAIN_KEV,
    NOMINAL_OFFSET_KEV,
    TUBE_KV,
    correlation,
    make_cube,
    oracle_fit,
)

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module", params=SEEDS)
def case(request):
    ic = make_cube(request.param)
    y = ic.spectra
    fams = [get_family(n, TUBE_KV) for n in ic.families]
    total = y.sum(0, dtype=np.float64)
    det = estimate_detector(ic.energies_kev, total)
    cal = EnergyCalibration(NOMINAL_OFFSET_KEV, NOMINAL_GAIN_KEV)
    ref = refine_sum_spectrum(ic.energies_kev, total, fams, detector=det, calibration=cal, excitation_kev=TUBE_KV)
    model = build_fit_model(ref.energies_kev, ref.families, detector=ref.detector, mean_spectrum=y.mean(0),
                            excitation_kev=TUBE_KV)
    return ic, ref, fit_spectra(y, model).areas, oracle_fit(ic)


def test_every_painted_element_tracks_the_oracle(case):
    ic, _, areas, oracle = case
    truth = ic.truth_flat
    for i, name in enumerate(ic.families):
        ours = correlation(areas[:, i], truth[:, i])
        best = correlation(oracle[:, i], truth[:, i])
        # issue 12: within 0.03 of the oracle fit (As-K under Pb-L included); measured
        # worst case Sn-L -0.01 over the three seeds
        assert ours >= best - 0.03, (name, ours, best)


def test_arsenic_under_lead_is_separated(case):
    ic, _, areas, oracle = case
    i = ic.families.index("As-K")
    # before refinement As-K reached r 0.86-0.93 here; the oracle reaches 0.96-0.99
    assert correlation(areas[:, i], ic.truth_flat[:, i]) >= 0.96


def test_refinement_recovers_calibration_and_lowers_chi2(case):
    ic, ref, _, _ = case
    # true axis is 8 eV (channel 0) to 27 eV (channel 2047) below the nominal one; the
    # refined axis must be within 4 eV of the truth over the fitted lines (1-16 keV)
    sel = (ic.energies_kev > 1.0) & (ic.energies_kev < 16.0)
    err = np.abs(ref.energies_kev[sel] - ic.true_energies_kev[sel]).max()
    assert err < 0.004, err
    assert ref.calibration is not None
    assert np.allclose(ref.calibration.energies(ic.energies_kev.size), ref.energies_kev)
    # the tabulated ratios misfit the sum spectrum by tens of sigma per channel; refined
    # ratios must remove at least three quarters of that chi-square
    assert ref.chi2_after < 0.25 * ref.chi2_before
    rec = ref.to_dict()
    assert set(rec["group_scales"]) == set(ic.families)
    lo, hi = KBETA_BOUNDS
    for name, groups in rec["group_scales"].items():
        if name.endswith("-K") and "Kb" in groups:
            assert lo - 1e-9 <= groups["Kb"] <= hi + 1e-9


def test_refined_families_keep_names_and_unit_sum(case):
    ic, ref, _, _ = case
    assert [f.name for f in ref.families] == list(ic.families)
    for f in ref.families:
        assert abs(float(np.sum(f.intensities)) - 1.0) < 1e-12


def test_groups_buried_under_a_far_stronger_line_keep_their_table_ratio(case):
    # Sn-L's L1/L2 lines (L-beta1 3.66 keV) sit under Ca K-alpha (3.69 keV), ~20-120x stronger
    # in these paintings: the sum spectrum cannot fix their ratio, refining it only moved
    # counts between Sn-L and Ca-K. Resolvable groups (Ca K-beta, Pb-L's L1/L2) are refined.
    _, ref, _, _ = case
    assert ref.group_scales["Sn-L"]["L1"] == 1.0 and ref.group_scales["Sn-L"]["L2"] == 1.0
    assert ref.group_scales["Ca-K"]["Kb"] != 1.0
    assert ref.group_scales["Pb-L"]["L1"] != 1.0 and ref.group_scales["Pb-L"]["L2"] != 1.0


def test_line_groups_follow_subshells():
    assert set(line_groups(get_family("Pb-L"))) == {"L1", "L2", "L3"}
    assert set(line_groups(get_family("As-K"))) == {"Ka", "Kb"}
    assert "Mz" in line_groups(get_family("Pb-M"))


def test_refinement_rejects_bad_input():
    e = np.linspace(0.5, 20, 2048)
    with pytest.raises(NightwatchError):
        refine_sum_spectrum(e, np.full(2048, np.nan), [get_family("Fe-K")])
    with pytest.raises(NightwatchError):
        refine_sum_spectrum(e, np.ones(100), [get_family("Fe-K")])
    with pytest.raises(NightwatchError):
        refine_sum_spectrum(e, np.ones(2048), [])


# the generator's Rh tube has K-alpha2 beside K-alpha1: its Rayleigh peak is fitted too
TUBE_LINES_KEV = (20.074, 20.216, 22.724)


@pytest.mark.parametrize("seed", SEEDS)
def test_maps_through_fit_store_track_the_oracle(tmp_path, seed):
    """The refinement drives the per-pixel fit of ``xrf-maps`` (library path, store in, maps out)."""
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import write_xrf_cube
    from napari_nightwatch.xrf.maps import fit_store, load_element_maps

    ic = make_cube(seed)
    store = PaintingStore.create(tmp_path / "ind.nightwatch.zarr")
    write_xrf_cube(store, ic.cube, calibration=EnergyCalibration(NOMINAL_OFFSET_KEV, NOMINAL_GAIN_KEV),
                   pixel_size_um=100.0, source=f"independent generator seed {seed}", excitation_kev=TUBE_KV)
    summary = fit_store(store, list(ic.families), tube_kev=TUBE_LINES_KEV, workers=1)
    assert summary["refinement"]["chi2_after"] < 0.25 * summary["refinement"]["chi2_before"]
    names, maps = load_element_maps(store)
    oracle = oracle_fit(ic)
    for i, name in enumerate(ic.families):
        ours = correlation(maps[names.index(name)].ravel(), ic.truth_flat[:, i])
        best = correlation(oracle[:, i], ic.truth_flat[:, i])
        # issue 12: within 0.03 of the oracle fit (least squares with the generator's own templates)
        assert ours >= best - 0.03, (name, ours, best)


def test_auto_identification_meets_issue_12():
    """Every painted element found, no absent element proposed at 0.5 or more (issue 12).

    Before the model-error floor and the pixels' evidence (xrf.spatial) absent families
    reached 0.5-0.77 here (Br-K, Zn-K, Rb-K, Ru-K, Ba-L from 1-2 % misfits of strong lines)
    and As-K (seed 1) and P-K (seed 2) were missed: in the sum spectrum they are
    indistinguishable from a change of Pb-L's / Ca-K's line ratios, over the pixels they
    have maps of their own.
    """
    from napari_nightwatch.xrf.analysis import analyse_spectrum

    for seed in SEEDS:
        ic = make_cube(seed)
        y = ic.spectra
        total = y.sum(0, dtype=np.float64)
        a = analyse_spectrum(ic.energies_kev, total, max_spectrum=y.max(0), pixel_spectra=y,
                             detector=estimate_detector(ic.energies_kev, total), excitation_kev=TUBE_KV,
                             tube_kev=TUBE_LINES_KEV)
        assert set(ic.families) <= set(a.sample_families), seed
        absent = [r for r in a.identifications if r.name not in ic.families and r.origin == "sample"]
        assert max((r.confidence for r in absent), default=0.0) < 0.5, seed
