"""The XRF bridge on the synthetic painting (issue 5): spectrum encoder training,
spectrum -> tile retrieval, the inverse (element maps from the photograph), the
hidden lead ground, export, and bad input.

One module-scoped store: synthetic painting (512 px, 64 x 64 XRF pixels), fitted
element maps, automatic registration, a 16-px tile grid (32 x 32 tiles) embedded by
the informative colour/texture encoder, one training run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from _bridge_support import ColourTextureEngine, bridge_ready_store, hidden_lead
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.ml import bridge as B

SURFACE_FAMILIES = ("Hg-L", "Cu-K", "Co-K", "Fe-K", "Sn-K")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store, gt, engine = bridge_ready_store(tmp_path_factory.mktemp("bridge") / "b.nightwatch.zarr", size=512, seed=0)
    losses = []
    result = B.train_xrf_bridge(store, threads=1, progress=lambda d, t, s: losses.append(s))
    return store, gt, engine, result, losses


def test_training_writes_a_checkpoint_with_provenance_and_a_block_split(trained):
    store, gt, engine, result, losses = trained
    eid = result["encoder_id"]
    assert store.is_complete(f"models/{eid}")
    prov = store.completed()[f"models/{eid}"]
    assert prov["image_model_id"] == engine.model_id and prov["grid_id"] == "L0-t16-s16"
    assert any("loss=" in s for s in losses)  # the progress callback reports the loss
    attrs = store.node_attrs(f"models/{eid}")
    assert attrs["image_signature"]["model_hash"] == engine.model_hash
    assert attrs["training"]["epochs_run"] >= attrs["training"]["best_epoch"] >= 1
    assert result["n_train"] >= 300 and result["n_val"] > 0 and result["n_test"] > 0
    # whole spatial blocks go to one split: neighbouring tiles never straddle it
    bridge = B.load_xrf_bridge(store)
    grid = B.open_tile_embeddings(store).grid
    split = bridge.split.reshape(grid.shape)
    bt = attrs["split"]["block_tiles"]
    for r0 in range(0, grid.n_rows, bt):
        for c0 in range(0, grid.n_cols, bt):
            vals = np.unique(split[r0 : r0 + bt, c0 : c0 + bt])
            assert vals.size == 1 or (vals.size == 2 and -1 in vals)
    # the safetensors checkpoint round-trips: a reload encodes identically
    x = np.asarray(store.xrf_cube()[10, 10:14], np.float32)
    again = B.XrfBridge(store, eid)
    assert np.allclose(bridge.encode(x), again.encode(x), atol=1e-6)
    assert np.allclose(np.linalg.norm(bridge.encode(x), axis=1), 1.0, atol=1e-5)


def test_spectrum_to_tile_retrieval_precision(trained):
    store, gt, *_ = trained
    bridge = B.load_xrf_bridge(store)
    emb = B.open_tile_embeddings(store)
    vectors = emb.read(emb.available)
    labels, _ = gt.tile_labels(emb.grid.boxes(emb.available))
    rng = np.random.default_rng(0)
    precisions = {"pixel": [], "region": []}
    for p in np.unique(gt.surface_labels_xrf):
        yy, xx = gt.pure_xrf_pixels(p)
        if len(yy) < 3:
            continue
        for i in rng.choice(len(yy), min(3, len(yy)), replace=False):
            for mode in precisions:
                kw = {"xrf_pixel": (yy[i], xx[i])} if mode == "pixel" else {"xrf_region": (yy[i] - 1, xx[i] - 1, yy[i] + 2, xx[i] + 2)}
                x, _ = B.query_input(store, **kw)
                top = np.argsort(-(vectors @ bridge.encode(x[None])[0]))[:10]
                precisions[mode].append((labels[top] == p).mean())
    p_pixel, p_region = np.mean(precisions["pixel"]), np.mean(precisions["region"])
    print(f"\nspectrum -> tile precision@10 by surface pigment: pixel {p_pixel:.3f}, 3x3 region {p_region:.3f}")
    assert len(precisions["pixel"]) >= 15
    assert p_pixel >= 0.9 and p_region >= 0.9
    # the public entry point gives the same vector and names the image model to search
    v, mid = B.spectrum_query_vector(store, xrf_pixel=(int(yy[0]), int(xx[0])))
    x, _ = B.query_input(store, xrf_pixel=(int(yy[0]), int(xx[0])))
    assert mid == emb.model_id and v.shape == (emb.dim,)
    assert np.allclose(v, bridge.encode(x[None])[0], atol=1e-6)


def test_spectrum_files_are_resampled_or_refused(trained, tmp_path):
    store, *_ = trained
    e = store.xrf_energies()
    x = np.asarray(store.xrf_cube()[20:23, 30:33], np.float64).reshape(-1, e.size).sum(0)
    ref, _ = B.spectrum_query_vector(store, xrf_region=(20, 30, 23, 33))
    # the same counts on an axis with half the channel width: resampled onto the cube's axis
    fine_e = np.linspace(e[0], e[-1], 2 * e.size - 1)
    fine = np.interp(fine_e, e, x) / 2
    f = tmp_path / "fine.csv"
    np.savetxt(f, np.stack([fine_e, fine], 1), delimiter=",", header="energy_kev,counts", comments="")
    v, _ = B.spectrum_query_vector(store, spectrum_file=f)
    assert float(v @ ref) > 0.95
    # a spectrum that stops at 8 keV misses most of the cube's counts: one sentence, no vector
    short = tmp_path / "short.csv"
    keep = fine_e <= 8.0
    np.savetxt(short, np.stack([fine_e[keep], fine[keep]], 1), delimiter=",", header="energy_kev,counts", comments="")
    with pytest.raises(NightwatchError, match="outside that range"):
        B.spectrum_query_vector(store, spectrum_file=short)
    with pytest.raises(NightwatchError, match="exactly one"):
        B.spectrum_query_vector(store, xrf_pixel=(1, 1), xrf_region=(0, 0, 2, 2))


def test_predicted_maps_on_held_out_blocks(trained, tmp_path, capsys):
    from napari_nightwatch.cli import main

    store, gt, *_ = trained
    assert main(["predict-xrf", str(store.path), "--export", str(tmp_path / "exp"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    val = out["validation"]
    with capsys.disabled():
        print("\nelement  r      SSIM   method      (held-out blocks)")
        for el in SURFACE_FAMILIES + ("Pb-L",):
            if el in val:
                v = val[el]
                print(f"{el:7s} {v['r']:.3f}  {v['ssim'] if v['ssim'] is None else round(v['ssim'], 3)}  {v['method']}")
    for el in SURFACE_FAMILIES:
        assert val[el]["r"] >= 0.85, f"{el}: r={val[el]['r']}"
        assert val[el]["ssim"] is not None and val[el]["ssim"] > 0.3
        assert val[el]["evidence"]
    # both inverse routes are computed and compared
    assert all(val[el]["r_head"] is not None and val[el]["r_joint"] is not None for el in SURFACE_FAMILIES)
    # the NGFF image sits on the tile grid in micrometres
    g = store.root[f"predicted/{out['name']}"]
    grid = B.open_tile_embeddings(store).grid
    assert g["0"].shape == (len(out["elements"]), *grid.shape)
    ms = g.attrs["ome"]["multiscales"][0]
    tr = {t["type"]: t for t in ms["datasets"][0]["coordinateTransformations"]}
    (step, _), (origin, _) = grid.map_transform()
    assert tr["scale"]["scale"][1] == pytest.approx(step * store.mosaic_pixel_size_um)
    assert tr["translation"]["translation"][1] == pytest.approx(origin * store.mosaic_pixel_size_um)
    # export: one float32 TIFF per element and a sidecar with the grid's origin and step
    import tifffile

    side = json.loads((tmp_path / "exp" / "predicted_maps.json").read_text())
    assert side["step_level0_px"] == [step, step] and side["origin_level0_px"] == [origin, origin]
    hg = tifffile.imread(tmp_path / "exp" / "Hg-L.tif")
    assert hg.dtype == np.float32 and hg.shape == grid.shape


def test_hidden_lead_ground_is_not_confidently_wrong(trained):
    store, gt, *_ = trained
    if not store.has("predicted"):
        B.predict_xrf_maps(store)
    name = sorted(n for n, _ in store.root["predicted"].groups())[-1]
    assert "Pb" in gt.hidden_elements  # the lead white ground: most of the Pb signal is below the surface
    lead = hidden_lead(store, name, gt)
    assert lead["n_tiles"] > 50
    print(f"\nhidden Pb on non-lead surfaces: flagged {lead['flagged']:.2f}, "
          f"confidently wrong {lead['confidently_wrong']:.3f}")
    assert lead["confidently_wrong"] <= 0.05


def test_bad_input_leaves_the_store_unchanged(trained):
    from napari_nightwatch.ml.embed import embed_store

    store, gt, engine, result, _ = trained
    before = sorted(store.completed())
    # too few paired tiles: a training region of a few tiles
    with pytest.raises(NightwatchError, match="training and"):
        B.train_xrf_bridge(store, train_region=(0, 0, 40, 40), threads=1)
    assert sorted(store.completed()) == before
    # embeddings of another image model: the encoder trained on the first one is refused
    other = ColourTextureEngine(seed=7)
    embed_store(store, other, "L0-t16-s16", batch_size=256, num_workers=1)
    with pytest.raises(NightwatchError, match="trained against embeddings of"):
        B.spectrum_query_vector(store, xrf_pixel=(5, 5), model_id=other.model_id)
    with pytest.raises(NightwatchError, match="trained against embeddings of"):
        B.load_xrf_bridge(store, result["encoder_id"], image_model_id=other.model_id)
    del store.root[f"grids/L0-t16-s16/embeddings/{other.model_id}"]
    store.mark_incomplete(f"grids/L0-t16-s16/embeddings/{other.model_id}")
