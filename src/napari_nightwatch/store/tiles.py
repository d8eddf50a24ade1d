"""Tile grids of the mosaic and their background masks, kept in the store.

Owns ``grids/<grid_id>/`` (attrs: the :class:`~napari_nightwatch.core.tiling.TileGrid`,
tile counts, mask rule and parameters; ``keep``: which tiles hold paint), the grid
readers used by embedding, search and the XRF bridge, and the source-and-mask part
of every embedding signature.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.jsonutil import jsonable
from ..core.progress import ProgressCallback, report
from ..core.tiling import TileGrid
from . import layout
from .painting import PaintingStore

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
    path = layout.grid(gid)
    from .sources import changed_reference

    changed = changed_reference(store)
    if changed:
        raise NightwatchError(
            f"The mosaic of {store.path} is stale: {changed}; import it again (nightwatch import-mosaic) before "
            "tiling or embedding."
        )
    if store.has(path) and store.is_complete(path):
        meta = store.node_attrs(path)
        stale = store.stale_parts().get(path)  # the mosaic was re-imported since: its mask is not this mosaic's
        same = meta.get("grid") == grid.to_attrs() and meta.get("mask") == jsonable(mask_attrs)
        if same and stale is None:
            return load_grid(store, gid)
        has_embeddings = store.has(f"{path}/embeddings") and any(True for _ in store.root[f"{path}/embeddings"].groups())
        if has_embeddings and not overwrite:
            why = f"is stale ({stale})" if stale else (
                f"already has embeddings made with a different mask ({meta.get('mask', {}).get('rule')})")
            raise NightwatchError(f"Grid {gid} of {store.path} {why}; pass overwrite=True (--overwrite) to replace it.")
    store.require_writable()
    # a grid takes seconds: a second job making the same grid waits for the first instead of racing it
    with store.job(path, "making tile grid " + gid, wait=120.0):
        if store.has(path) and store.is_complete(path) and store.stale_parts().get(path) is None:
            meta = store.node_attrs(path)
            if meta.get("grid") == grid.to_attrs() and meta.get("mask") == jsonable(mask_attrs):
                return load_grid(store, gid)  # the other job made exactly this grid meanwhile
        return _write_grid(store, grid, path, kind, keep_given if kind == "given" else None, mask_attrs,
                           float(min_std), int(min_px), progress)


def _write_grid(store: PaintingStore, grid: TileGrid, path: str, kind: str, keep_given: np.ndarray | None,
                mask_attrs: dict, min_std: float, min_px: int, progress: ProgressCallback | None) -> TileGrid:
    """Compute a grid's keep-mask and write the grid (under its job lock)."""
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
    g.attrs["nightwatch"] = jsonable(
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
    if not store.has(layout.GRIDS):
        return []
    done = store.completed()  # one read of the records, not one per grid
    return sorted(gid for gid, _ in store.root[layout.GRIDS].groups() if layout.grid(gid) in done)


def load_grid(store: PaintingStore, grid_id: str | None = None) -> TileGrid:
    """The tile grid ``grid_id`` of ``store`` (the only one when None), with its keep-mask.

    Raises
    ------
    NightwatchError
        When the store has no such (complete) grid, or several when none is named; the
        message lists the grids it has.
    """
    if grid_id is None:
        ids = list_grids(store)
        if len(ids) != 1:
            if not ids:
                raise NightwatchError(f"{store.path} has no tile grids yet; embed the mosaic first (nightwatch embed).")
            raise NightwatchError(f"{store.path} has tile grids {', '.join(ids)}; choose one with --grid.")
        grid_id = ids[0]
    path = layout.grid(grid_id)
    if not (store.has(path) and store.is_complete(path)):
        raise NightwatchError(
            f"{store.path} has no tile grid {grid_id!r}; it has {list_grids(store) or 'none'} "
            f"(make one with `nightwatch embed --tile ...`)."
        )
    meta = store.node_attrs(path)
    keep = np.asarray(store.root[f"{path}/keep"][...], dtype=bool)
    return TileGrid.from_attrs(meta["grid"], keep=keep)


def tile_mean_colour(
    store: PaintingStore, grid: TileGrid, *, min_px: int = 8, progress: ProgressCallback | None = None
) -> np.ndarray:
    """Mean colour of every tile of a grid, read from a coarse pyramid level.

    The level is the coarsest (never finer than the grid's) on which a tile still spans
    ``min_px`` pixels: a tile's mean colour barely changes with resolution, and the
    Night Watch's level 0 would be read for nothing. Sums are taken with the same
    separable running sums as the background mask (one pass over the level, exact for
    integer pixels).

    Parameters
    ----------
    store
        The painting store.
    grid
        The tile grid.
    min_px
        Tile edge, in pixels of the level read, below which a finer level is used.
    progress
        ``progress(done, total, "tile colour")``.

    Returns
    -------
    numpy.ndarray
        ``(n_tiles, 3)`` float64 mean R, G, B in [0, 1] (grey images repeat their one
        channel); NaN for a tile with no pixels.
    """
    k = _mask_level(store, grid, min_px)
    arr = store.mosaic_levels()[k]
    d = store.mosaic_downsamples[k]
    dtype = np.dtype(arr.dtype)
    top = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
    hk, wk, n_ch = (int(v) for v in arr.shape)
    n_colour = n_ch - 1 if n_ch in (2, 4) else n_ch
    acc = np.int64 if dtype.kind in "ui" else np.float64
    ty0, ty1 = _tile_spans(grid.n_rows, grid.stride, grid.tile, grid.downsample, d, hk)
    tx0, tx1 = _tile_spans(grid.n_cols, grid.stride, grid.tile, grid.downsample, d, wk)
    x_end = int(tx1.max())
    budget_rows = max(1, MASK_BLOCK_VALUES // max(1, x_end * n_ch))
    out = np.full((grid.n_tiles, 3), np.nan, np.float64)
    r0 = 0
    while r0 < grid.n_rows:
        r1 = r0 + 1
        while r1 < grid.n_rows and ty1[r1] - ty0[r0] <= budget_rows:
            r1 += 1
        ya, yb = int(ty0[r0]), int(ty1[r0:r1].max())
        band = np.asarray(arr[ya:yb, :x_end, :n_colour].compute(scheduler="synchronous"))
        sums = _box_sums(band, (ty0[r0:r1] - ya, ty1[r0:r1] - ya), (tx0, tx1), acc).astype(np.float64)
        n = ((ty1[r0:r1] - ty0[r0:r1])[:, None] * (tx1 - tx0)[None, :]).astype(np.float64)[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / n / top
        if n_colour == 1:
            mean = np.repeat(mean, 3, axis=-1)
        out[r0 * grid.n_cols : r1 * grid.n_cols] = mean[..., :3].reshape(-1, 3)
        report(progress, r1, grid.n_rows, "tile colour")
        r0 = r1
    return out


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
