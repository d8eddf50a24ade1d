"""The source parts of a store: the mosaic and the MA-XRF data, written or referenced.

Owns the writers of ``mosaic/`` (:func:`write_mosaic_array`, or an OME-Zarr referenced in
place) and ``xrf/`` (:func:`write_xrf_cube`, :func:`import_element_maps`) and the
import commands that join a reader of :mod:`napari_nightwatch.io` to them
(:func:`import_mosaic`, :func:`import_xrf`). Every write goes through
:meth:`PaintingStore.replace_part`, so a failed re-import leaves the previous part intact.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import Cancelled, NightwatchError
from ..core.geometry import as_affine, micrometre_affine
from ..core.jsonutil import jsonable
from ..core.progress import ProgressCallback, report
from ..core.spectra import EnergyCalibration
from ..io.dzi import DeepZoomImage, find_dzi
from ..io.element_maps import read_element_map
from ..io.mosaic import (
    CHANNEL_COLORS,
    CHANNEL_NAMES,
    DEFAULT_PIXEL_SIZE_UM,
    PRINT_RESOLUTION,
    RASTER_SUFFIXES,
    TIFF_SUFFIXES,
    UNIT_TO_UM,
    AxesImage,
    PixelSize,
    as_yxc,
    find_ngff_image,
    mean_2x2,
    ngff_scales,
    open_tiff,
    pyramid_shapes,
    read_raster,
    validate_image,
)
from ..io.ngff import placement_from_affine, placement_note, write_image_metadata
from ..io.remote import content_token, is_url, join, scheme, url_path
from ..io.streaming import is_dask, store_dask
from ..io.xrf_files import check_energy_axis, cube_chunks, read_cube
from . import layout
from .painting import PaintingStore, delete_store, file_signature, store_exists


def write_mosaic_array(
    store: PaintingStore,
    image,
    *,
    pixel_size_um: float,
    source: str,
    chunk: int = 512,
    progress: ProgressCallback | None = None,
    source_levels=None,
    **extra_attrs: Any,
) -> None:
    """Stream a mosaic image into the store's ``mosaic/`` NGFF 0.5 pyramid.

    Parameters
    ----------
    store
        A writable :class:`~napari_nightwatch.store.PaintingStore`. An existing mosaic is replaced.
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
    source_levels
        The source's own pyramid, level 0 first (e.g. a pyramidal OME-TIFF's sub-resolutions),
        as ``(y, x, c)`` array-likes. A level whose shape is our factor-2 level's shape is copied
        instead of recomputed; which levels were copied is recorded as ``levels_from_source``.
    **extra_attrs
        Further JSON-able entries for ``attrs["nightwatch"]`` (e.g. ``source_signature``).

    Notes
    -----
    Level ``k`` is the factor-2 mean of level ``k-1`` (read back from the store chunk by
    chunk), down to a short side of at most 512 pixels, unless the source has that level.
    The part is marked complete only after every level is written; on any error (including
    ``Cancelled``) the partial ``mosaic/`` is removed, so the store never shows a half-written mosaic.
    """
    store.require_writable()
    validate_image(image, f"The mosaic image from {source}")
    if not (pixel_size_um and np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise NightwatchError(f"pixel_size_um={pixel_size_um!r} must be a positive number of micrometres.")
    chunk = int(chunk)
    if chunk < 16:
        raise NightwatchError(f"chunk={chunk} is too small; expected at least 16 pixels.")
    image = as_yxc(image)
    h, w, c = (int(v) for v in image.shape)
    dtype = np.dtype(image.dtype)
    shapes = pyramid_shapes(h, w)
    grids = [(math.ceil(lh / chunk), math.ceil(lw / chunk)) for lh, lw in shapes]
    total = sum(gy * gx for gy, gx in grids)
    # the source's level k is reused only where it is exactly our factor-2 level k (same
    # shape, channels and type); its pixels may come from a better filter than our 2x2 mean
    reused: dict[int, Any] = {}
    for k, lv in enumerate(list(source_levels or [])[1 : len(shapes)], start=1):
        if tuple(int(v) for v in lv.shape[:2]) == shapes[k] and (lv.shape[2] if lv.ndim == 3 else 1) == c \
                and np.dtype(lv.dtype) == dtype:
            reused[k] = lv
        else:
            break  # a level that does not match would make the coarser ones disagree with ours

    with store.replace_part(layout.MOSAIC) as (g, made_from):
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
                    elif k in reused:
                        tile = np.asarray(as_yxc(reused[k])[y0:y1, x0:x1]).transpose(2, 0, 1)
                    else:
                        finer = arrays[k - 1]
                        tile = mean_2x2(
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
            channel_names=CHANNEL_NAMES[c],
            channel_colors=CHANNEL_COLORS[c],
            contrast_limits=[(0, float(np.iinfo(dtype).max))] * c,
            translation=[0.0, 0.0, 0.0],
            rgb=c in (3, 4),
        )
        attrs = {
            "shape": [h, w, c],
            "dtype": dtype.name,
            "pixel_size_um": float(pixel_size_um),
            "downsamples": downsamples,
            "axes": "cyx",
            "source": str(source),
            "chunk": chunk,
            "levels_from_source": sorted(reused),
        }
        attrs.update(extra_attrs)
        g.attrs["nightwatch"] = jsonable(attrs)
        made_from.update(
            source=str(source),
            source_signature=extra_attrs.get("source_signature"),
            shape=[h, w, c],
            pixel_size_um=float(pixel_size_um),
        )


def open_or_create(store: PaintingStore | str | Path) -> PaintingStore:
    """A writable store: the given one, an existing path opened r+, or a new store."""
    if isinstance(store, PaintingStore):
        store.require_writable()
        return store
    if store_exists(store):
        return PaintingStore.open(store, mode="r+")
    return PaintingStore.create(store)


def changed_reference(store: PaintingStore) -> str | None:
    """Why the OME-Zarr the mosaic references in place no longer is what was imported, or None.

    Compares the content signature recorded at import with the source as it is now: a local
    folder (``dirc:``) or a URL (``urlc:``, see :func:`remote_ngff_signature`; a source that
    cannot be read now is reported too). Stores whose reference was signed by names and sizes
    only are not checked.
    """
    info = store.mosaic_info if store.has_mosaic else {}
    ref, sig = info.get("reference"), info.get("source_signature")
    if not ref or not isinstance(sig, str):
        return None
    if sig.startswith(REMOTE_NGFF_SIGNATURE):
        url = str(info.get("source") or ref)
        try:
            now = remote_ngff_signature(url)
        except NightwatchError as exc:
            return f"the OME-Zarr it uses in place, {url}, cannot be read now ({str(exc).rstrip('.')})"
        if now != sig:
            return (f"the OME-Zarr it uses in place, {url}, was changed since it was imported "
                    "(metadata or sampled chunks differ)")
        return None
    if not sig.startswith("dirc:"):
        return None
    root = Path(str(info.get("source") or ref))
    if not root.exists():
        return f"the OME-Zarr it uses in place, {root}, is gone"
    now = source_file_signature(root)
    if now != sig:
        return f"the OME-Zarr it uses in place, {root}, was changed since it was imported (pixels or files differ)"
    return None


def source_file_signature(path: str | Path) -> str | None:
    """Content signature of a mosaic or cube source: a local file or folder, or a URL.

    Local sources: :func:`~napari_nightwatch.store.painting.file_signature` (None when unreadable).
    A URL naming a Deep Zoom descriptor: :func:`remote_dzi_signature`; any other URL is an
    OME-Zarr: :func:`remote_ngff_signature`. A URL that cannot be read raises
    :class:`~napari_nightwatch.core.errors.NightwatchError` (one sentence naming it).
    """
    if is_url(path):
        url = str(path)
        dzi = find_dzi(url)
        if dzi is not None:
            return remote_dzi_signature(DeepZoomImage(dzi))
        return remote_ngff_signature(url)
    try:
        return file_signature(path)
    except OSError:
        return None


#: prefixes of the signatures of remote sources (local ones are "sha1:" files and "dirc:" folders)
REMOTE_NGFF_SIGNATURE = "urlc:"
REMOTE_DZI_SIGNATURE = "dziu:"
#: chunk objects sampled for a remote OME-Zarr's signature: on the finest level, and on each coarser one
REMOTE_SAMPLE_CHUNKS = (8, 2)


def _sampled_chunk_keys(array, n: int) -> list[str]:
    """Keys of ``n`` stored objects (chunks, or shards) spread evenly over ``array``'s grid, first and last included."""
    shape = tuple(int(v) for v in array.shape)
    block = getattr(array, "shards", None) or array.chunks
    grid = tuple(max(1, -(-s // int(b))) for s, b in zip(shape, block, strict=True))
    total = int(np.prod(grid)) if grid else 1
    k = max(1, min(int(n), total))
    picks = sorted({round(i * (total - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return [array.metadata.encode_chunk_key(tuple(int(c) for c in np.unravel_index(i, grid))) for i in picks]


def remote_ngff_signature(url: str, image=None) -> str:
    """Cheap content signature of an OME-Zarr at a URL, without listing (HTTP has none).

    Hashes the zarr metadata documents of the root, the image group and every level, and a
    content token (ETag where the server gives one, else the bytes) of a deterministic sample
    of chunk objects: :data:`REMOTE_SAMPLE_CHUNKS` per level, spread over the chunk grid. An
    edit to metadata or to a sampled chunk changes it; an edit to any other chunk does not
    (a local folder's signature also sees every file's size, which needs a listing).
    ``image``: the image group :func:`find_ngff_image` gave for ``url``, if already opened.

    Returns
    -------
    str
        ``"urlc:"`` and 16 hex digits.
    """
    import hashlib

    from ..io.ngff import multiscale_paths

    image = find_ngff_image(url) if image is None else image
    v3 = image.metadata.zarr_format == 3
    group_docs = ["zarr.json"] if v3 else [".zgroup", ".zattrs", ".zmetadata"]
    array_docs = ["zarr.json"] if v3 else [".zarray", ".zattrs"]
    image_url = join(url, image.path)
    h = hashlib.sha1(b"ngff-url")

    def add(obj_url: str, rel: str) -> None:
        h.update(rel.encode() + b"=" + content_token(obj_url, "read for its signature").encode() + b";")

    for base, rel in dict.fromkeys([(url, ""), (image_url, image.path)]):
        for d in group_docs:
            add(join(base, d), join(rel, d))
    for k, path in enumerate(multiscale_paths(image)):
        array = image[path]
        for d in array_docs:
            add(join(image_url, path, d), join(image.path, path, d))
        for key in _sampled_chunk_keys(array, REMOTE_SAMPLE_CHUNKS[0 if k == 0 else 1]):
            add(join(image_url, path, key), join(image.path, path, key))
    return REMOTE_NGFF_SIGNATURE + h.hexdigest()[:16]


def remote_dzi_signature(image: DeepZoomImage) -> str:
    """Signature of a remote Deep Zoom image: its descriptor and its first finest-level tile.

    The tile's bytes are those the reader already holds (from its cache folder when one is
    used), so signing costs no extra request.
    """
    import hashlib

    first = image.tile_bytes(image.level, 0, 0)
    return (f"{REMOTE_DZI_SIGNATURE}{hashlib.sha1(image.descriptor).hexdigest()[:16]}"
            f"+{hashlib.sha1(first).hexdigest()[:16]}")


def _reference_ngff(path: str | Path, store: PaintingStore, pixel_size_um: float | None, image=None) -> None:
    """Record an OME-Zarr image in place (no pixel copied) as the store's mosaic.

    ``path`` is a local folder or a URL; for a URL the reference is the URL of the image
    group (never a local copy), read later through zarr's fsspec store.
    """
    from ..io.ngff import axes_names, multiscale_paths, read_multiscales

    remote = is_url(path)
    if image is None:
        image = find_ngff_image(path)
    ms = read_multiscales(image)
    axes = axes_names(image).lower()
    try:
        view = AxesImage(image[multiscale_paths(image)[0]], axes)
    except ValueError as exc:
        raise NightwatchError(f"The OME-Zarr image {path} has axes {axes!r}; expected y and x axes (plus optional c, z, t).") from exc
    validate_image(view, f"The OME-Zarr image {path}")
    h, w, c = view.shape
    scales, unit = ngff_scales(image)
    factor = UNIT_TO_UM.get(unit) if unit else None
    note = None
    if pixel_size_um is not None:
        size_um, origin = float(pixel_size_um), "given"
    elif factor is not None:
        size_um, origin = scales[0] * factor, f"NGFF scale ({unit})"
    else:
        size_um, origin = DEFAULT_PIXEL_SIZE_UM, "default"
        note = f"the OME-Zarr scale has no known unit ({unit!r}); {DEFAULT_PIXEL_SIZE_UM} um per pixel assumed"
    downsamples = [max(1, round(s / scales[0])) if scales[0] > 0 else 2**i for i, s in enumerate(scales)]
    if remote:
        source = str(path)
        ref_path = join(source, image.path)
    else:
        source = str(Path(path).resolve())
        ref_path = str(Path(image.store.root).resolve() / image.path) if hasattr(image.store, "root") else source
    # the image is open already: a remote one is signed without fetching its metadata again
    signature = remote_ngff_signature(source, image) if remote else source_file_signature(path)
    with store.replace_part(layout.MOSAIC) as (g, made_from):
        attrs: dict[str, Any] = {
            "reference": ref_path,
            "shape": [h, w, c],
            "dtype": view.dtype.name,
            "pixel_size_um": size_um,
            "pixel_size_source": origin,
            "pixel_size_from": origin,
            "downsamples": downsamples,
            "axes": axes,
            "source": source,
            "source_signature": signature,
            "ngff_version": (dict(image.attrs).get("ome", {}) or ms).get("version"),
        }
        if note:
            attrs["pixel_size_note"] = note
        g.attrs["nightwatch"] = jsonable(attrs)
        made_from.update(source=source, reference=ref_path, source_signature=attrs["source_signature"],
                         shape=[h, w, c], pixel_size_um=size_um)


def _remote_kind(url: str) -> str:
    """What a source URL holds: "dzi" (a .dzi/.xml descriptor or a NAME_files folder) or "ngff"."""
    if find_dzi(url) is not None:
        return "dzi"
    name = url_path(url).rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith(TIFF_SUFFIXES + RASTER_SUFFIXES):
        raise NightwatchError(
            f"Mosaic source {url} is a {name.rsplit('.', 1)[-1].upper()} file over {scheme(url)}://; only OME-Zarr "
            "images and Deep Zoom (.dzi) pyramids are read from URLs, so download it and import the local file."
        )
    return "ngff"


def import_mosaic(
    source: str | Path,
    store: PaintingStore | str | Path,
    *,
    pixel_size_um: float | None = None,
    chunk: int = 512,
    progress: ProgressCallback | None = None,
    cache_dir: str | Path | None = None,
) -> PaintingStore:
    """Import a visible-light mosaic into a painting store.

    Parameters
    ----------
    source
        An OME-Zarr image (NGFF 0.4 / zarr v2 or 0.5 / zarr v3; referenced in place, never
        copied or written to), a TIFF/BigTIFF or pyramidal OME-TIFF (level 0 read lazily),
        a PNG/JPEG, or a Deep Zoom image (the ``.dzi`` file, its folder, or its ``_files`` folder).
        RGB, RGBA or greyscale, 8 or 16 bit. An ``http(s)://`` or ``s3://`` URL of an OME-Zarr
        (referenced in place by its URL) or of a ``.dzi`` descriptor (its finest-level tiles are
        fetched one by one as the import reads them, never the whole pyramid) is read the same
        way; credentials and endpoints come from the environment (see :mod:`napari_nightwatch.io.remote`).
    store
        A writable :class:`~napari_nightwatch.store.PaintingStore` or a path; a missing
        store is created (and removed again if the import fails).
    pixel_size_um
        Level-0 pixel size in micrometres; default: a physical size the source carries (OME
        PhysicalSizeX, NGFF scale, ImageJ calibration, TIFF resolution in cm written by a camera
        or scanner), else 5.0 um, noted in ``attrs["pixel_size_note"]``. A source that gives
        only a print resolution (dots per inch) is refused without it. Where the size came
        from is recorded as ``attrs["pixel_size_source"]``.
    chunk
        Store chunk edge; memory use is a few chunks, whatever the image size (TIFF, DZI).
    progress
        ``progress(done, total, stage)``; may raise :class:`~napari_nightwatch.core.errors.Cancelled`.
    cache_dir
        Remote Deep Zoom sources only: a local folder where fetched tiles are kept and reused
        by the next read of the same image (see :class:`~napari_nightwatch.io.dzi.DeepZoomImage`).

    Returns
    -------
    PaintingStore
        The store, with a complete "mosaic" part.
    """
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise NightwatchError(f"pixel_size_um={pixel_size_um!r} must be a positive number of micrometres.")
    remote = is_url(source)
    if remote:
        src: Path | str = str(source)
        src_name = src
        kind = _remote_kind(src)
    else:
        src, kind = Path(source), None
        src_name = str(src.resolve())
        if not src.exists():
            raise NightwatchError(f"Mosaic source {src} does not exist.")
        suffix = "".join(src.suffixes[-2:]).lower() if src.is_file() else src.suffix.lower()
        if src.is_dir() and ((src / "zarr.json").exists() or (src / ".zgroup").exists() or (src / ".zattrs").exists()):
            kind = "ngff"
        elif find_dzi(src) is not None:
            kind = "dzi"
        elif src.is_file() and src.suffix.lower() in TIFF_SUFFIXES:
            kind = "tiff"
        elif src.is_file() and src.suffix.lower() in RASTER_SUFFIXES:
            kind = "raster"
        if kind is None:
            raise NightwatchError(
                f"Mosaic source {src} ({suffix or 'folder'}) is not a supported format; expected an OME-Zarr folder, "
                ".tif/.tiff/.ome.tif, .png, .jpg/.jpeg, or a Deep Zoom .dzi image."
            )
    created = not isinstance(store, PaintingStore) and not store_exists(store)
    # open the source before touching the store, so an unreadable source leaves no store behind
    closer = None
    levels = None
    try:
        if kind == "tiff":
            try:
                tiff = open_tiff(src)
            except NightwatchError:
                raise
            except Exception as exc:
                raise NightwatchError(f"{src} could not be read as a TIFF image ({exc}).") from exc
            image, size, levels, closer = tiff.image, tiff.pixel_size, tiff.levels, tiff
        elif kind == "raster":
            try:
                image, size = read_raster(src)
            except Exception as exc:
                raise NightwatchError(f"{src} could not be read as a PNG/JPEG image ({exc}).") from exc
        elif kind == "dzi":
            image = DeepZoomImage(find_dzi(src), cache_dir=cache_dir if remote else None)
            size = PixelSize(None, "none")
        else:
            # opened (metadata only) before the store is touched; the pixels stay where they are
            image, size = find_ngff_image(src), PixelSize(None, "none")
        if pixel_size_um is None and size.source == PRINT_RESOLUTION:
            raise NightwatchError(
                f"{src} gives only a print resolution ({size.dpi:g} dots per inch), which is not the size of a pixel "
                "on the painting; give the pixel size in micrometres with --pixel-size-um (pixel_size_um=...)."
            )
        ps = open_or_create(store)
        try:
            if kind == "ngff":
                report(progress, 0, 1, "mosaic")
                _reference_ngff(src, ps, pixel_size_um, image=image)
                report(progress, 1, 1, "mosaic")
                return ps
            if kind == "dzi" and remote:
                sig = remote_dzi_signature(image)
            elif kind == "dzi":
                # the descriptor alone does not change when tiles do: sign the tile tree too
                sig = f"{source_file_signature(image.path)}+{source_file_signature(image.tile_dir)}"
            else:
                sig = source_file_signature(src)
            extra: dict[str, Any] = {"source_signature": sig, "source_format": kind}
            if pixel_size_um is not None:
                size_um, origin = float(pixel_size_um), "given"
                if size.um is not None or size.dpi is not None:
                    extra["file_pixel_size"] = {"um": size.um, "source": size.source, "dpi": size.dpi}
            elif size.um is not None:
                size_um, origin = float(size.um), size.source
            else:
                size_um, origin = DEFAULT_PIXEL_SIZE_UM, "default"
                extra["pixel_size_note"] = f"the source gives no pixel size; {DEFAULT_PIXEL_SIZE_UM} um assumed"
            # pixel_size_from: the name stores written before pixel_size_source used
            extra["pixel_size_source"] = extra["pixel_size_from"] = origin
            try:
                write_mosaic_array(ps, image, pixel_size_um=size_um, source=src_name, chunk=chunk,
                                   progress=progress, source_levels=levels, **extra)
            except (NightwatchError, Cancelled):
                raise
            except Exception as exc:
                # the header read fine but the pixels do not decode (a truncated TIFF, a damaged tile):
                # whatever the decoder's exception class, the user's file is at fault, so say which
                raise NightwatchError(
                    f"{src} could not be read to the end ({type(exc).__name__}: {exc}); the file looks truncated "
                    "or damaged, and nothing was imported."
                ) from exc
            return ps
        except BaseException:
            if created:
                delete_store(ps.path)
            raise
    finally:
        if closer is not None:
            closer.close()


def _pixel_sizes(pixel_size_um, what: str) -> tuple[float, float]:
    """``(height, width)`` in micrometres from one size or a pair, refused unless positive."""
    pair = pixel_size_um if isinstance(pixel_size_um, (tuple, list, np.ndarray)) else (pixel_size_um, pixel_size_um)
    try:
        py, px = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise NightwatchError(f"pixel_size_um={pixel_size_um!r} for {what} must be a positive number of micrometres "
                              "or a (height, width) pair.") from None
    if not (np.isfinite(py) and np.isfinite(px) and py > 0 and px > 0):
        raise NightwatchError(f"pixel_size_um={pixel_size_um!r} for {what} must be a positive number of micrometres.")
    return py, px


def default_xrf_affine(store: PaintingStore, xrf_pixel_size_um) -> np.ndarray:
    """XRF pixel -> level-0 mosaic pixel affine that is the identity in micrometres.

    Pixel centres sit at integer coordinates in both grids, so XRF pixel ``i`` (footprint
    ``[i, i+1) * xrf_px`` um) maps to mosaic coordinate ``(i + 0.5) * r - 0.5`` with
    ``r = xrf_px / mosaic_px``. ``xrf_pixel_size_um`` is one size or a ``(height, width)``
    pair (anisotropic pixels). Without a mosaic, the identity.
    """
    if not store.has_mosaic:
        return np.eye(3)
    py, px = _pixel_sizes(xrf_pixel_size_um, "the XRF pixel")
    ry, rx = py / store.mosaic_pixel_size_um, px / store.mosaic_pixel_size_um
    return np.array([[ry, 0.0, (ry - 1.0) / 2.0], [0.0, rx, (rx - 1.0) / 2.0], [0.0, 0.0, 1.0]])


def xrf_affine_um(affine_px: np.ndarray, mosaic_pixel_size_um: float | None, xrf_pixel_yx_um: tuple[float, float]) -> np.ndarray:
    """XRF pixel -> micrometres: through the mosaic where there is one, else the XRF pixel size alone."""
    if mosaic_pixel_size_um is None:
        return np.diag([xrf_pixel_yx_um[0], xrf_pixel_yx_um[1], 1.0])
    return micrometre_affine(as_affine(affine_px), mosaic_pixel_size_um)


def _write_xrf_grid_placement(group, affine_um: np.ndarray, shape: tuple[int, int]) -> dict[str, Any]:
    """Set an XRF-grid image's NGFF scale + translation from its affine; record the full affine beside it.

    The NGFF multiscales keep their axes, names and leading (channel) scale entries; only the
    y/x scale and translation of each dataset change. ``attrs["nightwatch"]["placement"]``
    keeps the full affine and, where NGFF 0.5 cannot express a rotation or shear, says so.
    """
    placement = placement_from_affine(affine_um, shape)
    attrs = dict(group.attrs)
    ome = dict(attrs["ome"])
    ms = dict(ome["multiscales"][0])
    n_lead = len(ms["axes"]) - 2
    datasets = []
    for d in ms["datasets"]:
        old = {t["type"]: t for t in d.get("coordinateTransformations", [])}
        lead = list(old.get("scale", {}).get("scale", [1.0] * len(ms["axes"])))[:n_lead]
        datasets.append({**d, "coordinateTransformations": [
            {"type": "scale", "scale": [float(v) for v in lead] + placement["scale"]},
            {"type": "translation", "translation": [0.0] * n_lead + placement["translation"]},
        ]})
    ms["datasets"] = datasets
    ome["multiscales"] = [ms]
    record = {"affine_um": placement["affine_um"], "ngff_exact": placement["exact"],
              "max_error_um": placement["max_error_um"], "note": placement_note(placement)}
    nw = dict(attrs.get("nightwatch") or {})
    nw["placement"] = record
    group.attrs.update({"ome": ome, "nightwatch": jsonable(nw)})
    return record


def sync_xrf_placement(store: PaintingStore) -> dict[str, dict[str, Any]]:
    """Rewrite the NGFF placement of every image on the XRF pixel grid from the store's XRF affine.

    Call after the XRF->mosaic affine changes (registration) or after writing ``xrf_maps``, so
    that other NGFF viewers show ``xrf/total`` and the element maps where they belong.

    Returns
    -------
    dict
        ``{image path: placement record}`` for each image rewritten.
    """
    store.require_writable()
    if not store.has_xrf:
        return {}
    info = store.xrf_info
    yx = tuple(info.get("pixel_size_yx_um") or (info["pixel_size_um"], info["pixel_size_um"]))
    aff_um = xrf_affine_um(store.xrf_affine, store.mosaic_pixel_size_um if store.has_mosaic else None, yx)
    shape = store.xrf_shape
    out = {}
    for path in (layout.XRF_TOTAL, layout.XRF_MAPS):
        if store.has(path) and "ome" in dict(store.root[path].attrs):
            out[path] = _write_xrf_grid_placement(store.root[path], aff_um, shape)
    return out


def write_xrf_cube(
    store: PaintingStore,
    cube,
    *,
    calibration: EnergyCalibration,
    pixel_size_um: float | tuple[float, float],
    source: str,
    affine=None,
    progress: ProgressCallback | None = None,
    **extra_attrs: Any,
) -> None:
    """Stream an MA-XRF cube ``(y, x, energy)`` into the store's ``xrf/`` part.

    Parameters
    ----------
    store
        A writable :class:`~napari_nightwatch.store.PaintingStore`; an existing ``xrf/`` is replaced.
    cube
        numpy, dask or zarr array ``(y, x, energy)`` of counts (integer or float). Read one
        chunk ``(cy, cx, E)`` at a time.
    calibration
        Energy calibration of the last axis (keV).
    pixel_size_um
        XRF pixel size in micrometres, or ``(height, width)`` for anisotropic pixels (both
        kept: ``pixel_size_yx_um`` and the default affine; ``pixel_size_um`` is then their
        geometric mean, the side of a square pixel of the same area).
    source
        What the cube came from, recorded as provenance.
    affine
        3x3 XRF pixel ``(y, x, 1)`` -> level-0 mosaic pixel. Default: identity in micrometres
        over the store's mosaic (see :func:`default_xrf_affine`), "identity until registered".
    progress
        ``progress(done, total, stage)``; may raise :class:`~napari_nightwatch.core.errors.Cancelled`.
    **extra_attrs
        Further JSON-able entries for ``attrs["nightwatch"]`` (``live_time_s``, ``excitation_kev``, ...).

    Notes
    -----
    Writes ``xrf/cube`` (chunks ``(cy, cx, E)`` of about 4 MB), ``xrf/sum_spectrum`` and
    ``xrf/max_spectrum`` (float64, accumulated while streaming) and ``xrf/total`` (NGFF 0.5
    image of total counts per pixel). Marked complete last; on any error the partial
    ``xrf/`` is removed and the part stays incomplete.
    """
    store.require_writable()
    if not isinstance(calibration, EnergyCalibration):
        raise NightwatchError(f"calibration for {source} must be an EnergyCalibration; got {type(calibration).__name__}.")
    if getattr(cube, "ndim", None) != 3:
        raise NightwatchError(
            f"The MA-XRF data from {source} has shape {tuple(getattr(cube, 'shape', ()))}; expected a 3-D cube "
            "(y, x, energy)."
        )
    ny, nx, ne = (int(v) for v in cube.shape)
    if min(ny, nx) < 1 or ne < 2:
        raise NightwatchError(f"The MA-XRF cube from {source} has shape {(ny, nx, ne)}; expected at least 1x1 pixels and 2 energy channels.")
    dtype = np.dtype(cube.dtype)
    if dtype.kind not in "uif":
        raise NightwatchError(f"The MA-XRF cube from {source} has type {dtype}; expected integer or float counts.")
    pys = _pixel_sizes(pixel_size_um, str(source))
    check_energy_axis(ne, calibration, f"The MA-XRF cube from {source}")
    aff = default_xrf_affine(store, pys) if affine is None else as_affine(affine)
    aff_um = xrf_affine_um(aff, store.mosaic_pixel_size_um if store.has_mosaic else None, pys)

    cy, cx, _ = cube_chunks((ny, nx, ne), dtype.itemsize)
    gy, gx = math.ceil(ny / cy), math.ceil(nx / cx)
    total_steps = gy * gx
    with store.replace_part(layout.XRF) as (g, made_from):
        arr = g.create_array(
            "cube", shape=(ny, nx, ne), dtype=dtype, chunks=(cy, cx, ne), dimension_names=("y", "x", "energy"), fill_value=0
        )
        tg = g.require_group("total")
        tot = tg.create_array(
            "0", shape=(ny, nx), dtype=np.float64, chunks=(min(ny, 1024), min(nx, 1024)), dimension_names=("y", "x"), fill_value=0
        )
        sum_spec = np.zeros(ne, np.float64)
        max_spec = np.full(ne, -np.inf, np.float64)
        if is_dask(cube):
            # one dask graph writes the cube (each source chunk computed once); the
            # summaries are then read back from our own chunks
            store_dask(cube, arr, progress=progress, stage="xrf cube")
            blocks, stage = arr, "xrf summaries"
        else:
            blocks, stage = cube, "xrf cube"
        report(progress, 0, total_steps, stage)
        done = 0
        for iy in range(gy):
            y0, y1 = iy * cy, min((iy + 1) * cy, ny)
            row_total = np.empty((y1 - y0, nx), np.float64)
            for ix in range(gx):
                x0, x1 = ix * cx, min((ix + 1) * cx, nx)
                block = np.asarray(blocks[y0:y1, x0:x1, :])
                if blocks is cube:
                    arr[y0:y1, x0:x1, :] = block
                b64 = block.astype(np.float64, copy=False)
                sum_spec += b64.sum(axis=(0, 1))
                np.maximum(max_spec, b64.max(axis=(0, 1)), out=max_spec)
                row_total[:, x0:x1] = b64.sum(axis=2)
                done += 1
                report(progress, done, total_steps, stage)
            tot[y0:y1, :] = row_total
        g.create_array("sum_spectrum", shape=(ne,), dtype=np.float64, chunks=(ne,), dimension_names=("energy",))[...] = sum_spec
        g.create_array("max_spectrum", shape=(ne,), dtype=np.float64, chunks=(ne,), dimension_names=("energy",))[...] = max_spec
        write_image_metadata(tg, "yx", [list(pys)], name="xrf total counts", translation=[0.0, 0.0])
        _write_xrf_grid_placement(tg, aff_um, (ny, nx))
        attrs: dict[str, Any] = {
            "kind": "cube",
            "shape": [ny, nx, ne],
            "dtype": dtype.name,
            "calibration": calibration.to_dict(),
            "pixel_size_um": pys[1] if pys[0] == pys[1] else float(math.sqrt(pys[0] * pys[1])),
            "affine": aff.tolist(),
            "source": str(source),
        }
        if pys[0] != pys[1]:
            attrs["pixel_size_yx_um"] = [pys[0], pys[1]]
        attrs.update(extra_attrs)
        g.attrs["nightwatch"] = jsonable(attrs)
        made_from.update(
            source=str(source),
            source_signature=extra_attrs.get("source_signature"),
            shape=[ny, nx, ne],
            calibration=calibration.to_dict(),
        )


# ------------------------------------------------------------------------------ import
def import_xrf(
    source: str | Path,
    store: PaintingStore | str | Path,
    *,
    calibration: EnergyCalibration | None = None,
    pixel_size_um: float | None = None,
    dataset: str | None = None,
    affine=None,
    progress: ProgressCallback | None = None,
    energy_axis: int | None = None,
) -> PaintingStore:
    """Import an MA-XRF cube file into a painting store (:func:`read_cube` + :func:`write_xrf_cube`).

    Parameters
    ----------
    source
        A cube file, see :func:`read_cube`. Never written to.
    store
        A writable :class:`~napari_nightwatch.store.PaintingStore` or a path (created if missing,
        and removed again if the import fails).
    calibration
        Energy calibration in keV; overrides the file's. Required when the file has none.
    pixel_size_um
        XRF pixel size in micrometres; overrides the file's. Required when the file has none.
    dataset
        Cube path inside an HDF5 file or zarr group.
    affine
        3x3 XRF pixel -> level-0 mosaic pixel; default identity in micrometres over the mosaic.
    progress
        ``progress(done, total, stage)``; may raise :class:`~napari_nightwatch.core.errors.Cancelled`.
    energy_axis
        Which axis of an HDF5/npy/zarr array is energy (default: guessed, see :func:`guess_energy_axis`).

    Returns
    -------
    PaintingStore
        The store with a complete "xrf" part.
    """
    src = Path(source)
    cube = read_cube(src, dataset=dataset, energy_axis=energy_axis)
    calib = calibration if calibration is not None else cube.calibration
    if calib is None:
        raise NightwatchError(
            f"{src} carries no energy calibration; give one (calibration=EnergyCalibration(offset_kev, gain_kev), "
            "CLI: --energy-offset-kev and --energy-gain-kev)."
        )
    px = pixel_size_um if pixel_size_um is not None else cube.pixel_size_um
    if px is None:
        raise NightwatchError(f"{src} does not say its pixel size; give it in micrometres (pixel_size_um=..., CLI: --pixel-size-um).")
    check_energy_axis(int(cube.data.shape[-1]), calib, f"{src}")
    note = None
    if pixel_size_um is None and cube.anisotropic:
        # both sizes are kept (affine, NGFF scale, pixel_size_yx_um); say so, as squaring them would misplace the map
        px = cube.pixel_size_yx_um
        note = (f"{src.name} has pixels {px[0]:.6g} um tall and {px[1]:.6g} um wide; both are kept, so the map keeps "
                "its aspect (pixel_size_um holds their geometric mean).")
        warnings.warn(note, stacklevel=2)
    extra = {k: v for k, v in cube.metadata.items() if k in ("live_time_s", "real_time_s", "excitation_kev", "format", "dataset")}
    if note:
        extra["pixel_size_note"] = note
    extra["source_signature"] = source_file_signature(src)
    extra["calibration_from"] = "given" if calibration is not None else "file"
    extra["pixel_size_from"] = "given" if pixel_size_um is not None else "file"
    if calibration is not None and cube.calibration is not None:
        extra["file_calibration"] = cube.calibration.to_dict()
    created = not isinstance(store, PaintingStore) and not store_exists(store)
    ps = open_or_create(store)
    try:
        write_xrf_cube(ps, cube.data, calibration=calib, pixel_size_um=px, source=str(src.resolve()), affine=affine,
                       progress=progress, **extra)
    except BaseException:
        if created:
            delete_store(ps.path)
        raise
    return ps


def import_element_maps(
    store,
    maps: Mapping[str, str | Path | np.ndarray],
    *,
    pixel_size_um: float | None = None,
    affine: np.ndarray | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Import exported element maps as the XRF modality of a painting store.

    Parameters
    ----------
    store
        A :class:`~napari_nightwatch.store.PaintingStore` opened "r+" (a path is
        opened for you).
    maps
        ``{element name: image path or 2-D array}``; all maps must share one shape.
    pixel_size_um
        Size of a map pixel.  Without it, the maps are stretched over the mosaic
        (same extent, aspect kept) until registered with control points.
    affine
        Explicit XRF px -> level-0 mosaic px affine (overrides ``pixel_size_um``).
    overwrite
        Replace existing XRF data (a cube or earlier maps).
    progress
        Optional progress callback.

    Returns
    -------
    dict
        Summary: elements, shape, pixel size, affine.
    """
    if not isinstance(store, PaintingStore):
        store = PaintingStore.open(store, mode="r+")
    store.require_writable()
    if not maps:
        raise NightwatchError("Give at least one element map (--map NAME=FILE).")
    if store.has(layout.XRF) and store.is_complete(layout.XRF) and not overwrite:
        raise NightwatchError(
            f"{store.path} already holds MA-XRF data ({store.xrf_kind}); pass overwrite=True (--overwrite) to replace it."
        )
    names, images, sources = [], [], {}
    for i, (name, src) in enumerate(maps.items()):
        name = str(name).strip()
        if not name or "/" in name:
            raise NightwatchError(f"Element map name {name!r} must be a non-empty name such as 'Pb-L' (no '/').")
        if name in names:
            raise NightwatchError(f"Element map name {name!r} is given twice.")
        if isinstance(src, np.ndarray):
            img = np.asarray(src, dtype=np.float32)
            if img.ndim != 2:
                raise NightwatchError(f"Element map {name!r} has shape {img.shape}; expected a 2-D array.")
            sources[name] = "array"
        else:
            img = read_element_map(src)
            sources[name] = {"path": str(Path(src).resolve()), "signature": file_signature(src)}
        if images and img.shape != images[0].shape:
            raise NightwatchError(
                f"Element map {name!r} is {img.shape[0]} x {img.shape[1]} px but {names[0]!r} is "
                f"{images[0].shape[0]} x {images[0].shape[1]} px; all maps must share one pixel grid."
            )
        names.append(name)
        images.append(img)
        report(progress, i + 1, len(maps) + 1, "reading element maps")
    ny, nx = images[0].shape
    if affine is not None:
        aff = as_affine(affine)
        px = float(pixel_size_um) if pixel_size_um else float(np.sqrt(abs(np.linalg.det(aff[:2, :2])))) * (
            store.mosaic_pixel_size_um if store.has_mosaic else 1.0
        )
    elif pixel_size_um is not None:
        if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise NightwatchError(f"pixel_size_um={pixel_size_um!r} must be a positive number of micrometres.")
        px = float(pixel_size_um)
        aff = default_xrf_affine(store, px)
    elif store.has_mosaic:
        # unregistered exports usually show the whole object, like the photograph
        h, w = store.mosaic_shape
        r = min(h / ny, w / nx)
        px = r * store.mosaic_pixel_size_um
        aff = default_xrf_affine(store, px)
    else:
        px, aff = 1.0, np.eye(3)

    stack = np.stack(images, 0)
    with store.replace_part(layout.XRF) as (g, made_from):
        arr = g.create_array(
            "maps", shape=stack.shape, dtype=np.float32, chunks=(1, min(ny, 1024), min(nx, 1024)),
            dimension_names=("c", "y", "x"),
        )
        arr[...] = stack
        tg = g.require_group("total")
        tot = tg.create_array("0", shape=(ny, nx), dtype=np.float64, chunks=(min(ny, 1024), min(nx, 1024)),
                              dimension_names=("y", "x"))
        # "total" for viewers and registration: the sum of the maps scaled to a common range
        scale = np.nanpercentile(stack.reshape(len(names), -1), 99, axis=1)
        tot[...] = np.nansum(stack / np.maximum(scale, 1e-12)[:, None, None], axis=0)
        write_image_metadata(tg, "yx", [[px, px]], name="xrf element maps (sum)", translation=[0.0, 0.0])
        _write_xrf_grid_placement(tg, xrf_affine_um(aff, store.mosaic_pixel_size_um if store.has_mosaic else None, (px, px)),
                                  (ny, nx))
        g.attrs["nightwatch"] = jsonable(
            {
                "kind": "maps",
                "shape": [ny, nx],
                "elements": names,
                "pixel_size_um": px,
                "affine": aff.tolist(),
                "source": sources,
            }
        )
        made_from.update(kind="maps", elements=names, shape=[ny, nx], source=sources)
    report(progress, len(maps) + 1, len(maps) + 1, "reading element maps")
    return {"elements": names, "shape": [ny, nx], "pixel_size_um": px, "affine": aff.tolist(), "store": str(store.path)}


def load_imported_maps(store) -> tuple[list[str], np.ndarray]:
    """Names and ``(c, y, x)`` float32 intensities of imported element maps."""
    info = store.xrf_info
    if info.get("kind") != "maps":
        raise NightwatchError(f"{store.path} holds an MA-XRF cube, not imported element maps.")
    return list(info["elements"]), np.asarray(store.root[layout.XRF_IMPORTED_MAPS][...], dtype=np.float32)
