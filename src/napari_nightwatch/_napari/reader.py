"""napari reader: painting stores and MA-XRF files (a thin shell over the library).

Returns ``None`` for paths it does not handle, so napari asks the next plugin.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..store import STORE_SUFFIX

XRF_CUBE_SUFFIXES = (".rpl", ".bcf")


def _is_store(path: Path) -> bool:
    return path.name.endswith(STORE_SUFFIX) or path.name.endswith(STORE_SUFFIX + "/")


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """The reader function for ``path``, or None when this plugin does not read it."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if _is_store(p) and (p / "zarr.json").exists():
        return read_store
    if p.suffix.lower() in XRF_CUBE_SUFFIXES and p.is_file():
        return read_xrf_file
    return None


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
    return [layers.cube_total_layer(cube.data, name=f"{p.name} total counts", pixel_size_um=cube.pixel_size_um,
                                    metadata=meta)]
