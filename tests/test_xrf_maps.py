"""Element maps in the painting store, spectra for queries, scan artefacts and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import Cancelled, NightwatchError
from napari_nightwatch.core.spectra import EnergyCalibration
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.xrf.artefacts import comb_strength, correct_row_shift, estimate_row_shift
from napari_nightwatch.xrf.maps import (
    export_tiffs,
    fit_store,
    load_correlation,
    load_element_maps,
    load_uncertainty,
)
from napari_nightwatch.xrf.scene import painted_scene
from napari_nightwatch.xrf.spectra import (
    mean_spectrum,
    rebin_spectrum,
    spectrum_from_file,
    write_spectrum_csv,
)


@pytest.fixture(scope="module")
def scene():
    return painted_scene(24, nx=40, seed=3)


def _store(tmp_path, cube, scene, name="p"):
    from napari_nightwatch.store.sources import write_xrf_cube

    store = PaintingStore.create(tmp_path / f"{name}.nightwatch.zarr")
    cal = EnergyCalibration(scene.offset_kev, scene.gain_kev)
    write_xrf_cube(store, cube, calibration=cal, pixel_size_um=50.0, source="painted_scene", excitation_kev=50.0)
    return store


def _r(a, b):
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_fit_store_round_trip_layout_and_accuracy(tmp_path, scene):
    cube = np.round(scene.cube).astype(np.uint16)
    store = _store(tmp_path, cube, scene)
    seen = []
    summary = fit_store(store, "auto", progress=lambda d, t, s: seen.append((d, t)))
    assert set(summary["elements"]) == set(scene.names)
    assert summary["calibration_refined"] and summary["calibration_max_residual_ev"] < 20
    assert summary["spectra_per_second"] > 0 and seen[-1][0] == seen[-1][1]
    # layout: NGFF 0.5 image (c, y, x) with named channels, uncertainty and chi2 beside it
    store = PaintingStore.open(store.path)
    assert store.is_complete("xrf_maps")
    g = store.root["xrf_maps"]
    ome = g.attrs["ome"]
    assert ome["version"] == "0.5"
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "y", "x"]
    labels = [c["label"] for c in ome["omero"]["channels"]]
    assert labels == summary["elements"]
    assert all(len(c["color"]) == 6 and int(c["color"], 16) >= 0 for c in ome["omero"]["channels"])
    assert g.attrs["nightwatch"]["colormaps"][labels.index("Pb-L")] == "gray"
    assert g["0"].shape == (len(labels), 24, 40) and g["0"].dtype == np.float32
    assert g["uncertainty"].shape == g["0"].shape and g["chi2"].shape == (24, 40)
    assert store.summary()["element_maps"] == labels
    names, maps = load_element_maps(store)
    _, unc, chi2 = load_uncertainty(store)
    for name in ("Pb-L", "Fe-K", "Hg-L", "As-K"):
        truth = scene.truth[..., scene.names.index(name)]
        assert _r(maps[names.index(name)], truth) >= 0.98, name
    assert np.all(unc[np.isfinite(unc)] >= 0) and 0.7 < np.nanmedian(chi2) < 1.5
    # Pb-L / As-K: the per-pixel error correlation of the overlap is stored and summarised
    pairs, corr = load_correlation(store)
    pb_as = next(p for p in pairs if set(p.split("/")) == {"Pb-L", "As-K"})  # in fit order
    assert corr.shape == (len(pairs), 24, 40)
    pa = corr[pairs.index(pb_as)]
    assert np.all(np.abs(pa[np.isfinite(pa)]) <= 1) and np.nanmedian(pa) < -0.1
    # the summary's median is over every pixel of this small cube (the sampling step is 1)
    assert summary["overlap_correlation"][pb_as]["median"] == pytest.approx(float(np.nanmedian(pa)), abs=1e-3)
    # TIFF export: one float32 file per family on the cube's pixel grid
    import tifffile

    paths = export_tiffs(store, tmp_path / "tif")
    assert sorted(p.name for p in paths) == sorted(f"{n}.tif" for n in names)
    t = tifffile.imread(tmp_path / "tif" / "Pb-L.tif")
    assert t.dtype == np.float32 and t.shape == (24, 40)
    np.testing.assert_array_equal(t, maps[names.index("Pb-L")])


def test_explicit_elements_nan_pixel_and_resume(tmp_path, scene):
    cube = scene.cube.copy()
    cube[5, 7, 300] = np.nan  # a dead pixel: masked, not fatal
    store = _store(tmp_path, cube, scene, "nan")
    state = {"n": 0}

    def cancel_after_two(done, total, stage):
        if done >= 2 and done < total:
            raise Cancelled()

    # chunks of the synthetic cube are small: interrupt, then resume from the done-mask
    with pytest.raises(Cancelled):
        fit_store(store, "Pb-L,As-K,Fe-K", refine=False, workers=1, block=(8, 8), progress=cancel_after_two)
    assert not store.is_complete("xrf_maps")
    done_before = int(np.asarray(store.root["xrf_maps/done"][...]).sum())
    assert done_before >= 1

    def count(done, total, stage):
        state["n"] += 1

    summary = fit_store(store, ["Pb-L", "As-K", "Fe-K"], refine=False, workers=1, block=(8, 8), progress=count)
    assert summary["chunks_resumed"] == done_before
    names, maps = load_element_maps(store)
    assert names == ["Fe-K", "As-K", "Pb-L"] or names == ["Pb-L", "As-K", "Fe-K"]
    assert np.isnan(maps[:, 5, 7]).all() and np.isfinite(maps[:, 5, 8]).all()


def test_bad_store_inputs(tmp_path, scene):
    store = _store(tmp_path, np.zeros((4, 4, scene.cube.shape[-1]), np.uint16), scene, "zero")
    with pytest.raises(NightwatchError, match="zero counts"):
        fit_store(store)
    store2 = _store(tmp_path, np.round(scene.cube[:4, :4]).astype(np.uint16), scene, "bad")
    with pytest.raises(NightwatchError, match="Element 'Xx'|Line family"):
        fit_store(store2, "Xx-K")
    with pytest.raises(NightwatchError, match="does not reach the main line of Sn-K"):
        fit_store(store2, "Sn-K")  # 25 keV: beyond the 20.5 keV axis
    with pytest.raises(NightwatchError, match="50.0 keV excitation"):
        fit_store(store2, "U-K")  # the 116 keV K edge: not excited by a 50 kV tube


def test_spectra_for_queries(tmp_path, scene):
    store = _store(tmp_path, scene.cube, scene, "q")
    one = mean_spectrum(store, pixel=(3, 4))
    np.testing.assert_allclose(one, scene.cube[3, 4])
    box = mean_spectrum(store, region=(2, 3, 6, 9))
    np.testing.assert_allclose(box, scene.cube[2:6, 3:9].reshape(-1, box.size).mean(0), rtol=1e-6)
    mask = np.zeros((24, 40), bool)
    mask[10:12, 30:33] = True
    np.testing.assert_allclose(mean_spectrum(store, mask=mask), scene.cube[10:12, 30:33].reshape(-1, box.size).mean(0),
                               rtol=1e-6)
    with pytest.raises(NightwatchError, match="outside"):
        mean_spectrum(store, region=(0, 0, 30, 5))
    with pytest.raises(NightwatchError, match="exactly one"):
        mean_spectrum(store)
    # a file spectrum on another axis comes back onto the cube's axis with its counts
    e_cube = store.xrf_energies()
    e_file = 0.005 + 0.0137 * np.arange(1400)
    fine = rebin_spectrum(box, e_cube, e_file)
    p = write_spectrum_csv(tmp_path / "s.csv", e_file, fine)
    back = spectrum_from_file(p, store.xrf_calibration, e_cube.size)
    inside = (e_cube > 0.5) & (e_cube < 18.0)
    assert abs(back[inside].sum() / box[inside].sum() - 1) < 0.01
    assert _r(back[inside], box[inside]) > 0.99


def test_row_shift_estimate_and_correction():
    from scipy.ndimage import gaussian_filter, shift

    rng = np.random.default_rng(1)
    img = gaussian_filter((gaussian_filter(rng.random((64, 96)), 3) > 0.5).astype(float), 1) * 100
    for s in (0.7, -1.3):
        bad = img.copy()
        bad[1::2] = shift(img[1::2], (0, s), order=1, mode="nearest")
        est = estimate_row_shift(bad)
        assert abs(est - s) < 0.1
        fixed = correct_row_shift(bad, est)
        assert comb_strength(fixed) < 1.1 * comb_strength(img) < comb_strength(bad)
    cube = np.repeat(bad[..., None], 3, axis=2)
    np.testing.assert_allclose(correct_row_shift(cube, est)[..., 1], correct_row_shift(bad, est))


def test_cli_xrf_maps_and_spectrum(tmp_path, scene, capsys):
    store = _store(tmp_path, np.round(scene.cube).astype(np.uint16), scene, "cli")
    assert main(["xrf-maps", str(store.path), "--elements", "Pb-L,Hg-L,Fe-K,Ca-K", "--export",
                 str(tmp_path / "t"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["elements"] == ["Ca-K", "Fe-K", "Hg-L", "Pb-L"] or set(out["elements"]) == {"Pb-L", "Hg-L", "Fe-K", "Ca-K"}
    assert out["spectra_per_second"] > 0 and "calibration_residual_ev" in out and out["time_s"] > 0
    assert (tmp_path / "t" / "Hg-L.tif").exists()
    assert main(["spectrum", str(store.path), "--pixel", "3,4", "--out", str(tmp_path / "px.csv"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert abs(res["total_counts"] - float(scene.cube[3, 4].sum())) < 1.0
    got = np.loadtxt(tmp_path / "px.csv", delimiter=",")
    assert got.shape == (scene.cube.shape[-1], 2)
    assert main(["spectrum", str(store.path), "--region", "0,0,2,2"]) == 0
    assert main(["xrf-maps", str(store.path), "--elements", "Qq-K"]) == 2
    assert "Qq" in capsys.readouterr().err
    assert main(["xrf-maps", str(store.path), "--elements", "Fe-K", "--energy-offset-kev", "0.01",
                 "--energy-gain-kev", "-0.02"]) == 2
    assert "gain" in capsys.readouterr().err
