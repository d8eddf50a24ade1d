"""Queries: text, exemplar region, exemplar image, combinations; multi-store search, merging, similarity map."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from _search_support import ColourTextureEncoder, base_store, copy_store, write_embeddings
from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.search import (
    PAINTING_TEMPLATES,
    build_index,
    combine,
    hits_to_json,
    image_vector,
    merge_overlapping,
    region_vector,
    search,
    similarity_map,
    text_vector,
)
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.store.embeddings import open_embeddings

ENC = ColourTextureEncoder()
GRID = "L0-t32-s32"


@pytest.fixture(scope="session")
def search_base(tmp_path_factory, synthetic_store) -> PaintingStore:
    return base_store(tmp_path_factory, synthetic_store)


@pytest.fixture(scope="module")
def indexed(search_base, tmp_path_factory) -> PaintingStore:
    """The synthetic painting with embeddings and a flat index (read-only for the tests)."""
    store = copy_store(search_base, tmp_path_factory.mktemp("q") / "p.nightwatch.zarr")
    build_index(store, GRID, ENC.model_id)
    return PaintingStore.open(store.path)


@pytest.fixture(scope="module")
def truth(indexed):
    from napari_nightwatch.synth import load_ground_truth

    return load_ground_truth(indexed)


def _precision_at_10(store, model, grid_id, model_id, truth) -> tuple[float, float]:
    """Mean precision@10 of same-surface-pigment hits for exemplar-region queries on pure tiles, and chance."""
    emb = open_embeddings(store, grid_id, model_id)
    g = emb.grid
    labels, purity = truth.tile_labels(g.boxes())
    queries = [t for t in np.flatnonzero(purity >= 0.95)][::3]
    prec, cache = [], {}
    for t in queries:
        q = region_vector(store, model, grid_id, tuple(g.boxes([t])[0]), model_id=model_id)
        hits = search(store, q, grid_id=grid_id, model_id=model_id, k=11, merge=False, indexes=cache)
        others = [h.tile for h in hits if h.tile != t][:10]
        prec.append(np.mean(labels[others] == labels[t]))
    # chance: a random other tile shares the query tile's label
    chance = np.mean([(np.count_nonzero(labels == labels[t]) - 1) / (labels.size - 1) for t in queries])
    return float(np.mean(prec)), float(chance)


def test_region_query_returns_its_own_tile_first(indexed):
    g = open_embeddings(indexed, GRID, ENC.model_id).grid
    for t in (0, 77, 255):
        box = tuple(int(v) for v in g.boxes([t])[0])
        hits = search(indexed, region_vector(indexed, ENC, GRID, box), grid_id=GRID, model_id=ENC.model_id, k=5)
        assert hits[0].tile == t and abs(hits[0].score - 1) < 2e-3 and hits[0].rank == 1
        assert hits[0].box == box
        # the same region in micrometres (5 um pixels) gives the same vector
        um = [v * 5.0 for v in box]
        np.testing.assert_allclose(region_vector(indexed, ENC, GRID, um, units="um"),
                                   region_vector(indexed, None, GRID, box, model_id=ENC.model_id), atol=1e-6)


def test_precision_at_10_beats_chance(indexed, truth):
    precision, chance = _precision_at_10(indexed, ENC, GRID, ENC.model_id, truth)
    print(f"test encoder: precision@10 {precision:.3f} vs chance {chance:.3f}")
    assert precision > 2 * chance and precision > 0.5


def test_hits_carry_pixels_micrometres_and_json(indexed):
    q = region_vector(indexed, ENC, GRID, (64, 96, 96, 128))
    hits = search(indexed, q, grid_id=GRID, model_id=ENC.model_id, k=7)
    assert [h.rank for h in hits] == list(range(1, 8))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    for h in hits:
        y0, x0, y1, x1 = h.box
        assert (y1 - y0, x1 - x0) == (32, 32) and h.y == (y0 + y1) / 2 and h.x == (x0 + x1) / 2
        assert h.y_um == h.y * 5.0 and h.x_um == h.x * 5.0 and h.box_um == tuple(v * 5.0 for v in h.box)
    rows = json.loads(json.dumps(hits_to_json(hits)))
    assert {"rank", "score", "tile", "y", "x", "y_um", "x_um", "store", "box"} <= set(rows[0])
    assert rows[0]["store"] == str(indexed.path)


def test_text_query_templates_and_empty_text():
    v = text_vector(ENC, "red")
    np.testing.assert_allclose(np.linalg.norm(v), 1, atol=1e-6)
    t = text_vector(ENC, "red", templates=PAINTING_TEMPLATES)
    mean = ENC.encode_text([p.format("red") for p in PAINTING_TEMPLATES]).mean(axis=0)
    np.testing.assert_allclose(t, mean / np.linalg.norm(mean), atol=1e-6)
    for bad in ("", "   "):
        with pytest.raises(NightwatchError, match="text query is empty"):
            text_vector(ENC, bad)
    with pytest.raises(NightwatchError, match="must hold one '\\{\\}'"):
        text_vector(ENC, "red", templates=["a photo of red"])


def test_combine_like_a_not_like_b(indexed, truth):
    emb = open_embeddings(indexed, GRID, ENC.model_id)
    g = emb.grid
    labels, purity = truth.tile_labels(g.boxes())
    pure = np.flatnonzero(purity >= 0.95)
    a = pure[0]
    b = next(t for t in pure if labels[t] != labels[a])
    va, vb = (region_vector(indexed, ENC, GRID, tuple(g.boxes([t])[0])) for t in (a, b))
    q = combine([(va, 1.0)], [(vb, 0.5)])
    expected = va - 0.5 * vb
    np.testing.assert_allclose(q, expected / np.linalg.norm(expected), atol=1e-6)
    plain = similarity_map(indexed, va, grid_id=GRID)[0].ravel()
    mixed = similarity_map(indexed, q, grid_id=GRID)[0].ravel()
    # the negative pushes B's tile down relative to A's
    assert mixed[a] - mixed[b] > plain[a] - plain[b]
    np.testing.assert_allclose(combine([va]), va, atol=1e-6)
    with pytest.raises(NightwatchError, match="at least one positive"):
        combine([], [(vb, 1.0)])
    with pytest.raises(NightwatchError, match="cannot be combined"):
        combine([va, np.ones(3)])
    with pytest.raises(NightwatchError, match="negatives cancel"):
        combine([(va, 1.0)], [(va, 1.0)])


def test_image_exemplar_and_non_image_file(indexed, tmp_path):
    from PIL import Image

    g = open_embeddings(indexed, GRID, ENC.model_id).grid
    y0, x0, y1, x1 = g.boxes([123])[0]
    crop = np.asarray(indexed.mosaic_levels()[0][y0:y1, x0:x1])
    Image.fromarray(crop).save(tmp_path / "detail.png")
    v = image_vector(ENC, tmp_path / "detail.png")
    hits = search(indexed, v, grid_id=GRID, model_id=ENC.model_id, k=3)
    assert hits[0].tile == 123 and hits[0].score > 0.999
    (tmp_path / "notes.png").write_text("not pixels")
    with pytest.raises(NightwatchError, match="notes.png is not an image file"):
        image_vector(ENC, tmp_path / "notes.png")
    with pytest.raises(NightwatchError, match="does not exist"):
        image_vector(ENC, tmp_path / "missing.png")


def test_region_smaller_than_a_tile_is_embedded_and_bad_regions(indexed):
    before = indexed.completed()
    v = region_vector(indexed, ENC, GRID, (40, 50, 52, 61))
    crop = np.asarray(indexed.mosaic_levels()[0][40:52, 50:61])
    np.testing.assert_allclose(v, ENC.encode_images(crop[None])[0], atol=1e-6)
    with pytest.raises(NightwatchError, match="a model is needed"):
        region_vector(indexed, None, GRID, (40, 50, 52, 61), model_id=ENC.model_id)
    with pytest.raises(NightwatchError, match="smaller than one mosaic pixel"):
        region_vector(indexed, ENC, GRID, (10, 10, 10.5, 20))
    with pytest.raises(NightwatchError, match="outside the painting.*512 x 512"):
        region_vector(indexed, ENC, GRID, (600, 600, 700, 700))
    with pytest.raises(NightwatchError, match="outside the painting"):
        region_vector(indexed, ENC, GRID, (3000, 3000, 4000, 4000), units="um")  # 600-800 px
    # a region overhanging the edge is clipped to the painting
    edge = np.asarray(indexed.mosaic_levels()[0][500:512, 500:512])
    np.testing.assert_allclose(region_vector(indexed, ENC, GRID, (500, 500, 600, 600)),
                               ENC.encode_images(edge[None])[0], atol=1e-6)
    assert indexed.completed() == before


def test_model_with_another_signature_is_refused(indexed):
    other = ColourTextureEncoder(seed=8)  # same model_id, other weights
    with pytest.raises(NightwatchError, match="signature of model colourtex__test differs.*model_hash"):
        region_vector(indexed, other, GRID, (0, 0, 64, 64))


def test_multi_store_search_merges_by_score(indexed, tmp_path):
    twin = copy_store(indexed, tmp_path / "twin.nightwatch.zarr")
    g = open_embeddings(indexed, GRID, ENC.model_id).grid
    q = region_vector(indexed, ENC, GRID, tuple(g.boxes([42])[0]))
    hits = search([indexed, twin.path], q, grid_id=GRID, model_id=ENC.model_id, k=6)
    assert [h.rank for h in hits] == list(range(1, 7))
    assert {h.store for h in hits[:2]} == {str(indexed.path), str(twin.path)}
    assert hits[0].tile == hits[1].tile == 42 and hits[0].score == pytest.approx(hits[1].score, abs=1e-6)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    # a store of another model cannot join the collection
    other = copy_store(indexed, tmp_path / "other.nightwatch.zarr")
    del other.root[f"grids/{GRID}/embeddings/{ENC.model_id}"]
    with pytest.raises(NightwatchError, match="no embeddings for model"):
        search([indexed, other], q, grid_id=GRID, model_id=ENC.model_id)


def test_overlapping_hits_are_merged(search_base, tmp_path):
    store = copy_store(search_base, tmp_path / "ov.nightwatch.zarr")
    grid = write_embeddings(store, ENC, tile=32, stride=16)
    build_index(store, grid.grid_id, ENC.model_id)
    t = grid.tile_at(200, 200)
    q = region_vector(store, ENC, grid.grid_id, tuple(grid.boxes([t])[0]))
    from napari_nightwatch.search.query import box_iou

    def max_iou(hits):
        b = np.array([h.box for h in hits], float)
        return max(box_iou(b[i], np.delete(b, i, axis=0)).max() for i in range(len(b)))

    raw = search(store, q, grid_id=grid.grid_id, model_id=ENC.model_id, k=15, merge=False)
    merged = search(store, q, grid_id=grid.grid_id, model_id=ENC.model_id, k=15)
    assert max_iou(raw) > 0.3  # neighbours of the best tile overlap it
    assert len(merged) == 15 and merged[0].tile == t and max_iou(merged) <= 0.3
    loose = search(store, q, grid_id=grid.grid_id, model_id=ENC.model_id, k=15, iou_threshold=0.0)
    assert max_iou(loose) == 0.0
    # the rule itself on hand-made boxes: the better of two overlapping boxes stays
    boxes = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [20, 20, 30, 30]])
    assert merge_overlapping(boxes, np.array([0.5, 0.9, 0.7])).tolist() == [1, 2]


def test_similarity_map_aligned_with_the_mosaic(search_base, tmp_path):
    store = copy_store(search_base, tmp_path / "map.nightwatch.zarr")
    grid = write_embeddings(store, ENC, chunks_done=[0, 2])  # chunks 1 and 3 not embedded yet
    emb = open_embeddings(store, grid.grid_id, ENC.model_id)
    q = emb.read(np.array([10]))[0]
    q /= np.linalg.norm(q)  # float16 rows are unit only to ~1e-4; queries are normalised
    m, scale, translate = similarity_map(store, q, grid_id=grid.grid_id, model_id=ENC.model_id)
    assert m.shape == grid.shape == (16, 16) and m.dtype == np.float32
    flat = m.ravel()
    assert np.isnan(flat[64:128]).all() and np.isnan(flat[192:]).all()
    done = np.r_[0:64, 128:192]
    # float16 rows, float32 dot products of 64 terms: summation order changes a score by
    # < 64 * 6e-8 = 4e-6 for unit vectors, so 1e-5 holds on any BLAS kernel
    np.testing.assert_allclose(flat[done], emb.read(done) @ q, atol=1e-5)
    assert np.nanargmax(flat) == 10
    assert (scale, translate) == grid.map_transform() == ((32.0, 32.0), (15.5, 15.5))
    with pytest.raises(NightwatchError, match="dimension 64"):
        similarity_map(store, np.ones(5), grid_id=grid.grid_id)


def test_cli_search_region_and_bad_input(indexed, tmp_path, capsys):
    assert main(["search", str(indexed.path), "--region", "0,0,64,64", "-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"]["region"] == [0, 0, 64, 64] and out["model_id"] == ENC.model_id
    assert len(out["results"]) == 4 and out["results"][0]["rank"] == 1
    assert {"rank", "score", "tile", "y", "x", "y_um", "x_um", "store", "box"} <= set(out["results"][0])
    assert main(["search", str(indexed.path), "--region", "900,900,990,990", "--json"]) == 2
    assert "outside the painting" in capsys.readouterr().err
    assert main(["search", str(indexed.path), "--json"]) == 2
    assert "Say what to look for" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the tiny CLIP
@pytest.fixture(scope="module")
def tiny(search_base, tmp_path_factory):
    """The synthetic painting embedded with the package's tiny CLIP (random weights) through the real pipeline."""
    from napari_nightwatch.ml.clip import load_clip
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.store.tiles import make_grid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = load_clip("nightwatch-tiny", pretrained="none")
    store = copy_store(search_base, tmp_path_factory.mktemp("tiny") / "t.nightwatch.zarr")
    grid = make_grid(store, level=0, tile=64, mask="none")
    embed_store(store, engine, grid, batch_size=64)
    build_index(store, grid.grid_id, engine.model_id)
    return store, engine, grid.grid_id


def test_tiny_clip_text_query_and_negatives(tiny):
    store, engine, gid = tiny
    q = text_vector(engine, "craquelure", templates=PAINTING_TEMPLATES)
    assert q.shape == (engine.dim,) and np.isfinite(q).all()
    hits = search(store, q, grid_id=gid, model_id=engine.model_id, k=10)
    assert len(hits) == 10 and all(np.isfinite(h.score) for h in hits)
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    neg = combine([q], [(text_vector(engine, "blue pigment particles"), 1.0)])
    hits_neg = search(store, neg, grid_id=gid, model_id=engine.model_id, k=10)
    assert [h.tile for h in hits_neg] != [h.tile for h in hits]


def test_tiny_clip_precision_is_measured(tiny, truth):
    store, engine, gid = tiny
    precision, chance = _precision_at_10(store, engine, gid, engine.model_id, truth)
    print(f"tiny CLIP (random weights): precision@10 {precision:.3f} vs chance {chance:.3f}")
    assert np.isfinite(precision) and 0.0 <= precision <= 1.0


def test_cli_text_and_image_with_the_embeddings_model(tiny, tmp_path, capsys):
    from PIL import Image

    store, engine, gid = tiny
    args = ["search", str(store.path), "--grid", gid, "--model-id", engine.model_id]
    assert main(args + ["--text", "craquelure", "--not", "blue", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"] == {"text": "craquelure", "not": ["blue"]} and len(out["results"]) == 3
    Image.fromarray(np.asarray(store.mosaic_levels()[0][:64, :64])).save(tmp_path / "d.png")
    assert main(args + ["--image", str(tmp_path / "d.png"), "-k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["tile"] == 0
    assert main(args + ["--text", "  ", "--json"]) == 2
    assert "text query is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_xrf_pixel_query_through_the_bridge(search_base, tmp_path, capsys):
    from napari_nightwatch.ml.bridge import spectrum_query_vector, train_xrf_bridge

    store = copy_store(search_base, tmp_path / "x.nightwatch.zarr")
    build_index(store, GRID, ENC.model_id)
    train_xrf_bridge(store, epochs=2, min_train_tiles=16)
    assert main(["search", str(store.path), "--xrf-pixel", "10,12", "-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"]["xrf_pixel"] == [10, 12] and out["model_id"] == ENC.model_id
    q, mid = spectrum_query_vector(store, xrf_pixel=(10, 12))
    expected = search(store, q, grid_id=GRID, model_id=mid, k=4)
    assert [r["tile"] for r in out["results"]] == [h.tile for h in expected]
    assert main(["search", str(store.path), "--xrf-pixel", "10,12", "--text", "red", "--json"]) == 2
    assert "cannot be combined" in capsys.readouterr().err


def test_widget_and_cli_give_the_same_hits(tiny, capsys):
    """The Search panel's worker function and the CLI run the same query runner: same hits, same order."""
    from napari_nightwatch._napari._qt.search_widget import SearchRequest, run_search
    from napari_nightwatch.ml.encoders import query_encoders

    store, engine, gid = tiny
    args = ["search", str(store.path), "--grid", gid, "--model-id", engine.model_id, "-k", "5", "--json"]
    assert main(args + ["--text", "craquelure", "--not", "white ground"]) == 0
    cli_hits = [(r["tile"], r["score"]) for r in json.loads(capsys.readouterr().out)["results"]]
    req = SearchRequest(store=store.path, grid_id=gid, model_id=engine.model_id, source="text", text="craquelure",
                        negative="white ground", k=5)
    res = run_search(req, query_encoders())
    widget_hits = [(h.tile, h.score) for h in res.hits]
    assert [t for t, _ in widget_hits] == [t for t, _ in cli_hits] and len(cli_hits) == 5
    # the CLI prints scores rounded for JSON; both come from the same float32 vector
    np.testing.assert_allclose([s for _, s in widget_hits], [s for _, s in cli_hits], atol=1e-5)
    # and a region exemplar: the same again
    assert main(args + ["--region", "0,0,128,128"]) == 0
    cli_tiles = [r["tile"] for r in json.loads(capsys.readouterr().out)["results"]]
    req = SearchRequest(store=store.path, grid_id=gid, model_id=engine.model_id, source="Shapes rectangle",
                        box_level0=(0.0, 0.0, 128.0, 128.0), k=5)
    assert [h.tile for h in run_search(req, query_encoders()).hits] == cli_tiles
