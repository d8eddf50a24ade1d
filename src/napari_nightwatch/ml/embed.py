"""The tile-embedding pipeline: tile grids, read -> preprocess -> embed -> write, resumable.

Store layout (shared with :mod:`napari_nightwatch.search`)::

    grids/<grid_id>/                 attrs["nightwatch"] = {grid: TileGrid.to_attrs(), n_tiles, n_kept,
                                     mask: {rule, params}, pixel_size_um}
       keep                          (n_tiles,) bool  False = background/empty tile, never embedded
       embeddings/<model_id>/        attrs["nightwatch"] = {signature, dim, chunk_tiles, timings, ...}
          vectors                    (n_tiles, dim) float16, L2-normalised rows, chunks (chunk_tiles, dim);
                                     rows of skipped tiles stay 0
          done                       (n_chunks,) bool: chunk i covers tiles [i*chunk_tiles, (i+1)*chunk_tiles)

How a run goes (:func:`embed_store`): the chunks not yet done are read by
``num_workers`` background threads, one region read per row-segment of tiles,
preprocessed there as batched tensor ops, and handed through a bounded queue to the
model on the calling thread; a writer thread writes each finished chunk of vectors
and then its done flag. A killed or cancelled run therefore resumes exactly where it
stopped. With a dask.distributed ``client`` the pending chunks are spread over the
workers in blocks; each worker process builds the model once (from the engine's
spec) and writes its own chunks, and the driver marks them done.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import Cancelled, NightwatchError
from ..core.progress import ProgressCallback, StageTimer, report
from ..core.tiling import TileGrid
from ..project import PaintingStore, _jsonable

#: default tiles per stored chunk of vectors (and per unit of resumable work)
DEFAULT_CHUNK_TILES = 256
#: background mask: a tile is empty when every channel's standard deviation, measured
#: at a pyramid level where the tile spans at least MASK_MIN_PX pixels, is below
#: MASK_MIN_STD (in 8-bit grey levels) -- or when its alpha channel is 0 everywhere.
MASK_MIN_STD = 1.0
MASK_MIN_PX = 16
MASK_RULE = (
    "background if alpha == 0 over the whole tile, or if every channel's standard deviation "
    "(8-bit units, measured on the coarsest pyramid level where the tile spans >= min_px pixels) "
    "is below min_std: scanner padding and blank borders are uniform at every level, paint is not"
)


# ------------------------------------------------------------------------------ grids
def _grid_path(grid_id: str) -> str:
    return f"grids/{grid_id}"


def _embeddings_path(grid_id: str, model_id: str) -> str:
    return f"grids/{grid_id}/embeddings/{model_id}"


def _to_8bit(block: np.ndarray) -> np.ndarray:
    """(..., c) pixels as uint8 RGB (grey repeated, alpha dropped, 16-bit scaled)."""
    if block.dtype == np.uint16:
        block = (block // 257).astype(np.uint8)
    elif block.dtype != np.uint8:
        block = np.clip(block, 0, 255).astype(np.uint8)
    c = block.shape[-1]
    if c == 1:
        return np.repeat(block, 3, axis=-1)
    if c == 2:  # grey + alpha
        return np.repeat(block[..., :1], 3, axis=-1)
    return block[..., :3]


def _pixels_per_um(store: PaintingStore) -> float | None:
    try:
        return 1.0 / store.mosaic_pixel_size_um
    except (KeyError, TypeError, ZeroDivisionError, ValueError):
        return None


def _mask_level(store: PaintingStore, grid: TileGrid, min_px: int) -> int:
    """The pyramid level of :data:`MASK_RULE`: the coarsest (never finer than the grid's) where a tile spans >= min_px px."""
    tile0 = grid.tile * grid.downsample  # tile edge in level-0 pixels
    k = grid.level
    for j, d in enumerate(store.mosaic_downsamples):
        if j >= grid.level and tile0 / d >= min_px:
            k = j
    return k


def _tile_spans(n: int, stride: int, tile: int, d_grid: int, d: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel spans ``[lo, hi)`` of the n tiles of one grid axis on a level of downsample ``d`` (``limit`` px long).

    Level-0 edges floored / ceiled to the level's pixels and clipped to its extent, as a
    slice of the level array would clip them.
    """
    start0 = np.arange(n, dtype=np.int64) * stride * d_grid
    lo = start0 // d
    hi = np.minimum(-(-(start0 + tile * d_grid) // d), limit)
    return np.minimum(lo, limit), np.maximum(hi, np.minimum(lo, limit))


def _span_sums(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, axis: int, acc: type) -> np.ndarray:
    """Sums of ``values`` over the index spans ``[lo[i], hi[i])`` along ``axis`` (spans may overlap).

    The axis is cut at every span edge and each piece summed once (``np.add.reduceat``);
    a span's sum is then a difference of the pieces' running totals, so overlapping
    spans cost nothing extra. The last edge must be the length of the axis.
    """
    edges = np.unique(np.concatenate([lo, hi]))
    out_shape = list(values.shape)
    out_shape[axis] = len(lo)
    if edges.size < 2:  # every span empty
        return np.zeros(out_shape, acc)
    pieces = np.add.reduceat(values, edges[:-1], axis=axis, dtype=acc)
    zero_shape = list(pieces.shape)
    zero_shape[axis] = 1
    totals = np.concatenate([np.zeros(zero_shape, acc), np.cumsum(pieces, axis=axis, dtype=acc)], axis=axis)
    return np.take(totals, np.searchsorted(edges, hi), axis=axis) - np.take(totals, np.searchsorted(edges, lo), axis=axis)


def _box_sums(values: np.ndarray, ry: tuple[np.ndarray, np.ndarray], rx: tuple[np.ndarray, np.ndarray],
              acc: type) -> np.ndarray:
    """Sums of ``values`` (h, w, c) over every box ``ry-span i x rx-span j``: ``(len(ry[0]), len(rx[0]), c)``.

    Separable: first each row of tiles' column sums, then those summed along each
    tile's columns -- one pass over the pixels whatever the stride. Integer pixels
    accumulate in int64, so the sums are exact.
    """
    return _span_sums(_span_sums(values, ry[0], ry[1], 0, acc), rx[0], rx[1], 1, acc)


#: pixel values (rows x width x channels of the mask level) read and summed at once;
#: bounds the mask's memory to a few times this many values, whatever the image size
MASK_BLOCK_VALUES = 1 << 22


def _auto_mask(store: PaintingStore, grid: TileGrid, min_std: float, min_px: int,
               progress: ProgressCallback | None) -> np.ndarray:
    """Keep-mask by :data:`MASK_RULE`, from per-tile moments of a coarse pyramid level.

    The level is read in blocks of whole rows of tiles (each pixel row once per block,
    even with overlapping tiles); every tile's channel sums of x and x**2 and its count
    of alpha > 0 come from separable running sums (:func:`_box_sums`), so there is no
    per-tile Python loop. Integer pixels give exact sums: the standard deviation
    ``sqrt(n * sum(x**2) - sum(x)**2) / n`` is then exact up to the final float64
    rounding.
    """
    k = _mask_level(store, grid, min_px)
    arr = store.mosaic_levels()[k]
    d = store.mosaic_downsamples[k]
    dtype = np.dtype(arr.dtype)
    scale = 255.0 / 65535.0 if dtype == np.uint16 else 1.0
    hk, wk, n_ch = (int(v) for v in arr.shape)
    has_alpha = n_ch in (2, 4)
    n_colour = n_ch - 1 if has_alpha else n_ch
    integer = dtype.kind in "ui"
    acc = np.int64 if integer else np.float64
    # the squares of 8- and 16-bit pixels fit exactly in 16 and 32 bits (cheaper than int64)
    square_dtype = {np.dtype(np.uint8): np.uint16, np.dtype(np.uint16): np.uint32}.get(dtype, acc)
    ty0, ty1 = _tile_spans(grid.n_rows, grid.stride, grid.tile, grid.downsample, d, hk)
    tx0, tx1 = _tile_spans(grid.n_cols, grid.stride, grid.tile, grid.downsample, d, wk)
    x_end = int(tx1.max())
    n_px_cols = (tx1 - tx0)[None, :]
    # exact integer n * sum(x**2) - sum(x)**2 needs n**2 * max**2 < 2**63
    max_v = float(np.iinfo(dtype).max) if integer else 0.0
    n_max = float((ty1 - ty0).max() * n_px_cols.max())
    exact = integer and (n_max * max_v) ** 2 < 2.0**62
    row_px = max(1, x_end * n_ch)
    budget_rows = max(1, MASK_BLOCK_VALUES // row_px)  # pixel rows per block
    keep = np.zeros(grid.n_tiles, dtype=bool)
    r0 = 0
    while r0 < grid.n_rows:
        r1 = r0 + 1  # at least one row of tiles, more while the band stays in budget
        while r1 < grid.n_rows and ty1[r1] - ty0[r0] <= budget_rows:
            r1 += 1
        ya, yb = int(ty0[r0]), int(ty1[r0:r1].max())
        band = np.asarray(arr[ya:yb, :x_end].compute(scheduler="synchronous"))
        ry, rx = (ty0[r0:r1] - ya, ty1[r0:r1] - ya), (tx0, tx1)
        n = (ty1[r0:r1] - ty0[r0:r1])[:, None] * n_px_cols  # (rows, cols) pixels per tile
        colour = band[..., :n_colour]
        s1 = _box_sums(colour, ry, rx, acc)
        s2 = _box_sums(np.square(colour, dtype=square_dtype), ry, rx, acc)
        nn = n[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            if exact:
                var_n2 = (nn * s2 - s1 * s1).astype(np.float64)  # exact integers
                std = np.sqrt(var_n2) / nn
            else:
                mean = s1 / nn
                std = np.sqrt(np.maximum(s2 / nn - mean * mean, 0.0))
            textured = (std * scale >= min_std).any(axis=-1)  # NaN (empty tile) is never textured
        if has_alpha:
            opaque = _box_sums(band[..., -1:] > 0, ry, rx, np.int64)[..., 0] > 0
            textured &= opaque
        keep[r0 * grid.n_cols : r1 * grid.n_cols] = textured.ravel()
        report(progress, r1, grid.n_rows, "mask")
        r0 = r1
    return keep


def _mask_spec(mask: Any, min_std: float, min_px: int) -> tuple[str, dict]:
    if isinstance(mask, str) and mask == "auto":
        return "auto", {"rule": MASK_RULE, "params": {"min_std": min_std, "min_px": min_px}}
    if mask is None or (isinstance(mask, str) and mask == "none"):
        return "none", {"rule": "none: every tile kept", "params": {}}
    arr = np.asarray(mask, dtype=bool)
    digest = hashlib.sha1(np.packbits(arr).tobytes()).hexdigest()[:16]
    return "given", {"rule": "given by the caller", "params": {"sha1": digest}}


def make_grid(
    store: PaintingStore,
    *,
    level: int = 0,
    tile: int = 224,
    stride: int | None = None,
    tile_um: float | None = None,
    stride_um: float | None = None,
    mask: str | np.ndarray | None = "auto",
    min_std: float = MASK_MIN_STD,
    min_px: int = MASK_MIN_PX,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> TileGrid:
    """Define a tile grid over one pyramid level and write it (with its keep-mask) to the store.

    Parameters
    ----------
    store
        A painting store with a mosaic (writable unless the same grid already exists).
    level
        Pyramid level the tiles are read from (0 = full resolution).
    tile, stride
        Tile edge and step in pixels of that level; ``stride`` defaults to ``tile``
        (no overlap), ``stride < tile`` overlaps.
    tile_um, stride_um
        The same in micrometres (override ``tile``/``stride``; rounded to whole pixels of the level).
    mask
        ``"auto"`` (skip empty tiles, see :data:`MASK_RULE`), ``"none"`` (keep all) or a
        bool array with one entry per tile.
    min_std, min_px
        Parameters of the ``"auto"`` rule.
    overwrite
        Replace an existing grid of the same id whose mask differs (its embeddings are deleted).
    progress
        ``progress(done, total, "mask")``.

    Returns
    -------
    TileGrid
        The grid, with ``keep`` set. Its id (``L0-t224-s224``) names ``grids/<grid_id>``.

    Raises
    ------
    NightwatchError
        No mosaic, a level that does not exist, a tile that does not fit, a mask of the
        wrong length, or an existing grid with embeddings and a different mask.
    """
    downs = store.mosaic_downsamples
    if not 0 <= int(level) < len(downs):
        raise NightwatchError(f"--level {level} does not exist; the mosaic of {store.path} has levels 0..{len(downs) - 1}.")
    level = int(level)
    d = downs[level]
    if tile_um is not None or stride_um is not None:
        ppu = _pixels_per_um(store)
        if ppu is None:
            raise NightwatchError(f"The mosaic of {store.path} has no pixel size; give tile and stride in pixels.")
        if tile_um is not None:
            tile = int(round(float(tile_um) * ppu / d))
        if stride_um is not None:
            stride = int(round(float(stride_um) * ppu / d))
    stride = int(tile if stride is None else stride)
    grid = TileGrid(mosaic_shape=store.mosaic_shape, level=level, tile=int(tile), stride=stride, downsample=d)
    kind, mask_attrs = _mask_spec(mask, float(min_std), int(min_px))
    if kind == "given":
        keep_given = np.asarray(mask, dtype=bool)
        if keep_given.shape != (grid.n_tiles,):
            raise NightwatchError(f"mask has {keep_given.shape} entries; grid {grid.grid_id} has {grid.n_tiles} tiles.")
    gid = grid.grid_id
    path = _grid_path(gid)
    if store.has(path) and store.is_complete(path):
        meta = store.node_attrs(path)
        if meta.get("grid") == grid.to_attrs() and meta.get("mask") == _jsonable(mask_attrs):
            return load_grid(store, gid)
        if store.has(f"{path}/embeddings") and any(True for _ in store.root[f"{path}/embeddings"].groups()) and not overwrite:
            raise NightwatchError(
                f"Grid {gid} of {store.path} already has embeddings made with a different mask "
                f"({meta.get('mask', {}).get('rule')}); pass overwrite=True (--overwrite) to replace it."
            )
    store.require_writable()
    if kind == "auto":
        keep = _auto_mask(store, grid, float(min_std), int(min_px), progress)
    elif kind == "none":
        keep = np.ones(grid.n_tiles, dtype=bool)
    else:
        keep = keep_given
    store.mark_incomplete(path)
    if store.has(path):
        del store.root[path]
    g = store.group(path, create=True)
    arr = g.create_array("keep", shape=(grid.n_tiles,), dtype=bool, chunks=(min(grid.n_tiles, 1 << 20),), fill_value=False)
    arr[:] = keep
    g.attrs["nightwatch"] = _jsonable(
        {
            "grid": grid.to_attrs(),
            "n_tiles": grid.n_tiles,
            "n_kept": int(keep.sum()),
            "mask": mask_attrs,
            "pixel_size_um": store.mosaic_info.get("pixel_size_um"),
        }
    )
    store.mark_complete(path, grid=grid.to_attrs(), n_kept=int(keep.sum()), mask=mask_attrs["rule"])
    return grid.with_keep(keep)


def list_grids(store: PaintingStore) -> list[str]:
    """Ids of the complete tile grids in ``store``."""
    if not store.has("grids"):
        return []
    return sorted(gid for gid, _ in store.root["grids"].groups() if store.is_complete(_grid_path(gid)))


def load_grid(store: PaintingStore, grid_id: str) -> TileGrid:
    """The tile grid ``grid_id`` of ``store``, with its keep-mask.

    Raises
    ------
    NightwatchError
        When the store has no such (complete) grid; the message lists the grids it has.
    """
    path = _grid_path(grid_id)
    if not (store.has(path) and store.is_complete(path)):
        raise NightwatchError(
            f"{store.path} has no tile grid {grid_id!r}; it has {list_grids(store) or 'none'} "
            f"(make one with `nightwatch embed --tile ...`)."
        )
    meta = store.node_attrs(path)
    keep = np.asarray(store.root[f"{path}/keep"][...], dtype=bool)
    return TileGrid.from_attrs(meta["grid"], keep=keep)


# -------------------------------------------------------------------------- signatures
def source_signature(store: PaintingStore) -> dict[str, Any]:
    """The mosaic source entry of a signature: ``{source, source_signature}`` from ``mosaic_info``."""
    info = store.mosaic_info
    return {"source": info.get("source"), "source_signature": info.get("source_signature")}


def keep_digest(grid: TileGrid) -> str:
    """Short hash of a grid's keep-mask (all True when it has none)."""
    keep = np.ones(grid.n_tiles, bool) if grid.keep is None else np.asarray(grid.keep, bool)
    return hashlib.sha1(np.packbits(keep).tobytes()).hexdigest()[:16]


# older names, used by search/index.py
_source_signature = source_signature
_keep_digest = keep_digest


def embedding_signature(store: PaintingStore, engine, grid: TileGrid) -> dict[str, Any]:
    """The signature stored with (and checked against) a grid's embeddings for ``engine``."""
    sig = dict(engine.signature)
    sig["source"] = source_signature(store)
    sig["grid"] = grid.to_attrs()
    sig["keep_sha1"] = keep_digest(grid)
    return _jsonable(sig)


#: signature entries compared on resume and load. ``package_version`` is recorded but
#: not compared: what a version could change (preprocessing) is compared explicitly.
_COMPARED = ("source", "model", "pretrained", "model_hash", "dim", "preprocessing", "grid", "keep_sha1")
_MODEL_KEYS = ("model", "pretrained", "model_hash", "dim", "preprocessing")


def signature_mismatch(stored: dict[str, Any], current: dict[str, Any], keys: Sequence[str] = _COMPARED) -> str | None:
    """Name the first compared entry where two signatures differ, or None when they agree."""
    for k in keys:
        if k in current and _jsonable(stored.get(k)) != _jsonable(current.get(k)):
            return f"{k} {json.dumps(stored.get(k), default=str)[:120]} (stored) vs {json.dumps(current.get(k), default=str)[:120]} (now)"
    return None


def list_embeddings(store: PaintingStore, complete_only: bool = True) -> dict[str, list[str]]:
    """``{grid_id: [model_id, ...]}`` of the embeddings in ``store`` (complete ones by default)."""
    out: dict[str, list[str]] = {}
    if not store.has("grids"):
        return out
    for gid, g in store.root["grids"].groups():
        models = []
        if "embeddings" in g:
            for mid, _ in g["embeddings"].groups():
                if not complete_only or store.is_complete(_embeddings_path(gid, mid)):
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
    path = _embeddings_path(grid_id, model_id)
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
        current.update({k: engine.signature[k] for k in _MODEL_KEYS})
    bad = signature_mismatch(stored, current)
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


# ---------------------------------------------------------------------------- pipeline
def _tile_reader(store: PaintingStore, grid: TileGrid) -> Callable[[np.ndarray], np.ndarray]:
    """A function: tile indices -> uint8 (n, tile, tile, 3), one region read per row-segment."""
    arr = store.mosaic_levels()[grid.level]
    lh, lw = int(arr.shape[0]), int(arr.shape[1])
    t, s = grid.tile, grid.stride

    def read(index: np.ndarray) -> np.ndarray:
        out = np.zeros((len(index), t, t, 3), np.uint8)
        if len(index) == 0:
            return out
        rows, cols = grid.row_col(index)
        for r in np.unique(rows):
            sel = np.flatnonzero(rows == r)
            c = cols[sel]
            y0, x0 = int(r) * s, int(c.min()) * s
            y1, x1 = y0 + t, int(c.max()) * s + t
            block = np.asarray(arr[y0:min(y1, lh), x0:min(x1, lw)].compute(scheduler="synchronous"))
            block = _to_8bit(block)
            if block.shape[:2] != (y1 - y0, x1 - x0):  # a level smaller than the grid expects: pad
                block = np.pad(block, ((0, y1 - y0 - block.shape[0]), (0, x1 - x0 - block.shape[1]), (0, 0)))
            for j, cc in zip(sel, c, strict=True):
                ox = (int(cc) * s) - x0
                out[j] = block[:, ox : ox + t]
        return out

    return read


def _plan(grid: TileGrid, chunk_ids: Sequence[int], chunk_tiles: int) -> list[tuple[int, int, np.ndarray]]:
    """(chunk id, number of rows in the chunk, kept offsets within the chunk) per chunk."""
    keep = np.ones(grid.n_tiles, bool) if grid.keep is None else np.asarray(grid.keep, bool)
    plan = []
    for cid in chunk_ids:
        a, b = int(cid) * chunk_tiles, min((int(cid) + 1) * chunk_tiles, grid.n_tiles)
        plan.append((int(cid), b - a, np.flatnonzero(keep[a:b])))
    return plan


class _Timer(StageTimer):
    """A StageTimer that background threads may add to."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            super().add(name, seconds)


def _embed_chunks(
    read_tiles: Callable[[np.ndarray], np.ndarray],
    engine,
    plan: list[tuple[int, int, np.ndarray]],
    chunk_tiles: int,
    *,
    batch_size: int,
    num_workers: int,
    write_chunk: Callable[[int, np.ndarray], None],
    on_written: Callable[[int], None],
    timer: _Timer,
) -> int:
    """Run the overlapped pipeline over ``plan``; returns the number of tiles embedded.

    Reader threads read and preprocess; the calling thread runs the model (so a GPU or
    torch's own thread pool sees one caller); a writer thread writes finished chunks.
    ``on_written(chunk_id)`` runs on the calling thread and may raise (Cancelled).
    """
    dim = int(engine.dim)
    num_workers = max(1, int(num_workers))
    # bounded: at most ~2 batches per reader wait, so memory does not grow with the mosaic
    work: queue.Queue = queue.Queue(maxsize=2 * num_workers)
    writes: queue.Queue = queue.Queue(maxsize=4)
    written: queue.Queue = queue.Queue()
    stop = threading.Event()
    errors: list[BaseException] = []
    plan_iter = iter(plan)
    plan_lock = threading.Lock()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                work.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            while not stop.is_set():
                with plan_lock:
                    step = next(plan_iter, None)
                if step is None:
                    break
                cid, n_rows, offsets = step
                if len(offsets) == 0:
                    if not put(("batch", cid, n_rows, offsets, 1, None)):
                        return
                    continue
                t0 = time.perf_counter()
                tiles = read_tiles(cid * chunk_tiles + offsets)
                timer.add("read", time.perf_counter() - t0)
                nb = math.ceil(len(offsets) / batch_size)
                for b in range(nb):
                    t0 = time.perf_counter()
                    x = engine.preprocess(tiles[b * batch_size : (b + 1) * batch_size])
                    timer.add("preprocess", time.perf_counter() - t0)
                    if not put(("batch", cid, n_rows, offsets[b * batch_size : (b + 1) * batch_size], nb, x)):
                        return
        except BaseException as exc:  # handed to the calling thread
            errors.append(exc)
            stop.set()
        finally:
            put(("reader_done",))

    def writer() -> None:
        while True:
            item = writes.get()
            if item is None:
                return
            if errors:
                continue  # drain without writing once something failed
            cid, rows = item
            try:
                t0 = time.perf_counter()
                write_chunk(cid, rows)
                timer.add("write", time.perf_counter() - t0)
                written.put(cid)
            except BaseException as exc:
                errors.append(exc)
                stop.set()

    def drain_written(call: bool) -> None:
        while True:
            try:
                cid = written.get_nowait()
            except queue.Empty:
                return
            if call:
                on_written(cid)

    readers = [threading.Thread(target=reader, name=f"nightwatch-read-{i}", daemon=True) for i in range(num_workers)]
    wthread = threading.Thread(target=writer, name="nightwatch-write", daemon=True)
    for th in readers:
        th.start()
    wthread.start()
    pending: dict[int, list] = {}
    n_tiles = 0
    finished_readers = 0
    ok = False
    try:
        while finished_readers < num_workers:
            if errors:
                raise errors[0]
            t0 = time.perf_counter()
            try:
                item = work.get(timeout=0.05)
            except queue.Empty:
                timer.add("model_idle", time.perf_counter() - t0)
                drain_written(True)
                continue
            timer.add("model_idle", time.perf_counter() - t0)
            if item[0] == "reader_done":
                finished_readers += 1
                continue
            _, cid, n_rows, offs, nb, x = item
            slot = pending.setdefault(cid, [np.zeros((n_rows, dim), np.float16), 0])
            if x is not None:
                t0 = time.perf_counter()
                emb = engine.encode_preprocessed(x)
                timer.add("model", time.perf_counter() - t0)
                slot[0][offs] = emb.astype(np.float16)
                n_tiles += len(offs)
            slot[1] += 1
            if slot[1] == nb:
                del pending[cid]
                while True:  # bounded hand-off that notices a dead writer
                    if errors:
                        raise errors[0]
                    try:
                        writes.put((cid, slot[0]), timeout=0.05)
                        break
                    except queue.Full:
                        drain_written(True)
            drain_written(True)
        ok = True
    finally:
        stop.set()
        writes.put(None)  # chunks already handed over are still written: finished work is kept
        wthread.join()
        for th in readers:
            th.join(timeout=5)
        if ok and not errors:
            drain_written(True)
        else:
            drain_written(False)
    if errors:
        raise errors[0]
    return n_tiles


# ------------------------------------------------------------------ distributed workers
_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def cached_engine(spec: dict[str, Any]):
    """The engine for ``spec``, built once per process (each dask worker loads its model once)."""
    from .clip import load_clip

    key = json.dumps(spec, sort_keys=True, default=str)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = load_clip(**spec)
        return _ENGINES[key]


def _embed_block_task(
    store_path: str,
    grid_id: str,
    model_id: str,
    spec: dict[str, Any],
    chunk_ids: list[int],
    chunk_tiles: int,
    batch_size: int,
    num_workers: int,
) -> dict[str, Any]:
    """Run on a dask worker: embed ``chunk_ids`` and write their vectors (never the done-mask)."""
    engine = cached_engine(spec)
    store = PaintingStore.open(store_path, mode="r+")
    grid = load_grid(store, grid_id)
    vectors = store.root[f"{_embeddings_path(grid_id, model_id)}/vectors"]
    timer = _Timer()

    def write_chunk(cid: int, rows: np.ndarray) -> None:
        vectors[cid * chunk_tiles : cid * chunk_tiles + rows.shape[0]] = rows

    n = _embed_chunks(
        _tile_reader(store, grid), engine, _plan(grid, chunk_ids, chunk_tiles), chunk_tiles,
        batch_size=batch_size, num_workers=num_workers, write_chunk=write_chunk,
        on_written=lambda cid: None, timer=timer,
    )
    return {"chunks": [int(c) for c in chunk_ids], "tiles": n, "timings": timer.seconds, "model_hash": engine.model_hash}


def _as_client(client):
    if client is None or not isinstance(client, str):
        return client, False
    try:
        from distributed import Client

        return Client(client, timeout=30), True
    except OSError as exc:
        raise NightwatchError(f"--scheduler {client} could not be reached ({exc}); start a dask scheduler there first.") from exc


def _run_distributed(client, store, engine, grid, model_id, todo, chunk_tiles, batch_size, num_workers,
                     done_arr, on_chunk, timer) -> int:
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    per_task = max(1, min(16, math.ceil(len(todo) / (4 * n_workers))))
    blocks = [list(map(int, todo[i : i + per_task])) for i in range(0, len(todo), per_task)]
    futures = [
        client.submit(
            _embed_block_task, str(store.path), grid.grid_id, model_id, engine.spec, block, chunk_tiles,
            batch_size, num_workers, pure=False, key=f"nightwatch-embed-{model_id}-{grid.grid_id}-{block[0]}-{time.time_ns()}",
        )
        for block in blocks
    ]
    n_tiles = 0
    try:
        for fut in as_completed(futures):
            res = fut.result()
            if res["model_hash"] != engine.model_hash:
                raise NightwatchError(
                    f"A dask worker built a different {engine.model_id} (weights hash {res['model_hash']} vs "
                    f"{engine.model_hash}); every worker must see the same checkpoint file at the same path."
                )
            for k, v in res["timings"].items():
                timer.add(k, v)
            n_tiles += int(res["tiles"])
            for cid in res["chunks"]:
                done_arr[cid] = True  # only the driver writes the done-mask: no two writers share its chunk
                on_chunk(cid)
    except BaseException:
        client.cancel(futures)
        raise
    return n_tiles


def embed_store(
    store: PaintingStore,
    engine,
    grid: TileGrid | str,
    *,
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
    client=None,
    num_workers: int = 2,
    chunk_tiles: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embed every kept tile of a grid with ``engine``, resumably, into the store.

    Parameters
    ----------
    store
        A writable painting store with a mosaic.
    engine
        A :class:`~napari_nightwatch.ml.clip.ClipEngine` (with a distributed ``client``
        only its ``spec`` travels; each worker builds its own copy once).
    grid
        A grid from :func:`make_grid` (written to the store if it is not there yet) or a grid id.
    batch_size
        Tiles per forward pass.
    progress
        ``progress(tiles_done, n_tiles, "embed")`` after each written chunk; may raise
        :class:`~napari_nightwatch.core.errors.Cancelled` (finished chunks are kept).
    client
        A ``dask.distributed.Client`` or a scheduler address ``"tcp://HOST:PORT"``; None runs in-process.
    num_workers
        Reader/preprocessing threads (per process).
    chunk_tiles
        Tiles per stored chunk and per unit of resumable work; default 256 rounded up to a
        multiple of ``batch_size``. A resumed run keeps the stored value.
    overwrite
        Replace existing embeddings whose signature differs (otherwise that is an error).

    Returns
    -------
    dict
        grid_id, model_id, n_tiles, n_kept, n_chunks, chunks_processed, chunks_skipped,
        tiles_processed, wall_s, tiles_per_s, timings (seconds per stage: read,
        preprocess, model, write, model_idle; stages overlap so they do not sum to wall_s),
        complete, workers.

    Raises
    ------
    NightwatchError
        Existing embeddings with a different signature (unless ``overwrite``), bad parameters.
    """
    store.require_writable()
    if batch_size < 1:
        raise NightwatchError(f"batch_size={batch_size} must be a positive number of tiles.")
    if isinstance(grid, str):
        grid = load_grid(store, grid)
    elif not (store.has(_grid_path(grid.grid_id)) and store.is_complete(_grid_path(grid.grid_id))):
        grid = make_grid(
            store, level=grid.level, tile=grid.tile, stride=grid.stride,
            mask="auto" if grid.keep is None else grid.keep,
        )
    else:
        stored = load_grid(store, grid.grid_id)
        if grid.keep is not None and not np.array_equal(np.asarray(grid.keep, bool), stored.keep):
            raise NightwatchError(
                f"The keep-mask given for grid {grid.grid_id} differs from the one stored in {store.path}; "
                f"call make_grid(..., overwrite=True) first."
            )
        grid = stored
    model_id = engine.model_id
    path = _embeddings_path(grid.grid_id, model_id)
    signature = embedding_signature(store, engine, grid)
    if store.has(path) and "vectors" in store.root[path] and "done" in store.root[path]:
        meta = store.node_attrs(path)
        bad = signature_mismatch(meta.get("signature", {}), signature)
        if bad and not overwrite:
            raise NightwatchError(
                f"Embeddings {path} of {store.path} were made differently: {bad}; pass overwrite=True "
                f"(--overwrite) to replace them."
            )
        new_chunks = chunk_tiles is not None and int(chunk_tiles) != int(meta.get("chunk_tiles", -1))
        if bad or (new_chunks and overwrite):  # without overwrite a resume keeps the stored chunk_tiles
            store.mark_incomplete(path)
            del store.root[path]
    if not (store.has(path) and "done" in store.root[path]):
        if chunk_tiles is None:
            chunk_tiles = batch_size * max(1, math.ceil(DEFAULT_CHUNK_TILES / batch_size))
        chunk_tiles = int(chunk_tiles)
        if chunk_tiles < 1:
            raise NightwatchError(f"chunk_tiles={chunk_tiles} must be a positive number of tiles.")
        store.mark_incomplete(path)
        if store.has(path):
            del store.root[path]
        g = store.group(path, create=True)
        n_chunks = math.ceil(grid.n_tiles / chunk_tiles)
        g.create_array("vectors", shape=(grid.n_tiles, engine.dim), dtype=np.float16,
                       chunks=(chunk_tiles, engine.dim), fill_value=0)
        g.create_array("done", shape=(n_chunks,), dtype=bool, chunks=(min(n_chunks, 1 << 16),), fill_value=False)
        g.attrs["nightwatch"] = _jsonable(
            {"signature": signature, "dim": engine.dim, "chunk_tiles": chunk_tiles, "model_id": model_id,
             "grid_id": grid.grid_id, "n_tiles": grid.n_tiles, "timings": {}}
        )
    g = store.root[path]
    meta = store.node_attrs(path)
    chunk_tiles = int(meta["chunk_tiles"])
    done_arr = g["done"]
    vectors = g["vectors"]
    done = np.asarray(done_arr[...], bool)
    n_chunks = done.size
    todo = np.flatnonzero(~done)
    chunk_len = np.minimum(chunk_tiles, grid.n_tiles - np.arange(n_chunks) * chunk_tiles)
    tiles_done = int(chunk_len[done].sum())
    report(progress, tiles_done, grid.n_tiles, "embed")
    timer = _Timer()
    state = {"tiles_done": tiles_done}

    def on_chunk(cid: int) -> None:
        state["tiles_done"] += int(chunk_len[cid])
        report(progress, state["tiles_done"], grid.n_tiles, "embed")

    client, own_client = _as_client(client)
    t_start = time.perf_counter()
    n_workers = 1
    try:
        if len(todo) and client is not None:
            n_workers = max(1, len(client.scheduler_info().get("workers", {})))
            n_embedded = _run_distributed(client, store, engine, grid, model_id, todo, chunk_tiles, batch_size,
                                          num_workers, done_arr, on_chunk, timer)
        elif len(todo):
            def write_chunk(cid: int, rows: np.ndarray) -> None:
                vectors[cid * chunk_tiles : cid * chunk_tiles + rows.shape[0]] = rows
                done_arr[cid] = True  # after the vectors: a chunk is never marked done before it is written

            n_embedded = _embed_chunks(
                _tile_reader(store, grid), engine, _plan(grid, todo, chunk_tiles), chunk_tiles,
                batch_size=batch_size, num_workers=num_workers, write_chunk=write_chunk,
                on_written=on_chunk, timer=timer,
            )
        else:
            n_embedded = 0
    except Cancelled:
        _record_run(store, path, timer, time.perf_counter() - t_start, engine, batch_size, n_workers)
        raise
    finally:
        if own_client:
            client.close()
    wall = time.perf_counter() - t_start
    done = np.asarray(done_arr[...], bool)
    complete = bool(done.all())
    _record_run(store, path, timer, wall, engine, batch_size, n_workers)
    if complete and not store.is_complete(path):
        store.mark_complete(path, signature=signature, chunk_tiles=chunk_tiles, n_tiles=grid.n_tiles)
    return {
        "grid_id": grid.grid_id,
        "model_id": model_id,
        "n_tiles": grid.n_tiles,
        "n_kept": int(grid.keep.sum()) if grid.keep is not None else grid.n_tiles,
        "n_chunks": int(n_chunks),
        "chunks_processed": int(len(todo)),
        "chunks_skipped": int(n_chunks - len(todo)),
        "tiles_processed": int(n_embedded),
        "wall_s": round(wall, 4),
        "tiles_per_s": round(n_embedded / wall, 3) if wall > 0 and n_embedded else 0.0,
        "timings": timer.as_dict(),
        "complete": complete,
        "workers": n_workers,
        "random_weights": bool(getattr(engine, "random_weights", False)),
    }


def _record_run(store, path, timer, wall, engine, batch_size, n_workers) -> None:
    g = store.root[path]
    meta = dict(g.attrs.get("nightwatch", {}))
    meta["timings"] = dict(timer.as_dict(), wall_s=round(wall, 4))
    meta["run"] = {"device": getattr(engine, "device", None), "precision": getattr(engine, "precision", None),
                   "batch_size": int(batch_size), "workers": int(n_workers)}
    g.attrs["nightwatch"] = _jsonable(meta)


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
    if not store.has("grids"):
        return out
    for gid, g in sorted(store.root["grids"].groups()):
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


def open_embeddings(store: PaintingStore, grid_id: str | None = None, model_id: str | None = None) -> Embeddings:
    """Open the embeddings of ``grid_id``/``model_id``, with a sentence listing what exists if absent."""
    gid, mid = resolve_grid_model(store, grid_id, model_id)
    g = store.root[f"grids/{gid}"]
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
    bad = signature_mismatch(sig, {k: v for k, v in current.items() if k in sig})
    if bad:
        raise NightwatchError(
            f"The embeddings {emb.grid_id}/{emb.model_id} of {emb.store.path} do not match the store: {bad}; "
            "re-embed with `nightwatch embed --overwrite`."
        )
