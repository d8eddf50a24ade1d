"""Search and Bridge panel paths with no GUI test elsewhere: spectrum queries and auto-refined registration.

One module fixture prepares a 256 px synthetic painting once (fitted maps, tiny-model
embeddings on a 16 px grid, a spectrum encoder trained for a few epochs). The search
tests compare the panel with the library call the panel stands for; the registration
test compares the stored affine with the painting's true one.
"""

from __future__ import annotations

import numpy as np
import pytest

from _napari_support import (  # noqa: F401 (fixtures)
    click_and_wait,
    prepare_painting,
    private_config_dir,
)

GRID = "L0-t16-s16"
MODEL = "nightwatch-tiny__none"
#: the XRF pixels whose centres lie in the drawn rectangle: rows 4..7, columns 5..8
XRF_BOX = (4, 5, 8, 9)


@pytest.fixture(scope="module")
def prepared(synthetic_store_factory, tmp_path_factory):
    from napari_nightwatch.synth import load_ground_truth

    path = prepare_painting(synthetic_store_factory(256, 0), tmp_path_factory.mktemp("sources") / "p.nightwatch.zarr",
                            search_grid=False, bridge_epochs=2)
    return path, load_ground_truth(path)


@pytest.fixture
def painting_viewer(make_napari_viewer, store_copy):
    """A viewer showing the mosaic and the XRF total counts (as the reader places them)."""
    from napari_nightwatch._napari._qt.common import add_layer_data
    from napari_nightwatch._napari.layers import mosaic_layer, xrf_total_layer
    from napari_nightwatch.store import PaintingStore

    path, gt = store_copy
    store = PaintingStore.open(path)
    viewer = make_napari_viewer()
    add_layer_data(viewer, mosaic_layer(store))
    xrf = add_layer_data(viewer, xrf_total_layer(store))
    return viewer, xrf, path, gt


@pytest.fixture
def search_panel(painting_viewer, qtbot, monkeypatch):
    """A Search panel on the 16 px grid; ``queries`` records each spectrum query the panel builds."""
    import napari_nightwatch.ml.bridge as xb
    from napari_nightwatch._napari._qt.search_widget import SearchWidget

    queries: list[tuple[dict, np.ndarray, str]] = []
    library = xb.spectrum_query_vector

    def recorded(store, **kwargs):
        vec, model_id = library(store, **kwargs)
        queries.append((kwargs, vec, model_id))
        return vec, model_id

    monkeypatch.setattr(xb, "spectrum_query_vector", recorded)
    viewer, xrf, path, _ = painting_viewer
    w = SearchWidget(viewer)
    qtbot.addWidget(w)
    assert w.store_edit.text() == str(path)
    w.refresh_embeddings()
    w.embeddings_combo.setCurrentText(f"{GRID} / {MODEL}")
    assert w.embeddings_combo.currentText() == f"{GRID} / {MODEL}"
    w.k_spin.setValue(5)
    return viewer, xrf, w, queries


def library_search(path, **query):
    """The library path the panel stands for: query vector, top hits and similarity map."""
    from napari_nightwatch.ml.bridge import spectrum_query_vector
    from napari_nightwatch.search.query import search, similarity_map
    from napari_nightwatch.store import PaintingStore

    store = PaintingStore.open(path)
    vec, model_id = spectrum_query_vector(store, grid_id=GRID, **query)
    hits = search(store, vec, grid_id=GRID, model_id=model_id, k=5)
    smap, _, _ = similarity_map(store, vec, grid_id=GRID, model_id=model_id)
    return vec, model_id, hits, smap


def check_result_layers(viewer, w, name: str, hits, smap) -> None:
    """The panel's three new layers and table show exactly the library's hits and heat map."""
    from napari.layers import Image, Points, Shapes

    sim, pts, boxes = viewer.layers[-3:]
    assert isinstance(sim, Image) and isinstance(pts, Points) and isinstance(boxes, Shapes)
    assert (sim.name, pts.name, boxes.name) == (f"similarity: {name}", f"hits: {name}", f"hit boxes: {name}")
    assert sim.data.shape == (16, 16)
    np.testing.assert_allclose(w.last_result.scores_map, smap, atol=1e-6)
    assert list(pts.features["rank"]) == [1, 2, 3, 4, 5]
    assert set(pts.features["query"]) == {name.removesuffix(" (random weights)")}
    assert list(pts.features["tile"]) == [h.tile for h in hits]
    np.testing.assert_allclose(pts.features["score"], [h.score for h in hits], atol=1e-6)
    assert list(boxes.features["tile"]) == [h.tile for h in hits] and len(boxes.data) == 5
    assert w.table.rowCount() == 5 and float(w.table.item(0, 1).text()) == pytest.approx(hits[0].score, abs=1e-4)


def test_search_from_a_rectangle_on_the_xrf_layer(search_panel, qtbot):
    viewer, xrf, w, queries = search_panel
    # a rectangle drawn in micrometres around the centres of XRF pixels 4..7 x 5..8
    corners = np.array([xrf.data_to_world(p) for p in [(3.6, 4.6), (3.6, 8.4), (7.4, 8.4), (7.4, 4.6)]])
    viewer.add_shapes([corners], shape_type="rectangle", name="spectrum region")
    w.source_combo.setCurrentText("XRF rectangle")
    w.shapes_combo.setCurrentText("spectrum region")
    click_and_wait(qtbot, w.search_button, w.runner)
    # the panel asked the library for the mean spectrum of exactly those pixels
    (kwargs, vec, model_id), = queries
    assert kwargs["xrf_region"] == XRF_BOX and kwargs["spectrum_file"] is None and kwargs["xrf_pixel"] is None
    lib_vec, lib_model, hits, smap = library_search(w.store_path(), xrf_region=XRF_BOX)
    assert model_id == lib_model == MODEL
    np.testing.assert_allclose(vec, lib_vec, atol=1e-6)
    check_result_layers(viewer, w, "XRF region 4,5-8,9 (random weights)", hits, smap)


def test_search_from_a_spectrum_file(search_panel, qtbot):
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.xrf.spectra import write_spectrum_csv

    viewer, _, w, queries = search_panel
    store = PaintingStore.open(w.store_path())
    y0, x0, y1, x1 = XRF_BOX
    counts = np.asarray(store.xrf_cube()[y0:y1, x0:x1].mean(axis=(0, 1)).compute(), float)
    csv = write_spectrum_csv(w.store_path().parent / "region.csv", store.xrf_energies(), counts)
    w.source_combo.setCurrentText("spectrum file")
    w.spectrum_edit.setText(str(csv))
    click_and_wait(qtbot, w.search_button, w.runner)
    (kwargs, vec, model_id), = queries
    assert kwargs["spectrum_file"] == str(csv) and kwargs["xrf_region"] is None
    lib_vec, lib_model, hits, smap = library_search(w.store_path(), spectrum_file=csv)
    assert model_id == lib_model == MODEL
    np.testing.assert_allclose(vec, lib_vec, atol=1e-6)
    check_result_layers(viewer, w, "spectrum region.csv (random weights)", hits, smap)
    # the file holds that region's mean spectrum (6 significant digits): the same query as the region itself
    region_vec, _, region_hits, _ = library_search(w.store_path(), xrf_region=XRF_BOX)
    assert float(vec @ region_vec) > 0.999 and hits[0].tile == region_hits[0].tile


def test_bridge_auto_refine_without_control_points(painting_viewer, qtbot):
    from napari_nightwatch._napari._qt.bridge_widget import BridgeWidget
    from napari_nightwatch.core.geometry import apply_affine
    from napari_nightwatch.store import PaintingStore

    viewer, xrf, path, gt = painting_viewer
    store = PaintingStore.open(path, mode="r+")
    px = float(gt.xrf_pixel)
    ny, nx = store.xrf_shape
    corners = np.array([[0, 0], [0, nx - 1], [ny - 1, 0], [ny - 1, nx - 1]], float)

    def corner_error_xrf_px(affine) -> float:
        return float(np.abs(apply_affine(affine, corners) - apply_affine(gt.true_affine, corners)).max() / px)

    # the nominal affine of a 256 px painting is already within a pixel of the truth, so start
    # 3 and 2 XRF pixels off it: the refinement then has a real distance to cover
    np.testing.assert_allclose(store.xrf_affine, gt.nominal_affine)
    start = np.array([[1, 0, 3 * px], [0, 1, -2 * px], [0, 0, 1.0]]) @ gt.nominal_affine
    store.set_xrf_affine(start, method="test start")
    w = BridgeWidget(viewer)
    qtbot.addWidget(w)
    assert w.store_edit.text() == str(path)
    assert w.xrf_points_combo.count() == 0  # no control points at all
    w.auto_check.setChecked(True)
    click_and_wait(qtbot, w.register_button, w.runner)
    after = PaintingStore.open(path).xrf_affine
    assert corner_error_xrf_px(start) > 2.0
    assert corner_error_xrf_px(after) < 1.0, f"auto-refine left {corner_error_xrf_px(after):.2f} XRF px at the corners"
    d = w.last_registration
    assert d["method"] == "auto" and d["score"] > d["score_before"]
    np.testing.assert_allclose(d["affine"], after)
    assert w.registration_label.text().startswith("auto (affine); agreement ")
    assert w.registration_label.text().endswith("; 1 layers moved")
    # the XRF layer follows the stored affine (micrometres = level-0 px x pixel size)
    np.testing.assert_allclose(xrf.data_to_world((10, 12)), apply_affine(after, [[10, 12]])[0] * store.mosaic_pixel_size_um,
                               atol=1e-6)
