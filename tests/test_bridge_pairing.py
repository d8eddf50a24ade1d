"""Pairing tiles with the XRF pixels under them (issue 5): area weights through the
affine, exclusion of tiles outside the scan, chunked spectra = dense reference."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nightwatch.core.tiling import TileGrid
from napari_nightwatch.xrf.pairing import footprint_matrix, pair_cube


def _reference_weights(grid: TileGrid, affine: np.ndarray, shape, n: int = 64) -> np.ndarray:
    """Dense area weights by brute-force supersampling (n x n points per tile)."""
    inv = np.linalg.inv(affine)
    ny, nx = shape
    out = np.zeros((grid.n_tiles, ny * nx))
    for t, (y0, x0, y1, x1) in enumerate(grid.boxes()):
        ys = y0 - 0.5 + (np.arange(n) + 0.5) * (y1 - y0) / n
        xs = x0 - 0.5 + (np.arange(n) + 0.5) * (x1 - x0) / n
        py, px = np.meshgrid(ys, xs, indexing="ij")
        fy = inv[0, 0] * py + inv[0, 1] * px + inv[0, 2]
        fx = inv[1, 0] * py + inv[1, 1] * px + inv[1, 2]
        iy, ix = np.floor(fy + 0.5).astype(int), np.floor(fx + 0.5).astype(int)
        ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        np.add.at(out[t], iy[ok] * nx + ix[ok], 1.0)
        out[t] /= max(ok.sum(), 1)
    return out


def test_aligned_tiles_average_their_xrf_pixels_exactly():
    # XRF pixel = 8 x 8 mosaic px, pixel centres as import-xrf places them; 16-px tiles
    a = np.array([[8.0, 0, 3.5], [0, 8.0, 3.5], [0, 0, 1]])
    grid = TileGrid((128, 128), tile=16, stride=16)
    w, tiles, cov = footprint_matrix(grid, a, (16, 16))
    assert tiles.size == grid.n_tiles and np.allclose(cov, 1)
    cube = np.random.default_rng(0).poisson(50, (16, 16, 32)).astype(np.float32)
    spectra = pair_cube(w, cube)
    # tile (r, c) covers XRF pixels 2r..2r+1, 2c..2c+1
    r, c = grid.row_col(tiles)
    expect = np.stack([cube[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(-1, 32).mean(0) for i, j in zip(r, c, strict=True)])
    # float32 means of 4 values ~50: rounding is ~50 * 6e-8 = 3e-6 per step, far below 1e-4
    assert np.allclose(spectra, expect, atol=1e-4)


def test_rotated_footprints_match_a_dense_reference_and_skip_tiles_outside():
    th = np.deg2rad(7.0)
    a = np.array([[6 * np.cos(th), -6 * np.sin(th), 20.0], [6 * np.sin(th), 6 * np.cos(th), 9.0], [0, 0, 1]])
    shape = (14, 17)
    grid = TileGrid((140, 150), tile=20, stride=12)
    w, tiles, cov = footprint_matrix(grid, a, shape, min_coverage=0.9)
    ref = _reference_weights(grid, a, shape)
    # tiles inside the scan are kept, tiles mostly outside are not
    assert 0 < tiles.size < grid.n_tiles
    assert np.allclose(np.asarray(w.sum(1)).ravel(), 1.0)
    dense = w.toarray()
    # L1 distance of the area shares: ~3 samples per XRF pixel edge by default, and
    # converging to the exact shares with denser sampling
    assert np.abs(dense - ref[tiles]).sum(1).max() < 0.15
    fine, fine_tiles, _ = footprint_matrix(grid, a, shape, min_coverage=0.9, samples=48)
    both = np.isin(fine_tiles, tiles)  # a tile at the 90 % coverage edge may flip
    assert both.sum() >= tiles.size - 2
    assert np.abs(fine.toarray()[both] - ref[fine_tiles[both]]).sum(1).max() < 0.05
    assert np.all(cov >= 0.9)
    # chunked product over cube row blocks = dense product
    cube = np.random.default_rng(1).random((*shape, 24)).astype(np.float32)
    got = pair_cube(w, cube)
    # float32 cube values in [0, 1), sums of < 10 shares: float32 summation order moves a
    # value by ~10 * 6e-8; rtol 1e-4 / atol 1e-5 leave two orders of magnitude for any order
    assert np.allclose(got, dense @ cube.reshape(-1, 24), rtol=1e-4, atol=1e-5)


def test_pairing_in_the_store_uses_the_registered_affine(tmp_path):
    from napari_nightwatch.core.spectra import EnergyCalibration
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import write_mosaic_array, write_xrf_cube
    from napari_nightwatch.xrf.pairing import pair_tiles

    store = PaintingStore.create(tmp_path / "p.nightwatch.zarr")
    write_mosaic_array(store, np.zeros((64, 64, 3), np.uint8), pixel_size_um=5.0, source="test")
    cube = np.zeros((8, 8, 16), np.uint16)
    cube[:4, :, 3] = 100  # top half: a line at channel 3; bottom half: channel 9
    cube[4:, :, 9] = 100
    write_xrf_cube(store, cube, calibration=EnergyCalibration(0.0, 1.0), pixel_size_um=40.0, source="test")
    grid = TileGrid((64, 64), tile=16, stride=16)
    pt = pair_tiles(store, grid, elements=False)
    top = grid.row_col(pt.tiles)[0] < 2
    assert np.allclose(pt.spectra[top, 3], 100) and np.allclose(pt.spectra[~top, 9], 100)
    # shift the scan by half its height: the top tiles now fall outside it
    store.set_xrf_affine(np.array([[8.0, 0, 3.5 + 32], [0, 8.0, 3.5], [0, 0, 1]]), method="test")
    pt = pair_tiles(store, grid, elements=False)
    assert set(grid.row_col(pt.tiles)[0].tolist()) == {2, 3}
    assert np.allclose(pt.spectra[:, 3], 100)


@pytest.mark.parametrize("min_coverage", [0.5, 1.0])
def test_min_coverage_controls_edge_tiles(min_coverage):
    a = np.array([[8.0, 0, 3.5 + 4], [0, 8.0, 3.5], [0, 0, 1]])  # scan shifted down by half a tile
    grid = TileGrid((64, 64), tile=8, stride=8)
    _, tiles, cov = footprint_matrix(grid, a, (8, 8), min_coverage=min_coverage)
    rows = set(grid.row_col(tiles)[0].tolist())
    assert (0 in rows) == (min_coverage <= 0.5)
    assert np.all(cov >= min_coverage)
