"""One dependency graph of parts (issue 11): a part made from an input that was rewritten since is stale,
`info` says so with the reason and what to rerun, and every consumer refuses it with one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _search_support import ColourTextureEncoder, copy_store, write_embeddings
from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.store import PaintingStore, layout


def test_graph_records_inputs_and_propagates(tmp_path):
    store = PaintingStore.create(tmp_path / "g.nightwatch.zarr", name="g")
    store.mark_complete("mosaic")
    store.mark_complete("grids/L0-t8-s8")
    store.mark_complete("grids/L0-t8-s8/embeddings/m")
    store.mark_complete("grids/L0-t8-s8/index/m")
    store.mark_complete("xrf")
    store.mark_complete(layout.REGISTRATION)
    store.mark_complete("models/e1", grid_id="L0-t8-s8", image_model_id="m")
    store.mark_complete("predicted/p", encoder_id="e1")
    done = store.completed()
    assert done["grids/L0-t8-s8/index/m"]["inputs"] == {"grids/L0-t8-s8/embeddings/m":
                                                        done["grids/L0-t8-s8/embeddings/m"]["id"]}
    assert set(done["models/e1"]["inputs"]) == {"xrf", layout.REGISTRATION, "grids/L0-t8-s8/embeddings/m"}
    assert store.stale_parts() == {}
    # a new registration: the model and the predictions made with the old one are stale, nothing else
    store.mark_complete(layout.REGISTRATION)
    stale = store.stale_parts()
    assert set(stale) == {"models/e1", "predicted/p"}
    assert "xrf/registration was rewritten" in stale["models/e1"]
    # a re-imported mosaic: grid, embeddings and index follow it
    store.mark_complete("mosaic")
    assert {"grids/L0-t8-s8", "grids/L0-t8-s8/embeddings/m", "grids/L0-t8-s8/index/m"} <= set(store.stale_parts())
    with pytest.raises(NightwatchError, match="grids/L0-t8-s8/index/m .* is stale: grids/L0-t8-s8/embeddings/m is stale"):
        store.check_fresh("grids/L0-t8-s8/index/m", "rebuild it")
    # records written before the graph (no inputs) are never stale
    store.mark_complete("mosaic")
    m = dict(store.root.attrs["nightwatch"])
    m["complete"]["old"] = {"created": "2025-01-01T00:00:00+00:00"}
    store.root.attrs["nightwatch"] = m
    assert "old" not in store.stale_parts()


@pytest.fixture
def fitted(synthetic_store, tmp_path):
    from napari_nightwatch.store.tiles import make_grid
    from napari_nightwatch.synth import load_ground_truth
    from napari_nightwatch.xrf.maps import fit_store

    store = copy_store(synthetic_store, tmp_path / "s.nightwatch.zarr")
    fit_store(store, elements=list(load_ground_truth(store).families), refine=False)
    make_grid(store, tile=16)
    return store


def test_reimported_cube_makes_the_fitted_maps_stale(fitted, tmp_path, capsys):
    from napari_nightwatch.search.composition import tile_composition
    from napari_nightwatch.store.sources import import_xrf
    from napari_nightwatch.xrf.pairing import load_element_intensity_maps

    store = fitted
    ny, nx, ne = store.xrf_cube().shape
    cube = np.random.default_rng(0).poisson(2.0, (ny, nx, ne)).astype(np.float32)
    np.save(tmp_path / "other.npy", cube)
    import_xrf(tmp_path / "other.npy", store, calibration=store.xrf_calibration, pixel_size_um=store.xrf_pixel_size_um)
    assert store.is_complete("xrf_maps")  # still there, but made from the old cube
    assert "xrf was rewritten" in store.stale_parts()["xrf_maps"]
    with pytest.raises(NightwatchError, match="xrf_maps .* is stale.*nightwatch xrf-maps --overwrite"):
        load_element_intensity_maps(store)
    with pytest.raises(NightwatchError, match="stale"):
        tile_composition(store)
    assert main(["search", str(store.path), "--pigment", "smalt"]) == 2
    assert "stale" in capsys.readouterr().err
    assert main(["info", str(store.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "xrf_maps" in info["stale"] and any("xrf-maps --overwrite" in s for s in info["next_steps"])


def test_reimported_mosaic_never_reuses_the_old_mask(fitted, tmp_path):
    """A same-size re-import: the grid's mask belongs to the old pixels, so it is recomputed, not reused."""
    import tifffile

    from napari_nightwatch.store.sources import import_mosaic
    from napari_nightwatch.store.tiles import load_grid, make_grid

    store = fitted
    old = load_grid(store, "L0-t16-s16")
    img = np.asarray(store.mosaic_levels()[0]).copy()
    img[:, : img.shape[1] // 2] = 255  # the left half is now blank background
    tifffile.imwrite(tmp_path / "new.tif", img)
    import_mosaic(tmp_path / "new.tif", store, pixel_size_um=store.mosaic_pixel_size_um)
    assert "grids/L0-t16-s16" in store.stale_parts()
    new = make_grid(store, tile=16)
    assert "grids/L0-t16-s16" not in store.stale_parts()
    assert old.keep.sum() > new.keep.sum() and not new.keep.reshape(new.shape)[:, : new.shape[1] // 2 - 1].any()


def test_grid_with_embeddings_is_not_silently_replaced(synthetic_store, tmp_path):
    import tifffile

    from napari_nightwatch.store.sources import import_mosaic
    from napari_nightwatch.store.tiles import make_grid

    store = copy_store(synthetic_store, tmp_path / "e.nightwatch.zarr")
    enc = ColourTextureEncoder()
    write_embeddings(store, enc, tile=32)
    img = np.asarray(store.mosaic_levels()[0]).copy()
    tifffile.imwrite(tmp_path / "same.tif", img[::-1])
    import_mosaic(tmp_path / "same.tif", store, pixel_size_um=store.mosaic_pixel_size_um)
    with pytest.raises(NightwatchError, match="is stale .*--overwrite"):
        make_grid(store, tile=32, mask="none")
    make_grid(store, tile=32, mask="none", overwrite=True)
    assert not store.has(layout.embeddings("L0-t32-s32", enc.model_id))


def test_index_of_unfinished_embeddings_is_not_served(synthetic_store, tmp_path, capsys):
    from napari_nightwatch.search import add_to_index, build_index

    store = copy_store(synthetic_store, tmp_path / "i.nightwatch.zarr")
    enc = ColourTextureEncoder()
    write_embeddings(store, enc, tile=32, chunk_tiles=16, chunks_done=[0, 1])  # 32 of 64 tiles
    build_index(store, "L0-t32-s32", enc.model_id)
    write_embeddings(store, enc, tile=32, chunk_tiles=16, chunks_done=[2, 3], fresh=False)  # embedding finishes
    args = ["search", str(store.path), "--region", "0,0,32,32", "--json"]
    assert main(args) == 2
    assert "32 more have been embedded" in capsys.readouterr().err
    add_to_index(store, "L0-t32-s32", enc.model_id)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["tile"] == 0


def test_edited_pixels_of_an_ome_zarr_used_in_place_are_noticed(tmp_path, capsys):
    """An OME-Zarr referenced in place is signed by content: editing pixels (same file sizes or not)
    makes the mosaic stale, `info` says so and tiling refuses."""
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    from napari_nightwatch.store.sources import changed_reference, import_mosaic
    from napari_nightwatch.store.tiles import make_grid

    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (3, 256, 256), dtype=np.uint8)
    src = tmp_path / "img.ome.zarr"
    g = zarr.open_group(str(src), mode="w", zarr_format=3)
    write_image(img, g, axes="cyx", fmt=FormatV05(), scale_factors=[2], scale={"c": 1.0, "y": 1.0, "x": 1.0},
                axes_units={"y": "micrometer", "x": "micrometer"})
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    assert changed_reference(store) is None
    make_grid(store, tile=64)
    arr = zarr.open_group(str(src), mode="r+")["s0"]
    arr[0, 10, 10] = 255 - int(arr[0, 10, 10])  # one pixel
    assert "was changed since it was imported" in changed_reference(store)
    assert main(["info", str(store.path), "--json"]) == 0
    assert "mosaic" in json.loads(capsys.readouterr().out)["stale"]
    with pytest.raises(NightwatchError, match="mosaic .* is stale: the OME-Zarr it uses in place"):
        make_grid(store, tile=64)


def test_a_new_registration_makes_the_trained_bridge_stale(tmp_path, capsys):
    """Models and predictions made before a registration are refused after it (not used without a word)."""
    from _bridge_support import bridge_ready_store
    from napari_nightwatch.ml.bridge import load_xrf_bridge, predict_xrf_maps, train_xrf_bridge

    store, _, _ = bridge_ready_store(tmp_path / "r.nightwatch.zarr", size=256)
    out = train_xrf_bridge(store, epochs=3, threads=1)
    predict_xrf_maps(store, encoder_id=out["encoder_id"])
    assert store.stale_parts() == {}
    store.set_xrf_affine(store.xrf_affine + np.array([[0, 0, 1.0], [0, 0, 0], [0, 0, 0]]), method="test shift")
    stale = store.stale_parts()
    assert f"models/{out['encoder_id']}" in stale and any(p.startswith("predicted/") for p in stale)
    with pytest.raises(NightwatchError, match="stale: xrf/registration was rewritten.*train-xrf"):
        load_xrf_bridge(store, out["encoder_id"])
    assert main(["predict-xrf", str(store.path)]) == 2
    assert "stale" in capsys.readouterr().err
