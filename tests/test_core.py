"""Core building blocks: calibration, tile grids, geometry, progress."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.core.geometry import apply_affine, as_affine, scale_translate_affine
from napari_nightwatch.core.progress import StageTimer
from napari_nightwatch.core.spectra import EnergyCalibration
from napari_nightwatch.core.tiling import TileGrid


def test_calibration_round_trip_linear_and_quadratic():
    lin = EnergyCalibration(-0.95, 0.01)
    e = lin.energies(4096)
    assert e[0] == pytest.approx(-0.95) and e[100] == pytest.approx(0.05)
    np.testing.assert_allclose(lin.channel(e), np.arange(4096), atol=1e-9)
    quad = EnergyCalibration(0.0, 0.02, 1e-7)
    eq = quad.energies(2048)
    np.testing.assert_allclose(quad.channel(eq), np.arange(2048), atol=1e-6)
    assert EnergyCalibration.from_dict(quad.to_dict()) == quad


@pytest.mark.parametrize(
    "offset,gain,msg",
    # an offset below -1 keV is no longer refused here (Bruker's over16bit.bcf: -1.9 keV); whether
    # the axis covers the fitted lines is xrf.calibration.check_axis_covers_lines (tests/test_xrf_single.py)
    [(0.0, 0.0, "gain"), (0.0, -0.01, "gain"), (float("nan"), 0.01, "finite")],
)
def test_calibration_rejects_bad_values(offset, gain, msg):
    with pytest.raises(NightwatchError, match=msg):
        EnergyCalibration(offset, gain)


def test_tile_grid_geometry():
    g = TileGrid((1000, 1200), level=1, tile=100, stride=50, downsample=2)
    assert g.level_shape == (500, 600)
    assert g.shape == (9, 11)
    assert g.grid_id == "L1-t100-s50"
    b = g.boxes()
    # level-0 boxes are twice the level boxes; last tile ends inside the mosaic
    assert b[0].tolist() == [0, 0, 200, 200]
    assert b[-1].tolist() == [800, 1000, 1000, 1200]
    c = g.centers([0])
    assert c[0].tolist() == [100.0, 100.0]
    # tile_at finds the tile whose centre is nearest along each axis
    assert g.tile_at(100, 100) == 0
    assert g.tile_at(*g.centers([37])[0]) == 37
    inside = g.tiles_in_box((0, 0, 400, 400))
    assert set(inside.tolist()) == {0, 1, 2, 11, 12, 13, 22, 23, 24}
    # maps: one pixel per tile, placed on tile centres
    m = g.to_map(np.arange(g.n_tiles, dtype=float))
    assert m.shape == (9, 11) and m[1, 2] == 13
    scale, translate = g.map_transform()
    assert scale == (100.0, 100.0)
    # pixel (r, c) centre -> tile centre
    yx = np.array(translate) + np.array(scale) * np.array([1, 2])
    np.testing.assert_allclose(yx + 0.5, g.centers([13])[0])
    assert TileGrid.from_attrs(g.to_attrs()) == g


def test_tile_grid_keep_mask_and_errors():
    keep = np.zeros(16, bool)
    keep[[1, 5]] = True
    g = TileGrid((64, 64), tile=16, stride=16, keep=keep)
    assert g.indices().tolist() == [1, 5]
    m = g.to_map(np.array([1.0, 2.0]))
    assert np.isnan(m).sum() == 14 and m[0, 1] == 1.0
    with pytest.raises(NightwatchError, match="does not fit"):
        TileGrid((10, 10), tile=16)
    with pytest.raises(NightwatchError, match="positive"):
        TileGrid((100, 100), tile=16, stride=0)


def test_affines():
    a = scale_translate_affine((8.0, 8.0), (3.5, 3.5))
    np.testing.assert_allclose(apply_affine(a, [[0, 0], [1, 2]]), [[3.5, 3.5], [11.5, 19.5]])
    with pytest.raises(NightwatchError, match="3x3"):
        as_affine(np.eye(2))
    with pytest.raises(NightwatchError, match="singular"):
        as_affine(np.diag([1.0, 0.0, 1.0]))


def test_stage_timer_accumulates():
    t = StageTimer()
    with t.stage("read"):
        pass
    t.add("read", 1.0)
    assert t.as_dict()["read"] >= 1.0
