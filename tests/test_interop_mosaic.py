"""Mosaic import: where the pixel size comes from, and a pyramidal OME-TIFF's own levels (issue 16, items 4 and 8).

A print resolution (dots per inch) is not a sampling distance on the painting: a file that
gives only DPI is refused unless the pixel size is given. OME PhysicalSizeX, an ImageJ
calibration and a TIFF resolution in cm written by a camera or scanner are physical sizes.
The store records where the size came from (``pixel_size_source``).

A pyramidal OME-TIFF whose sub-resolutions are our factor-2 levels is not downsampled
again: the test pyramid's level 1 is a decimation (every other pixel), which our 2 x 2 mean
never produces, so pixel identity shows which was stored.
"""

from __future__ import annotations

import numpy as np
import pytest


def _image(h: int, w: int, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


# --------------------------------------------------------------------------- pixel size
def test_dpi_only_jpeg_is_refused_without_pixel_size(tmp_path):
    from PIL import Image

    from napari_nightwatch.cli import main
    from napari_nightwatch.core.errors import NightwatchError
    from napari_nightwatch.store.sources import import_mosaic

    src = tmp_path / "photo.jpg"
    Image.fromarray(_image(120, 160)).save(src, dpi=(100, 100), quality=95)
    out = tmp_path / "p.nightwatch.zarr"
    with pytest.raises(NightwatchError, match=r"only a print resolution \(100 dots per inch\).*--pixel-size-um"):
        import_mosaic(src, out)
    assert not out.exists()
    assert main(["import-mosaic", str(src), str(out)]) == 2 and not out.exists()

    store = import_mosaic(src, out, pixel_size_um=20.0)
    info = store.mosaic_info
    assert store.mosaic_pixel_size_um == 20.0 and info["pixel_size_source"] == "given"
    assert info["file_pixel_size"] == {"um": None, "source": "print resolution", "dpi": 100.0}


def test_placeholder_dpi_is_no_size_at_all(tmp_path):
    """72 dpi is what writers put in files without a size: the default applies, noted as such."""
    from PIL import Image

    from napari_nightwatch.store.sources import import_mosaic

    src = tmp_path / "screen.png"
    Image.fromarray(_image(40, 50)).save(src, dpi=(72, 72))
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    assert store.mosaic_info["pixel_size_source"] == "default" and "pixel_size_note" in store.mosaic_info


@pytest.mark.parametrize("unit,tags", [("INCH", []), ("CENTIMETER", [])])
def test_tiff_print_resolution_is_refused(tmp_path, unit, tags):
    import tifffile

    from napari_nightwatch.core.errors import NightwatchError
    from napari_nightwatch.store.sources import import_mosaic

    src = tmp_path / "scan.tif"
    tifffile.imwrite(src, _image(64, 64), photometric="rgb", resolution=(300.0, 300.0), resolutionunit=unit,
                     extratags=tags, software="GIMP")
    with pytest.raises(NightwatchError, match="print resolution"):
        import_mosaic(src, tmp_path / "p.nightwatch.zarr")


def test_ome_tiff_physical_size_is_accepted(tmp_path):
    import tifffile

    from napari_nightwatch.store.sources import import_mosaic

    src = tmp_path / "m.ome.tif"
    # a 300 dpi print resolution as well: OME's physical size wins
    tifffile.imwrite(src, _image(64, 80), photometric="rgb", resolution=(300.0, 300.0), resolutionunit="INCH",
                     metadata={"axes": "YXS", "PhysicalSizeX": 12.5, "PhysicalSizeXUnit": "µm"})
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    assert store.mosaic_pixel_size_um == 12.5
    assert store.mosaic_info["pixel_size_source"] == "OME-TIFF PhysicalSizeX"


def test_imagej_calibration_is_accepted(tmp_path):
    import tifffile

    from napari_nightwatch.store.sources import import_mosaic

    src = tmp_path / "ij.tif"
    tifffile.imwrite(src, _image(64, 80, 1)[..., 0], imagej=True, resolution=(0.25, 0.25), metadata={"unit": "um"})
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    assert store.mosaic_pixel_size_um == 4.0 and store.mosaic_info["pixel_size_source"] == "ImageJ calibration"


def test_camera_tiff_in_cm_is_accepted(tmp_path):
    import tifffile

    from napari_nightwatch.store.sources import import_mosaic

    src = tmp_path / "camera.tif"
    tifffile.imwrite(src, _image(64, 80), photometric="rgb", resolution=(1000.0, 1000.0), resolutionunit="CENTIMETER",
                     extratags=[(271, "s", 0, "Phase One", True), (272, "s", 0, "IQ4 150MP", True)])
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr")
    assert store.mosaic_pixel_size_um == pytest.approx(10.0, rel=1e-12)  # 1000 px/cm, float division
    assert store.mosaic_info["pixel_size_source"] == "TIFF resolution (cm, Phase One IQ4 150MP)"


# --------------------------------------------------------------------------- the file's own pyramid
def _pyramidal_ome_tiff(path, levels):
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        opts = {"tile": (128, 128), "photometric": "rgb"}
        tw.write(levels[0], subifds=len(levels) - 1, metadata={"axes": "YXS", "PhysicalSizeX": 5.0}, **opts)
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, **opts)


def test_pyramidal_ome_tiff_levels_are_reused(tmp_path):
    from napari_nightwatch.io.mosaic import mean_2x2
    from napari_nightwatch.store.sources import import_mosaic

    img = _image(1100, 1300)  # our pyramid: 1100x1300, 550x650, 275x325
    lv1, lv2 = img[::2, ::2], img[::4, ::4]  # decimations: never what a 2 x 2 mean gives
    src = tmp_path / "pyr.ome.tif"
    _pyramidal_ome_tiff(src, [img, lv1, lv2])
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr", chunk=256)
    levels = [np.asarray(lv).transpose(1, 2, 0) for lv in (store.root[f"mosaic/{k}"][...] for k in range(3))]
    np.testing.assert_array_equal(levels[0], img)
    np.testing.assert_array_equal(levels[1], lv1)
    np.testing.assert_array_equal(levels[2], lv2)
    assert not np.array_equal(levels[1], mean_2x2(img.transpose(2, 0, 1)).transpose(1, 2, 0))
    assert store.mosaic_info["levels_from_source"] == [1, 2]


def test_pyramid_levels_of_other_shapes_are_rebuilt(tmp_path):
    from napari_nightwatch.io.mosaic import mean_2x2
    from napari_nightwatch.store.sources import import_mosaic

    img = _image(1101, 1301, seed=1)  # our level 1 is 551 x 651 (odd sizes round up)
    lv1 = img[:-1:2, :-1:2]  # a writer that rounds down: 550 x 650
    src = tmp_path / "pyr.ome.tif"
    _pyramidal_ome_tiff(src, [img, lv1])
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr", chunk=256)
    ours = np.asarray(store.root["mosaic/1"][...])
    np.testing.assert_array_equal(ours, mean_2x2(img.transpose(2, 0, 1)))
    assert store.mosaic_info["levels_from_source"] == []
