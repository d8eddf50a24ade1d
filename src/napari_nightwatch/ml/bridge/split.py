"""Train / validation / test split of the paired tiles by spatial blocks.

Owns the split rule of the XRF bridge: neighbouring tiles never straddle the split,
and tiles that overlap a held-out tile are left out of training (no leakage through
shared pixels)."""

from __future__ import annotations

import numpy as np

from ...core.tiling import TileGrid

#: splits of the paired tiles
TRAIN, VAL, TEST, UNPAIRED = 0, 1, 2, -1


# ------------------------------------------------------------------------------- split
def spatial_block_split(
    grid: TileGrid,
    tiles: np.ndarray,
    *,
    block_tiles: int = 4,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    train_region: tuple[float, float, float, float] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Assign tiles to train / validation / test by square blocks of the grid.

    Parameters
    ----------
    grid
        The tile grid.
    tiles
        Tile indices to split (the paired ones).
    block_tiles
        Block edge in tiles; whole blocks go to one split, so a tile's neighbours
        (which overlap it or share its paint) are on its side of the split.
    fractions
        Share of blocks for train, validation, test (without ``train_region``).
    train_region
        Level-0 box ``y0, x0, y1, x1``: only tiles wholly inside it train (blocks
        split into train and validation 80/20); everything else is test.
    seed
        Seed of the block shuffle.

    Returns
    -------
    numpy.ndarray
        ``(len(tiles),)`` int8 of TRAIN, VAL, TEST, and UNPAIRED for the tiles of an
        overlapping grid (``stride < tile``) left out because they share pixels with a
        tile of a held-out split (see :func:`_separate_overlapping_splits`).
    """
    tiles = np.asarray(tiles, dtype=np.int64)
    r, c = grid.row_col(tiles)
    bcols = -(-grid.n_cols // block_tiles)
    block = (r // block_tiles) * bcols + (c // block_tiles)
    rng = np.random.default_rng(seed)
    out = np.full(tiles.size, TEST, np.int8)
    if train_region is not None:
        inside = np.isin(tiles, grid.tiles_in_box(train_region, fully=True))
        ub = np.unique(block[inside])
        rng.shuffle(ub)
        n_val = max(1, int(round(0.2 * ub.size))) if ub.size > 1 else 0
        val_blocks = set(ub[:n_val].tolist())
        out[inside] = np.where(np.isin(block[inside], list(val_blocks)), VAL, TRAIN)
        return _separate_overlapping_splits(grid, tiles, out)
    ub = np.unique(block)
    rng.shuffle(ub)
    f = np.asarray(fractions, float) / np.sum(fractions)
    n = ub.size
    n_val = max(1, int(round(f[1] * n))) if n >= 3 else 0
    n_test = max(1, int(round(f[2] * n))) if n >= 3 else 0
    n_train = n - n_val - n_test
    lab = np.empty(n, np.int8)
    lab[:n_train], lab[n_train : n_train + n_val], lab[n_train + n_val :] = TRAIN, VAL, TEST
    lookup = dict(zip(ub.tolist(), lab.tolist(), strict=True))
    return _separate_overlapping_splits(grid, tiles, np.array([lookup[b] for b in block.tolist()], dtype=np.int8))


def _separate_overlapping_splits(grid: TileGrid, tiles: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Leave out (UNPAIRED) the tiles that share pixels with a tile of a more held-out split.

    On an overlapping grid (``stride < tile``) the tiles along a block edge overlap the
    next block's, so a test tile would be half made of a training tile's paint. Test
    blocks are kept whole (the SSIM is measured per whole block); a validation tile
    overlapping a test tile, and a training tile overlapping a validation or test
    tile, are dropped instead. A grid without overlap is returned unchanged.
    """
    from scipy.ndimage import maximum_filter

    reach = -(-grid.tile // grid.stride) - 1  # tiles this many rows/cols apart still overlap
    if reach <= 0 or tiles.size == 0:
        return split
    r, c = grid.row_col(tiles)
    labels = np.full(grid.shape, UNPAIRED, np.int8)
    labels[r, c] = split
    # TRAIN < VAL < TEST: the most held-out split among each tile's overlapping neighbours
    strongest = maximum_filter(labels, size=2 * reach + 1, mode="constant", cval=UNPAIRED)
    return np.where(strongest[r, c] > split, UNPAIRED, split).astype(np.int8)
