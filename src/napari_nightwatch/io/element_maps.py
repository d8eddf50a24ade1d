"""Element maps without a cube: exported per-element images as the XRF modality.

Many scientists only have the element maps their scanner software exported, one
image per element (PNG, TIFF, JPEG; often tinted in a colour).  They are imported
as the store's XRF part with ``kind: "maps"``::

    xrf/                   attrs["nightwatch"]: kind "maps", shape [ny, nx],
                           pixel_size_um, affine (XRF px -> level-0 mosaic px),
                           elements [names], sources {name: path}
      maps                 (c, y, x) float32 element intensities

Registration, pairing, the spectrum encoder, spectrum search and the inverse then
work on the per-tile vector of element intensities instead of a spectrum.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.progress import ProgressCallback, report


def read_element_map(path: str | Path) -> np.ndarray:
    """Read one exported element map as a float32 intensity image ``(y, x)``.

    A tinted colour map (the element drawn in one colour on black) becomes an
    intensity by the maximum over its colour channels, which undoes any single-hue
    tint without knowing the hue; an alpha channel is ignored.

    Parameters
    ----------
    path
        PNG, TIFF or JPEG file.
    """
    path = Path(path)
    if not path.is_file():
        raise NightwatchError(f"Element map {path} does not exist.")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            img = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                img = np.asarray(im)
    except Exception as exc:
        raise NightwatchError(f"Element map {path} could not be read as an image ({exc}).") from exc
    img = np.squeeze(img)
    if img.ndim == 3:
        if img.shape[-1] in (2, 4):  # grey+alpha, RGBA: drop alpha
            img = img[..., :-1]
        if img.shape[-1] > 4 and img.shape[0] <= 4:  # channel-first TIFF
            img = np.moveaxis(img, 0, -1)
        img = img.max(axis=-1)
    if img.ndim != 2 or min(img.shape) < 2:
        raise NightwatchError(f"Element map {path} has shape {img.shape}; expected a 2-D image (or a tinted RGB one).")
    if img.dtype.kind not in "uif":
        raise NightwatchError(f"Element map {path} has pixel type {img.dtype}; expected numbers.")
    out = img.astype(np.float32)
    if not np.isfinite(out).any():
        raise NightwatchError(f"Element map {path} holds no finite values.")
    return out


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
        A :class:`~napari_nightwatch.project.PaintingStore` opened "r+" (a path is
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
    from ..core.geometry import as_affine
    from ..project import PaintingStore, _jsonable, file_signature
    from .mosaic import _remove_part
    from .ngff import write_image_metadata
    from .xrf_files import default_xrf_affine

    if not isinstance(store, PaintingStore):
        store = PaintingStore.open(store, mode="r+")
    store.require_writable()
    if not maps:
        raise NightwatchError("Give at least one element map (--map NAME=FILE).")
    if store.has("xrf") and store.is_complete("xrf") and not overwrite:
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
    _remove_part(store, "xrf")
    try:
        g = store.group("xrf", create=True)
        arr = g.create_array(
            "maps", shape=stack.shape, dtype=np.float32, chunks=(1, min(ny, 1024), min(nx, 1024)),
            dimension_names=("c", "y", "x"),
        )
        arr[...] = stack
        tg = g.require_group("total")
        tot = tg.create_array("0", shape=(ny, nx), dtype=np.float64, chunks=(min(ny, 1024), min(nx, 1024)))
        # "total" for viewers and registration: the sum of the maps scaled to a common range
        scale = np.nanpercentile(stack.reshape(len(names), -1), 99, axis=1)
        tot[...] = np.nansum(stack / np.maximum(scale, 1e-12)[:, None, None], axis=0)
        write_image_metadata(tg, "yx", [[px, px]], name="xrf element maps (sum)")
        g.attrs["nightwatch"] = _jsonable(
            {
                "kind": "maps",
                "shape": [ny, nx],
                "elements": names,
                "pixel_size_um": px,
                "affine": aff.tolist(),
                "source": sources,
            }
        )
        store.mark_complete("xrf", kind="maps", elements=names, shape=[ny, nx], source=sources)
    except BaseException:
        _remove_part(store, "xrf")
        raise
    report(progress, len(maps) + 1, len(maps) + 1, "reading element maps")
    return {"elements": names, "shape": [ny, nx], "pixel_size_um": px, "affine": aff.tolist(), "store": str(store.path)}


def load_imported_maps(store) -> tuple[list[str], np.ndarray]:
    """Names and ``(c, y, x)`` float32 intensities of imported element maps."""
    info = store.xrf_info
    if info.get("kind") != "maps":
        raise NightwatchError(f"{store.path} holds an MA-XRF cube, not imported element maps.")
    return list(info["elements"]), np.asarray(store.root["xrf/maps"][...], dtype=np.float32)


def parse_map_arguments(items: list[str]) -> dict[str, Path]:
    """``["Hg=Hg.png", "Pb-L=Pb.tif"]`` -> ``{"Hg": Path("Hg.png"), ...}`` (CLI ``--map``)."""
    out: dict[str, Path] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise NightwatchError(f"--map {it!r} must look like NAME=FILE, e.g. Pb-L=Pb.tif.")
        if name.strip() in out:
            raise NightwatchError(f"--map gives element {name.strip()!r} twice.")
        out[name.strip()] = Path(path.strip())
    return out
