"""Tile embeddings in the store: the handle that search and the XRF bridge read.

Owns ``grids/<grid_id>/embeddings/<model_id>/`` for readers: ``vectors`` (n_tiles, dim)
float16 L2-normalised rows (0 for skipped tiles), ``done`` (n_chunks,) bool, and the
signature check against the store's mosaic, grid and mask. The pipeline that writes
them is :mod:`napari_nightwatch.ml.embed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import signature
from ..core.errors import NightwatchError
from ..core.jsonutil import jsonable
from ..core.tiling import TileGrid
from . import layout
from .painting import PaintingStore
from .tiles import keep_digest, load_grid, source_signature


def embedding_signature(store: PaintingStore, engine, grid: TileGrid) -> dict[str, Any]:
    """The signature stored with (and checked against) a grid's embeddings for ``engine``."""
    sig = dict(engine.signature)
    sig["source"] = source_signature(store)
    sig["grid"] = grid.to_attrs()
    sig["keep_sha1"] = keep_digest(grid)
    return jsonable(sig)


#: signature entries compared on resume and load. ``package_version`` is recorded but
#: not compared: what a version could change (preprocessing) is compared explicitly.
COMPARED_KEYS = ("source", "model", "pretrained", "model_hash", "dim", "preprocessing", "grid", "keep_sha1")


MODEL_KEYS = ("model", "pretrained", "model_hash", "dim", "preprocessing")


def list_embeddings(store: PaintingStore, complete_only: bool = True) -> dict[str, list[str]]:
    """``{grid_id: [model_id, ...]}`` of the embeddings in ``store`` (complete ones by default)."""
    out: dict[str, list[str]] = {}
    if not store.has(layout.GRIDS):
        return out
    done = store.completed()  # one read of the records, not one per model
    for gid, g in store.root[layout.GRIDS].groups():
        models = []
        if "embeddings" in g:
            for mid, _ in g["embeddings"].groups():
                if not complete_only or layout.embeddings(gid, mid) in done:
                    models.append(mid)
        out[gid] = sorted(models)
    return out


def load_embeddings(
    store: PaintingStore, grid_id: str, model_id: str | None = None, *, engine=None
) -> tuple[np.ndarray, TileGrid]:
    """Read a grid's embeddings, checking they are complete and still match the store (and engine).

    Parameters
    ----------
    store
        The painting store.
    grid_id
        e.g. ``"L0-t224-s224"``.
    model_id
        Which model's embeddings; defaults to ``engine.model_id``, or the only one present.
    engine
        When given, its model (name, weights hash, preprocessing, dim) must be the one
        that made the embeddings.

    Returns
    -------
    vectors : np.ndarray
        float16 ``(n_tiles, dim)``; rows of skipped tiles are 0.
    grid : TileGrid
        The grid with its keep-mask.

    Raises
    ------
    NightwatchError
        Missing grid or model (names what exists), an unfinished run, or a signature
        that no longer matches the store or the engine.
    """
    grid = load_grid(store, grid_id)
    have = list_embeddings(store, complete_only=False)
    models = have.get(grid_id, [])
    if model_id is None:
        model_id = engine.model_id if engine is not None else (models[0] if len(models) == 1 else None)
        if model_id is None:
            raise NightwatchError(
                f"Grid {grid_id} of {store.path} has embeddings for {models or 'no model'}; say which model_id to load."
            )
    path = layout.embeddings(grid_id, model_id)
    if model_id not in models:
        raise NightwatchError(
            f"{store.path} has no embeddings of grid {grid_id} for model {model_id}; it has "
            f"{ {g: m for g, m in list_embeddings(store).items() if m} or 'none'} (run `nightwatch embed`)."
        )
    if not store.is_complete(path):
        g = store.root[path]
        done = np.asarray(g["done"][...], bool) if "done" in g else np.zeros(0, bool)
        raise NightwatchError(
            f"Embeddings of grid {grid_id} for {model_id} in {store.path} are unfinished "
            f"({int(done.sum())}/{done.size} chunks); rerun `nightwatch embed` to resume."
        )
    stored = store.node_attrs(path).get("signature", {})
    current = {"source": source_signature(store), "grid": grid.to_attrs(), "keep_sha1": keep_digest(grid)}
    if engine is not None:
        current.update({k: engine.signature[k] for k in MODEL_KEYS})
    bad = signature.mismatch(stored, current, COMPARED_KEYS)
    if bad:
        raise NightwatchError(
            f"Embeddings {path} of {store.path} do not match: {bad}; re-embed with `nightwatch embed --overwrite`."
        )
    vectors = np.asarray(store.root[f"{path}/vectors"][...], dtype=np.float16)
    return vectors, grid


def done_tiles(embeddings_group, n_tiles: int) -> np.ndarray:
    """Per-tile "embedded" flags of an ``embeddings/<model_id>`` group, from its chunk done-mask.

    A group without a done-mask (written whole, e.g. by a test or an import) counts as done.
    """
    if "done" not in embeddings_group:
        return np.ones(n_tiles, bool)
    attrs = dict(embeddings_group.attrs.get("nightwatch", {}))
    chunk = int(attrs.get("chunk_tiles", embeddings_group["vectors"].chunks[0]))
    flags = np.repeat(np.asarray(embeddings_group["done"][...], dtype=bool), chunk)[:n_tiles]
    return np.concatenate([flags, np.zeros(n_tiles - flags.size, bool)])


# ----------------------------------------------------------- opening embeddings for search and the XRF bridge
#: rows read from the store in one go
READ_ROWS = 65_536


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Rows rescaled to unit length (zero rows stay zero).

    Stored float16 embeddings are unit only to ~1e-4; without this a near-duplicate
    of a slightly longer norm could outscore a tile's match with itself.
    """
    rows = np.asarray(rows, dtype=np.float32)
    n = np.linalg.norm(rows, axis=-1, keepdims=True)
    return np.divide(rows, n, out=np.zeros_like(rows), where=n > 0)


def available_embeddings(store: PaintingStore) -> dict[str, list[str]]:
    """``{grid_id: [model_id, ...]}`` of the embeddings a store holds."""
    out: dict[str, list[str]] = {}
    if not store.has(layout.GRIDS):
        return out
    for gid, g in sorted(store.root[layout.GRIDS].groups()):
        models = sorted(m for m, _ in g["embeddings"].groups()) if "embeddings" in g else []
        out[gid] = models
    return out


def _describe(avail: dict[str, list[str]]) -> str:
    if not avail or not any(avail.values()):
        return "it holds no embeddings yet (run `nightwatch embed`)"
    parts = [f"grid {g}: {', '.join(m) if m else 'no models'}" for g, m in avail.items()]
    return "it holds " + "; ".join(parts)


def resolve_grid_model(
    store: PaintingStore, grid_id: str | None = None, model_id: str | None = None
) -> tuple[str, str]:
    """The (grid_id, model_id) to use: the given ones, or the only ones the store holds.

    Raises
    ------
    NightwatchError
        When the asked embeddings are absent or the choice is ambiguous; the sentence
        lists the grids and models that exist.
    """
    avail = available_embeddings(store)
    grids = [g for g in avail if avail[g]] if grid_id is None else [grid_id]
    if grid_id is None and len(grids) != 1:
        if not grids:
            raise NightwatchError(f"{store.path} has no embeddings to search; {_describe(avail)}.")
        raise NightwatchError(f"{store.path} has several grids; choose one with --grid ({_describe(avail)}).")
    gid = grids[0]
    if gid not in avail:
        raise NightwatchError(f"{store.path} has no grid {gid!r}; {_describe(avail)}.")
    models = avail[gid]
    if model_id is None:
        if len(models) != 1:
            if not models:
                raise NightwatchError(f"{store.path} has no embeddings on grid {gid!r}; {_describe(avail)}.")
            raise NightwatchError(
                f"{store.path} has several models on grid {gid!r}; choose one with --model-id ({_describe(avail)})."
            )
        return gid, models[0]
    if model_id not in models:
        raise NightwatchError(
            f"{store.path} has no embeddings for model {model_id!r} on grid {gid!r}; {_describe(avail)}."
        )
    return gid, model_id


@dataclass
class Embeddings:
    """Handle on ``grids/<grid_id>/embeddings/<model_id>`` (nothing loaded yet)."""

    store: PaintingStore
    grid_id: str
    model_id: str
    vectors: Any  # zarr array (n_tiles, dim) float16
    keep: np.ndarray
    done_tiles: np.ndarray  # (n_tiles,) bool: tile lies in a finished chunk
    attrs: dict
    grid_attrs: dict

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def signature(self) -> dict:
        return dict(self.attrs.get("signature", {}))

    @property
    def available(self) -> np.ndarray:
        """Tile indices that are kept and embedded."""
        return np.flatnonzero(self.keep & self.done_tiles)

    def read(self, tiles: np.ndarray) -> np.ndarray:
        """float32 ``(len(tiles), dim)`` unit rows for sorted tile indices, read chunk-wise."""
        tiles = np.asarray(tiles, dtype=np.int64)
        if tiles.size == 0:
            return np.zeros((0, self.dim), np.float32)
        lo, hi = int(tiles.min()), int(tiles.max()) + 1
        if hi - lo <= 4 * tiles.size + READ_ROWS:
            rows = np.asarray(self.vectors[lo:hi], dtype=np.float32)[tiles - lo]
        else:
            rows = np.asarray(self.vectors.get_orthogonal_selection((tiles, slice(None))), dtype=np.float32)
        return unit_rows(rows)

    @property
    def grid(self) -> TileGrid:
        """The tile grid, with the store's keep-mask."""
        return TileGrid.from_attrs(self.grid_attrs["grid"], keep=self.keep)

    def check_model(self, other: dict, what: str) -> None:
        """Refuse a query model (or encoder) whose signature differs from the one that made these embeddings."""
        keys = [k for k in ("model", "pretrained", "model_hash", "dim", "preprocessing", "source", "grid")
                if k in self.signature and k in other]
        bad = signature.mismatch(other, self.signature, keys, labels=("query", "embeddings"))
        if bad:
            raise NightwatchError(
                f"The signature of {what} differs from that of the embeddings {self.grid_id}/{self.model_id} in "
                f"{self.store.path} ({bad}); "
                "re-embed or use the matching model."
            )


def open_embeddings(store: PaintingStore, grid_id: str | None = None, model_id: str | None = None) -> Embeddings:
    """Open the embeddings of ``grid_id``/``model_id``, with a sentence listing what exists if absent."""
    gid, mid = resolve_grid_model(store, grid_id, model_id)
    g = store.root[layout.grid(gid)]
    e = g[f"embeddings/{mid}"]
    if "vectors" not in e:
        raise NightwatchError(f"The embeddings {gid}/{mid} in {store.path} have no vectors yet; run `nightwatch embed`.")
    vectors = e["vectors"]
    n_tiles = int(vectors.shape[0])
    keep = np.asarray(g["keep"][...], dtype=bool) if "keep" in g else np.ones(n_tiles, bool)
    attrs = dict(e.attrs.get("nightwatch", {}))
    emb = Embeddings(store, gid, mid, vectors, keep, done_tiles(e, n_tiles), attrs, dict(g.attrs.get("nightwatch", {})))
    _check_against_store(emb)
    return emb


def _check_against_store(emb: Embeddings) -> None:
    """Raise when the embeddings were made from another mosaic, grid or mask than the store holds now."""
    sig = emb.signature
    if not sig or "grid" not in emb.grid_attrs:
        return
    grid = emb.grid
    current = {"grid": grid.to_attrs(), "keep_sha1": keep_digest(grid)}
    if emb.store.has_mosaic:
        current["source"] = source_signature(emb.store)
    bad = signature.mismatch(sig, {k: v for k, v in current.items() if k in sig})
    if bad:
        raise NightwatchError(
            f"The embeddings {emb.grid_id}/{emb.model_id} of {emb.store.path} do not match the store: {bad}; "
            "re-embed with `nightwatch embed --overwrite`."
        )
