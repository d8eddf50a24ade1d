"""The vector index: choice rule, build with measured recall, serialisation, incremental add, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _search_support import ColourTextureEncoder, base_store, copy_store, write_embeddings
from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import Cancelled, NightwatchError
from napari_nightwatch.search.index import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    add_to_index,
    build_index,
    choose_index,
    index_from_vectors,
    load_index,
)
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.store.embeddings import open_embeddings

ENC = ColourTextureEncoder()
GRID = "L0-t32-s32"


@pytest.fixture(scope="session")
def search_base(tmp_path_factory, synthetic_store) -> PaintingStore:
    return base_store(tmp_path_factory, synthetic_store)


@pytest.fixture
def store(search_base, tmp_path) -> PaintingStore:
    return copy_store(search_base, tmp_path / "p.nightwatch.zarr")


def _exact(store: PaintingStore, grid: str, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    emb = open_embeddings(store, grid, ENC.model_id)
    tiles = emb.available
    s = emb.read(tiles) @ q.T
    order = np.argsort(-s, axis=0, kind="stable")[:k].T
    return np.take_along_axis(s.T, order, axis=1), tiles[order]


def test_choice_rule_by_size_and_budget():
    assert choose_index(5_000, 512).kind == "flat"
    assert choose_index(500_000, 512).kind == "hnsw"
    whole = choose_index(14_300_000, 512)
    assert whole.kind == "ivfpq"
    assert whole.memory_bytes(14_300_000) <= 4e9 and whole.memory_bytes(14_300_000) <= DEFAULT_MEMORY_BUDGET_BYTES
    # HNSW holds float32 vectors: a small budget pushes the same size to IVF-PQ
    assert choose_index(500_000, 512, memory_budget_bytes=500_000_000).kind == "ivfpq"
    # ... and a tighter one to coarser codes
    tight = choose_index(14_300_000, 512, memory_budget_bytes=700_000_000)
    assert tight.kind == "ivfpq" and tight.params["m"] < whole.params["m"]
    with pytest.raises(NightwatchError, match="memory_budget_bytes"):
        choose_index(14_300_000, 512, memory_budget_bytes=10_000_000)
    with pytest.raises(NightwatchError, match="not one of"):
        choose_index(10, 8, kind="lsh")


def test_flat_build_serialise_round_trip(store):
    info = build_index(store, GRID, ENC.model_id)
    assert info["index_type"] == "flat" and info["n_vectors"] == 256 and info["recall_at_10"] == 1.0
    assert store.is_complete(f"grids/{GRID}/index/{ENC.model_id}")
    vi = load_index(PaintingStore.open(store.path), GRID, ENC.model_id)
    assert vi.kind == "flat" and vi.n_vectors == 256 and vi.dim == ENC.dim
    rng = np.random.default_rng(1)
    q = rng.standard_normal((5, ENC.dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s, t = vi.search(q, 10)
    es, et = _exact(store, GRID, q, 10)
    np.testing.assert_array_equal(t, et)
    np.testing.assert_allclose(s, es, atol=1e-5)
    # a stored vector finds its own tile with score ~1
    own = open_embeddings(store, GRID, ENC.model_id).read(np.array([77]))
    s, t = vi.search(own, 3)
    assert t[0, 0] == 77 and abs(s[0, 0] - 1) < 2e-3


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_indexes_measure_and_store_recall(tmp_path, store, kind):
    write_embeddings(store, ENC, tile=32, stride=16)  # 961 overlapping tiles
    grid = "L0-t32-s16"
    info = build_index(store, grid, ENC.model_id, kind=kind)
    assert info["index_type"] == kind
    attrs = PaintingStore.open(store.path).node_attrs(f"grids/{grid}/index/{ENC.model_id}")
    assert attrs["recall_at_10"] == info["recall_at_10"] and attrs["recall_queries"] == 200
    assert 0.9 <= attrs["recall_at_10"] <= 1.0
    vi = load_index(store, grid, ENC.model_id)
    if kind == "ivfpq":
        # re-ranking vectors are memory-mapped from the store, not loaded
        assert isinstance(vi.rerank.chunks[0], np.memmap)
    # independent check against numpy exact search, on stored vectors as queries
    emb = open_embeddings(store, grid, ENC.model_id)
    q = emb.read(np.arange(0, 961, 37))
    s, t = vi.search(q, 10)
    es, et = _exact(store, grid, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(t, et, strict=True)])
    assert recall >= 0.9
    assert np.isfinite(s).all() and (np.diff(s, axis=1) <= 1e-6).all()


def _half_embedded(base: PaintingStore, path) -> PaintingStore:
    from napari_nightwatch.store.sources import write_mosaic_array

    store = PaintingStore.create(path)
    write_mosaic_array(store, np.asarray(base.mosaic_levels()[0]), pixel_size_um=5.0, source="synthetic copy")
    write_embeddings(store, ENC, tile=16, chunks_done=list(range(8)))  # half of 1024 tiles embedded
    return store


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_incremental_add_without_rebuild(search_base, tmp_path, kind):
    grid = "L0-t16-s16"
    store = _half_embedded(search_base, tmp_path / "inc.nightwatch.zarr")
    first = build_index(store, grid, ENC.model_id, kind=kind)
    assert first["n_vectors"] == 512
    write_embeddings(store, ENC, tile=16, chunks_done=list(range(8, 16)), fresh=False)  # the rest, later
    with pytest.raises(NightwatchError, match="not embedded"):
        add_to_index(store, grid, ENC.model_id, tiles=np.array([10_000]))
    out = add_to_index(store, grid, ENC.model_id)
    assert out == {"added": 512, "n_vectors": 1024, "index_type": kind}
    assert add_to_index(store, grid, ENC.model_id)["added"] == 0  # nothing new
    vi = load_index(store, grid, ENC.model_id)
    assert vi.n_vectors == 1024 and vi.attrs["n_added_since_build"] == 512
    assert vi.attrs["recall_at_10"] == first["recall_at_10"]  # measured at build time, kept
    emb = open_embeddings(store, grid, ENC.model_id)
    q = emb.read(np.array([700, 1000]))  # tiles that were not embedded at build time
    s, t = vi.search(q, 5)
    # each finds itself first (rows are renormalised, so no near-duplicate outscores the tile itself)
    assert list(t[:, 0]) == [700, 1000] and np.all(np.abs(s[:, 0] - 1) < 1e-5)
    if kind == "flat":  # exact: identical to searching everything
        np.testing.assert_array_equal(t, _exact(store, grid, q, 5)[1])


def test_index_from_vectors_matches_exact_on_clustered_data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32)).astype(np.float32)
    x = centres[rng.integers(0, 40, 4000)] + 0.05 * rng.standard_normal((4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # embeddings are stored as float16; IVF-PQ re-ranks from those, so compare on them
    x = x.astype(np.float16).astype(np.float32)
    exact = index_from_vectors(x, choose_index(4000, 32))
    for kind in ("hnsw", "ivfpq"):
        approx = index_from_vectors(x, choose_index(4000, 32, kind=kind))
        _, ti = exact.search(x[:50], 10)
        _, ta = approx.search(x[:50], 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ta, ti, strict=True)])
        assert recall >= 0.9, kind


def test_ivfpq_on_too_few_vectors_is_refused(store):
    with pytest.raises(NightwatchError, match="at least 256 vectors"):
        index_from_vectors(np.eye(8, dtype=np.float32), choose_index(8, 8, kind="ivfpq"))


def test_signature_mismatch_refuses_the_index(store):
    build_index(store, GRID, ENC.model_id)
    path = f"grids/{GRID}/embeddings/{ENC.model_id}"
    attrs = dict(store.root[path].attrs["nightwatch"])
    attrs["signature"] = dict(attrs["signature"], model_hash="0000")
    store.root[path].attrs["nightwatch"] = attrs
    with pytest.raises(NightwatchError, match="different signature.*nightwatch index"):
        load_index(store, GRID, ENC.model_id)


def test_embeddings_of_another_mosaic_are_refused(store):
    m = dict(store.root["mosaic"].attrs["nightwatch"])
    m["source"] = "a different photograph.tif"
    store.root["mosaic"].attrs["nightwatch"] = m
    with pytest.raises(NightwatchError, match="do not match the store: source"):
        build_index(store, GRID, ENC.model_id)
    assert not store.has(f"grids/{GRID}/index")


def test_missing_embeddings_name_what_exists(store, tmp_path):
    before = store.completed()
    with pytest.raises(NightwatchError, match=rf"no embeddings for model 'ViT-B-32__x'.*grid {GRID}: {ENC.model_id}"):
        build_index(store, GRID, "ViT-B-32__x")
    with pytest.raises(NightwatchError, match=rf"no grid 'L2-t224-s224'.*{GRID}"):
        build_index(store, "L2-t224-s224", None)
    with pytest.raises(NightwatchError, match="no finished index.*nightwatch index"):
        load_index(store, GRID, ENC.model_id)
    empty = PaintingStore.create(tmp_path / "empty.nightwatch.zarr")
    with pytest.raises(NightwatchError, match="no embeddings yet"):
        build_index(empty)
    assert store.completed() == before and not store.has(f"grids/{GRID}/index")


def test_cancelled_build_leaves_nothing(store):
    def cancel(done, total, stage):
        if done >= 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        build_index(store, GRID, ENC.model_id, progress=cancel)
    assert not store.is_complete(f"grids/{GRID}/index/{ENC.model_id}")
    assert not store.has(f"grids/{GRID}/index/{ENC.model_id}")


def test_read_only_store_is_refused(search_base):
    with pytest.raises(NightwatchError, match="read-only"):
        build_index(search_base, GRID, ENC.model_id)


def test_cli_index(store, capsys):
    assert main(["index", str(store.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index_type"] == "flat" and out["n_vectors"] == 256 and out["grid"] == GRID
    assert main(["index", str(store.path), "--add", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 0
    assert main(["index", str(store.path), "--model-id", "nope", "--json"]) == 2
    assert "no embeddings for model 'nope'" in capsys.readouterr().err


def test_store_with_two_models_asks_which(store, capsys):
    write_embeddings(store, ColourTextureEncoder(dim=32, name="other"))
    with pytest.raises(NightwatchError, match="several models.*--model-id"):
        build_index(store, GRID)


@pytest.mark.parametrize("damage", ["zero", "truncate", "tile_ids"])
def test_damaged_index_bytes_are_refused(store, capsys, damage):
    """Zeroed or truncated index bytes, or altered tile ids, are caught by the checksum, not searched (issue 11)."""
    gid, mid = "L0-t32-s32", ENC.model_id
    build_index(store, gid, mid)
    load_index(store, gid, mid)  # intact: loads
    g = store.root[f"grids/{gid}/index/{mid}"]
    raw = np.asarray(g["faiss"][...])
    if damage == "zero":
        g["faiss"][...] = np.zeros_like(raw)
    elif damage == "truncate":
        del g["faiss"]
        g.create_array("faiss", data=raw[: raw.size // 2])
    else:
        ids = np.asarray(g["tile_ids"][...])
        g["tile_ids"][...] = ids[::-1]
    with pytest.raises(NightwatchError, match="damaged"):
        load_index(store, gid, mid)
    assert main(["search", str(store.path), "--region", "0,0,32,32", "--json"]) == 2
    assert "damaged" in capsys.readouterr().err
