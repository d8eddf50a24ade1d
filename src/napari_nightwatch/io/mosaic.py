"""Visible-light mosaic import: any 2-D image source -> the store's NGFF 0.5 pyramid.

:func:`write_mosaic_array` streams an array-like ``(y, x, c)`` (numpy, dask, a zarr
array such as tifffile's lazy TIFF store) into ``mosaic/`` chunk by chunk, so memory
is bounded by the chunk size, not the image size. :func:`import_mosaic` opens a
source file (OME-Zarr, TIFF/OME-TIFF, PNG/JPEG, Deep Zoom) and either references it
in place (OME-Zarr) or streams it through :func:`write_mosaic_array`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError

#: pixel size used when neither the source nor the caller gives one (the Night Watch VIS mosaic's sampling)
DEFAULT_PIXEL_SIZE_UM = 5.0
#: the pyramid stops once the short side is at most this many pixels
PYRAMID_MIN_SIDE = 512

CHANNEL_NAMES = {1: ["grey"], 3: ["red", "green", "blue"], 4: ["red", "green", "blue", "alpha"]}
CHANNEL_COLORS = {1: ["FFFFFF"], 3: ["FF0000", "00FF00", "0000FF"], 4: ["FF0000", "00FF00", "0000FF", "FFFFFF"]}


def pyramid_shapes(height: int, width: int, min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, int]]:
    """(height, width) of each level of a factor-2 pyramid, down to ``min_side`` on the short side.

    Parameters
    ----------
    height, width
        Level-0 size in pixels.
    min_side
        The last level is the first whose short side is ``<= min_side``.

    Returns
    -------
    list of (int, int)
        Level 0 first; odd sizes round up (``ceil(n / 2)``) so edge pixels are kept.
    """
    shapes = [(int(height), int(width))]
    while min(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def mean_2x2(block: np.ndarray) -> np.ndarray:
    """Factor-2 mean of a ``(c, h, w)`` integer block, rounding half up, exact in integers.

    Odd edges are padded by repeating the last row/column, so an edge pixel of the
    coarser level is the mean of the pixels that exist.
    """
    c, h, w = block.shape
    if h % 2 or w % 2:
        block = np.pad(block, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    acc = block.astype(np.uint32)
    s = acc[:, 0::2, 0::2] + acc[:, 1::2, 0::2] + acc[:, 0::2, 1::2] + acc[:, 1::2, 1::2]
    return ((s + 2) // 4).astype(block.dtype)


def as_yxc(image) -> Any:
    """Give a 2-D image a trailing channel axis, without reading pixels."""
    if image.ndim == 2:
        if isinstance(image, np.ndarray):
            return image[..., None]
        import dask.array as da

        if not isinstance(image, da.Array):
            image = da.from_array(image, chunks=image.chunks if hasattr(image, "chunks") else "auto")
        return image[..., None]
    return image


def validate_image(image, what: str) -> None:
    if image.ndim not in (2, 3):
        raise NightwatchError(f"{what} has shape {tuple(image.shape)}; expected a 2-D image (y, x) or (y, x, c).")
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise NightwatchError(
            f"{what} has {image.shape[2]} channels (shape {tuple(image.shape)}); expected 1 (grey), 3 (RGB) or 4 (RGBA)."
        )
    if np.dtype(image.dtype) not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise NightwatchError(f"{what} has pixel type {np.dtype(image.dtype)}; expected 8-bit or 16-bit unsigned integers.")
    if min(image.shape[:2]) < 1:
        raise NightwatchError(f"{what} is empty (shape {tuple(image.shape)}).")


# ------------------------------------------------------------------------------ sources
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
UNIT_TO_UM = {
    "micrometer": 1.0, "micron": 1.0, "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0,
    "nanometer": 1e-3, "nm": 1e-3, "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4,
    "meter": 1e6, "m": 1e6, "inch": 25400.0,
}


class AxesImage:
    """A ``(y, x, c)`` view of an array with other axis orders (e.g. "CYX", "TCZYX", "YXS").

    Only the requested region is read: slicing maps straight onto the underlying
    zarr/numpy array, with non-spatial, non-channel axes (t, z, ...) held at index 0.
    We use this instead of ``dask.array.from_zarr`` because a dask graph for a
    gigapixel mosaic has millions of keys, which costs memory proportional to the image.
    """

    def __init__(self, array, axes: str) -> None:
        axes = axes.lower().replace("s", "c")
        if "y" not in axes or "x" not in axes or len(axes) != array.ndim or axes.count("c") > 1:
            raise ValueError(f"cannot view axes {axes!r} of an array of shape {array.shape} as (y, x, c)")
        self.array = array
        self.axes = axes
        self.dtype = np.dtype(array.dtype)
        c = array.shape[axes.index("c")] if "c" in axes else 1
        self.shape = (int(array.shape[axes.index("y")]), int(array.shape[axes.index("x")]), int(c))
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        ys, xs = key[0], key[1]
        index = []
        kept = []
        for a in self.axes:
            if a == "y":
                index.append(ys)
                kept.append("y")
            elif a == "x":
                index.append(xs)
                kept.append("x")
            elif a == "c":
                index.append(slice(None))
                kept.append("c")
            else:
                index.append(0)
        block = np.asarray(self.array[tuple(index)])
        if "c" not in kept:
            block = block[..., None]
            kept.append("c")
        return block.transpose([kept.index(a) for a in "yxc"])


#: where a pixel size came from when the file only gives a print resolution (dots per inch)
PRINT_RESOLUTION = "print resolution"
#: resolutions that image writers put in files that carry no physical size
_PLACEHOLDER_DPI = (72.0, 96.0)


@dataclass
class PixelSize:
    """What a file says about the size of its pixels.

    Attributes
    ----------
    um
        Micrometres per pixel when the file carries a physical size (OME, ImageJ calibration,
        TIFF resolution in cm written by a camera or scanner), else None.
    source
        Where ``um`` came from (recorded in the store as ``pixel_size_source``), ``"print
        resolution"`` when the file only gives dots per inch, or ``"none"``.
    dpi
        The print resolution in dots per inch, when that is all the file gives.
    """

    um: float | None
    source: str
    dpi: float | None = None


def _print_resolution(value: float | None, unit: str | None) -> PixelSize:
    """A resolution that is a print setting: DPI (placeholder 72/96 dpi count as nothing)."""
    if not value or value <= 0:
        return PixelSize(None, "none")
    dpi = float(value) * (2.54 if unit in ("cm", "centimeter") else 1.0)
    # PNG stores pixels per metre, so 72 dpi comes back as 72.009
    if any(abs(dpi - p) < 0.05 for p in _PLACEHOLDER_DPI):
        return PixelSize(None, "none")
    return PixelSize(None, PRINT_RESOLUTION, dpi)


def tiff_pixel_size(tif, page) -> PixelSize:
    """Pixel size of a TIFF: OME PhysicalSizeX, ImageJ calibration, or cm resolution from a camera/scanner.

    A resolution in inches (or cm written by editing software, with no Make/Model tag) is
    a print setting, not a sampling distance on the object, and is reported as such.
    """
    if tif.is_ome and tif.ome_metadata:
        um = _ome_physical_size(tif.ome_metadata)
        if um:
            return PixelSize(um, "OME-TIFF PhysicalSizeX")
    tags = page.tags
    xres = tags.get("XResolution")
    if xres is None:
        return PixelSize(None, "none")
    num, den = xres.value
    value = num / den if den else None
    ij = tif.imagej_metadata if tif.is_imagej else None
    if ij and value and str(ij.get("unit", "")).strip() in UNIT_TO_UM and str(ij.get("unit")).strip() != "inch":
        return PixelSize(UNIT_TO_UM[str(ij["unit"]).strip()] / value, "ImageJ calibration")
    unit_tag = tags.get("ResolutionUnit")
    unit = {2: "inch", 3: "cm"}.get(int(unit_tag.value) if unit_tag is not None else 2)
    if unit is None:  # ResolutionUnit NONE: an aspect ratio, no size at all
        return PixelSize(None, "none")
    device = " ".join(str(tags[k].value).strip() for k in ("Make", "Model") if k in tags and str(tags[k].value).strip())
    if unit == "cm" and value and device:
        return PixelSize(1e4 / value, f"TIFF resolution (cm, {device})")
    return _print_resolution(value, unit)


@dataclass
class TiffMosaic:
    """A (pyramidal, OME-) TIFF opened for streaming: level 0 and the file's own coarser levels.

    Attributes
    ----------
    image
        Level 0 as a lazy ``(y, x, c)`` view; tifffile's zarr view decodes only the
        tiles/strips a region touches.
    pixel_size
        What the file says about its pixel size.
    levels
        The file's pyramid levels (level 0 first) as lazy ``(y, x, c)`` views.
    """

    image: AxesImage
    pixel_size: PixelSize
    levels: list[AxesImage]
    _handles: tuple = ()

    def close(self) -> None:
        for h in self._handles:
            h.close()


def open_tiff(path: Path) -> TiffMosaic:
    """Open a (pyramidal, OME-) TIFF for streaming; close the result after use."""
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)
    try:
        series = tif.series[0]
        axes = series.axes
        page = series.pages[0] if series.pages else tif.pages[0]
        size = tiff_pixel_size(tif, page)
        # one zarr view of the whole series: a group with one array per level ("0", "1", ...)
        zstore = tifffile.imread(path, aszarr=True, series=0)
        node = zarr.open(zstore, mode="r")
        if isinstance(node, zarr.Group):
            arrays = [node[str(k)] for k in range(len(series.levels))]
        else:
            arrays = [node]
        levels = [AxesImage(a, axes) for a in arrays]
        return TiffMosaic(levels[0], size, levels, (zstore, tif))
    except Exception:
        tif.close()
        raise


def _ome_physical_size(xml: str) -> float | None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    for el in root.iter():
        if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
            unit = el.get("PhysicalSizeXUnit", "µm")
            factor = UNIT_TO_UM.get(unit)
            if factor is None:
                return None
            return float(el.get("PhysicalSizeX")) * factor
    return None


def read_raster(path: Path) -> tuple[np.ndarray, PixelSize]:
    """Decode a PNG or JPEG whole (these formats have no random access), with its pixel size.

    PNGs go through imagecodecs, which keeps 16-bit RGB that Pillow would truncate to
    8 bits; JPEGs through Pillow, which turns CMYK/YCbCr into RGB. Pillow also reads the
    pHYs / JFIF density, which is a print resolution (dots per inch), not a size on the object.
    """
    from PIL import Image

    with Image.open(path) as im:
        dpi = im.info.get("dpi")
        data = None
        if path.suffix.lower() == ".png":
            try:
                import imagecodecs

                data = imagecodecs.imread(str(path))
            except Exception:
                data = None
        if data is None:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode not in ("L", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I"):
                im = im.convert({"1": "L", "LA": "RGBA", "PA": "RGBA"}.get(im.mode, "RGB"))
            data = np.asarray(im)
    if data.ndim == 3 and data.shape[2] == 2:  # grey + alpha -> RGBA
        g, a = data[..., 0], data[..., 1]
        data = np.stack([g, g, g, a], axis=-1)
    if data.dtype.kind in "iu" and data.dtype != np.uint8 and data.min() >= 0 and data.max() <= 65535:
        data = data.astype(np.uint16)
    return data, (_print_resolution(float(dpi[0]), "inch") if dpi else PixelSize(None, "none"))


def _bioformats2raw(root) -> bool:
    attrs = dict(root.attrs)
    return "bioformats2raw.layout" in attrs or "bioformats2raw.layout" in (attrs.get("ome") or {})


def find_ngff_image(path: str | Path):
    """The NGFF multiscale image group at ``path`` (or its first image child, bioformats2raw layout).

    Parameters
    ----------
    path
        A local folder, or an ``http(s)://`` / ``s3://`` URL opened in place through zarr's
        fsspec store with :func:`~napari_nightwatch.io.remote.storage_options` (credentials
        and endpoint from the environment). Over plain HTTP nothing can be listed, so a
        bioformats2raw layout is followed only through its image ``"0"``; on S3 (and locally)
        every child group is tried in name order.

    Returns
    -------
    zarr.Group
        The image group (its ``multiscales`` readable with :func:`~napari_nightwatch.io.ngff.read_multiscales`).
    """
    import zarr

    from .ngff import read_multiscales
    from .remote import is_url, open_zarr_group, scheme, with_retries

    remote = is_url(path)
    if remote:
        root = open_zarr_group(str(path), "opened as an OME-Zarr group")
    else:
        try:
            root = zarr.open_group(str(path), mode="r")
        except Exception as exc:
            raise NightwatchError(f"{path} could not be opened as an OME-Zarr group ({exc}).") from exc

    def has_multiscales(group) -> bool:
        try:
            read_multiscales(group)
        except KeyError:
            return False
        return True

    if has_multiscales(root):
        return root
    if remote:
        def child_zero():
            try:
                node = root["0"]
            except KeyError:
                return None
            return node if isinstance(node, zarr.Group) else None

        # bioformats2raw puts the first image at "0"; HTTP has no listing to find others
        first = with_retries(child_zero, str(path), "opened as an OME-Zarr group")
        if first is not None and has_multiscales(first):
            return first
        children = []
        if scheme(str(path)) == "s3":
            children = with_retries(lambda: sorted(root.groups(), key=lambda kv: kv[0]), str(path), "listed")
    else:
        children = sorted(root.groups(), key=lambda kv: kv[0])
    for _, cand in children:
        if has_multiscales(cand):
            return cand
    hint = " (a bioformats2raw layout whose image is not at \"0\")" if _bioformats2raw(root) else ""
    raise NightwatchError(
        f"{path} is a zarr group without OME-Zarr (NGFF) multiscales metadata{hint}; expected an NGFF image."
    )


def ngff_scales(image) -> tuple[list[float], str | None]:
    """Per-level pixel size along y (in the image's unit), finest first, and that unit (or None)."""
    from .ngff import axes_names, read_multiscales

    ms = read_multiscales(image)
    yi = axes_names(image).lower().index("y")
    scales = []
    for d in ms["datasets"]:
        s = 1.0
        for t in d.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                s = float(t["scale"][yi])
        scales.append(s)
    axis_meta = ms.get("axes", [])[yi]
    unit = axis_meta.get("unit") if isinstance(axis_meta, dict) else None
    return scales, unit


def ngff_pixel_size_um(image) -> float | None:
    """Level-0 pixel size in micrometres from the NGFF scale, or None when its unit is not a length we know."""
    scales, unit = ngff_scales(image)
    factor = UNIT_TO_UM.get(unit) if unit else None
    return scales[0] * factor if factor is not None and scales[0] > 0 else None


def ngff_levels(image) -> list:
    """Lazy dask ``(y, x, c)`` arrays of an NGFF image's levels, finest first (for viewers)."""
    import dask.array as da

    from .ngff import axes_names, multiscale_paths

    axes = axes_names(image).lower()
    out = []
    for p in multiscale_paths(image):
        arr = da.from_zarr(image[p])
        arr = arr[tuple(slice(None) if a in "yxc" else 0 for a in axes)]
        kept = [a for a in axes if a in "yxc"]
        if "c" not in kept:
            arr = arr[..., None]
            kept.append("c")
        out.append(arr.transpose([kept.index(a) for a in "yxc"]))
    return out
