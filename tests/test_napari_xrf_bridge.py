"""XRF and Bridge panels end to end on the synthetic painting (tiny model, few epochs)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

PX_UM = 5.0


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_NIGHTWATCH_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """256 px synthetic painting: element maps fitted, tiny-model embeddings on a 16 px grid."""
    from napari_nightwatch.ml.clip import load_clip
    from napari_nightwatch.ml.embed import embed_store, make_grid
    from napari_nightwatch.synth import load_ground_truth, synthesize_painting
    from napari_nightwatch.xrf.maps import fit_store

    path = tmp_path_factory.mktemp("xrf") / "painting.nightwatch.zarr"
    store = synthesize_painting(path, size=256, seed=0)
    gt = load_ground_truth(store)
    fit_store(store, elements=list(gt.families), refine=False)
    engine = load_clip("nightwatch-tiny", "none", device="cpu")
    embed_store(store, engine, make_grid(store, tile=16, stride=16, mask="none"), batch_size=64)
    return path, gt


@pytest.fixture
def viewer_store(make_napari_viewer, prepared, tmp_path):
    path = tmp_path / "p.nightwatch.zarr"
    shutil.copytree(prepared[0], path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-nightwatch")
    return viewer, path, prepared[1]


def test_xrf_panel_maps_and_spectra(viewer_store, qtbot):
    from napari_nightwatch._napari._qt.xrf_widget import XrfWidget
    from napari_nightwatch.project import PaintingStore

    viewer, path, gt = viewer_store
    store = PaintingStore.open(path)
    # the reader already shows the fitted maps: one additive layer per family, on the XRF grid
    names = [ly.name for ly in viewer.layers if ly.metadata.get("nightwatch_kind") == "element_map"]
    assert sorted(names) == sorted(gt.families)
    w = XrfWidget(viewer)
    qtbot.addWidget(w)
    w.elements_edit.setText("Pb-L,Hg-L")
    w.fit_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.runner.last_message == ""
    maps = [ly for ly in viewer.layers if ly.metadata.get("nightwatch_kind") == "element_map"]
    assert [ly.name for ly in maps] == ["Pb-L", "Hg-L"]  # refit replaced the old layers
    hg = viewer.layers["Hg-L"]
    assert hg.blending == "additive" and tuple(hg.colormap.colors[-1][:3]) == pytest.approx((1.0, 0.1, 0.1))
    a = store.xrf_affine
    np.testing.assert_allclose(hg.scale, [a[0, 0] * PX_UM, a[1, 1] * PX_UM])
    np.testing.assert_allclose(hg.translate, a[:2, 2] * PX_UM)
    assert "calibration: E =" in w.calibration_label.text()
    # spectrum under the cursor: the world position of XRF pixel (10, 12) reads that pixel's spectrum
    world = viewer.layers[1].data_to_world((10, 12))
    spec = w.pixel_spectrum_at(world)
    np.testing.assert_allclose(spec, np.asarray(store.xrf_cube()[10, 12].compute(), float))
    marks = {name: e for e, name, _ in w.plot.markers}
    assert marks["Pb-L"] == pytest.approx(10.55, abs=0.05) and marks["Hg-L"] == pytest.approx(9.99, abs=0.05)
    # a rectangle over XRF pixels 4..7 x 5..8 gives their mean spectrum
    xrf = viewer.layers[1]
    corners = np.array([xrf.data_to_world(p) for p in [(3.6, 4.6), (3.6, 8.4), (7.4, 8.4), (7.4, 4.6)]])
    viewer.add_shapes([corners], shape_type="rectangle", name="region")
    w.shapes_combo.setCurrentText("region")
    w.region_button.click()
    np.testing.assert_allclose(w.last_spectrum, np.asarray(store.xrf_cube()[4:8, 5:9].mean(axis=(0, 1)).compute()))


def test_bridge_register_train_predict(viewer_store, qtbot):
    from napari_nightwatch._napari._qt.bridge_widget import BridgeWidget
    from napari_nightwatch.core.geometry import apply_affine
    from napari_nightwatch.project import PaintingStore

    viewer, path, gt = viewer_store
    w = BridgeWidget(viewer)
    qtbot.addWidget(w)
    # control points clicked on the XRF layer and on the mosaic, from the true affine
    xrf_px = np.array([[2.0, 3.0], [28.0, 4.0], [27.0, 29.0], [5.0, 26.0], [15.0, 15.0]])
    xrf_layer = viewer.layers[1]
    viewer.add_points([xrf_layer.data_to_world(p) for p in xrf_px], name="xrf points")
    viewer.add_points(apply_affine(gt.true_affine, xrf_px) * PX_UM, name="mosaic points")
    w.xrf_points_combo.setCurrentText("xrf points")
    w.mosaic_points_combo.setCurrentText("mosaic points")
    w.register_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert w.runner.last_message == ""
    store = PaintingStore.open(path)
    np.testing.assert_allclose(store.xrf_affine, gt.true_affine, atol=1e-6)
    assert w.last_registration["residual_rms_um"] < 1e-3 and "residual RMS" in w.registration_label.text()
    # the XRF layers moved onto the new affine
    np.testing.assert_allclose(xrf_layer.data_to_world((10, 12)), apply_affine(gt.true_affine, [[10, 12]])[0] * PX_UM,
                               atol=1e-6)

    w.refresh_embeddings()
    w.epochs_spin.setValue(4)
    w.train_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=180_000)
    assert w.runner.last_message == ""
    assert w.last_training and w.last_training["encoder_id"]
    assert len(w.losses) >= 1 and np.isfinite(w.losses).all()  # the live loss curve got points
    print(f"\ntrain: largest event-loop gap while the job ran {w.runner.job_max_gap_ms:.1f} ms "
          f"({w.runner.elapsed_s:.2f} s job)")
    assert w.runner.job_max_gap_ms < 100

    w.predict_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.runner.last_message == ""
    names = [ly.name for ly in viewer.layers]
    for fam in gt.families:
        assert f"predicted {fam} (random weights)" in names and fam in names
    pred = viewer.layers[f"predicted {gt.families[0]} (random weights)"]
    np.testing.assert_allclose(pred.scale, [16 * PX_UM] * 2)
    np.testing.assert_allclose(pred.translate, [7.5 * PX_UM] * 2)
    assert "heldout" in pred.metadata and set(pred.metadata["heldout"]) >= {"r", "ssim"}
    assert w.metrics_table.rowCount() == len(gt.families)
    unc = [ly for ly in w.prediction_layers if ly.metadata["nightwatch_kind"] == "prediction_uncertainty"]
    assert unc and not any(ly.visible for ly in unc)
    w.uncertainty_check.setChecked(True)
    assert all(ly.visible for ly in unc)
    w.evidence_check.setChecked(True)
    assert all(ly.visible for ly in w.prediction_layers if ly.metadata["nightwatch_kind"] == "prediction_no_evidence")
