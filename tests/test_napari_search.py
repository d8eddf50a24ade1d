"""Search panel end to end on the synthetic painting with the tiny model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

PX_UM = 5.0


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_NIGHTWATCH_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A 256 px synthetic painting embedded with the tiny model on a 32 px grid, indexed."""
    from napari_nightwatch.ml.clip import load_clip
    from napari_nightwatch.ml.embed import embed_store, make_grid
    from napari_nightwatch.search.index import build_index
    from napari_nightwatch.synth import synthesize_painting

    path = tmp_path_factory.mktemp("search") / "painting.nightwatch.zarr"
    store = synthesize_painting(path, size=256, seed=0)
    engine = load_clip("nightwatch-tiny", "none", device="cpu")
    grid = make_grid(store, tile=32, stride=32)
    embed_store(store, engine, grid, batch_size=32)
    build_index(store, grid.grid_id, engine.model_id)
    return path


@pytest.fixture
def panel(make_napari_viewer, qtbot, embedded, tmp_path):
    from napari_nightwatch._napari._qt.search_widget import SearchWidget

    path = tmp_path / "p.nightwatch.zarr"
    shutil.copytree(embedded, path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-nightwatch")
    w = SearchWidget(viewer)
    qtbot.addWidget(w)
    assert w.store_edit.text() == str(path)  # picked up from the opened store's layers
    w.refresh_embeddings()
    assert w.embeddings_combo.currentText() == "L0-t32-s32 / nightwatch-tiny__none"
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
    run(qtbot, w)
    gap = w.runner.job_max_gap_ms
    print(f"\nsearch: largest event-loop gap while the job ran {gap:.1f} ms ({w.runner.elapsed_s:.2f} s job); "
          f"adding the 3 result layers took {w.runner.show_s * 1000:.0f} ms on the main thread")
    assert gap < 100
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
    # the current view as exemplar
    viewer.camera.center = (128 * PX_UM, 128 * PX_UM)
    viewer.camera.zoom = 1.0
    w.source_combo.setCurrentText("current view")
    run(qtbot, w)
    assert viewer.layers[-2].name.startswith("hits: exemplar")


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
