"""napari reader: painting stores, MA-XRF files, and remote images (a thin shell over the library).

Returns ``None`` for paths it does not handle, so napari asks the next plugin.

URLs (``http(s)://``, ``s3://``): a painting store (``*.nightwatch.zarr``) opens as from
disk; an OME-Zarr image (NGFF 0.4/0.5) or a Deep Zoom ``.dzi`` opens as a lazy multiscale
image layer, read chunk by chunk or tile by tile as the view needs it, without importing
it into a store (a viewer only; ``nightwatch import-mosaic`` makes a project of it).

Every directory reader (napari's builtins, napari-ome-zarr, ours) is offered every folder:
npe2 ignores filename patterns for directories, so a store is claimed by three readers and
napari asks which one to use unless its ``plugins.extension2reader`` setting names one.
:func:`prefer_nightwatch_reader` adds that preference (see docs/interop.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..io.dzi import find_dzi
from ..io.mosaic import RASTER_SUFFIXES, TIFF_SUFFIXES
from ..io.remote import is_url, url_path
from ..store import STORE_SUFFIX

XRF_CUBE_SUFFIXES = (".rpl", ".bcf")
PLUGIN_NAME = "napari-nightwatch"
#: napari matches preferences against the real path, with a trailing separator for folders
STORE_READER_PATTERN = f"*{STORE_SUFFIX}/"


def prefer_nightwatch_reader(settings=None, *, replace: bool = False) -> bool:
    """Make napari open ``*.nightwatch.zarr`` folders with this plugin (File > Open, drag and drop).

    Parameters
    ----------
    settings
        napari settings object; default ``napari.settings.get_settings()`` (saved to the
        user's napari settings file).
    replace
        Replace a different reader the user has chosen for the pattern; by default a
        user's choice is kept.

    Returns
    -------
    bool
        True when the preference now names this plugin.
    """
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    current = dict(settings.plugins.extension2reader)
    if current.get(STORE_READER_PATTERN) not in (None, PLUGIN_NAME) and not replace:
        return False
    if current.get(STORE_READER_PATTERN) != PLUGIN_NAME:
        settings.plugins.extension2reader = {**current, STORE_READER_PATTERN: PLUGIN_NAME}
    return True


def _is_store(path: Path) -> bool:
    return path.name.endswith(STORE_SUFFIX) or path.name.endswith(STORE_SUFFIX + "/")


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """The reader function for ``path``, or None when this plugin does not read it."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | Path):
        return None
    if is_url(path):
        return _url_reader(str(path))
    p = Path(path)
    if _is_store(p) and (p / "zarr.json").exists():
        return read_store
    if p.suffix.lower() in XRF_CUBE_SUFFIXES and p.is_file():
        return read_xrf_file
    if p.suffix.lower() == ".dzi" and p.is_file():
        return read_deep_zoom
    return None


def _url_reader(url: str) -> Callable | None:
    """The reader for a URL, chosen by its name; an OME-Zarr is probed (metadata only)."""
    name = url_path(url).rstrip("/").lower()
    if name.endswith(STORE_SUFFIX):
        return read_store
    if find_dzi(url) is not None:
        return read_deep_zoom
    if name.endswith(TIFF_SUFFIXES + RASTER_SUFFIXES + XRF_CUBE_SUFFIXES):
        return None
    from ..io.mosaic import find_ngff_image

    try:
        find_ngff_image(url)
    except Exception:  # noqa: BLE001 - not ours to read (or unreachable): napari asks the next plugin
        return None
    return read_ome_zarr_url


def store_layers(path: str | Path) -> list:
    """Layer data for a painting store: mosaic, XRF total counts and element maps where present."""
    from ..store import PaintingStore
    from . import layers

    store = PaintingStore.open(path)
    out = []
    if store.has_mosaic:
        out.append(layers.mosaic_layer(store))
    if store.has_xrf:
        if store.has("xrf/total"):
            out.append(layers.xrf_total_layer(store))
        if store.has("xrf_maps") and store.is_complete("xrf_maps"):
            out.extend(layers.store_element_map_layers(store))
        elif store.xrf_kind == "maps":  # element maps exported by scanner software, no cube
            from ..store.sources import load_imported_maps

            names, maps = load_imported_maps(store)
            out.extend(layers.element_map_layers(
                maps, names, layers.xrf_placement(store.xrf_affine, store.mosaic_pixel_size_um),
                metadata={"nightwatch_store": str(store.path)}))
    return out


def read_store(path: str | list[str]) -> list:
    """napari reader for ``*.nightwatch.zarr`` painting stores."""
    return store_layers(path[0] if isinstance(path, list) else path)


def read_xrf_file(path: str | list[str]) -> list:
    """napari reader for ``.rpl`` / ``.bcf`` MA-XRF cubes: the cube's total counts image."""
    from ..io.xrf_files import read_cube
    from . import layers

    p = Path(path[0] if isinstance(path, list) else path)
    cube = read_cube(p)
    meta = {"source": str(p), "shape": [int(v) for v in cube.data.shape]}
    if cube.calibration is not None:
        meta["calibration"] = cube.calibration.to_dict()
    layer = layers.cube_total_layer(cube.data, name=f"{p.name} total counts", pixel_size_um=cube.pixel_size_um,
                                    metadata=meta)
    if cube.anisotropic:  # keep the aspect of pixels the file gives as taller or wider than square
        layer[1]["scale"] = tuple(float(v) for v in cube.pixel_size_yx_um)
        meta["pixel_size_yx_um"] = list(layer[1]["scale"])
    return [layer]


def ome_zarr_url_layers(url: str) -> list:
    """An OME-Zarr image at a URL as one lazy multiscale Image layer (micrometres where the scale has a unit)."""
    from ..io.mosaic import find_ngff_image, ngff_levels, ngff_pixel_size_um
    from . import layers

    image = find_ngff_image(url)
    name = url_path(url).rstrip("/").rsplit("/", 1)[-1] or url
    p = ngff_pixel_size_um(image)
    meta = {"source": url, "nightwatch_kind": "remote_mosaic", "pixel_size_um": p}
    return [layers.image_levels_layer(ngff_levels(image), p, name, meta)]


def deep_zoom_layers(location: str | Path) -> list:
    """A Deep Zoom image (local ``.dzi`` or URL) as one lazy multiscale Image layer, in pixels.

    Each napari level is one of the DZI's own levels, a dask array whose chunks are the
    DZI tiles, so only the tiles in view are read (DZI carries no physical pixel size).
    """
    import hashlib

    import dask.array as da
    import numpy as np

    from ..io.dzi import DeepZoomImage
    from . import layers

    dzi = DeepZoomImage(location)
    ts = dzi.tile_size
    token = hashlib.sha1(dzi.location.encode() + dzi.descriptor).hexdigest()[:12]
    views = dzi.levels()
    levels = [
        da.from_array(lv, chunks=(ts, ts, lv.shape[2]), meta=np.empty((0, 0, 0), lv.dtype), name=f"dzi-{token}-{lv.level}")
        for lv in views
    ]
    name = str(location).rstrip("/").rsplit("/", 1)[-1]
    meta = {"source": str(location), "nightwatch_kind": "deep_zoom", "dzi_levels": [lv.level for lv in views]}
    return [layers.image_levels_layer(levels, None, name, meta)]


def read_ome_zarr_url(path: str | list[str]) -> list:
    """napari reader for an OME-Zarr image at an ``http(s)://`` or ``s3://`` URL."""
    return ome_zarr_url_layers(path[0] if isinstance(path, list) else path)


def read_deep_zoom(path: str | list[str]) -> list:
    """napari reader for a Deep Zoom image: a ``.dzi`` file or URL."""
    return deep_zoom_layers(path[0] if isinstance(path, list) else path)
