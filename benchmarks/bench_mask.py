"""Background-mask benchmark: the vectorised ``_auto_mask`` against the per-tile loop it replaced.

Both compute :data:`napari_nightwatch.ml.embed.MASK_RULE` on the same store (a textured
RGB mosaic inside a uniform border, with an alpha-free 8-bit pyramid); the old loop is
kept here, verbatim, as the reference. Prints the time of each (best of ``--repeats``),
the speed ratio new/old (old time / new time: how many times faster the new one is), the
time to read the mask level alone (the floor of both) and whether the masks
are identical, for a non-overlapping and an overlapping (stride = tile / 2) grid.

Run:  .venv/bin/python benchmarks/bench_mask.py [--size 4096] [--tile 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_nightwatch.core.progress import report


def old_auto_mask(store, grid, min_std: float, min_px: int, progress=None) -> np.ndarray:
    """The per-tile loop of ``_auto_mask`` before vectorisation (the reference)."""
    levels = store.mosaic_levels()
    downs = store.mosaic_downsamples
    tile0 = grid.tile * grid.downsample
    k = grid.level
    for j, d in enumerate(downs):
        if j >= grid.level and tile0 / d >= min_px:
            k = j
    arr = levels[k]
    d = downs[k]
    dtype = np.dtype(arr.dtype)
    scale = 255.0 / 65535.0 if dtype == np.uint16 else 1.0
    n_ch = int(arr.shape[-1])
    has_alpha = n_ch in (2, 4)
    keep = np.zeros(grid.n_tiles, dtype=bool)
    boxes = grid.boxes()
    for r in range(grid.n_rows):
        row = boxes[r * grid.n_cols : (r + 1) * grid.n_cols]
        y0, y1 = int(row[0, 0] // d), int(math.ceil(row[0, 2] / d))
        x0, x1 = int(row[0, 1] // d), int(math.ceil(row[-1, 3] / d))
        band = np.asarray(arr[y0:y1, x0:x1].compute(scheduler="synchronous")).astype(np.float32)
        for c_i, b in enumerate(row):
            bx0, bx1 = int(b[1] // d) - x0, int(math.ceil(b[3] / d)) - x0
            px = band[:, bx0:bx1]
            colour = px[..., : n_ch - 1] if has_alpha else px
            textured = bool((colour.reshape(-1, colour.shape[-1]).std(axis=0) * scale >= min_std).any())
            opaque = (not has_alpha) or bool(px[..., -1].max() > 0)
            keep[r * grid.n_cols + c_i] = textured and opaque
        report(progress, r + 1, grid.n_rows, "mask")
    return keep


def mosaic(size: int, seed: int = 0) -> np.ndarray:
    """Textured paint (colour fields + noise) inside a uniform 1/8-size border."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 238, np.uint8)
    b = size // 8
    inner = size - 2 * b
    coarse = rng.integers(0, 256, (inner // 64 + 1, inner // 64 + 1, 3)).astype(np.uint8)
    field = np.repeat(np.repeat(coarse, 64, 0), 64, 1)[:inner, :inner]
    img[b:-b, b:-b] = np.clip(field + rng.normal(0, 6, (inner, inner, 3)), 0, 255).astype(np.uint8)
    return img


def best_of(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None) -> int:
    from napari_nightwatch.core.tiling import TileGrid
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import write_mosaic_array
    from napari_nightwatch.store.tiles import MASK_MIN_PX, MASK_MIN_STD, _auto_mask, _mask_level

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = PaintingStore.create(Path(tmp) / "bench.nightwatch.zarr")
        write_mosaic_array(store, mosaic(args.size), pixel_size_um=5.0, source=f"bench {args.size}px")
        print(f"mosaic {args.size}^2 RGB uint8, levels {store.mosaic_downsamples}, tile {args.tile} px")
        probe = TileGrid(store.mosaic_shape, 0, args.tile, args.tile, 1)
        level = store.mosaic_levels()[_mask_level(store, probe, MASK_MIN_PX)]
        t_read, _ = best_of(lambda: np.asarray(level.compute(scheduler="synchronous")), args.repeats)
        print(f"reading the mask level {level.shape} alone: {t_read:.3f} s (a floor for both)")
        for stride in (args.tile, args.tile // 2):
            grid = TileGrid(store.mosaic_shape, 0, args.tile, stride, 1)
            t_old, k_old = best_of(lambda g=grid: old_auto_mask(store, g, MASK_MIN_STD, MASK_MIN_PX), args.repeats)
            t_new, k_new = best_of(lambda g=grid: _auto_mask(store, g, MASK_MIN_STD, MASK_MIN_PX, None), args.repeats)
            print(f"stride {stride:3d}: {grid.n_tiles:7d} tiles ({int(k_new.sum())} kept)  old {t_old:7.3f} s  "
                  f"new {t_new:7.3f} s  speed new/old {t_old / t_new:6.1f}x  "
                  f"({t_old / grid.n_tiles * 1e6:.1f} vs {t_new / grid.n_tiles * 1e6:.2f} us/tile)  "
                  f"identical: {bool(np.array_equal(k_old, k_new))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
