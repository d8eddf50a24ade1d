"""Element maps without a cube (issue 5): exported per-element images imported as the
XRF modality, registered, and used by the encoder, the search and the inverse.

The "exported maps" are the synthetic painting's true element concentrations on its
XRF grid, written as a scanner would (a tinted 8-bit PNG, float TIFFs).  The lead
map is multiplied by a hidden pattern - a lead white ground under only part of the
painting, in blobs that nothing in the photograph shows - so the inverse must say
that the photograph carries no evidence of it there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from _bridge_support import ColourTextureEngine
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.ml import bridge as B

ELEMENTS = {"Hg": "Hg-L", "Cu": "Cu-K", "Co": "Co-K", "Fe": "Fe-K", "Sn": "Sn-K", "Pb": "Pb-L", "Ca": "Ca-K", "As": "As-K"}


def _hidden_ground(shape, seed: int = 5) -> np.ndarray:
    """1 where the lead white ground lies, 0.1 elsewhere: smooth random blobs."""
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 5.0)
    return np.where(noise > np.median(noise), 1.0, 0.1)


@pytest.fixture(scope="module")
def maps_store(tmp_path_factory):
    from napari_nightwatch.cli import main
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.tiles import make_grid
    from napari_nightwatch.synth import load_ground_truth, synthesize_painting

    tmp = tmp_path_factory.mktemp("maps")
    path = tmp / "m.nightwatch.zarr"
    gt = load_ground_truth(synthesize_painting(path, size=512, seed=0))
    ground = _hidden_ground(gt.concentrations.shape[1:])
    args = []
    for el, name in ELEMENTS.items():
        conc = gt.concentration(el) * (ground if el == "Pb" else 1.0)
        if el == "Hg":  # tinted 8-bit export, red on black, label-free
            v = np.round(255 * conc / conc.max()).astype(np.uint8)
            f = tmp / "Hg.png"
            Image.fromarray(np.stack([v, v // 5, v // 6], -1)).save(f)
        else:
            f = tmp / f"{el}.tif"
            tifffile.imwrite(f, conc.astype(np.float32))
        args += ["--map", f"{name}={f}"]
    assert main(["import-maps", str(path), "--overwrite", "--pixel-size-um", str(5.0 * gt.xrf_pixel), "--json", *args]) == 0
    assert main(["register", str(path), "--auto", "--json"]) == 0
    store = PaintingStore.open(path, mode="r+")
    grid = make_grid(store, tile=16, mask="none")
    engine = ColourTextureEngine()
    embed_store(store, engine, grid, batch_size=256, num_workers=1)
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["train-xrf", str(path), "--epochs", "120", "--threads", "1", "--json"]) == 0
    trained = json.loads(buf.getvalue().strip().splitlines()[-1])
    store = PaintingStore.open(path, mode="r+")  # see what the CLI wrote
    predicted = B.predict_xrf_maps(store)
    return store, gt, ground, trained, predicted


def test_imported_maps_are_registered_like_a_cube(maps_store):
    from napari_nightwatch.core.geometry import apply_affine

    store, gt, *_ = maps_store
    assert store.xrf_kind == "maps"
    names = store.xrf_info["elements"]
    assert names == list(ELEMENTS.values())
    hg = np.asarray(store.root["xrf/maps"][names.index("Hg-L")])
    # the red tint became an intensity (max over channels) proportional to the truth
    assert np.corrcoef(hg.ravel(), gt.concentration("Hg").ravel())[0, 1] > 0.999
    ny, nx = store.xrf_shape
    c = np.array([[0, 0], [0, nx - 1], [ny - 1, 0], [ny - 1, nx - 1]], float)
    err = np.abs(apply_affine(store.xrf_affine, c) - apply_affine(gt.true_affine, c)).max() / gt.xrf_pixel
    assert err < 1.0


def test_maps_bridge_predicts_visible_elements_and_flags_the_hidden_ground(maps_store):
    from napari_nightwatch.core.tiling import TileGrid
    from napari_nightwatch.synth import pigment_index

    store, gt, ground, trained, predicted = maps_store
    assert trained["input_kind"] == "maps"
    val = predicted["validation"]
    for el in ("Hg-L", "Cu-K", "Sn-K"):
        assert val[el]["r"] >= 0.85, (el, val[el])
    g = store.root[f"predicted/{predicted['name']}"]
    a = dict(g.attrs["nightwatch"])
    i = a["elements"].index("Pb-L")
    flag = np.asarray(g["no_evidence"][i]).ravel()
    pred, unc = np.asarray(g["0"][i]).ravel(), np.asarray(g["uncertainty"][i]).ravel()
    meas, split = np.asarray(g["measured"][i]).ravel(), np.asarray(g["split"]).ravel()
    grid = TileGrid.from_attrs(a["grid"])
    lab, _ = gt.tile_labels(grid.boxes())
    lead = [pigment_index(n) for n in ("lead white", "lead-tin yellow")]
    hidden = (split == 2) & ~np.isin(lab, lead) & np.isfinite(meas)
    wrong = (flag[hidden] == 0) & (np.abs(pred[hidden] - meas[hidden]) > 3 * unc[hidden])
    hg = a["elements"].index("Hg-L")
    vermilion = (split == 2) & (lab == pigment_index("vermilion"))
    hg_flag = np.asarray(g["no_evidence"][hg]).ravel()
    print(f"\nmaps bridge: hidden Pb flagged on {flag[hidden].mean():.2f} of non-lead test tiles "
          f"(confidently wrong {wrong.mean():.3f}); Hg flagged on {hg_flag[vermilion].mean():.2f} of vermilion "
          f"test tiles, {hg_flag[hidden].mean():.2f} of non-lead ones")
    assert flag[hidden].mean() >= 0.5
    assert wrong.mean() <= 0.05
    # a visible element keeps its evidence where it is painted
    assert vermilion.sum() >= 5 and hg_flag[vermilion].mean() < 0.3
    assert hg_flag[hidden].mean() < flag[hidden].mean() - 0.3


def test_maps_search_by_pixel_and_refusals(maps_store, tmp_path):
    store, gt, *_ = maps_store
    v, mid = B.spectrum_query_vector(store, xrf_pixel=(30, 30))
    assert mid == ColourTextureEngine().model_id and abs(float(np.linalg.norm(v)) - 1) < 1e-5
    f = tmp_path / "s.csv"
    f.write_text("energy_kev,counts\n1,2\n2,3\n")
    with pytest.raises(NightwatchError, match="element maps, not a spectral cube"):
        B.spectrum_query_vector(store, spectrum_file=f)
    with pytest.raises(NightwatchError, match="outside the"):
        B.spectrum_query_vector(store, xrf_pixel=(999, 3))


def test_import_maps_bad_input(tmp_path, capsys):
    from napari_nightwatch.cli import main
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import write_mosaic_array

    store = PaintingStore.create(tmp_path / "x.nightwatch.zarr")
    write_mosaic_array(store, np.zeros((64, 64, 3), np.uint8), pixel_size_um=5.0, source="test")
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    tifffile.imwrite(a, np.ones((8, 8), np.float32))
    tifffile.imwrite(b, np.ones((9, 8), np.float32))
    assert main(["import-maps", str(store.path), "--map", f"Pb-L={a}", "--map", f"Hg-L={b}"]) == 2
    assert "share one pixel grid" in capsys.readouterr().err
    assert main(["import-maps", str(store.path), "--map", f"Pb-L{a}"]) == 2
    assert "NAME=FILE" in capsys.readouterr().err
    assert not PaintingStore.open(store.path).is_complete("xrf")  # nothing half-written
    assert main(["import-maps", str(store.path), "--map", f"Pb-L={a}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["elements"] == ["Pb-L"] and out["shape"] == [8, 8]


def test_overlapping_stride_gives_a_finer_correctly_placed_map(tmp_path):
    """Predicted maps are at tile resolution, finer with an overlapping stride (issue 5)."""
    from _bridge_support import bridge_ready_store
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.store.tiles import make_grid

    store, gt, engine = bridge_ready_store(tmp_path / "s.nightwatch.zarr", size=256, seed=1)
    coarse = make_grid(store, tile=16, mask="none")
    fine = make_grid(store, tile=16, stride=8, mask="none")
    embed_store(store, engine, fine, batch_size=256, num_workers=1)
    maps = {}
    for grid in (coarse, fine):
        trained = B.train_xrf_bridge(store, grid_id=grid.grid_id, image_model_id=engine.model_id, epochs=3, threads=1)
        maps[grid.stride] = (grid, trained, B.predict_xrf_maps(store, encoder_id=trained["encoder_id"], name=grid.grid_id))
    (gc, _, pc), (gf, tf, pf) = maps[16], maps[8]
    assert gf.shape == (2 * gc.n_rows - 1, 2 * gc.n_cols - 1)  # about twice the rows and columns
    arrays = {}
    for grid, pred in ((gc, pc), (gf, pf)):
        g = store.root[f"predicted/{pred['name']}"]
        a = dict(g.attrs["nightwatch"])
        assert a["grid"] == grid.to_attrs()
        assert np.asarray(g["0"]).shape == (len(a["elements"]),) + grid.shape
        # map pixel (r, c) is centred on tile (r, c): centre of its box, in pixel-centre coordinates
        scale, translate = np.array(a["map_transform"]["scale"]), np.array(a["map_transform"]["translate"])
        rc = np.stack(grid.row_col(np.arange(grid.n_tiles)), -1)
        np.testing.assert_allclose(translate + scale * rc, grid.centers() - 0.5)
        np.testing.assert_allclose(scale, [grid.stride] * 2)
        arrays[grid.stride] = np.asarray(g["measured"]), a
        # held-out blocks: r is computed for the elements the painting varies in
        v = pred["validation"]
        assert v["Hg-L"]["n_test"] > 0
        rs = [e["r"] for e in v.values()]
        assert sum(r is not None and np.isfinite(r) for r in rs) >= len(rs) // 2, rs
    # every other tile of the fine grid is a tile of the coarse grid: same place, same measurement
    np.testing.assert_array_equal(arrays[8][0][:, ::2, ::2], arrays[16][0])
    # held-out tiles share no pixels with tiles of another split (test blocks stay whole)
    fine_split = np.asarray(store.root[f"models/{tf['encoder_id']}/split"])
    assert {0, 1, 2} <= set(np.unique(fine_split).tolist())
    paired = np.flatnonzero(fine_split >= 0)
    b, lab = gf.boxes(paired), fine_split[paired]
    overlap = (np.minimum(b[:, None, 2], b[None, :, 2]) > np.maximum(b[:, None, 0], b[None, :, 0])) & (
        np.minimum(b[:, None, 3], b[None, :, 3]) > np.maximum(b[:, None, 1], b[None, :, 1]))
    assert not (overlap & (lab[:, None] != lab[None, :])).any()
    assert (fine_split == 2).sum() == tf["n_test"] and pf["validation"]["Hg-L"]["ssim"] is not None
    # only an overlapping grid leaves tiles out
    assert (B.spatial_block_split(gc, np.arange(gc.n_tiles)) >= 0).all()
    assert (B.spatial_block_split(gf, np.arange(gf.n_tiles)) == -1).any()
