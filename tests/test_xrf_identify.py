"""Element identification and energy calibration (xrf.identify, xrf.calibration),
on a scene with known truth and on real measured spectra from ../shared/data."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import shared_file
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.core.spectra import EnergyCalibration
from napari_nightwatch.xrf.calibration import estimate_detector, refine_calibration
from napari_nightwatch.xrf.identify import PRESENT_CONFIDENCE, identify_elements, present_families
from napari_nightwatch.xrf.lines import get_family
from napari_nightwatch.xrf.model import Detector
from napari_nightwatch.xrf.scene import painted_scene


@pytest.fixture(scope="module")
def scene():
    return painted_scene(32, seed=2)


def test_identification_finds_painted_and_nothing_else(scene):
    y = scene.cube.reshape(-1, scene.cube.shape[-1])
    ids = identify_elements(scene.energies_kev, y.sum(0), max_spectrum=y.max(0), detector=scene.detector)
    assert set(present_families(ids)) == set(scene.names)
    absent = [r for r in ids if r.name not in scene.names]
    # stated threshold: no absent family reaches PRESENT_CONFIDENCE (0.5)
    assert max((r.confidence for r in absent), default=0.0) < PRESENT_CONFIDENCE
    for r in ids:
        if r.name in scene.names:
            assert r.confidence > 0.9, r


def test_identification_separates_lead_from_arsenic():
    # only Pb: As-K (same 10.5 keV line) must not be proposed, and vice versa
    from napari_nightwatch.xrf.model import simulate_spectra

    e = np.arange(1024) * 0.02 + 0.01
    for present, absent in (("Pb-L", "As-K"), ("As-K", "Pb-L")):
        fams = [get_family(present), get_family("Fe-K")]
        y = simulate_spectra(e, fams, np.array([[2e5, 1e5]]), continuum_areas=np.array([3e5]), rng=4)[0]
        found = present_families(identify_elements(e, y, candidates=[get_family(n) for n in
                                                                      ("Pb-L", "As-K", "Fe-K", "Hg-L", "Br-K")]))
        assert present in found and absent not in found, (present, found)


def test_bad_spectra_are_refused():
    e = np.arange(1024) * 0.02 + 0.01
    y = np.ones(1024)
    with pytest.raises(NightwatchError, match="NaN"):
        identify_elements(e, np.where(np.arange(1024) == 5, np.nan, y))
    with pytest.raises(NightwatchError, match="negative"):
        identify_elements(e, y - 2)
    with pytest.raises(NightwatchError, match="zero counts"):
        identify_elements(e, np.zeros(1024))
    with pytest.raises(NightwatchError, match="shape"):
        identify_elements(e, y[:100])


def test_calibration_refinement_recovers_a_shift(scene):
    y = scene.cube.reshape(-1, scene.cube.shape[-1]).sum(0)
    truth = EnergyCalibration(scene.offset_kev, scene.gain_kev)
    wrong = EnergyCalibration(scene.offset_kev + 0.045, scene.gain_kev * 0.996)
    res = refine_calibration(wrong, y, scene.families, detector=scene.detector)
    assert res.refined and res.max_abs_ev < 5.0
    e_true = truth.energies(y.size)
    e_fit = res.calibration.energies(y.size)
    assert np.abs(e_fit - e_true).max() < 0.005  # keV, over the whole axis
    quad = refine_calibration(wrong, y, scene.families, detector=scene.detector, quadratic=True)
    assert quad.refined and quad.max_abs_ev < 5.0


def test_bad_calibrations_are_refused():
    with pytest.raises(NightwatchError, match="gain"):
        EnergyCalibration(0.0, 0.0)
    # no fixed offset bound (Bruker puts channel 0 at -1.9 keV): the axis must hold the lines
    from napari_nightwatch.xrf.calibration import check_axis_covers_lines

    EnergyCalibration(-1.9, 0.02)
    with pytest.raises(NightwatchError, match="holds no XRF line"):
        check_axis_covers_lines(EnergyCalibration(-25.0, 0.01), 2048)


def test_detector_width_is_measured():
    from napari_nightwatch.xrf.model import simulate_spectra

    e = np.arange(1024) * 0.02 + 0.01
    det = Detector(fwhm_mn_ka_ev=175.0)
    fams = [get_family(n) for n in ("Fe-K", "Ca-K", "Pb-L", "Zn-K")]
    y = simulate_spectra(e, fams, np.array([[3e5, 1e5, 2e5, 1e5]]), detector=det, continuum_areas=np.array([2e5]), rng=1)[0]
    got = estimate_detector(e, y, detector=replace(det, fwhm_mn_ka_ev=140.0))
    assert abs(got.fwhm_mn_ka_ev - 175.0) < 10.0


# ----------------------------------------------------------------------------- real spectra
def _real(rel: str, calibration: EnergyCalibration | None = None):
    from napari_nightwatch.io.xrf_files import read_spectrum

    spec = read_spectrum(shared_file(rel), calibration=calibration)
    return spec.counts, spec.calibration


REAL = [
    # file, calibration override (from SOURCE.md / the PyMca .cfg), excitation keV, must find
    ("pymca-spectra/Steel.spe", EnergyCalibration(-0.00612446976449, 0.0119281593146), 16.0,
     {"Fe-K", "Cr-K", "Ni-K", "Mn-K"}),
    ("xrflab-emsa-standards/NIST_2587.txt", None, 50.0, {"Pb-L", "Fe-K"}),
    ("bruker-rsciio/bruker_m6_jetstream_file_example.spx", None, 50.0, {"Ca-K"}),
]


@pytest.mark.parametrize("rel,calib,excitation,expected", REAL, ids=["steel", "nist2587", "m6"])
def test_real_spectra_identify_and_calibrate(rel, calib, excitation, expected):
    y, cal = _real(rel, calib)
    e = cal.energies(y.size)
    det = estimate_detector(e, y)
    assert 100.0 < det.fwhm_mn_ka_ev < 250.0
    tube = None if "Steel" in rel else (20.216, 22.724)
    ids = identify_elements(e, y, detector=det, excitation_kev=excitation, tube_kev=tube)
    found = set(present_families(ids))
    assert expected <= found, (expected - found, found)
    # calibrate on the clear families only: a trace family found at 0.5-0.75 confidence
    # (Pb-L in the m6 bone spectrum) has a centroid too noisy to hold to 20 eV
    present = [r for r in ids if r.present and r.confidence >= 0.75]
    res = refine_calibration(cal, y, [get_family(r.name, excitation) for r in present],
                             areas=[r.area for r in present], detector=det)
    assert res.refined and len(res.residuals_ev) >= 3
    assert res.max_abs_ev < 20.0, res.residuals_ev
