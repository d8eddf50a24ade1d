"""The two store writers: mosaic pyramid and MA-XRF cube, read back through PaintingStore."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_nightwatch.core.errors import Cancelled, NightwatchError
from napari_nightwatch.core.spectra import EnergyCalibration
from napari_nightwatch.io.mosaic import pyramid_shapes
from napari_nightwatch.io.ngff import axes_names, level_scales, read_multiscales
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.store.sources import write_mosaic_array, write_xrf_cube


@pytest.fixture
def store(tmp_path):
    return PaintingStore.create(tmp_path / "p.nightwatch.zarr")


def _mean_pyramid_reference(img: np.ndarray, n: int) -> list[np.ndarray]:
    """Independent float reference: edge-padded 2x2 means, rounded half up."""
    out = [img]
    for _ in range(n - 1):
        a = out[-1].astype(np.float64)
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")
        m = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4
        out.append(np.floor(m + 0.5).astype(img.dtype))
    return out


def test_pyramid_shapes():
    assert pyramid_shapes(512, 4000) == [(512, 4000)]
    assert pyramid_shapes(1025, 2050) == [(1025, 2050), (513, 1025), (257, 513)]


@pytest.mark.parametrize("dtype,c", [(np.uint8, 3), (np.uint16, 1), (np.uint8, 4)])
def test_write_mosaic_array_round_trip(store, dtype, c):
    rng = np.random.default_rng(0)
    hi = np.iinfo(dtype).max
    img = rng.integers(0, hi, size=(1100, 1301, c), dtype=dtype)
    src = da.from_array(img, chunks=(300, 700, c))  # chunks unaligned with the store's on purpose
    calls = []
    write_mosaic_array(store, src, pixel_size_um=5.0, source="synthetic", chunk=256,
                       progress=lambda d, t, s: calls.append((d, t)))
    assert store.is_complete("mosaic")
    levels = store.mosaic_levels()
    ref = _mean_pyramid_reference(img, 3)
    assert len(levels) == 3 and store.mosaic_downsamples == [1, 2, 4]
    for lev, r in zip(levels, ref, strict=True):
        assert lev.dtype == dtype
        np.testing.assert_array_equal(lev.compute(), r)
    assert calls[-1][0] == calls[-1][1] == 5 * 6 + 3 * 3 + 2 * 2
    assert store.mosaic_shape == (1100, 1301) and store.mosaic_pixel_size_um == 5.0
    g = store.group("mosaic")
    assert axes_names(g) == "cyx"
    assert level_scales(g) == [[1.0, 5.0, 5.0], [1.0, 10.0, 10.0], [1.0, 20.0, 20.0]]
    assert g["0"].chunks == (c, 256, 256)
    assert store.root.attrs["nightwatch"]["complete"]["mosaic"]["source"] == "synthetic"


def test_write_mosaic_greyscale_2d(store):
    img = (np.arange(600 * 700) % 251).astype(np.uint8).reshape(600, 700)
    write_mosaic_array(store, img, pixel_size_um=2.5, source="g")
    lev = store.mosaic_levels()
    assert lev[0].shape == (600, 700, 1)
    np.testing.assert_array_equal(lev[0][..., 0].compute(), img)
    assert lev[1].shape == (300, 350, 1)


def test_write_mosaic_cancel_leaves_nothing(store):
    img = np.zeros((600, 600, 3), np.uint8)

    def cancel(done, total, stage):
        if done == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        write_mosaic_array(store, img, pixel_size_um=5, source="x", chunk=256, progress=cancel)
    assert not store.is_complete("mosaic") and not store.has("mosaic")


def test_write_mosaic_bad_dtype(store):
    with pytest.raises(NightwatchError, match="8-bit or 16-bit"):
        write_mosaic_array(store, np.zeros((10, 10, 3), np.float32), pixel_size_um=5, source="f.tif")
    with pytest.raises(NightwatchError, match="channels"):
        write_mosaic_array(store, np.zeros((10, 10, 2), np.uint8), pixel_size_um=5, source="f.tif")
    assert not store.has("mosaic")


def _cube(ny=37, nx=53, ne=256, seed=1):
    rng = np.random.default_rng(seed)
    return rng.poisson(3.0, size=(ny, nx, ne)).astype(np.uint16)


def test_write_xrf_cube_round_trip(store):
    cube = _cube()
    cal = EnergyCalibration(-0.1, 0.08)
    write_xrf_cube(store, da.from_array(cube, chunks=(10, 10, 256)), calibration=cal, pixel_size_um=200.0,
                   source="mem", live_time_s=0.02)
    assert store.has_xrf
    np.testing.assert_array_equal(store.xrf_cube().compute(), cube)
    np.testing.assert_array_equal(store.xrf_sum_spectrum(), cube.sum(axis=(0, 1)))
    np.testing.assert_array_equal(store.xrf_max_spectrum(), cube.max(axis=(0, 1)))
    np.testing.assert_array_equal(store.xrf_total().compute(), cube.sum(axis=2))
    assert store.xrf_calibration == cal
    assert store.xrf_shape == (37, 53) and store.xrf_pixel_size_um == 200.0
    np.testing.assert_array_equal(store.xrf_affine, np.eye(3))  # no mosaic: identity
    assert store.xrf_info["live_time_s"] == 0.02
    arr = store.root["xrf/cube"]
    assert arr.metadata.dimension_names == ("y", "x", "energy")
    assert arr.chunks == (37, 53, 256)  # smaller than one 4 MB chunk: one chunk
    tg = store.group("xrf/total")
    assert read_multiscales(tg)["datasets"][0]["path"] == "0"
    assert level_scales(tg) == [[200.0, 200.0]]


def test_cube_chunks_size():
    from napari_nightwatch.io.xrf_files import cube_chunks

    for ne, itemsize in [(1024, 4), (4096, 2), (256, 8)]:
        cy, cx, ce = cube_chunks((2000, 3000, ne), itemsize)
        assert ce == ne and cy == cx
        assert 2 << 20 <= cy * cx * ce * itemsize <= 8 << 20


def test_write_xrf_default_affine_is_identity_in_micrometres(store):
    write_mosaic_array(store, np.zeros((400, 400, 3), np.uint8), pixel_size_um=5.0, source="m")
    write_xrf_cube(store, _cube(4, 4, 64), calibration=EnergyCalibration(0, 0.05), pixel_size_um=100.0, source="c")
    a = store.xrf_affine
    # XRF pixel (0, 0) covers mosaic pixels 0..19; its centre is at mosaic coordinate 9.5
    np.testing.assert_allclose(a @ [0, 0, 1], [9.5, 9.5, 1])
    np.testing.assert_allclose(a @ [3, 1, 1], [69.5, 29.5, 1])
    # in micrometres (mosaic pixel centre p -> (p + 0.5) * 5): XRF centre (i + 0.5) * 100
    assert (a @ [3, 1, 1])[0] * 5 + 2.5 == pytest.approx(350.0)


def test_write_xrf_bad_inputs_leave_nothing(store):
    with pytest.raises(NightwatchError, match="3-D cube"):
        write_xrf_cube(store, np.zeros((10, 10)), calibration=EnergyCalibration(0, 0.01), pixel_size_um=50, source="a.npy")
    with pytest.raises(NightwatchError, match="keV, not eV"):
        # a gain given in eV/channel: 1024 channels would end at 10 MeV
        write_xrf_cube(store, _cube(3, 3, 1024), calibration=EnergyCalibration(0, 10.0), pixel_size_um=50, source="a.npy")
    assert not store.has("xrf") and not store.has_xrf

    def cancel(done, total, stage):
        if done == 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        write_xrf_cube(store, _cube(300, 300, 256), calibration=EnergyCalibration(0, 0.1), pixel_size_um=50,
                       source="a.npy", progress=cancel)
    assert not store.has("xrf") and not store.has_xrf


def _counting_dask(arr: np.ndarray, calls: list):
    """A single-chunk dask array whose chunk records each computation (like a lazily read .bcf)."""
    import dask

    def load():
        calls.append(1)
        return arr

    return da.from_delayed(dask.delayed(load)(), shape=arr.shape, dtype=arr.dtype)


def test_write_xrf_multi_chunk_numpy_and_single_chunk_dask(tmp_path):
    rng = np.random.default_rng(2)
    cube = rng.gamma(2.0, 3.0, size=(70, 90, 1024)).astype(np.float32)  # 4 MB chunks of 32x32 px -> 3x3 chunks
    for i, lazy in enumerate([False, True]):
        calls: list = []
        src = _counting_dask(cube, calls) if lazy else cube
        store = PaintingStore.create(tmp_path / f"p{i}.nightwatch.zarr")
        write_xrf_cube(store, src, calibration=EnergyCalibration(0, 0.04), pixel_size_um=100, source="m")
        assert store.root["xrf/cube"].chunks == (32, 32, 1024)
        np.testing.assert_array_equal(store.xrf_cube().compute(), cube)
        np.testing.assert_allclose(store.xrf_sum_spectrum(), cube.astype(np.float64).sum(axis=(0, 1)), rtol=1e-12)
        np.testing.assert_allclose(store.xrf_total().compute(), cube.astype(np.float64).sum(axis=2), rtol=1e-12)
        if lazy:
            assert len(calls) == 1  # the source chunk was decoded once, not once per store chunk


def test_write_mosaic_single_chunk_dask_computed_once(store):
    img = np.random.default_rng(3).integers(0, 255, size=(700, 600, 3), dtype=np.uint8)
    calls: list = []
    seen = []
    write_mosaic_array(store, _counting_dask(img, calls), pixel_size_um=5, source="d", chunk=128,
                       progress=lambda d, t, s: seen.append(s))
    assert len(calls) == 1
    np.testing.assert_array_equal(store.mosaic_levels()[0].compute(), img)
    np.testing.assert_array_equal(store.mosaic_levels()[1].compute(), _mean_pyramid_reference(img, 2)[1])
    assert "mosaic level 0" in seen and seen[-1] == "mosaic"


def test_write_xrf_dask_cancel_leaves_nothing(store):
    cube = da.from_array(_cube(200, 200, 256), chunks=(50, 50, 256))

    def cancel(done, total, stage):
        if done == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        write_xrf_cube(store, cube, calibration=EnergyCalibration(0, 0.1), pixel_size_um=50, source="d", progress=cancel)
    assert not store.has("xrf") and not store.has_xrf


def test_xrf_source_attribute_is_the_source_name(tmp_path):
    """The provenance names the source, whatever form the cube came in (regression: it once held the array)."""
    import dask.array as da

    from napari_nightwatch.core.spectra import EnergyCalibration
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import write_xrf_cube

    for i, cube in enumerate([np.ones((4, 4, 256), np.uint16), da.ones((4, 4, 256), dtype=np.uint16, chunks=2)]):
        store = PaintingStore.create(tmp_path / f"s{i}.nightwatch.zarr")
        write_xrf_cube(store, cube, calibration=EnergyCalibration(0.0, 0.02), pixel_size_um=40.0, source="scan-7.rpl")
        assert PaintingStore.open(store.path).xrf_info["source"] == "scan-7.rpl"
