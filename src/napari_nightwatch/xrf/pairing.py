"""Pairing mosaic tiles with the XRF data under them.

For each tile of a grid, the XRF spectrum of its footprint is the area-weighted
mean of the XRF pixels the tile covers, through the XRF->mosaic affine.  The
weights form a sparse matrix ``W`` (tiles x XRF pixels) built by supersampling
each tile's footprint (every sample point lands in one XRF pixel; a pixel's weight
is the fraction of samples it receives, i.e. its share of the tile's area).  The
spectra are then ``W @ cube``, computed one chunk of cube rows at a time, so the
cube is read once and never held whole.  The same matrix pairs tiles with
element-intensity maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def pair_cube(
    weights,
    cube,
    *,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """``weights @ cube`` chunk by chunk of cube rows.

    Parameters
    ----------
    weights
        ``(n, ny * nx)`` sparse area weights from :func:`footprint_matrix`.
    cube
        ``(ny, nx, n_energy)`` array (dask or zarr or numpy); read one block of rows
        at a time, skipping rows no tile covers.
    progress
        Optional progress callback.

    Returns
    -------
    numpy.ndarray
        ``(n, n_energy)`` float32 area-weighted mean spectra.
    """
    ny, nx, n_e = cube.shape
    chunk_rows = getattr(cube, "chunks", None)
    if chunk_rows is not None and isinstance(chunk_rows[0], tuple):  # dask
        step = int(max(chunk_rows[0]))
    elif chunk_rows is not None:  # zarr
        step = int(chunk_rows[0])
    else:
        step = 64
    # read whole chunk rows, as many as fit in ~256 MB of float64
    budget_rows = (256 << 20) // max(1, 8 * nx * n_e)
    step = max(1, min(ny, step * max(1, budget_rows // step)))
    w = weights.tocsc()
    used = np.diff(w.indptr) > 0
    out = np.zeros((w.shape[0], n_e), dtype=np.float64)
    n_blocks = -(-ny // step)
    for bi, y0 in enumerate(range(0, ny, step)):
        y1 = min(ny, y0 + step)
        c0, c1 = y0 * nx, y1 * nx
        if used[c0:c1].any():
            block = np.asarray(cube[y0:y1], dtype=np.float64).reshape(-1, n_e)
            out += w[:, c0:c1] @ block
        report(progress, bi + 1, n_blocks, "pairing tiles with XRF spectra")
    return out.astype(np.float32)


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
        out.spectra = pair_cube(w, store.xrf_cube(), progress=progress)
    if elements:
        names, maps = load_element_intensity_maps(store, required=False)
        if names is not None:
            flat = np.nan_to_num(maps.reshape(len(names), -1).T.astype(np.float64))
            out.elements = np.asarray(w @ flat, dtype=np.float32)
            out.element_names = list(names)
    return out
