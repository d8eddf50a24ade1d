"""Mosaic import from OME-Zarr (in place), TIFF, OME-TIFF, PNG/JPEG and Deep Zoom, and its bad inputs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.store.sources import import_mosaic


def _image(h, w, c, dtype=np.uint8, seed=0):
    """A smooth image with noise, so pyramid and JPEG behave like a photograph."""
    rng = np.random.default_rng(seed)
    hi = np.iinfo(dtype).max
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(yy / 37.0) + np.cos(xx / 23.0) + 2) / 4
    chans = [base * (0.5 + 0.5 * k / max(c, 1)) for k in range(c)]
    img = np.stack(chans, -1) * hi * 0.9 + rng.integers(0, max(hi // 20, 2), size=(h, w, c))
    return np.clip(img, 0, hi).astype(dtype)


def _digest(path: Path) -> tuple:
    """Bytes and mtimes of every file under ``path``: proves the source was not written to."""
    files = sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    h = hashlib.sha1()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest(), [f.stat().st_mtime_ns for f in files]


def _level0(store: PaintingStore) -> np.ndarray:
    return store.mosaic_levels()[0].compute()


# ------------------------------------------------------------------------ OME-Zarr, in place
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_py_pyramid_used_in_place(tmp_path, version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    img = _image(600, 700, 3)
    src = tmp_path / f"img{version}.ome.zarr"
    g = zarr.open_group(str(src), mode="w", zarr_format=fmt.zarr_format)
    write_image(img.transpose(2, 0, 1), g, axes="cyx", fmt=fmt, scale_factors=[2], scale={"c": 1.0, "y": 0.8, "x": 0.8},
                axes_units={"y": "micrometer", "x": "micrometer"})
    before = _digest(src)
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    assert store.has_mosaic
    info = store.mosaic_info
    assert info["reference"] == str(src.resolve())
    assert info["pixel_size_um"] == pytest.approx(0.8) and info["downsamples"] == [1, 2]
    assert info["shape"] == [600, 700, 3]
    # no pixel copied into the project store
    assert not any(k for k in store.root["mosaic"].array_keys())
    reopened = PaintingStore.open(store.path)
    levels = reopened.mosaic_levels()
    np.testing.assert_array_equal(levels[0].compute(), img)
    assert levels[1].shape == (300, 350, 3)
    np.testing.assert_array_equal(levels[1].compute(), zarr.open_group(str(src), mode="r")["s1"][...].transpose(1, 2, 0))
    assert _digest(src) == before


def test_ngff_tczyx_greyscale_16bit_and_nanometre_units(tmp_path):
    img = _image(300, 200, 1, np.uint16)[..., 0]
    src = tmp_path / "t.zarr"
    g = zarr.open_group(str(src), mode="w", zarr_format=3)
    g.create_array("0", data=img[None, None, None])
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
            {"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}]
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 2500.0, 2500.0]}]}]}]}
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    assert store.mosaic_pixel_size_um == pytest.approx(2.5)
    lev = _level0(store)
    assert lev.shape == (300, 200, 1) and lev.dtype == np.uint16
    np.testing.assert_array_equal(lev[..., 0], img)


# ------------------------------------------------------------------------ TIFF / OME-TIFF
@pytest.mark.parametrize("c,dtype,tile", [(3, np.uint8, (128, 128)), (1, np.uint16, None), (4, np.uint8, (64, 64))])
def test_tiff_imports_equal(tmp_path, c, dtype, tile):
    import tifffile

    img = _image(700, 650, c, dtype)
    src = tmp_path / "m.tif"
    data = img[..., 0] if c == 1 else img
    # a resolution in cm counts as a physical size only from a camera or scanner (Make/Model tags, issue 16)
    tifffile.imwrite(src, data, tile=tile, photometric="minisblack" if c == 1 else "rgb",
                     extrasamples=[2] if c == 4 else None, resolution=(2000.0, 2000.0), resolutionunit="CENTIMETER",
                     extratags=[(271, "s", 0, "Hasselblad", True), (272, "s", 0, "H6D-400c MS", True)])
    before = _digest(src)
    seen = []
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr", chunk=256, progress=lambda d, t, s: seen.append(d))
    np.testing.assert_array_equal(_level0(store), img)
    assert store.mosaic_pixel_size_um == pytest.approx(5.0)  # 2000 px/cm
    assert store.mosaic_info["pixel_size_source"] == "TIFF resolution (cm, Hasselblad H6D-400c MS)"
    assert len(store.mosaic_levels()) == 2 and seen[-1] == 9 + 4
    assert _digest(src) == before


def test_pyramidal_ome_tiff_keeps_physical_size(tmp_path):
    import tifffile

    img = _image(800, 900, 3)
    src = tmp_path / "m.ome.tif"
    with tifffile.TiffWriter(src, bigtiff=True) as tw:
        opts = {"tile": (128, 128), "photometric": "rgb"}
        tw.write(img, subifds=2, metadata={"axes": "YXS", "PhysicalSizeX": 7.5, "PhysicalSizeY": 7.5}, **opts)
        tw.write(img[::2, ::2], subfiletype=1, **opts)
        tw.write(img[::4, ::4], subfiletype=1, **opts)
    with tifffile.TiffFile(src) as t:
        assert t.is_ome and len(t.series[0].levels) == 3
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    np.testing.assert_array_equal(_level0(store), img)
    assert store.mosaic_pixel_size_um == pytest.approx(7.5)
    assert store.mosaic_info["pixel_size_from"] == "OME-TIFF PhysicalSizeX"


def test_ome_tiff_planar_channels(tmp_path):
    import tifffile

    img = _image(300, 260, 3, np.uint16)
    src = tmp_path / "planar.ome.tif"
    tifffile.imwrite(src, img.transpose(2, 0, 1), metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "mm"})
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    np.testing.assert_array_equal(_level0(store), img)
    assert store.mosaic_pixel_size_um == pytest.approx(500.0)


# ------------------------------------------------------------------------ PNG / JPEG
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "I;16"])
def test_png_imports_equal(tmp_path, mode):
    from PIL import Image

    c = {"RGB": 3, "RGBA": 4, "L": 1, "I;16": 1}[mode]
    img = _image(530, 610, c, np.uint16 if mode == "I;16" else np.uint8)
    src = tmp_path / "m.png"
    Image.fromarray(img[..., 0] if c == 1 else img).save(src)
    assert Image.open(src).mode == mode
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr", pixel_size_um=12.0)
    lev = _level0(store)
    assert lev.dtype == img.dtype
    np.testing.assert_array_equal(lev, img)
    assert store.mosaic_pixel_size_um == 12.0 and store.mosaic_info["pixel_size_from"] == "given"


def test_png_16bit_rgb_and_default_pixel_size(tmp_path):
    import imagecodecs

    img = _image(200, 300, 3, np.uint16)
    src = tmp_path / "m16.png"
    src.write_bytes(imagecodecs.png_encode(img))
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    np.testing.assert_array_equal(_level0(store), img)
    assert store.mosaic_pixel_size_um == 5.0 and "pixel_size_note" in store.mosaic_info


def test_jpeg_imports_close(tmp_path):
    from PIL import Image

    img = _image(400, 500, 3)
    src = tmp_path / "m.jpg"
    Image.fromarray(img).save(src, quality=100, subsampling=0)
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    diff = np.abs(_level0(store).astype(int) - img.astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 16


# ------------------------------------------------------------------------ Deep Zoom
def make_dzi(folder: Path, img: np.ndarray, tile: int, overlap: int, fmt: str = "png", name: str = "painting") -> Path:
    """Cut ``img`` into a Deep Zoom tile tree (finest level and a 1-pixel top level) the way dzsave does."""
    from PIL import Image

    h, w = img.shape[:2]
    level = math.ceil(math.log2(max(h, w)))
    d = folder / f"{name}_files" / str(level)
    d.mkdir(parents=True)
    for row in range(math.ceil(h / tile)):
        for col in range(math.ceil(w / tile)):
            y0, x0 = max(row * tile - overlap, 0), max(col * tile - overlap, 0)
            y1, x1 = min((row + 1) * tile + overlap, h), min((col + 1) * tile + overlap, w)
            t = img[y0:y1, x0:x1]
            im = Image.fromarray(t[..., 0] if t.shape[2] == 1 else t)
            im.save(d / f"{col}_{row}.{fmt}", **({"quality": 100, "subsampling": 0} if fmt == "jpg" else {}))
    (folder / f"{name}_files" / "0").mkdir()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / f"{name}_files" / "0" / f"0_0.{fmt}")
    dzi = folder / f"{name}.dzi"
    dzi.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" Overlap="{overlap}" TileSize="{tile}">'
        f'<Size Height="{h}" Width="{w}"/></Image>'
    )
    return dzi


@pytest.mark.parametrize("c", [3, 4, 1])
def test_dzi_imports_equal(tmp_path, c):
    img = _image(700, 1000, c, seed=c)
    dzi = make_dzi(tmp_path / "src", img, tile=254, overlap=1)
    before = _digest(tmp_path / "src")
    store = import_mosaic(dzi, tmp_path / "p.nightwatch.zarr", chunk=256)
    np.testing.assert_array_equal(_level0(store), img)
    assert store.mosaic_info["source_format"] == "dzi" and len(store.mosaic_levels()) == 2
    assert _digest(tmp_path / "src") == before


def test_dzi_folder_and_jpeg_tiles(tmp_path):
    img = _image(600, 530, 3)
    make_dzi(tmp_path / "src", img, tile=128, overlap=2, fmt="jpg")
    store = import_mosaic(tmp_path / "src", tmp_path / "p.nightwatch.zarr", pixel_size_um=5.0)
    diff = np.abs(_level0(store).astype(int) - img.astype(int))
    assert diff.mean() < 1.5 and diff.max() <= 16


# ------------------------------------------------------------------------ bad input
def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(NightwatchError, match="does not exist"):
        import_mosaic(tmp_path / "nope.tif", tmp_path / "p.nightwatch.zarr")
    (tmp_path / "m.bmpx").write_bytes(b"xx")
    with pytest.raises(NightwatchError, match=r"m\.bmpx.*not a supported format"):
        import_mosaic(tmp_path / "m.bmpx", tmp_path / "p.nightwatch.zarr")
    assert not (tmp_path / "p.nightwatch.zarr").exists()


def test_corrupt_tiff_leaves_no_store(tmp_path):
    src = tmp_path / "bad.tif"
    src.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(NightwatchError, match=r"bad\.tif could not be read as a TIFF"):
        import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    assert not (tmp_path / "p.nightwatch.zarr").exists()


def test_missing_dzi_tile_leaves_store_without_mosaic(tmp_path):
    img = _image(300, 300, 3)
    dzi = make_dzi(tmp_path / "src", img, tile=100, overlap=1)
    (tmp_path / "src" / "painting_files" / "9" / "2_2.png").unlink()
    store = PaintingStore.create(tmp_path / "p.nightwatch.zarr")
    with pytest.raises(NightwatchError, match=r"2_2\.png is missing"):
        import_mosaic(dzi, store)
    assert not store.has_mosaic and not store.has("mosaic")


def test_float_tiff_rejected(tmp_path):
    import tifffile

    src = tmp_path / "f.tif"
    tifffile.imwrite(src, np.zeros((20, 20), np.float32))
    with pytest.raises(NightwatchError, match=r"f\.tif.*8-bit or 16-bit"):
        import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    assert not (tmp_path / "p.nightwatch.zarr").exists()


def test_newer_schema_store_refused(tmp_path):
    from PIL import Image

    p = tmp_path / "p.nightwatch.zarr"
    PaintingStore.create(p)
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["nightwatch"]["schema_version"] = 99
    (p / "zarr.json").write_text(json.dumps(meta))
    Image.fromarray(_image(50, 50, 3)).save(tmp_path / "m.png")
    with pytest.raises(NightwatchError, match="newer than"):
        import_mosaic(tmp_path / "m.png", p)
    assert not (p / "mosaic").exists()


def test_cli_import_mosaic(tmp_path):
    from PIL import Image

    from napari_nightwatch.cli import main

    Image.fromarray(_image(64, 80, 3)).save(tmp_path / "m.png")
    assert main(["import-mosaic", str(tmp_path / "m.png"), str(tmp_path / "p.nightwatch.zarr"), "--pixel-size-um", "4",
                 "--json"]) == 0
    assert PaintingStore.open(tmp_path / "p.nightwatch.zarr").mosaic_pixel_size_um == 4.0
    assert main(["import-mosaic", str(tmp_path / "x.png"), str(tmp_path / "q.nightwatch.zarr")]) == 2


@pytest.mark.parametrize("mode,suffix,c", [("P", ".png", 3), ("LA", ".png", 4), ("CMYK", ".jpg", 3), ("1", ".png", 1)])
def test_other_raster_modes(tmp_path, mode, suffix, c):
    from PIL import Image

    img = _image(40, 50, 3)
    im = Image.fromarray(img).convert(mode)
    src = tmp_path / f"m{suffix}"
    im.save(src, **({"quality": 100} if suffix == ".jpg" else {}))
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    lev = _level0(store)
    assert lev.shape == (40, 50, c) and lev.dtype == np.uint8
    if mode == "P":
        np.testing.assert_array_equal(lev, np.asarray(im.convert("RGB")))
    if mode == "1":
        np.testing.assert_array_equal(lev[..., 0] > 0, np.asarray(im))
