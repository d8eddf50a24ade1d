"""Line library and detector/spectrum model (napari_nightwatch.xrf.lines, .model)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.xrf.lines import get_family, line_families, parse_families
from napari_nightwatch.xrf.model import (
    Detector,
    compton_energy_kev,
    continuum,
    family_template,
    scatter_templates,
    simulate_spectra,
)

E = np.arange(1024) * 0.02 + 0.01


def test_line_families_know_the_classic_lines():
    pb = get_family("Pb-L")
    assert pb.element == "Pb" and pb.family == "L"
    assert abs(pb.main_energy_kev - 10.551) < 0.005  # L-alpha1
    assert abs(pb.intensities.sum() - 1.0) < 1e-12
    # L-beta (12.6 keV) is strong: the line that tells Pb from As
    beta = pb.intensities[(pb.energies_kev > 12.5) & (pb.energies_kev < 12.7)].sum()
    assert 0.25 < beta < 0.5
    assert abs(get_family("fe-k").main_energy_kev - 6.405) < 0.005
    assert abs(get_family("As-K").main_energy_kev - 10.543) < 0.005
    assert abs(get_family("Hg-M").main_energy_kev - 2.191) < 0.005
    assert abs(get_family("S K").main_energy_kev - 2.309) < 0.005


def test_excitation_and_energy_window_restrict_families():
    names = {f.name for f in line_families(["Pb", "Fe"], excitation_kev=10.0)}
    # 10 keV cannot ionise the Pb L3 shell (13.0 keV); Fe-L lies below 0.9 keV
    assert names == {"Pb-M", "Fe-K"}
    names = {f.name for f in line_families(["Pb", "Fe"], excitation_kev=50.0)}
    assert names == {"Pb-L", "Pb-M", "Fe-K"}
    all_fams = line_families(excitation_kev=50.0, max_kev=40.0)
    assert len(all_fams) > 100
    assert all(0.9 <= f.main_energy_kev <= 40.0 for f in all_fams)
    assert [f.main_energy_kev for f in all_fams] == sorted(f.main_energy_kev for f in all_fams)


@pytest.mark.parametrize("bad", ["Xx-K", "Pb-Q", "Fe", "", "H-K"])
def test_unknown_family_names_are_refused(bad):
    with pytest.raises(NightwatchError, match="Line family|Element|element list"):
        parse_families([bad]) if bad else parse_families(bad)


def test_detector_width_follows_fano_law():
    det = Detector(fwhm_mn_ka_ev=140.0)
    assert abs(float(det.fwhm_kev(5.8988)) - 0.140) < 1e-9
    w = det.fwhm_kev([1.0, 5.0, 10.0, 20.0])
    assert np.all(np.diff(w) > 0)
    # FWHM^2 is linear in energy
    w2 = det.fwhm_kev(np.array([2.0, 4.0, 6.0])) ** 2
    assert abs((w2[2] - w2[1]) - (w2[1] - w2[0])) < 1e-12
    with pytest.raises(NightwatchError, match="FWHM"):
        Detector(fwhm_mn_ka_ev=5.0)


def test_family_template_unit_area_width_and_escape():
    det = Detector(fwhm_mn_ka_ev=150.0)
    mn = get_family("Mn-K")
    t = family_template(mn, E, det)
    assert abs(t.sum() - 1.0) < 1e-9
    # width of the K-alpha peak (K-alpha1/2 are 11 eV apart: negligible)
    ka = (E > 5.4) & (E < 6.3)
    half = t[ka] >= t[ka].max() / 2
    fwhm = half.sum() * 0.02
    assert abs(fwhm - 0.150) <= 0.021
    # Si escape peak 1.74 keV below K-alpha, with the Reed-Ware fraction
    esc = (E > 5.9 - 1.74 - 0.25) & (E < 5.9 - 1.74 + 0.25)
    expected = float(det.escape_fraction(5.9)[0])
    assert 0.003 < expected < 0.03
    assert abs(t[esc].sum() - expected * 0.88) < 0.3 * expected
    no_escape = family_template(mn, E, Detector(fwhm_mn_ka_ev=150.0, escape=False))
    assert no_escape[esc].sum() < 1e-6


def test_template_refuses_axis_without_the_line():
    short = np.arange(256) * 0.02  # 0 - 5.1 keV
    with pytest.raises(NightwatchError, match="does not reach the main line of Pb-L"):
        family_template(get_family("Pb-L"), short)
    with pytest.raises(NightwatchError, match="strictly increasing"):
        family_template(get_family("Fe-K"), E[::-1])


def test_scatter_and_continuum_shapes():
    e = np.arange(2048) * 0.02 + 0.01  # to 41 keV: both Rh lines on the axis
    s = scatter_templates(e, Detector())
    assert s.shape == (4, e.size)
    np.testing.assert_allclose(s.sum(axis=1), 1.0, atol=1e-9)
    peaks = e[s.argmax(axis=1)]
    assert abs(peaks[0] - 20.216) < 0.03 and abs(peaks[1] - 22.724) < 0.03
    # Compton below Rayleigh, at the mid-angle (112.5 deg) energy, and broader
    assert abs(peaks[2] - float(compton_energy_kev(20.216, 112.5))) < 0.05
    assert (s[2] > s[2].max() / 2).sum() > (s[0] > s[0].max() / 2).sum()
    c = continuum(e, excitation_kev=30.0)
    assert abs(c.sum() - 1.0) < 1e-9
    assert c[e > 30.0].max() == 0.0 and c[e < 0.8].max() < 1e-4 * c.max()


def test_simulate_spectra_expected_counts():
    fams = [get_family("Fe-K"), get_family("Pb-L")]
    lam = simulate_spectra(E, fams, np.array([[1000.0, 500.0]]), continuum_areas=np.array([300.0]), rng=None)
    assert abs(lam.sum() - 1800.0) < 0.5
    noisy = simulate_spectra(E, fams, np.array([[1000.0, 500.0]] * 200), rng=1)
    assert abs(noisy.sum(axis=1).mean() - 1500.0) < 10.0
