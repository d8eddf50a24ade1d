"""One spectrum file from the command line (issue 16 item 5) and xrf-maps with PyMca configs,
include/exclude and the refinement record (issue 12)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_file
from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.core.spectra import EnergyCalibration
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.xrf.model import Detector
from napari_nightwatch.xrf.pymca_config import write_pymca_config
from napari_nightwatch.xrf.scene import painted_scene
from napari_nightwatch.xrf.single import fit_spectrum_file

STEEL = "pymca-spectra/Steel.spe"
STEEL_CFG = "pymca-spectra/Steel.cfg"


@pytest.fixture(scope="module")
def steel_fit():
    return fit_spectrum_file(shared_file(STEEL), pymca_config=shared_file(STEEL_CFG))


def test_steel_with_its_pymca_config_finds_the_alloy_and_no_escape_phantom(steel_fit):
    d = steel_fit.to_dict()
    found = set(d["sample_families"])
    # NIST SRM 1155 stainless steel: Cr-Ni-Mo on Fe, Mn (SOURCE.md)
    assert {"Fe-K", "Cr-K", "Ni-K", "Mn-K"} <= found
    # Sb-L sits on the Cr K-alpha escape peak (3.67 keV), La-L on the Fe K-alpha one (4.66 keV)
    assert not {"Sb-L", "La-L"} & found
    rows = {r["family"]: r for r in d["families"]}
    # Fe is the matrix: the strongest family, and areas are counts with Poisson errors
    assert max(rows, key=lambda n: rows[n]["area"]) == "Fe-K"
    for r in rows.values():
        assert r["uncertainty"] > 0 and r["area"] >= 0
    # the configuration's calibration carried over and was refined by less than 2 channels
    # (0.012 keV each): PyMca fitted it on this very spectrum
    assert d["settings"]["calibration_from"] == "pymca config"
    assert abs(d["calibration"]["offset_kev"] - -0.00612446976449) < 0.024
    assert d["refinement"]["detector"]["fwhm_mn_ka_ev"] > 100


def test_fit_spectrum_cli_writes_table_json_and_plot(tmp_path, capsys):
    png = tmp_path / "steel.png"
    rc = main(["fit-spectrum", str(shared_file(STEEL)), "--pymca-config", str(shared_file(STEEL_CFG)),
               "--plot", str(png), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"Fe-K", "Cr-K", "Ni-K", "Mn-K"} <= set(out["sample_families"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rc = main(["fit-spectrum", str(shared_file(STEEL)), "--pymca-config", str(shared_file(STEEL_CFG)),
               "--elements", "Fe-K,Cr-K,Ni-K,Mn-K"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Fe-K" in text and "area" in text


def test_fit_spectrum_bad_input_is_one_sentence_and_writes_nothing(tmp_path, capsys):
    png = tmp_path / "x.png"
    bad = tmp_path / "nan.csv"
    bad.write_text("\n".join(["5"] * 500 + ["nan"] + ["5"] * 523))
    cases = [
        # NaN counts
        ["fit-spectrum", str(bad), "--energy-offset-kev", "0", "--energy-gain-kev", "0.02"],
        # a calibration that puts no line on the axis (channel 0 at 200 keV)
        ["fit-spectrum", str(shared_file(STEEL)), "--energy-offset-kev", "200", "--energy-gain-kev", "0.01"],
        # no calibration at all (a bare column of counts)
        ["fit-spectrum", str(tmp_path / "missing.spe")],
    ]
    unknown = tmp_path / "unknown.cfg"
    unknown.write_text("[peaks]\nXx = K\n[detector]\nzero = 0\ngain = 0.01\n[fit]\nenergy = 20\n")
    cases.append(["fit-spectrum", str(shared_file(STEEL)), "--pymca-config", str(unknown)])
    for argv in cases:
        assert main([*argv, "--plot", str(png)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error:" in err, err
        assert not png.exists()


def test_no_line_on_axis_is_refused_by_the_library():
    e = np.linspace(60.0, 80.0, 1024)
    from napari_nightwatch.xrf.analysis import analyse_spectrum

    with pytest.raises(NightwatchError, match="holds no line"):
        analyse_spectrum(e, np.full(1024, 5.0), excitation_kev=50.0)


# ------------------------------------------------------------------------ xrf-maps options
@pytest.fixture(scope="module")
def scene():
    return painted_scene(20, nx=24, seed=5)


def _store(tmp_path, scene):
    from napari_nightwatch.store.sources import write_xrf_cube

    store = PaintingStore.create(tmp_path / "p.nightwatch.zarr")
    cal = EnergyCalibration(scene.offset_kev, scene.gain_kev)
    write_xrf_cube(store, np.round(scene.cube).astype(np.uint16), calibration=cal, pixel_size_um=50.0,
                   source="painted_scene", excitation_kev=50.0)
    return store


def test_xrf_maps_json_reports_the_refinement_and_takes_a_pymca_config(tmp_path, scene, capsys):
    store = _store(tmp_path, scene)
    cfg = write_pymca_config(tmp_path / "ours.cfg", list(scene.names), EnergyCalibration(scene.offset_kev,
                             scene.gain_kev), Detector(), excitation_kev=50.0)
    rc = main(["xrf-maps", str(store.path), "--pymca-config", str(cfg), "--elements", "config", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["elements"]) == set(scene.names)
    ref = out["refinement"]
    assert set(ref["group_scales"]) == set(scene.names)
    assert ref["chi2_after"] <= ref["chi2_before"] * 1.001  # refinement never makes the sum fit worse
    assert ref["calibration"]["gain_kev"] == pytest.approx(scene.gain_kev, rel=0.01)
    # the refinement is stored with the maps (provenance)
    attrs = PaintingStore.open(store.path).root["xrf_maps"].attrs["nightwatch"]
    assert attrs["refinement"]["group_scales"] == ref["group_scales"]


def test_xrf_maps_include_exclude(tmp_path, scene, capsys):
    store = _store(tmp_path, scene)
    drop = scene.names[0]
    rc = main(["xrf-maps", str(store.path), "--exclude", drop.split("-")[0], "--include", "Ti-K", "--json",
               "--overwrite"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert drop not in out["elements"] and "Ti-K" in out["elements"]


def test_xrf_maps_bad_config_writes_nothing(tmp_path, scene, capsys):
    store = _store(tmp_path, scene)
    bad = tmp_path / "bad.cfg"
    bad.write_text("[peaks]\nFe = Q\n[detector]\nzero = 0\ngain = 0.01\n[fit]\nenergy = 20\n")
    assert main(["xrf-maps", str(store.path), "--pymca-config", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not PaintingStore.open(store.path).has("xrf_maps")


# ------------------------------------------------------------------ calibration bound (issue 16 item 3)
def test_calibration_bound_is_the_lines_not_a_fixed_offset():
    from napari_nightwatch.xrf.calibration import check_axis_covers_lines
    from napari_nightwatch.xrf.lines import get_family

    # Bruker over16bit.bcf: channel 0 at -1.90077 keV, 20.006 eV/channel, 4096 channels
    bruker = EnergyCalibration(-1.90077006, 0.020006)
    check_axis_covers_lines(bruker, 4096)
    check_axis_covers_lines(bruker, 4096, [get_family("Fe-K")])
    # far more negative offsets are fine as long as the axis reaches the lines
    check_axis_covers_lines(EnergyCalibration(-5.0, 0.01), 2048, [get_family("Pb-L")])
    with pytest.raises(NightwatchError, match="holds no main line of Pb-L"):
        check_axis_covers_lines(EnergyCalibration(-5.0, 0.01), 1000, [get_family("Pb-L")])  # ends at 5 keV
    with pytest.raises(NightwatchError, match="holds no XRF line"):
        check_axis_covers_lines(EnergyCalibration(-30.0, 0.01), 2048)  # ends at -9.5 keV
    with pytest.raises(NightwatchError, match="holds no XRF line"):
        check_axis_covers_lines(EnergyCalibration(60.0, 0.01), 2048, excitation_kev=50.0)


def test_over16bit_bcf_calibration_is_accepted():
    bruker = pytest.importorskip("rsciio.bruker", reason="rosettasciio is not installed")
    d = bruker.file_reader(str(shared_file("bruker-rsciio/over16bit.bcf")))[-1]
    ax = d["axes"][-1]
    cal = EnergyCalibration(float(ax["offset"]), float(ax["scale"]))
    assert cal.offset_kev < -1.0  # the case the old fixed bound refused
    from napari_nightwatch.xrf.calibration import check_axis_covers_lines

    check_axis_covers_lines(cal, d["data"].shape[-1])
