"""Search, XRF and Bridge panels end to end on the synthetic painting (tiny model, few epochs).

One module fixture prepares a 256 px synthetic painting once: element maps fitted,
tiny-model embeddings on a 32 px grid (indexed, for search) and a 16 px grid (for the
bridge). Each test works on its own copy.
"""

from __future__ import annotations

import numpy as np
import pytest

from _napari_support import (  # noqa: F401 (fixtures)
    FAMILIES,
    check_responsive,
    idle_gap_ms,
    prepare_painting,
    private_config_dir,
)

PX_UM = 5.0
SEARCH = "L0-t32-s32 / nightwatch-tiny__none"
BRIDGE = "L0-t16-s16 / nightwatch-tiny__none"


@pytest.fixture(scope="module")
def prepared(synthetic_store_factory, tmp_path_factory):
    from napari_nightwatch.synth import load_ground_truth

    path = prepare_painting(synthetic_store_factory(256, 0),
                            tmp_path_factory.mktemp("workflow") / "painting.nightwatch.zarr")
    return path, load_ground_truth(path)


@pytest.fixture
def viewer_store(make_napari_viewer, store_copy):
    """A viewer showing the store as the reader does (mosaic, XRF total, element maps)."""
    path, gt = store_copy
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-nightwatch")
    return viewer, path, gt


@pytest.fixture
def panel(make_napari_viewer, qtbot, store_copy):
    """A Search panel over a viewer that shows the mosaic only (fast)."""
    from napari_nightwatch._napari._qt.common import add_layer_data
    from napari_nightwatch._napari._qt.search_widget import SearchWidget
    from napari_nightwatch._napari.layers import mosaic_layer
    from napari_nightwatch.store import PaintingStore

    path, _ = store_copy
    viewer = make_napari_viewer()
    add_layer_data(viewer, mosaic_layer(PaintingStore.open(path)))
    w = SearchWidget(viewer)
    qtbot.addWidget(w)
    assert w.store_edit.text() == str(path)  # picked up from the mosaic layer
    w.refresh_embeddings()
    w.embeddings_combo.setCurrentText(SEARCH)
    assert w.embeddings_combo.currentText() == SEARCH
    return viewer, w


def run(qtbot, w):
    w.search_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert w.runner.last_message == ""


def test_text_search_layers_table_and_camera(panel, qtbot):
    from napari.layers import Image, Points, Shapes

    viewer, w = panel
    w.source_combo.setCurrentText("text")
    w.text_edit.setText("red particles")
    w.k_spin.setValue(5)
    idle = idle_gap_ms(qtbot)
    run(qtbot, w)
    check_responsive("search", w.runner, idle)
    sim, pts, boxes = viewer.layers[-3:]
    assert isinstance(sim, Image) and isinstance(pts, Points) and isinstance(boxes, Shapes)
    assert sim.name == "similarity: red particles (random weights)"
    assert pts.name == "hits: red particles (random weights)"
    assert sim.data.shape == (8, 8) and sim.blending == "additive"
    # heat-map pixels sit on tile centres: tile (r, c) of a 32 px grid is centred at 32 r + 15.5 px
    np.testing.assert_allclose(sim.scale, [32 * PX_UM] * 2)
    np.testing.assert_allclose(sim.data_to_world((2, 3)), np.array([2 * 32 + 15.5, 3 * 32 + 15.5]) * PX_UM)
    assert list(pts.features["rank"]) == [1, 2, 3, 4, 5]
    assert set(pts.features["query"]) == {"red particles"}
    scores = pts.features["score"].to_numpy()
    assert np.all(np.diff(scores) <= 1e-6) and np.isfinite(scores).all()
    # each hit's score is the heat-map value of its tile
    for (y, x), s in zip(pts.data, scores, strict=True):
        r, c = (np.array([y, x]) / PX_UM - 15.5) / 32
        assert sim.data[int(round(r)), int(round(c))] == pytest.approx(s, abs=2e-3)
    assert len(boxes.data) == 5 and w.table.rowCount() == 5
    # clicking a row centres the camera on that hit; arrow keys step to the next one
    w.table.setCurrentCell(2, 0)
    np.testing.assert_allclose(viewer.camera.center[-2:], pts.data[2])
    assert viewer.camera.zoom > 1.0
    from qtpy.QtCore import Qt

    w.table.setFocus()
    qtbot.keyClick(w.table, Qt.Key.Key_Down)
    np.testing.assert_allclose(viewer.camera.center[-2:], pts.data[3])
    # a negative changes the ranking; the old layers are kept
    n = len(viewer.layers)
    w.negative_edit.setText("white ground")
    run(qtbot, w)
    assert len(viewer.layers) == n + 3 and viewer.layers[-2].name == "hits: red particles not white ground (random weights)"
    assert not np.allclose(viewer.layers[-2].features["score"].to_numpy(), scores)


def test_exemplar_rectangle_and_current_view(panel, qtbot):
    viewer, w = panel
    # a rectangle exactly over tile (3, 4): its own tile comes first with score ~1
    y0, x0 = 3 * 32, 4 * 32
    corners = (np.array([[y0, x0], [y0, x0 + 32], [y0 + 32, x0 + 32], [y0 + 32, x0]]) - 0.5) * PX_UM
    viewer.add_shapes([corners], shape_type="rectangle", name="exemplar")
    w.source_combo.setCurrentText("Shapes rectangle")
    w.shapes_combo.setCurrentText("exemplar")
    run(qtbot, w)
    pts = viewer.layers[-2]
    assert pts.features["tile"][0] == 3 * 8 + 4
    assert pts.features["score"][0] == pytest.approx(1.0, abs=2e-3)
    assert pts.name.startswith("hits: exemplar 96,128-128,160")
    # an image file holding exactly the pixels of tile (5, 2) finds that tile first
    from PIL import Image

    from napari_nightwatch.store import PaintingStore

    mosaic = np.asarray(PaintingStore.open(w.store_path()).mosaic_levels()[0][160:192, 64:96].compute())
    Image.fromarray(mosaic).save(w.store_path().parent / "detail.png")
    w.source_combo.setCurrentText("image file")
    w.image_edit.setText(str(w.store_path().parent / "detail.png"))
    run(qtbot, w)
    pts = viewer.layers[-2]
    assert pts.name == "hits: image detail.png (random weights)"
    assert pts.features["tile"][0] == 5 * 8 + 2 and pts.features["score"][0] == pytest.approx(1.0, abs=5e-3)
    # the current view as exemplar
    viewer.camera.center = (128 * PX_UM, 128 * PX_UM)
    viewer.camera.zoom = 1.0
    w.source_combo.setCurrentText("current view")
    run(qtbot, w)
    assert viewer.layers[-2].name.startswith("hits: exemplar")


def test_pigment_search_and_a_composition_filtered_exemplar(panel, qtbot):
    """The pigment door in the panel: completion over every language, the same layers as other searches,
    the maps column; a Where filter narrows an exemplar search to the tiles that pass."""
    from napari.layers import Image, Points, Shapes

    from napari_nightwatch.search.composition import tile_composition, where_tiles

    viewer, w = panel
    model = w.pigment_edit.completer().model()
    names = [model.index(i, 0).data() for i in range(model.rowCount())]
    assert {"smalt", "vermilion", "loodwit", "Bleiweiß"} <= set(names)
    w.source_combo.setCurrentText("pigment")
    w.pigment_edit.setText("vermilion")
    w.k_spin.setValue(4)
    run(qtbot, w)
    heat, pts, boxes = viewer.layers[-3:]
    assert isinstance(heat, Image) and isinstance(pts, Points) and isinstance(boxes, Shapes)
    assert heat.name == "pigment score: pigment vermilion" and pts.name == "hits: pigment vermilion"
    assert w.table.rowCount() == 4 and w.table.item(0, 4).text() == "measured"
    # an exemplar rectangle, only where Hg is high
    y0, x0 = 3 * 32, 4 * 32
    corners = (np.array([[y0, x0], [y0, x0 + 32], [y0 + 32, x0 + 32], [y0 + 32, x0]]) - 0.5) * PX_UM
    viewer.add_shapes([corners], shape_type="rectangle", name="exemplar")
    w.source_combo.setCurrentText("Shapes rectangle")
    w.shapes_combo.setCurrentText("exemplar")
    w.where_edit.setText("Hg-L > 0.5")
    run(qtbot, w)
    pts = viewer.layers[-2]
    assert pts.name == "hits: exemplar 96,128-128,160 where Hg-L > 0.5 (random weights)"
    comp = tile_composition(w.store_path(), "L0-t32-s32")
    passes, _ = where_tiles(comp, "Hg-L > 0.5")
    assert 0 < len(pts.data) and set(pts.features["tile"]) <= set(comp.tiles[passes].tolist())
    # a filter naming a family the store has no map for: one sentence, no layers
    n = len(viewer.layers)
    w.where_edit.setText("Zn-K > 0.1")
    w.search_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert "Zn-K" in w.runner.last_message and len(viewer.layers) == n
    w.where_edit.setText("")


def test_empty_text_is_a_clear_message(panel, qtbot, monkeypatch):
    viewer, w = panel
    shown = []
    monkeypatch.setattr("napari_nightwatch._napari._qt.common.notify_error", shown.append)
    n = len(viewer.layers)
    w.source_combo.setCurrentText("text")
    w.text_edit.setText("  ")
    w.search_button.click()
    assert shown == ["Type what to look for in the Text box (for example 'craquelure')."]
    assert len(viewer.layers) == n and not w.runner.running


def test_xrf_panel_maps_and_spectra(viewer_store, qtbot):
    from napari_nightwatch._napari._qt.xrf_widget import XrfWidget
    from napari_nightwatch.store import PaintingStore

    viewer, path, gt = viewer_store
    store = PaintingStore.open(path)
    # the reader already shows the fitted maps: one additive layer per family, on the XRF grid
    names = [ly.name for ly in viewer.layers if ly.metadata.get("nightwatch_kind") == "element_map"]
    assert sorted(names) == sorted(FAMILIES)
    w = XrfWidget(viewer)
    qtbot.addWidget(w)
    w.elements_edit.setText("Pb-L,Hg-L")
    w.fit_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.runner.last_message == ""
    maps = [ly for ly in viewer.layers if ly.metadata.get("nightwatch_kind") == "element_map"]
    assert [ly.name for ly in maps] == ["Pb-L", "Hg-L"]  # refit replaced the old layers
    # the per-pixel error correlation of each overlapping pair, hidden, on the maps' grid
    from napari_nightwatch.xrf.maps import load_correlation

    pairs, corr = load_correlation(PaintingStore.open(path))
    over = [ly for ly in viewer.layers if ly.metadata.get("nightwatch_kind") == "overlap_correlation"]
    assert [ly.name for ly in over] == [f"error correlation {p}" for p in pairs]
    for k, ly in enumerate(over):
        assert not ly.visible and tuple(ly.contrast_limits) == (-1.0, 1.0)
        np.testing.assert_array_equal(ly.data, np.nan_to_num(corr[k], nan=0.0))
        np.testing.assert_allclose(ly.scale, maps[0].scale)
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
    from napari_nightwatch.store import PaintingStore

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
    w.embeddings_combo.setCurrentText(BRIDGE)
    w.epochs_spin.setValue(4)
    idle = idle_gap_ms(qtbot)
    w.train_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=180_000)
    assert w.runner.last_message == ""
    assert w.last_training and w.last_training["encoder_id"]
    assert len(w.losses) >= 1 and np.isfinite(w.losses).all()  # the live loss curve got points
    check_responsive("train", w.runner, idle)

    w.predict_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    assert w.runner.last_message == ""
    names = [ly.name for ly in viewer.layers]
    gt_fams = FAMILIES
    for fam in gt_fams:
        assert f"predicted {fam} (random weights)" in names and fam in names
    pred = viewer.layers["predicted Pb-L (random weights)"]
    np.testing.assert_allclose(pred.scale, [16 * PX_UM] * 2)
    np.testing.assert_allclose(pred.translate, [7.5 * PX_UM] * 2)
    assert "heldout" in pred.metadata and set(pred.metadata["heldout"]) >= {"r", "ssim"}
    assert w.metrics_table.rowCount() == len(gt_fams)
    assert not [ly for ly in viewer.layers if ly.name.startswith("uncertainty ")]
    # the trained encoder opens the third door: search from a clicked XRF pixel
    from napari_nightwatch._napari._qt.search_widget import SearchWidget

    s = SearchWidget(viewer)
    qtbot.addWidget(s)
    s.refresh_embeddings()
    s.embeddings_combo.setCurrentText(BRIDGE)
    s.pick_xrf_pixel(xrf_layer.data_to_world((10, 12)))
    assert (s.xrf_y.value(), s.xrf_x.value()) == (10, 12) and s.source_combo.currentText() == "XRF pixel"
    s.k_spin.setValue(5)
    s.search_button.click()
    qtbot.waitUntil(lambda: not s.runner.running, timeout=60_000)
    assert s.runner.last_message == ""
    assert viewer.layers[-2].name == "hits: XRF pixel 10,12 (random weights)" and len(viewer.layers[-2].data) == 5
    w.uncertainty_check.setChecked(True)
    unc = [ly for ly in viewer.layers if ly.metadata.get("nightwatch_kind") == "prediction_uncertainty"]
    assert len(unc) == len(gt_fams) and all(ly.visible for ly in unc)
    np.testing.assert_allclose([unc[0].scale, unc[0].translate], [pred.scale, pred.translate])
    w.uncertainty_check.setChecked(False)
    assert not any(ly.visible for ly in unc)
    w.evidence_check.setChecked(True)
    ne = [ly for ly in viewer.layers if ly.metadata.get("nightwatch_kind") == "prediction_no_evidence"]
    assert len(ne) == len(gt_fams) and all(ly.visible for ly in ne)


def test_demo_viewer_shows_every_result(make_napari_viewer, store_copy, qtbot):
    """What `make demo` shows offline: painting, element maps, the pigment search in front (layers, table, the
    Pigment box filled), the exemplar search under it, no text search, predictions, panels."""
    from napari_nightwatch._napari.demo_viewer import add_demo_layers
    from napari_nightwatch.demo import _DemoEncoders, _search_summary
    from napari_nightwatch.ml.bridge import predict_xrf_maps, train_xrf_bridge
    from napari_nightwatch.ml.clip import load_clip
    from napari_nightwatch.search.run import Query, run_query
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.synth import load_ground_truth

    path, _ = store_copy
    store = PaintingStore.open(path, mode="r+")
    truth = load_ground_truth(store)
    engine = load_clip("nightwatch-tiny", "none", device="cpu")
    gid = "L0-t32-s32"
    pigment = run_query(store, Query(pigment="vermilion", grid_id=gid, k=4, with_map=True), None)
    exemplar = run_query(store, Query(region=tuple(float(v) for v in pigment.hits[0].box), grid_id=gid,
                                      model_id=engine.model_id, k=4, with_map=True), _DemoEncoders(engine))
    suffix = " (random weights)"
    searches = [_search_summary(exemplar, "exemplar", truth, "vermilion", suffix),
                _search_summary(pigment, "pigment", truth, "vermilion")]
    train = train_xrf_bridge(store, grid_id="L0-t16-s16", image_model_id=engine.model_id, epochs=2)
    pred = predict_xrf_maps(store, encoder_id=train["encoder_id"])
    result = {"store": str(path), "random_weights": True, "suffix": suffix, "grid_id": gid,
              "searches": searches, "predicted": pred["name"]}
    viewer = make_napari_viewer()
    panels = add_demo_layers(viewer, result)
    names = [ly.name for ly in viewer.layers]
    assert "hits: pigment vermilion" in names and "pigment score: pigment vermilion" in names
    ex = exemplar.label
    assert f"hits: {ex} (random weights)" in names and f"similarity: {ex} (random weights)" in names
    assert not viewer.layers[f"similarity: {ex} (random weights)"].visible  # one heat map at a time
    assert not any("blue pigment particles" in n for n in names)  # no random-weights text search
    assert "predicted Hg-L (random weights)" in names and "Hg-L" in names
    assert panels["Search"].table.rowCount() == 4
    assert panels["Search"].source_combo.currentText() == "pigment"
    assert panels["Search"].pigment_edit.text() == "vermilion"
    assert panels["Search"].table.item(0, 4).text() == "measured"
    np.testing.assert_allclose(viewer.layers["hits: pigment vermilion"].data[0],
                               (np.array(pigment.hits[0].box[:2]) + 16 - 0.5) * PX_UM)
