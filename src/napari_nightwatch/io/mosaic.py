"""Visible-light mosaic import: any 2-D image source -> the store's NGFF 0.5 pyramid.

:func:`write_mosaic_array` streams an array-like ``(y, x, c)`` (numpy, dask, a zarr
array such as tifffile's lazy TIFF store) into ``mosaic/`` chunk by chunk, so memory
is bounded by the chunk size, not the image size. :func:`import_mosaic` opens a
source file (OME-Zarr, TIFF/OME-TIFF, PNG/JPEG, Deep Zoom) and either references it
in place (OME-Zarr) or streams it through :func:`write_mosaic_array`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.progress import ProgressCallback, report
from ..project import PaintingStore, _jsonable, file_signature
from .dzi import DeepZoomImage, find_dzi
from .ngff import write_image_metadata
from .streaming import is_dask, store_dask

#: pixel size used when neither the source nor the caller gives one (the Night Watch VIS mosaic's sampling)
DEFAULT_PIXEL_SIZE_UM = 5.0
#: the pyramid stops once the short side is at most this many pixels
PYRAMID_MIN_SIDE = 512

_CHANNEL_NAMES = {1: ["grey"], 3: ["red", "green", "blue"], 4: ["red", "green", "blue", "alpha"]}
_CHANNEL_COLORS = {1: ["FFFFFF"], 3: ["FF0000", "00FF00", "0000FF"], 4: ["FF0000", "00FF00", "0000FF", "FFFFFF"]}


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


def _mean_2x2(block: np.ndarray) -> np.ndarray:
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


def _as_yxc(image) -> Any:
    """Give a 2-D image a trailing channel axis, without reading pixels."""
    if image.ndim == 2:
        if isinstance(image, np.ndarray):
            return image[..., None]
        import dask.array as da

        if not isinstance(image, da.Array):
            image = da.from_array(image, chunks=image.chunks if hasattr(image, "chunks") else "auto")
        return image[..., None]
    return image


def _validate_image(image, what: str) -> None:
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


def _remove_part(store: PaintingStore, name: str) -> None:
    """Forget and delete a part of the store (used before rewriting it and after a failed write)."""
    store.mark_incomplete(name)
    if name in store.root:
        del store.root[name]


def write_mosaic_array(
    store: PaintingStore,
    image,
    *,
    pixel_size_um: float,
    source: str,
    chunk: int = 512,
    progress: ProgressCallback | None = None,
    **extra_attrs: Any,
) -> None:
    """Stream a mosaic image into the store's ``mosaic/`` NGFF 0.5 pyramid.

    Parameters
    ----------
    store
        A writable :class:`~napari_nightwatch.project.PaintingStore`. An existing mosaic is replaced.
    image
        Array-like ``(y, x, c)`` with c = 1, 3 or 4, or ``(y, x)``; uint8 or uint16. numpy, dask
        or any object that supports ``shape``, ``dtype`` and slicing (e.g. a zarr array); only
        one ``chunk x chunk`` region is read at a time.
    pixel_size_um
        Level-0 pixel size in micrometres.
    source
        What the pixels came from (path or description), recorded as provenance.
    chunk
        Edge of the stored chunks ``(c, chunk, chunk)`` and of the regions read.
    progress
        ``progress(done, total, stage)``; may raise :class:`~napari_nightwatch.core.errors.Cancelled`.
    **extra_attrs
        Further JSON-able entries for ``attrs["nightwatch"]`` (e.g. ``source_signature``).

    Notes
    -----
    Level ``k`` is the factor-2 mean of level ``k-1`` (read back from the store chunk by
    chunk), down to a short side of at most 512 pixels. The part is marked complete
    only after every level is written; on any error (including ``Cancelled``) the
    partial ``mosaic/`` is removed, so the store never shows a half-written mosaic.
    """
    store.require_writable()
    _validate_image(image, f"The mosaic image from {source}")
    if not (pixel_size_um and np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise NightwatchError(f"pixel_size_um={pixel_size_um!r} must be a positive number of micrometres.")
    chunk = int(chunk)
    if chunk < 16:
        raise NightwatchError(f"chunk={chunk} is too small; expected at least 16 pixels.")
    image = _as_yxc(image)
    h, w, c = (int(v) for v in image.shape)
    dtype = np.dtype(image.dtype)
    shapes = pyramid_shapes(h, w)
    grids = [(math.ceil(lh / chunk), math.ceil(lw / chunk)) for lh, lw in shapes]
    total = sum(gy * gx for gy, gx in grids)

    _remove_part(store, "mosaic")
    try:
        g = store.group("mosaic", create=True)
        arrays = []
        for k, (lh, lw) in enumerate(shapes):
            arrays.append(
                g.create_array(
                    str(k),
                    shape=(c, lh, lw),
                    dtype=dtype,
                    chunks=(c, min(chunk, lh), min(chunk, lw)),
                    dimension_names=("c", "y", "x"),
                    fill_value=0,
                )
            )
        done = 0
        first = 0
        if is_dask(image):
            # one dask graph writes level 0 (each source chunk computed once, not once per region)
            store_dask(image.transpose(2, 0, 1).astype(dtype), arrays[0], progress=progress, stage="mosaic level 0")
            done, first = grids[0][0] * grids[0][1], 1
        report(progress, done, total, "mosaic")
        for k, (lh, lw) in enumerate(shapes):
            if k < first:
                continue
            gy, gx = grids[k]
            for iy in range(gy):
                y0, y1 = iy * chunk, min((iy + 1) * chunk, lh)
                for ix in range(gx):
                    x0, x1 = ix * chunk, min((ix + 1) * chunk, lw)
                    if k == 0:
                        tile = np.asarray(image[y0:y1, x0:x1]).transpose(2, 0, 1)
                    else:
                        finer = arrays[k - 1]
                        tile = _mean_2x2(
                            np.asarray(finer[:, 2 * y0 : min(2 * y1, finer.shape[1]), 2 * x0 : min(2 * x1, finer.shape[2])])
                        )
                    arrays[k][:, y0:y1, x0:x1] = tile.astype(dtype, copy=False)
                    done += 1
                    report(progress, done, total, "mosaic")
        downsamples = [2**k for k in range(len(shapes))]
        write_image_metadata(
            g,
            "cyx",
            [[1.0, pixel_size_um * d, pixel_size_um * d] for d in downsamples],
            name=Path(str(source)).name,
            channel_names=_CHANNEL_NAMES[c],
            channel_colors=_CHANNEL_COLORS[c],
            contrast_limits=[(0, float(np.iinfo(dtype).max))] * c,
        )
        attrs = {
            "shape": [h, w, c],
            "dtype": dtype.name,
            "pixel_size_um": float(pixel_size_um),
            "downsamples": downsamples,
            "axes": "cyx",
            "source": str(source),
            "chunk": chunk,
        }
        attrs.update(extra_attrs)
        g.attrs["nightwatch"] = _jsonable(attrs)
        store.mark_complete(
            "mosaic",
            source=str(source),
            source_signature=extra_attrs.get("source_signature"),
            shape=[h, w, c],
            pixel_size_um=float(pixel_size_um),
        )
    except BaseException:
        _remove_part(store, "mosaic")
        raise


def _open_or_create(store: PaintingStore | str | Path) -> PaintingStore:
    """A writable store: the given one, an existing path opened r+, or a new store."""
    if isinstance(store, PaintingStore):
        store.require_writable()
        return store
    p = Path(store)
    if p.exists():
        return PaintingStore.open(p, mode="r+")
    return PaintingStore.create(p)


def _source_signature(path: Path) -> str | None:
    try:
        return file_signature(path)
    except OSError:
        return None


# ------------------------------------------------------------------------------ sources
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
_UNIT_TO_UM = {
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


def _pixel_size_from_resolution(value: float | None, unit: str | None) -> float | None:
    """Micrometres per pixel from a pixels-per-unit resolution, or None when it says nothing.

    72 and 96 pixels per inch are the placeholders image writers put in files that carry
    no physical size, so they are treated as absent rather than as 353 or 265 um pixels.
    """
    if not value or value <= 0 or unit not in ("inch", "cm", "centimeter"):
        return None
    if unit == "inch" and round(value, 3) in (72.0, 96.0):
        return None
    per_unit_um = 25400.0 if unit == "inch" else 10000.0
    return per_unit_um / float(value)


def _open_tiff(path: Path) -> tuple[AxesImage, float | None, str, Any]:
    """Level 0 of a (pyramidal, OME-) TIFF as a lazy (y, x, c) view, its pixel size, origin and a closer.

    tifffile's zarr view decodes only the tiles/strips a region touches.
    """
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)  # closed by the caller, after streaming
    try:
        series = tif.series[0]
        axes = series.axes
        size_um: float | None = None
        origin = "default"
        if tif.is_ome and tif.ome_metadata:
            size_um = _ome_physical_size(tif.ome_metadata)
            origin = "OME-TIFF PhysicalSizeX" if size_um else origin
        if size_um is None:
            page = series.pages[0] if series.pages else tif.pages[0]
            tags = page.tags
            xres = tags.get("XResolution")
            unit_tag = tags.get("ResolutionUnit")
            if xres is not None:
                num, den = xres.value
                unit = {2: "inch", 3: "cm"}.get(int(unit_tag.value) if unit_tag is not None else 2)
                size_um = _pixel_size_from_resolution(num / den if den else None, unit)
                origin = "TIFF resolution tags" if size_um else origin
        zstore = tifffile.imread(path, aszarr=True, series=0, level=0)
        arr = zarr.open_array(zstore, mode="r")
        return AxesImage(arr, axes), size_um, origin, _Closer(zstore, tif)
    except Exception:
        tif.close()
        raise


class _Closer:
    """Closes the TIFF file handles once streaming has finished."""

    def __init__(self, *handles) -> None:
        self.handles = handles

    def close(self) -> None:
        for h in self.handles:
            h.close()


def _ome_physical_size(xml: str) -> float | None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    for el in root.iter():
        if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
            unit = el.get("PhysicalSizeXUnit", "µm")
            factor = _UNIT_TO_UM.get(unit)
            if factor is None:
                return None
            return float(el.get("PhysicalSizeX")) * factor
    return None


def _read_raster(path: Path) -> tuple[np.ndarray, float | None, str]:
    """Decode a PNG or JPEG whole (these formats have no random access), with its pixel size.

    PNGs go through imagecodecs, which keeps 16-bit RGB that Pillow would truncate to
    8 bits; JPEGs through Pillow, which turns CMYK/YCbCr into RGB. Pillow also reads the
    physical-size metadata (pHYs / JFIF density).
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
    size_um = _pixel_size_from_resolution(float(dpi[0]), "inch") if dpi else None
    return data, size_um, ("PNG/JPEG resolution" if size_um else "default")


def _find_ngff_image(path: Path):
    """The NGFF multiscale image group at ``path`` (or its first image child, bioformats2raw layout)."""
    import zarr

    from .ngff import read_multiscales

    try:
        root = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise NightwatchError(f"{path} could not be opened as an OME-Zarr group ({exc}).") from exc
    for cand in (root, *(g for _, g in sorted(root.groups(), key=lambda kv: kv[0]))):
        try:
            read_multiscales(cand)
        except KeyError:
            continue
        return cand
    raise NightwatchError(f"{path} is a zarr group without OME-Zarr (NGFF) multiscales metadata; expected an NGFF image.")


def _reference_ngff(path: Path, store: PaintingStore, pixel_size_um: float | None) -> None:
    """Record an OME-Zarr image in place (no pixel copied) as the store's mosaic."""
    from .ngff import axes_names, multiscale_paths, read_multiscales

    image = _find_ngff_image(path)
    ms = read_multiscales(image)
    axes = axes_names(image).lower()
    try:
        view = AxesImage(image[multiscale_paths(image)[0]], axes)
    except ValueError as exc:
        raise NightwatchError(f"The OME-Zarr image {path} has axes {axes!r}; expected y and x axes (plus optional c, z, t).") from exc
    _validate_image(view, f"The OME-Zarr image {path}")
    h, w, c = view.shape
    yi = axes.index("y")
    scales = []
    for d in ms["datasets"]:
        s = 1.0
        for t in d.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                s = float(t["scale"][yi])
        scales.append(s)
    axis_meta = ms.get("axes", [])[yi]
    unit = axis_meta.get("unit") if isinstance(axis_meta, dict) else None
    factor = _UNIT_TO_UM.get(unit) if unit else None
    note = None
    if pixel_size_um is not None:
        size_um, origin = float(pixel_size_um), "given"
    elif factor is not None:
        size_um, origin = scales[0] * factor, "NGFF scale"
    else:
        size_um, origin = DEFAULT_PIXEL_SIZE_UM, "default"
        note = f"the OME-Zarr scale has no known unit ({unit!r}); {DEFAULT_PIXEL_SIZE_UM} um per pixel assumed"
    downsamples = [max(1, round(s / scales[0])) if scales[0] > 0 else 2**i for i, s in enumerate(scales)]
    ref_path = str(Path(image.store.root).resolve() / image.path) if hasattr(image.store, "root") else str(path.resolve())
    _remove_part(store, "mosaic")
    try:
        g = store.group("mosaic", create=True)
        attrs: dict[str, Any] = {
            "reference": ref_path,
            "shape": [h, w, c],
            "dtype": view.dtype.name,
            "pixel_size_um": size_um,
            "pixel_size_from": origin,
            "downsamples": downsamples,
            "axes": axes,
            "source": str(path.resolve()),
            "source_signature": _source_signature(path),
            "ngff_version": (dict(image.attrs).get("ome", {}) or ms).get("version"),
        }
        if note:
            attrs["pixel_size_note"] = note
        g.attrs["nightwatch"] = _jsonable(attrs)
        store.mark_complete("mosaic", source=str(path.resolve()), reference=ref_path, source_signature=attrs["source_signature"],
                            shape=[h, w, c], pixel_size_um=size_um)
    except BaseException:
        _remove_part(store, "mosaic")
        raise


def import_mosaic(
    source: str | Path,
    store: PaintingStore | str | Path,
    *,
    pixel_size_um: float | None = None,
    chunk: int = 512,
    progress: ProgressCallback | None = None,
) -> PaintingStore:
    """Import a visible-light mosaic into a painting store.

    Parameters
    ----------
    source
        An OME-Zarr image (NGFF 0.4 / zarr v2 or 0.5 / zarr v3; referenced in place, never
        copied or written to), a TIFF/BigTIFF or pyramidal OME-TIFF (level 0 read lazily),
        a PNG/JPEG, or a Deep Zoom image (the ``.dzi`` file, its folder, or its ``_files`` folder).
        RGB, RGBA or greyscale, 8 or 16 bit.
    store
        A writable :class:`~napari_nightwatch.project.PaintingStore` or a path; a missing
        store is created (and removed again if the import fails).
    pixel_size_um
        Level-0 pixel size in micrometres; default: from the source (OME PhysicalSizeX,
        NGFF scale, TIFF/PNG resolution) or 5.0 um, noted in ``attrs["pixel_size_note"]``.
    chunk
        Store chunk edge; memory use is a few chunks, whatever the image size (TIFF, DZI).
    progress
        ``progress(done, total, stage)``; may raise :class:`~napari_nightwatch.core.errors.Cancelled`.

    Returns
    -------
    PaintingStore
        The store, with a complete "mosaic" part.
    """
    src = Path(source)
    if not src.exists():
        raise NightwatchError(f"Mosaic source {src} does not exist.")
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise NightwatchError(f"pixel_size_um={pixel_size_um!r} must be a positive number of micrometres.")
    suffix = "".join(src.suffixes[-2:]).lower() if src.is_file() else src.suffix.lower()
    kind = None
    if src.is_dir() and ((src / "zarr.json").exists() or (src / ".zgroup").exists() or (src / ".zattrs").exists()):
        kind = "ngff"
    elif find_dzi(src) is not None:
        kind = "dzi"
    elif src.is_file() and src.suffix.lower() in _TIFF_SUFFIXES:
        kind = "tiff"
    elif src.is_file() and src.suffix.lower() in _RASTER_SUFFIXES:
        kind = "raster"
    if kind is None:
        raise NightwatchError(
            f"Mosaic source {src} ({suffix or 'folder'}) is not a supported format; expected an OME-Zarr folder, "
            ".tif/.tiff/.ome.tif, .png, .jpg/.jpeg, or a Deep Zoom .dzi image."
        )
    created = not isinstance(store, PaintingStore) and not Path(store).exists()
    # open the source before touching the store, so an unreadable source leaves no store behind
    closer = None
    try:
        if kind == "tiff":
            try:
                image, size_from_file, origin, closer = _open_tiff(src)
            except NightwatchError:
                raise
            except Exception as exc:
                raise NightwatchError(f"{src} could not be read as a TIFF image ({exc}).") from exc
        elif kind == "raster":
            try:
                image, size_from_file, origin = _read_raster(src)
            except Exception as exc:
                raise NightwatchError(f"{src} could not be read as a PNG/JPEG image ({exc}).") from exc
        elif kind == "dzi":
            image, size_from_file, origin = DeepZoomImage(find_dzi(src)), None, "default"
        else:
            image = None
        ps = _open_or_create(store)
        try:
            if kind == "ngff":
                report(progress, 0, 1, "mosaic")
                _reference_ngff(src, ps, pixel_size_um)
                report(progress, 1, 1, "mosaic")
                return ps
            if kind == "dzi":
                # the descriptor alone does not change when tiles do: sign the tile tree too
                sig = f"{_source_signature(image.path)}+{_source_signature(image.tile_dir)}"
            else:
                sig = _source_signature(src)
            extra: dict[str, Any] = {"source_signature": sig, "source_format": kind}
            if pixel_size_um is not None:
                size_um, extra["pixel_size_from"] = float(pixel_size_um), "given"
            elif size_from_file is not None:
                size_um, extra["pixel_size_from"] = float(size_from_file), origin
            else:
                size_um, extra["pixel_size_from"] = DEFAULT_PIXEL_SIZE_UM, "default"
                extra["pixel_size_note"] = f"the source gives no pixel size; {DEFAULT_PIXEL_SIZE_UM} um assumed"
            write_mosaic_array(ps, image, pixel_size_um=size_um, source=str(src.resolve()), chunk=chunk,
                               progress=progress, **extra)
            return ps
        except BaseException:
            if created:
                import shutil

                shutil.rmtree(ps.path, ignore_errors=True)
            raise
    finally:
        if closer is not None:
            closer.close()
