"""Layer conversion, reader, writers and manifest: micrometre placement checked against the core's affines."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_nightwatch.core.spectra import EnergyCalibration
from napari_nightwatch.core.tiling import TileGrid
from napari_nightwatch.store import PaintingStore

PX_UM = 5.0
# XRF pixel (y, x) -> level-0 mosaic pixel: 8x coarser, shifted by a known offset
AFFINE = np.array([[8.0, 0.0, 3.5], [0.0, 8.0, 2.5], [0.0, 0.0, 1.0]])


def make_store(path, affine=AFFINE, size=(600, 520)):
    """A small store with a 2-level RGB mosaic and a 64-channel XRF cube with a known affine."""
    from napari_nightwatch.store.sources import write_mosaic_array, write_xrf_cube

    rng = np.random.default_rng(0)
    store = PaintingStore.create(path)
    img = rng.integers(0, 255, size=size + (3,), dtype=np.uint8)
    write_mosaic_array(store, img, pixel_size_um=PX_UM, source="test")
    cube = rng.poisson(3.0, size=(60, 50, 64)).astype(np.uint16)
    cube[10, 20, :] += 100  # one bright pixel to find again on screen
    write_xrf_cube(store, cube, calibration=EnergyCalibration(0.0, 0.04), pixel_size_um=40.0, source="test",
                   affine=affine)
    return PaintingStore.open(path)


@pytest.fixture
def tiny_store(tmp_path):
    return make_store(tmp_path / "tiny.nightwatch.zarr")


def test_mosaic_layer_is_multiscale_rgb_in_micrometres(tiny_store):
    from napari_nightwatch._napari.layers import mosaic_layer

    data, kw, kind = mosaic_layer(tiny_store)
    assert kind == "image" and kw["rgb"] and kw["multiscale"]
    assert [tuple(d.shape) for d in data] == [(600, 520, 3), (300, 260, 3)]
    assert kw["scale"] == (PX_UM, PX_UM)
    assert kw["contrast_limits"] == (0, 255)


def test_xrf_placement_matches_affine(tiny_store):
    from napari_nightwatch._napari.layers import um_to_xrf_pixel, xrf_placement, xrf_total_layer

    data, kw, _ = xrf_total_layer(tiny_store)
    assert data.shape == (60, 50)
    assert kw["scale"] == (40.0, 40.0) and kw["translate"] == (3.5 * PX_UM, 2.5 * PX_UM)
    # total counts equal the cube's sum over energy
    assert data[10, 20] == pytest.approx(float(tiny_store.xrf_cube()[10, 20].sum().compute()))
    # a rotated affine has to go through napari's affine, and stays invertible through the helper
    th = np.deg2rad(10)
    rot = np.array([[8 * np.cos(th), -8 * np.sin(th), 30.0], [8 * np.sin(th), 8 * np.cos(th), 12.0], [0, 0, 1]])
    pl = xrf_placement(rot, PX_UM)
    assert set(pl) == {"affine"}
    yx_um = (rot @ [7, 9, 1])[:2] * PX_UM
    assert um_to_xrf_pixel(yx_um, rot, PX_UM) == (7, 9)


def test_grid_and_hit_layers_sit_on_tile_centres():
    from napari_nightwatch._napari.layers import (
        grid_placement,
        hit_layers,
        similarity_map_layer,
        um_rect_to_level0_box,
    )

    grid = TileGrid((600, 520), level=0, tile=64, stride=32)
    pl = grid_placement(grid, PX_UM)
    # heat-map pixel (r, c) centre == the centre of tile (r, c), in micrometres
    r, c = 3, 5
    idx = r * grid.n_cols + c
    box = grid.boxes([idx])[0]
    centre_um = np.asarray(pl["translate"]) + np.asarray(pl["scale"]) * [r, c]
    np.testing.assert_allclose(centre_um, ((box[:2] + box[2:]) / 2 - 0.5) * PX_UM)
    scores = np.linspace(0, 1, grid.n_tiles).reshape(grid.shape)
    _, kw, _ = similarity_map_layer(scores, grid, PX_UM, "similarity: test")
    assert kw["blending"] == "additive" and kw["colormap"] == "inferno"
    (pts, pkw, pkind), (rects, skw, skind) = hit_layers(grid.boxes([idx, 0]), [0.9, 0.5], "red particles", PX_UM,
                                                         tiles=[idx, 0])
    assert pkind == "points" and skind == "shapes"
    np.testing.assert_allclose(pts[0], centre_um)
    assert list(pkw["features"]["rank"]) == [1, 2] and list(pkw["features"]["query"]) == ["red particles"] * 2
    assert pkw["size"][0] > pkw["size"][1]  # bigger marker for the better hit
    # the rectangle drawn for a hit converts back to exactly its tile box
    assert um_rect_to_level0_box(rects[0], PX_UM) == tuple(float(v) for v in box)


def test_element_colours_and_predicted_names():
    from napari_nightwatch._napari.layers import element_rgb, predicted_map_layers

    assert element_rgb("Hg-L") == (1.0, 0.1, 0.1) and element_rgb("Pb-M") == (1.0, 1.0, 1.0)
    assert element_rgb("Xe-L") == element_rgb("Xe-K")  # unknown elements get a stable colour
    grid = TileGrid((600, 520), level=0, tile=64, stride=64)
    maps = np.random.default_rng(1).random((2,) + grid.shape)
    layers = predicted_map_layers(maps, ["Pb-L", "Hg-L"], grid, PX_UM, metrics={"Pb-L": {"r": 0.9, "ssim": 0.8}})
    assert [kw["name"] for _, kw, _ in layers] == ["predicted Pb-L", "predicted Hg-L"]
    assert layers[0][1]["metadata"]["heldout"] == {"r": 0.9, "ssim": 0.8}
    assert all(kw["blending"] == "additive" for _, kw, _ in layers)


def test_reader_contract(tiny_store, tmp_path):
    from napari_nightwatch._napari.reader import napari_get_reader

    assert napari_get_reader(str(tmp_path / "nothing.png")) is None
    assert napari_get_reader(str(tmp_path / "missing.nightwatch.zarr")) is None
    reader = napari_get_reader(str(tiny_store.path))
    layers = reader(str(tiny_store.path))
    assert [ld[1]["name"] for ld in layers] == ["tiny mosaic", "tiny XRF total counts"]


def test_reader_places_xrf_over_mosaic_in_napari(make_napari_viewer, tiny_store):
    viewer = make_napari_viewer()
    layers = viewer.open(str(tiny_store.path), plugin="napari-nightwatch")
    mosaic, xrf = layers
    assert mosaic.multiscale and mosaic.rgb and xrf.ndim == 2
    np.testing.assert_allclose(mosaic.scale, [PX_UM, PX_UM])
    # every XRF pixel lands on the mosaic pixel the affine sends it to, in micrometres
    for yx in [(0, 0), (10, 20), (59, 49)]:
        on_mosaic = AFFINE @ [yx[0], yx[1], 1.0]
        np.testing.assert_allclose(xrf.data_to_world(yx), mosaic.data_to_world(on_mosaic[:2]), atol=1e-9)
    assert str(viewer.layers[0].units[0]) == "micrometer"


def test_writers_round_trip(tmp_path):
    import tifffile
    import zarr

    from napari_nightwatch._napari.layers import hit_layers
    from napari_nightwatch._napari.writers import (
        write_hits_csv,
        write_hits_geojson,
        write_map_ome_zarr,
        write_map_tiff,
    )

    boxes = np.array([[0, 0, 64, 64], [128, 64, 192, 128]])
    (pts, kw, _), _ = hit_layers(boxes, [0.8, 0.6], "craquelure", PX_UM, tiles=[0, 7])
    import pandas as pd

    meta = {"name": kw["name"], "scale": (1, 1), "translate": (0, 0), "features": pd.DataFrame(kw["features"]),
            "metadata": kw["metadata"]}
    write_hits_csv(str(tmp_path / "h.csv"), pts, meta)
    rows = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert [r["rank"] for r in rows] == ["1", "2"] and rows[1]["tile"] == "7" and rows[0]["query"] == "craquelure"
    assert float(rows[1]["y"]) == pytest.approx(159.5) and float(rows[1]["x_um"]) == pytest.approx(95.5 * PX_UM)
    write_hits_geojson(str(tmp_path / "h.geojson"), pts, meta)
    gj = json.loads((tmp_path / "h.geojson").read_text())
    assert gj["features"][1]["geometry"]["coordinates"][0][2] == [128.0, 192.0]
    m = np.random.default_rng(2).random((9, 7)).astype(np.float32)
    mmeta = {"name": "predicted Pb-L", "scale": (320.0, 320.0), "translate": (157.5, 157.5), "metadata": {"r": 0.5}}
    write_map_ome_zarr(str(tmp_path / "pb.ome.zarr"), m, mmeta)
    g = zarr.open_group(str(tmp_path / "pb.ome.zarr"), mode="r")
    np.testing.assert_array_equal(g["0"][...], m)
    ct = g.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert ct[0]["scale"] == [320.0, 320.0] and ct[1]["translation"] == [157.5, 157.5]
    write_map_tiff(str(tmp_path / "pb.tif"), m, mmeta)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "pb.tif"), m)
    assert json.loads((tmp_path / "pb.tif.json").read_text())["translate_um"] == [157.5, 157.5]


def test_manifest_valid_and_discovered():
    from importlib.resources import files

    import npe2

    path = files("napari_nightwatch") / "napari.yaml"
    mf = npe2.PluginManifest.from_file(str(path))
    mf.validate_imports()  # every command's python_name resolves
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert pm.get_manifest("napari-nightwatch").name == "napari-nightwatch"
    keys = [s.key for s in pm.get_manifest("napari-nightwatch").contributions.sample_data]
    assert "synthetic_painting" in keys


def test_settings_round_trip(tmp_path, monkeypatch):
    from napari_nightwatch._napari.settings import load_settings, save_settings

    monkeypatch.setenv("NAPARI_NIGHTWATCH_CONFIG_DIR", str(tmp_path))
    assert load_settings("embed") == {}
    save_settings("embed", {"tile": 64})
    save_settings("search", {"k": 5})
    assert load_settings("embed") == {"tile": 64} and load_settings("search") == {"k": 5}


def test_reader_opens_bruker_cube_directly(make_napari_viewer):
    from conftest import shared_file
    from napari_nightwatch.io.xrf_files import read_cube

    path = shared_file("bruker-rsciio/bcf_v2_50x50px.bcf")
    cube = read_cube(path)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-nightwatch")
    assert layer.data.shape == tuple(cube.data.shape[:2])
    np.testing.assert_allclose(layer.data, np.asarray(cube.data, dtype=np.float64).sum(axis=-1), rtol=1e-6)
    if cube.pixel_size_um:
        np.testing.assert_allclose(layer.scale, [cube.pixel_size_um] * 2)
    assert layer.metadata["calibration"]["gain_kev"] > 0


def test_sample_data_builds_once_and_opens(make_napari_viewer, tmp_path, monkeypatch):
    from napari_nightwatch._napari import sample_data

    monkeypatch.setenv("NAPARI_NIGHTWATCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sample_data, "SAMPLE_SIZE", 256)
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-nightwatch", "synthetic_painting")
    assert [ly.name for ly in layers][:2] == ["synthetic-256-seed0 mosaic", "synthetic-256-seed0 XRF total counts"]
    path = sample_data.synthetic_store_path(256)
    assert path.parent == tmp_path / "cache" and not list(path.parent.glob(".building-*"))
    stamp = (path / "zarr.json").stat().st_mtime_ns
    assert sample_data.synthetic_store_path(256) == path and (path / "zarr.json").stat().st_mtime_ns == stamp


def test_writers_through_napari(make_napari_viewer, tmp_path):
    """File > Save Selected Layers reaches our writers for hits and element maps."""
    import napari

    from napari_nightwatch._napari._qt.common import add_layer_data
    from napari_nightwatch._napari.layers import hit_layers, predicted_map_layers

    viewer = make_napari_viewer()
    grid = TileGrid((256, 256), level=0, tile=32, stride=32)
    pts = add_layer_data(viewer, hit_layers(grid.boxes([9, 0]), [0.7, 0.2], "smalt", PX_UM, tiles=[9, 0])[0])
    (out,) = napari.save_layers(str(tmp_path / "hits.csv"), [pts], plugin="napari-nightwatch")
    rows = list(csv.DictReader(open(out)))
    assert rows[0]["tile"] == "9" and float(rows[0]["y0"]) == 32.0 and rows[0]["query"] == "smalt"
    maps = np.arange(2 * 64, dtype=np.float32).reshape(2, 8, 8)
    pb = add_layer_data(viewer, predicted_map_layers(maps, ["Pb-L", "Hg-L"], grid, PX_UM)[0])
    written = napari.save_layers(str(tmp_path / "pb.tif"), [pb], plugin="napari-nightwatch")
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(written[0]), maps[0])
    side = json.loads((tmp_path / "pb.tif.json").read_text())
    assert side["scale_um"] == [160.0, 160.0] and side["translate_um"] == [77.5, 77.5]
