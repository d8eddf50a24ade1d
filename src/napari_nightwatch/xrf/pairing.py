"""Pairing mosaic tiles with the XRF data under them.

For each tile of a grid, the XRF spectrum of its footprint is the area-weighted
mean of the XRF pixels the tile covers, through the XRF->mosaic affine.  The
weights form a sparse matrix ``W`` (tiles x XRF pixels) built by supersampling
each tile's footprint (every sample point lands in one XRF pixel; a pixel's weight
is the fraction of samples it receives, i.e. its share of the tile's area).  The
spectra are then ``W @ cube``, computed one chunk of cube rows at a time, so the
cube is read once and never held whole.  The same matrix pairs tiles with
element-intensity maps.

With a dask ``client`` each block of cube rows is read and multiplied by a worker
(which opens the store by its location); this process adds the blocks' sums in row
order, through the same per-block function as the in-process run, so both give the
same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.cluster import connected, task_batches
from ..core.errors import NightwatchError
from ..core.geometry import as_affine
from ..core.progress import ProgressCallback, report
from ..core.tiling import TileGrid


@dataclass
class PairedTiles:
    """Tiles of a grid with the XRF data under them.

    Attributes
    ----------
    grid
        The tile grid.
    tiles
        ``(n,)`` tile indices (row-major in the grid) that lie inside the scan.
    coverage
        ``(n,)`` fraction of each tile's area inside the scan.
    spectra
        ``(n, n_energy)`` float32 mean counts per XRF pixel, or None (maps only).
    elements
        ``(n, c)`` float32 element intensities (fitted or imported maps), or None.
    element_names
        Names of the ``elements`` columns.
    """

    grid: TileGrid
    tiles: np.ndarray
    coverage: np.ndarray
    spectra: np.ndarray | None = None
    elements: np.ndarray | None = None
    element_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.tiles.size)


def footprint_matrix(
    grid: TileGrid,
    affine: np.ndarray,
    xrf_shape: tuple[int, int],
    *,
    index: np.ndarray | None = None,
    samples: int | None = None,
    min_coverage: float = 0.9,
    chunk_tiles: int = 4096,
):
    """Sparse area weights of XRF pixels under each tile.

    Parameters
    ----------
    grid
        Tile grid (boxes in level-0 mosaic pixels).
    affine
        3x3 XRF pixel ``(y, x, 1)`` -> level-0 mosaic pixel affine.
    xrf_shape
        ``(ny, nx)`` of the XRF scan.
    index
        Tiles to pair (default: the grid's kept tiles).
    samples
        Sample points per tile edge; default: enough for ~3 samples per XRF pixel
        edge (2..32).
    min_coverage
        Tiles with less of their area inside the scan are excluded.
    chunk_tiles
        Tiles processed at once (bounds memory to ``chunk_tiles * samples**2``).

    Returns
    -------
    weights, tiles, coverage
        ``scipy.sparse.csr_matrix`` of shape ``(n_kept, ny * nx)`` whose rows sum
        to 1, the tile indices of its rows, and their coverage fractions.
    """
    import scipy.sparse as sp

    a = as_affine(affine)
    inv = np.linalg.inv(a)
    ny, nx = int(xrf_shape[0]), int(xrf_shape[1])
    idx = grid.indices() if index is None else np.asarray(index, dtype=np.int64)
    tile0 = grid.tile * grid.downsample
    foot = float(np.sqrt(abs(np.linalg.det(a[:2, :2]))))  # XRF pixel edge in mosaic px
    if samples is None:
        samples = int(np.clip(np.ceil(3.0 * tile0 / foot - 1e-6), 2, 32))
    s = int(samples)
    # sample offsets inside a tile: centres of an s x s subdivision of the tile's
    # area, which spans [y0 - 0.5, y1 - 0.5) in pixel-centre coordinates
    off = (np.arange(s) + 0.5) * (tile0 / s) - 0.5
    oy, ox = np.meshgrid(off, off, indexing="ij")
    oy, ox = oy.ravel(), ox.ravel()
    rows_all, cols_all, vals_all, keep_tiles, keep_cov = [], [], [], [], []
    n_rows = 0
    for start in range(0, idx.size, chunk_tiles):
        sub = idx[start : start + chunk_tiles]
        b = grid.boxes(sub).astype(np.float64)
        py = b[:, :1] + oy[None]
        px = b[:, 1:2] + ox[None]
        # inverse affine: mosaic px -> XRF px, nearest pixel centre owns the sample
        fy = inv[0, 0] * py + inv[0, 1] * px + inv[0, 2]
        fx = inv[1, 0] * py + inv[1, 1] * px + inv[1, 2]
        iy = np.floor(fy + 0.5).astype(np.int64)
        ix = np.floor(fx + 0.5).astype(np.int64)
        inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        cov = inside.mean(axis=1)
        ok = cov >= min_coverage
        if not ok.any():
            continue
        iy, ix, inside = iy[ok], ix[ok], inside[ok]
        local = np.repeat(np.arange(ok.sum()) + n_rows, s * s).reshape(iy.shape)
        w = 1.0 / inside.sum(axis=1, keepdims=True)
        rows_all.append(local[inside])
        cols_all.append((iy * nx + ix)[inside])
        vals_all.append(np.broadcast_to(w, iy.shape)[inside])
        keep_tiles.append(sub[ok])
        keep_cov.append(cov[ok])
        n_rows += int(ok.sum())
    if n_rows == 0:
        return sp.csr_matrix((0, ny * nx)), np.zeros(0, np.int64), np.zeros(0)
    w = sp.coo_matrix(
        (np.concatenate(vals_all), (np.concatenate(rows_all), np.concatenate(cols_all))), shape=(n_rows, ny * nx)
    ).tocsr()
    w.sum_duplicates()
    return w, np.concatenate(keep_tiles), np.concatenate(keep_cov)


#: bytes of float64 cube rows read per block (whole storage chunk rows, at least one)
BLOCK_BYTES = 256 << 20


def _row_step(cube, n_cols: int, n_e: int) -> int:
    """Cube rows per block: whole storage chunk rows, as many as fit in :data:`BLOCK_BYTES` of float64."""
    ny = int(cube.shape[0])
    chunk_rows = getattr(cube, "chunks", None)
    if chunk_rows is not None and isinstance(chunk_rows[0], tuple):  # dask
        step = int(max(chunk_rows[0]))
    elif chunk_rows is not None:  # zarr
        step = int(chunk_rows[0])
    else:
        step = 64
    budget_rows = BLOCK_BYTES // max(1, 8 * n_cols * n_e)
    return max(1, min(ny, step * max(1, budget_rows // step)))


def _block_weights(w_csc, nx: int, y0: int, y1: int):
    """``(rows, weights)``: the tiles that cover cube rows ``y0:y1`` and their weights there, or None."""
    sub = w_csc[:, y0 * nx : y1 * nx]
    if sub.nnz == 0:
        return None
    rows = np.unique(sub.indices)
    return rows, sub[rows]


def _pair_block(weights, cube, y0: int, y1: int) -> np.ndarray:
    """``weights @ cube[y0:y1]`` in float64: one block's share of the footprint sums.

    The one per-block step of both the in-process and the distributed pairing.
    """
    n_e = int(cube.shape[2])
    block = np.asarray(cube[y0:y1], dtype=np.float64).reshape(-1, n_e)
    return np.asarray(weights @ block)


def _pair_blocks_task(location: str, blocks: list[tuple[int, int, object]]) -> list[np.ndarray]:
    """Run on a dask worker: each ``(y0, y1, weights)`` block's sums from the store's cube at ``location``."""
    from ..store import layout
    from ..store.painting import open_worker_store

    cube = open_worker_store(location, mode="r").root[layout.XRF_CUBE]
    return [_pair_block(w, cube, y0, y1) for y0, y1, w in blocks]


def pair_cube(
    weights,
    cube,
    *,
    progress: ProgressCallback | None = None,
    client=None,
) -> np.ndarray:
    """``weights @ cube`` chunk by chunk of cube rows.

    Parameters
    ----------
    weights
        ``(n, ny * nx)`` sparse area weights from :func:`footprint_matrix`.
    cube
        ``(ny, nx, n_energy)`` array (dask or zarr or numpy), or a painting store (its
        MA-XRF cube); read one block of rows at a time, skipping rows no tile covers.
    progress
        Optional progress callback; may raise Cancelled.
    client
        A ``dask.distributed.Client`` or a scheduler address ``"tcp://HOST:PORT"``:
        the blocks are read and summed by the cluster's workers. ``cube`` must then be
        the painting store, which every worker opens at the same location (a shared
        filesystem or object storage). None computes in this process.

    Returns
    -------
    numpy.ndarray
        ``(n, n_energy)`` float32 area-weighted mean spectra.
    """
    from ..store.painting import PaintingStore

    store = cube if isinstance(cube, PaintingStore) else None
    if store is not None:
        from ..store import layout

        cube = store.root[layout.XRF_CUBE] if store.xrf_kind == "cube" else store.xrf_cube()  # refuses maps
    elif client is not None:
        raise NightwatchError(
            "pair_cube with a dask client needs the painting store, not an array: the workers open its cube "
            "by the store's location."
        )
    ny, nx, n_e = (int(v) for v in cube.shape)
    if weights.shape[1] != ny * nx:
        raise NightwatchError(
            f"The footprint weights cover {weights.shape[1]} XRF pixels but the cube has {ny} x {nx} = {ny * nx}."
        )
    step = _row_step(cube, nx, n_e)
    w = weights.tocsc()
    spans = [(y0, min(ny, y0 + step)) for y0 in range(0, ny, step)]
    # only the tiles over a block take part in it: the weights (and the sums coming back from
    # a worker) stay the size of the tiles a block touches, not of every tile
    work = {}
    for bi, (y0, y1) in enumerate(spans):
        bw = _block_weights(w, nx, y0, y1)
        if bw is not None:
            work[bi] = bw
    out = np.zeros((w.shape[0], n_e), dtype=np.float64)
    n_blocks = len(spans)

    def add(bi: int, part: np.ndarray) -> None:
        out[work[bi][0]] += part

    with connected(client) as cl:
        if cl is None:
            for bi, (y0, y1) in enumerate(spans):
                if bi in work:
                    add(bi, _pair_block(work[bi][1], cube, y0, y1))
                report(progress, bi + 1, n_blocks, "pairing tiles with XRF spectra")
        else:
            _pair_distributed(cl, str(store.path), spans, work, add, progress)
    return out.astype(np.float32)


def _pair_distributed(client, location: str, spans, work, add, progress) -> None:
    """Blocks ``work`` summed by the cluster's workers and added here in row order (the in-process order)."""
    import time

    from distributed import as_completed

    n_blocks = len(spans)
    order = sorted(work)
    futures = {}
    for batch in task_batches(order, client, max_per_task=4):
        args = [(spans[bi][0], spans[bi][1], work[bi][1]) for bi in batch]
        fut = client.submit(_pair_blocks_task, location, args, pure=False,
                            key=f"nightwatch-pairing-{batch[0]}-{time.time_ns()}")
        futures[fut] = batch
    # float addition is not associative: blocks are added in row order whatever order they arrive in
    ready: dict[int, np.ndarray] = {}
    pos = 0
    try:
        for fut in as_completed(list(futures)):
            for bi, part in zip(futures[fut], fut.result(), strict=True):
                ready[bi] = part
            while pos < len(order) and order[pos] in ready:
                add(order[pos], ready.pop(order[pos]))
                pos += 1
                report(progress, order[pos - 1] + 1, n_blocks, "pairing tiles with XRF spectra")
        report(progress, n_blocks, n_blocks, "pairing tiles with XRF spectra")
    except BaseException:
        client.cancel(list(futures))
        raise


def xrf_query_box(store, xrf_pixel=None, xrf_region=None) -> tuple[tuple[int, int, int, int], str]:
    """The XRF pixels of a query: ``((y0, x0, y1, x1), description)``, clipped to the scan.

    Give one of ``xrf_pixel`` ``(y, x)`` or ``xrf_region`` ``(y0, x0, y1, x1)`` (either
    corner order); a pixel outside the scan or a region covering none of it is refused.
    """
    ny, nx = store.xrf_shape
    if (xrf_pixel is None) == (xrf_region is None):
        raise NightwatchError("Give exactly one of an XRF pixel (--xrf-pixel) or an XRF region (--xrf-region).")
    if xrf_pixel is not None:
        y, x = (int(round(v)) for v in xrf_pixel)
        if not (0 <= y < ny and 0 <= x < nx):
            raise NightwatchError(f"XRF pixel ({y}, {x}) lies outside the {ny} x {nx} px scan.")
        return (y, x, y + 1, x + 1), f"XRF pixel ({y}, {x})"
    y0, x0, y1, x1 = (int(round(v)) for v in xrf_region)
    y0, y1 = sorted((y0, y1))
    x0, x1 = sorted((x0, x1))
    y0, x0, y1, x1 = max(0, y0), max(0, x0), min(ny, y1), min(nx, x1)
    if y1 <= y0 or x1 <= x0:
        raise NightwatchError(f"XRF region {tuple(xrf_region)} does not cover any pixel of the {ny} x {nx} px scan.")
    return (y0, x0, y1, x1), f"XRF region ({y0}, {x0}, {y1}, {x1})"


def load_element_intensity_maps(store, *, required: bool = True) -> tuple[list[str] | None, np.ndarray | None]:
    """Element-intensity maps on the XRF grid: imported maps or fitted ones.

    Parameters
    ----------
    store
        An open painting store with XRF data.
    required
        Raise when there are none (else return ``(None, None)``).

    Returns
    -------
    names, maps
        Element names and a ``(c, ny, nx)`` float32 array.
    """
    if store.xrf_kind == "maps":
        from ..store.sources import load_imported_maps

        return load_imported_maps(store)
    if store.has("xrf_maps") and store.is_complete("xrf_maps"):
        from .maps import load_element_maps

        store.check_fresh("xrf_maps", "refit them from the current cube with `nightwatch xrf-maps --overwrite`")

        names, maps = load_element_maps(store)
        return list(names), np.asarray(maps, dtype=np.float32)
    if required:
        raise NightwatchError(
            f"{store.path} has no element maps yet; fit them first (nightwatch xrf-maps) or import exported maps "
            "(nightwatch import-maps)."
        )
    return None, None


def pair_tiles(
    store,
    grid: TileGrid | str | None = None,
    *,
    spectra: bool = True,
    elements: bool = True,
    index: np.ndarray | None = None,
    min_coverage: float = 0.9,
    progress: ProgressCallback | None = None,
    client=None,
) -> PairedTiles:
    """Pair a grid's tiles with the XRF spectra and element intensities under them.

    Parameters
    ----------
    store
        Painting store with a mosaic, XRF data and (for ``grid`` by name) grids.
    grid
        A :class:`TileGrid`, a grid id in the store, or None for the only grid.
    spectra
        Compute footprint spectra (only for a cube).
    elements
        Compute footprint element intensities (fitted or imported maps, if any).
    index
        Tiles to pair (default: the grid's kept tiles).
    min_coverage
        Minimum fraction of a tile's area inside the scan.
    progress
        Optional progress callback.
    client
        A ``dask.distributed.Client`` or a scheduler address: the footprint spectra are
        summed by the cluster's workers (see :func:`pair_cube`); None in-process.

    Returns
    -------
    PairedTiles
    """
    if not isinstance(grid, TileGrid):
        from ..store.tiles import load_grid

        grid = load_grid(store, grid)
    ny, nx = store.xrf_shape
    w, tiles, cov = footprint_matrix(grid, store.xrf_affine, (ny, nx), index=index, min_coverage=min_coverage)
    out = PairedTiles(grid, tiles, cov)
    if spectra and store.xrf_kind == "cube" and len(tiles):
        out.spectra = pair_cube(w, store, progress=progress, client=client)
    if elements:
        names, maps = load_element_intensity_maps(store, required=False)
        if names is not None:
            flat = np.nan_to_num(maps.reshape(len(names), -1).T.astype(np.float64))
            out.elements = np.asarray(w @ flat, dtype=np.float32)
            out.element_names = list(names)
    return out
