"""PyMca interoperability (xrf.pymca_config) and identification on real spectra from ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_file
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.core.spectra import EnergyCalibration
from napari_nightwatch.xrf.calibration import estimate_detector
from napari_nightwatch.xrf.identify import identify_elements, instrument_families, present_families
from napari_nightwatch.xrf.model import Detector
from napari_nightwatch.xrf.pymca_config import read_pymca_config, write_pymca_config


def _steel():
    tok = shared_file("pymca-spectra/Steel.spe").read_text().split("$DATA:")[1].split()
    n0, n1 = int(tok[0]), int(tok[1])
    return np.array(tok[2 : 2 + n1 - n0 + 1], float)


def test_reads_steel_cfg():
    s = read_pymca_config(shared_file("pymca-spectra/Steel.cfg"), 2048)
    assert {"Fe-K", "Cr-K", "Ni-K", "Mn-K", "Pb-L", "Pb-M", "W-L"} <= set(s.families)
    assert s.calibration.offset_kev == pytest.approx(-0.00612446976449)
    assert s.calibration.gain_kev == pytest.approx(0.0119281593146)
    assert s.excitation_kev == 16.0 and s.fit_channels == (200, 1432)
    # PyMca noise 0.127439 keV, Fano 0.101156 -> FWHM^2 = noise^2 + 2.3548^2 F 3.85 eV E at Mn K-alpha
    assert s.detector.fwhm_mn_ka_ev == pytest.approx(170.23, abs=0.01)
    assert s.snip_width is None  # stripalgorithm = 0: PyMca's strip, not SNIP


def test_round_trip(tmp_path):
    cal = EnergyCalibration(-0.02, 0.0115)
    det = Detector(141.0, 0.12)
    path = write_pymca_config(tmp_path / "ours.cfg", ["Pb-L", "As-K", "Fe-K"], cal, det, excitation_kev=40.0,
                              fit_channels=(80, 1900), snip_width=25)
    s = read_pymca_config(path)
    assert set(s.families) == {"Pb-L", "As-K", "Fe-K"}
    assert s.calibration == cal
    # noise is written as its float repr: the width round-trips to rounding error
    assert s.detector.fwhm_mn_ka_ev == pytest.approx(141.0, rel=1e-12)
    assert s.detector.fano == 0.12 and s.fit_channels == (80, 1900) and s.snip_width == 25


def test_written_config_is_accepted_by_pymca(tmp_path):
    config_dict = pytest.importorskip("PyMca5.PyMcaIO.ConfigDict", reason="PyMca5 is not installed")
    theory = pytest.importorskip("PyMca5.PyMcaPhysics.xrf.ClassMcaTheory")
    path = write_pymca_config(tmp_path / "ours.cfg", ["Pb-L", "Pb-M", "Fe-K"], EnergyCalibration(0.0, 0.01),
                              Detector(), excitation_kev=30.0)
    d = config_dict.ConfigDict()
    d.read(str(path))
    assert sorted(d["peaks"]["Pb"]) == ["L", "M"]
    theory.McaTheory().configure(d)  # raises on a configuration PyMca cannot use


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("[peaks]\nXx = K\n[detector]\nzero = 0\ngain = 0.01\n[fit]\nenergy = 20\n", "Xx"),
        ("[peaks]\nFe = Q\n[detector]\nzero = 0\ngain = 0.01\n[fit]\nenergy = 20\n", "'Q'"),
        ("[peaks]\nFe = K\n[fit]\nenergy = 20\n", "[detector]"),
        ("[peaks]\nFe = K\n[detector]\nzero = abc\ngain = 0.01\n[fit]\nenergy = 20\n", "zero"),
        ("not an ini file\n", "PyMca"),
    ],
)
def test_bad_config_is_one_sentence(tmp_path, text, what):
    p = tmp_path / "bad.cfg"
    p.write_text(text)
    with pytest.raises(NightwatchError) as exc:
        read_pymca_config(p)
    assert what in str(exc.value) and str(p) in str(exc.value)


def test_steel_identification_finds_the_alloy_without_escape_phantoms():
    y = _steel()
    s = read_pymca_config(shared_file("pymca-spectra/Steel.cfg"), y.size)
    e = s.calibration.energies(y.size)
    ids = identify_elements(e, y, detector=estimate_detector(e, y), excitation_kev=s.excitation_kev, tube_kev=None)
    found = set(present_families(ids))
    assert {"Fe-K", "Cr-K", "Ni-K", "Mn-K"} <= found
    # Sb-L sits on the Cr K-alpha escape peak (3.67 keV): explained by the free escape term
    assert "Sb-L" not in found


def test_steel_has_no_lanthanum_phantom():
    # La-L sits on the Fe K-alpha escape peak (4.66 keV): explained by the free escape term
    y = _steel()
    s = read_pymca_config(shared_file("pymca-spectra/Steel.cfg"), y.size)
    e = s.calibration.energies(y.size)
    ids = identify_elements(e, y, detector=estimate_detector(e, y), excitation_kev=s.excitation_kev, tube_kev=None)
    assert "La-L" not in present_families(ids)


def test_nist_2587_tube_lines_are_instrument_not_sample():
    msa = pytest.importorskip("rsciio.msa", reason="rosettasciio is not installed")
    d = msa.file_reader(str(shared_file("xrflab-emsa-standards/NIST_2587.txt")))[0]
    y = np.asarray(d["data"], float)
    ax = d["axes"][0]
    e = ax["offset"] + ax["scale"] * np.arange(y.size)
    ids = identify_elements(e, y, detector=estimate_detector(e, y), excitation_kev=50.0)
    found = set(present_families(ids))
    # certified: Fe 5.2 wt%, Pb 3242 mg/kg, Ti 6050 mg/kg, Ca, K, Mn, Zn (NIST_SRM_2587_elements.csv)
    assert {"Fe-K", "Pb-L", "Ti-K", "Ca-K", "K-K", "Mn-K", "Zn-K"} <= found
    assert not {"Rh-K", "Rh-L"} & found
    # Rh-L (2.7 keV) is the anode's own fluorescence: tagged. Rh-K sits exactly on the
    # tube's Rayleigh-scattered K lines, which the fit's scatter terms already explain
    # (with the 2 % model-error floor its pattern lowers chi-square by ~24 beyond them):
    # it may be tagged or left to the scatter terms, never proposed as a sample element
    assert "Rh-L" in instrument_families(ids)
    rh_k = next(r for r in ids if r.name == "Rh-K")
    assert rh_k.origin == "instrument"


def test_include_and_exclude():
    y = _steel()
    e = -0.00612446976449 + 0.0119281593146 * np.arange(y.size)
    det = estimate_detector(e, y)
    ids = identify_elements(e, y, detector=det, excitation_kev=16.0, tube_kev=None, include=["Co-K"],
                            exclude=["Mn"])
    found = present_families(ids)
    assert "Co-K" in found and "Mn-K" not in found
    with pytest.raises(NightwatchError):
        identify_elements(e, y, detector=det, excitation_kev=16.0, tube_kev=None, exclude=["Qq"])
