"""The tile-embedding pipeline on a small mosaic store with the tiny model: grids and masks,
end to end against direct encoding, resume after cancel, signatures, LocalCluster, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_nightwatch.core.errors import Cancelled, NightwatchError
from napari_nightwatch.ml.clip import load_clip
from napari_nightwatch.ml.embed import embed_store
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.store.embeddings import list_embeddings, load_embeddings
from napari_nightwatch.store.sources import write_mosaic_array
from napari_nightwatch.store.tiles import load_grid, make_grid

pytest.importorskip("torch")

H, W, BORDER, TILE = 640, 768, 128, 64
# fp16 storage: |error| <= 2**-11 relative, about 5e-4 on unit-vector components. Two paths
# (batch sizes, threads, resumed or distributed chunks) give float32 encoder outputs that differ
# by ~1e-6 (torch's summation order), which can flip one fp16 rounding: one fp16 step below 1
# is 2**-11 = 4.9e-4, so the bound is rounding (5e-4) + one flipped step (4.9e-4) + 2x margin
FP16_ATOL = 2e-3


def _mosaic(seed: int = 0) -> np.ndarray:
    """A painted field of textured pigment patches inside a uniform (scanner padding) border."""
    rng = np.random.default_rng(seed)
    img = np.full((H, W, 3), 238, np.uint8)
    colours = np.array([[30, 60, 150], [200, 40, 30], [220, 200, 60], [40, 110, 50]], float)
    for y in range(BORDER, H - BORDER, TILE):
        for x in range(BORDER, W - BORDER, TILE):
            c = colours[rng.integers(len(colours))]
            patch = c + rng.normal(0, 25, (TILE, TILE, 3))
            img[y : y + TILE, x : x + TILE] = np.clip(patch, 0, 255).astype(np.uint8)
    return img


def _store(path, seed: int = 0, source: str = "synthetic test mosaic") -> PaintingStore:
    store = PaintingStore.create(path)
    write_mosaic_array(store, _mosaic(seed), pixel_size_um=5.0, source=source, source_signature=f"seed{seed}")
    return store


@pytest.fixture(scope="module")
def tiny():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip("nightwatch-tiny", "none", device="cpu")


@pytest.fixture
def store(tmp_path):
    return _store(tmp_path / "p.nightwatch.zarr")


def test_make_grid_skips_the_uniform_border(store):
    grid = make_grid(store, tile=TILE)
    assert grid.grid_id == "L0-t64-s64" and grid.shape == (H // TILE, W // TILE)
    boxes = grid.boxes()
    inside = (boxes[:, 0] < H - BORDER) & (boxes[:, 2] > BORDER) & (boxes[:, 1] < W - BORDER) & (boxes[:, 3] > BORDER)
    np.testing.assert_array_equal(grid.keep, inside)  # exactly the tiles touching paint
    assert 0 < grid.keep.sum() < grid.n_tiles
    meta = store.node_attrs("grids/L0-t64-s64")
    assert meta["n_kept"] == int(inside.sum()) and meta["mask"]["params"]["min_std"] == 1.0
    # stored and reloaded
    again = load_grid(store, "L0-t64-s64")
    np.testing.assert_array_equal(again.keep, grid.keep)
    # micrometres: 320 um at 5 um/px = 64 px; overlap via stride; level 1 halves the pixels
    assert make_grid(store, tile_um=320, stride_um=160, mask="none").grid_id == "L0-t64-s32"
    g1 = make_grid(store, level=1, tile=32)
    assert g1.grid_id == "L1-t32-s32" and g1.downsample == 2
    np.testing.assert_array_equal(g1.boxes(), grid.boxes())  # same tiles in level-0 pixels
    np.testing.assert_array_equal(g1.keep, grid.keep)
    with pytest.raises(NightwatchError, match="--level 5 does not exist"):
        make_grid(store, level=5)
    with pytest.raises(NightwatchError, match="entries"):
        make_grid(store, tile=TILE, stride=32, mask=np.ones(3, bool))


def test_alpha_and_16bit_grey_mosaics(tmp_path, tiny):
    rng = np.random.default_rng(3)
    # RGBA: textured pixels under alpha == 0 are background, the opaque half is kept
    rgba = np.concatenate([rng.integers(0, 256, (256, 256, 3)), np.zeros((256, 256, 1))], axis=-1).astype(np.uint8)
    rgba[:, 128:, 3] = 255
    s4 = PaintingStore.create(tmp_path / "rgba.nightwatch.zarr")
    write_mosaic_array(s4, rgba, pixel_size_um=5.0, source="rgba")
    g4 = make_grid(s4, tile=64)
    np.testing.assert_array_equal(g4.keep.reshape(4, 4), np.repeat([[False, False, True, True]], 4, axis=0))
    # 16-bit grey: read as 8-bit RGB (value // 257, grey repeated)
    grey = rng.integers(0, 65536, (192, 192), dtype=np.uint16)
    s1 = PaintingStore.create(tmp_path / "grey.nightwatch.zarr")
    write_mosaic_array(s1, grey, pixel_size_um=5.0, source="grey16")
    g1 = make_grid(s1, tile=64, mask="none")
    embed_store(s1, tiny, g1, batch_size=4)
    vectors, _ = load_embeddings(s1, g1.grid_id)
    rgb = np.repeat((grey // 257).astype(np.uint8)[..., None], 3, axis=-1)
    want = tiny.encode_images(np.stack([rgb[y0:y1, x0:x1] for y0, x0, y1, x1 in g1.boxes()]))
    np.testing.assert_allclose(vectors.astype(np.float32), want, atol=FP16_ATOL)


def test_embed_end_to_end_matches_direct_encoding(store, tiny):
    grid = make_grid(store, tile=TILE, stride=32)  # overlapping tiles
    seen = []
    res = embed_store(store, tiny, grid, batch_size=16, chunk_tiles=32, progress=lambda d, t, s: seen.append((d, t, s)))
    assert res["complete"] and res["chunks_processed"] == res["n_chunks"] == -(-grid.n_tiles // 32)
    assert res["tiles_processed"] == int(grid.keep.sum())
    assert set(res["timings"]) >= {"read", "preprocess", "model", "write"}
    assert seen[-1] == (grid.n_tiles, grid.n_tiles, "embed")
    vectors, g = load_embeddings(store, grid.grid_id, engine=tiny)
    assert vectors.dtype == np.float16 and vectors.shape == (grid.n_tiles, 128)
    # ground truth: the same tiles cut from the numpy image and encoded directly
    img = _mosaic()
    idx = grid.indices()
    tiles = np.stack([img[y0:y1, x0:x1] for y0, x0, y1, x1 in grid.boxes(idx)])
    want = tiny.encode_images(tiles)
    np.testing.assert_allclose(vectors[idx].astype(np.float32), want, atol=FP16_ATOL)
    assert not vectors[~g.keep].any()  # skipped tiles stay 0
    meta = store.node_attrs(f"grids/{grid.grid_id}/embeddings/{tiny.model_id}")
    assert meta["signature"]["model_hash"] == tiny.model_hash and meta["chunk_tiles"] == 32
    assert "model" in meta["timings"]
    assert list_embeddings(store) == {grid.grid_id: [tiny.model_id]}
    # a second run has nothing left to do
    again = embed_store(store, tiny, grid.grid_id)
    assert again["chunks_processed"] == 0 and again["complete"]


def test_resume_after_cancel_processes_only_missing_chunks(tmp_path, tiny):
    ref_store = _store(tmp_path / "ref.nightwatch.zarr")
    grid = make_grid(ref_store, tile=TILE, stride=32)
    embed_store(ref_store, tiny, grid, batch_size=16, chunk_tiles=16)
    reference, _ = load_embeddings(ref_store, grid.grid_id, tiny.model_id)

    store = _store(tmp_path / "p.nightwatch.zarr")
    grid = make_grid(store, tile=TILE, stride=32)

    def stop_after_some(done, total, stage):
        if done >= 48:  # three chunks of 16
            raise Cancelled()

    with pytest.raises(Cancelled):
        embed_store(store, tiny, grid, batch_size=16, chunk_tiles=16, progress=stop_after_some)
    path = f"grids/{grid.grid_id}/embeddings/{tiny.model_id}"
    done = np.asarray(store.root[f"{path}/done"][...])
    n_chunks = done.size
    assert 3 <= done.sum() < n_chunks and not store.is_complete(path)
    with pytest.raises(NightwatchError, match="unfinished"):
        load_embeddings(store, grid.grid_id, tiny.model_id)
    res = embed_store(store, tiny, grid, batch_size=16)
    assert res["chunks_skipped"] == int(done.sum())
    assert res["chunks_processed"] == n_chunks - int(done.sum())
    assert res["complete"]
    resumed, _ = load_embeddings(store, grid.grid_id, tiny.model_id)
    np.testing.assert_allclose(resumed.astype(np.float32), reference.astype(np.float32), atol=FP16_ATOL)


def test_signatures_are_checked(store, tiny, tmp_path):
    grid = make_grid(store, tile=TILE)
    embed_store(store, tiny, grid, chunk_tiles=64)
    path = f"grids/{grid.grid_id}/embeddings/{tiny.model_id}"
    # embeddings made by other weights under the same model id
    g = store.root[path]
    meta = dict(g.attrs["nightwatch"])
    meta["signature"] = dict(meta["signature"], model_hash="0123456789abcdef")
    g.attrs["nightwatch"] = meta
    with pytest.raises(NightwatchError, match="model_hash \"0123456789abcdef\" \\(stored\\)"):
        embed_store(store, tiny, grid)
    with pytest.raises(NightwatchError, match="do not match: model_hash"):
        load_embeddings(store, grid.grid_id, engine=tiny)
    res = embed_store(store, tiny, grid, overwrite=True)
    assert res["chunks_processed"] == res["n_chunks"] and res["complete"]
    load_embeddings(store, grid.grid_id, engine=tiny)
    # the same grid with another mask would orphan the embeddings
    with pytest.raises(NightwatchError, match="already has embeddings made with a different mask"):
        make_grid(store, tile=TILE, mask="none")
    assert make_grid(store, tile=TILE).keep.sum() < grid.n_tiles  # the same mask again is just reloaded
    # the mosaic replaced by another one: the embeddings no longer describe it
    other = _mosaic(seed=1)
    write_mosaic_array(store, other, pixel_size_um=5.0, source="another mosaic", source_signature="seed1")
    with pytest.raises(NightwatchError, match="do not match: source"):
        load_embeddings(store, grid.grid_id, tiny.model_id)
    # missing model: say what exists
    with pytest.raises(NightwatchError, match=r"no embeddings of grid L0-t64-s64 for model ViT-B-32__none; it has \{'L0-t64-s64'"):
        load_embeddings(store, grid.grid_id, "ViT-B-32__none")
    with pytest.raises(NightwatchError, match="no tile grid 'L2-t9-s9'; it has \\['L0-t64-s64'\\]"):
        load_embeddings(store, "L2-t9-s9")


@pytest.mark.slow
def test_local_cluster_matches_in_process(tmp_path, tiny):
    distributed = pytest.importorskip("distributed")
    ref_store = _store(tmp_path / "ref.nightwatch.zarr")
    grid = make_grid(ref_store, tile=TILE, stride=32)
    embed_store(ref_store, tiny, grid, batch_size=16, chunk_tiles=16)
    reference, _ = load_embeddings(ref_store, grid.grid_id, tiny.model_id)

    store = _store(tmp_path / "p.nightwatch.zarr")
    grid = make_grid(store, tile=TILE, stride=32)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        # the scheduler address, as `--scheduler tcp://HOST:PORT` passes it
        res = embed_store(store, tiny, grid, batch_size=16, chunk_tiles=16, client=cluster.scheduler_address,
                          num_workers=1)
        with distributed.Client(cluster) as client:
            # both workers did part of the work, each loading the model once
            who = client.run(lambda: len(__import__("napari_nightwatch.ml.clip", fromlist=["_ENGINES"])._ENGINES))
    assert res["complete"] and res["workers"] == 2 and res["chunks_processed"] == res["n_chunks"]
    assert sorted(who.values()) == [1, 1]
    got, _ = load_embeddings(store, grid.grid_id, engine=tiny)
    np.testing.assert_allclose(got.astype(np.float32), reference.astype(np.float32), atol=FP16_ATOL)


def test_cli_embed(store, capsys):
    from napari_nightwatch.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["embed", str(store.path), "--model", "nightwatch-tiny", "--pretrained", "none",
                   "--tile", "64", "--stride", "64", "--batch-size", "8", "--device", "cpu", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["grid_id"] == "L0-t64-s64" and out["model_id"] == "nightwatch-tiny__none"
    assert out["n_tiles"] == 120 and out["tiles_per_s"] > 0 and "model" in out["timings"]
    rc = main(["embed", str(store.path), "--model", "nightwatch-tiny", "--pretrained", "/no/such/file.bin", "--json"])
    err = capsys.readouterr().err
    assert rc == 2 and "neither a pretrained tag of nightwatch-tiny" in err


def _per_tile_mask(store: PaintingStore, grid, min_std: float = 1.0, min_px: int = 16) -> np.ndarray:
    """The mask rule written out tile by tile (the reference for the vectorised ``_auto_mask``)."""
    downs = store.mosaic_downsamples
    k = max(j for j, d in enumerate(downs) if j == grid.level or (j > grid.level and grid.tile * grid.downsample / d >= min_px))
    raw = np.asarray(store.mosaic_levels()[k])
    level, d = raw.astype(np.float64), downs[k]
    scale = 255.0 / 65535.0 if raw.dtype == np.uint16 else 1.0
    has_alpha = level.shape[-1] in (2, 4)
    keep = []
    for y0, x0, y1, x1 in grid.boxes():
        px = level[y0 // d : -(-y1 // d), x0 // d : -(-x1 // d)]
        colour = px[..., :-1] if has_alpha else px
        textured = (colour.reshape(-1, colour.shape[-1]).std(axis=0) * scale >= min_std).any()
        keep.append(bool(textured and (not has_alpha or px[..., -1].max() > 0)))
    return np.array(keep)


def test_vectorised_mask_equals_the_per_tile_rule(tmp_path):
    # RGBA mosaic, 3 pyramid levels, odd sizes: a uniform border, a textured but transparent
    # band, patches whose noise straddles the threshold, and a two-valued patch whose
    # standard deviation is exactly min_std on level 0
    rng = np.random.default_rng(7)
    h, w = 1093, 1131
    img = np.full((h, w, 4), 238, np.uint8)
    img[..., 3] = 255
    img[:, :100, :3] = rng.integers(0, 256, (h, 100, 3))
    img[:, :100, 3] = 0
    for i, y in enumerate(range(150, h - 150, 90)):
        for j, x in enumerate(range(200, w - 150, 90)):
            sigma = (0.0, 0.4, 0.8, 1.2, 3.0, 25.0)[(i + j) % 6]
            img[y : y + 70, x : x + 70, :3] = np.clip(120 + rng.normal(0, sigma, (70, 70, 3)), 0, 255).astype(np.uint8)
    img[150:214, 110:174, :3] = 100 + 2 * (np.arange(64)[:, None] % 2)  # std exactly 1.0 on level 0
    store = PaintingStore.create(tmp_path / "rgba.nightwatch.zarr")
    write_mosaic_array(store, img, pixel_size_um=5.0, source="mask test")
    assert len(store.mosaic_downsamples) == 3
    for level, tile, stride in [(0, 64, 32), (0, 37, 13), (0, 16, 16), (1, 24, 10), (2, 16, 12)]:
        grid = make_grid(store, level=level, tile=tile, stride=stride, mask="auto")
        want = _per_tile_mask(store, grid)
        assert 0 < want.sum() < grid.n_tiles, (level, tile, stride)
        np.testing.assert_array_equal(grid.keep, want, err_msg=f"level {level} tile {tile} stride {stride}")
    # 16-bit grey, block-wise reading in several row-blocks of tiles
    from napari_nightwatch.store import tiles as E

    grey = np.full((600, 520), 30000, np.uint16)
    grey[100:500, 60:460] += rng.normal(0, 400, (400, 400)).astype(np.uint16)  # 1.6 grey levels of 8 bits
    grey[300:400, 100:200] = 30000 + rng.integers(0, 300, (100, 100)).astype(np.uint16)
    s16 = PaintingStore.create(tmp_path / "grey.nightwatch.zarr")
    write_mosaic_array(s16, grey, pixel_size_um=5.0, source="grey16")
    old = E.MASK_BLOCK_VALUES
    E.MASK_BLOCK_VALUES = 600  # a couple of tile rows per block
    try:
        grid = make_grid(s16, tile=20, stride=15, mask="auto")
    finally:
        E.MASK_BLOCK_VALUES = old
    want = _per_tile_mask(s16, grid)
    assert 0 < want.sum() < grid.n_tiles
    np.testing.assert_array_equal(grid.keep, want)


def test_context_reader_is_the_mean_of_the_surrounding_window(store):
    """Each tile's 3x3-tile window, averaged down to one tile, edges replicated beyond the mosaic."""
    from napari_nightwatch.ml.embed import context_reader, tile_reader

    grid = make_grid(store, tile=TILE, stride=TILE // 2, mask="none")
    img = np.asarray(store.mosaic_levels()[grid.level]).astype(np.float64)
    padded = np.pad(img, ((TILE, TILE), (TILE, TILE), (0, 0)), mode="edge")
    read = context_reader(store, grid, 3)
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(grid.n_tiles, 24, replace=False))
    idx = np.concatenate([[0, grid.n_tiles - 1], idx])  # two corners: windows beyond the mosaic
    got = read(idx)
    rows, cols = grid.row_col(idx)
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        y, x = int(r) * grid.stride, int(c) * grid.stride  # window starts TILE earlier = same index in padded
        win = padded[y : y + 3 * TILE, x : x + 3 * TILE]
        want = win.reshape(TILE, 3, TILE, 3, 3).mean(axis=(1, 3))
        # uint8 output of a mean: rounding to the nearest integer, so within 0.5
        assert np.abs(got[k].astype(np.float64) - want).max() <= 0.5 + 1e-9
    # scale 1 is the tile itself
    assert np.array_equal(context_reader(store, grid, 1)(idx), tile_reader(store, grid)(idx))
    with pytest.raises(NightwatchError):
        context_reader(store, grid, 2)
