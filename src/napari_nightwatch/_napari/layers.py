"""Painting-store contents as napari layer data, in micrometres.

This is the one place where level-0 mosaic pixels become micrometres and the
XRF->mosaic affine is applied for display (STYLE.md). Every function returns
napari ``LayerDataTuple`` values ``(data, kwargs, layer_type)`` and needs no Qt, so
the reader, the widgets and the tests share them.

Coordinate convention: napari puts the centre of pixel ``i`` at
``translate + scale * i``; level-0 mosaic pixel coordinates in the core use the same
convention (pixel centres on integers), so a level-0 coordinate ``v`` is at
``v * pixel_size_um`` micrometres. Tile boxes ``y0, x0, y1, x1`` are pixel *edges*
(``y1`` exclusive), so their corners sit half a pixel before the centre coordinate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.geometry import as_affine, micrometre_affine

LayerDataTuple = tuple[Any, dict[str, Any], str]

UNITS = ("micrometer", "micrometer")

# One colour per element, as a scientist reading XRF maps expects them: lead white
# grey/white, vermilion (Hg) red, ochre (Fe) orange, copper greens cyan, smalt
# (Co) blue, ... Elements not listed get a stable colour derived from their name.
ELEMENT_COLORS: dict[str, tuple[float, float, float]] = {
    "Pb": (1.0, 1.0, 1.0),
    "Hg": (1.0, 0.1, 0.1),
    "Fe": (1.0, 0.55, 0.0),
    "Cu": (0.0, 1.0, 0.8),
    "Co": (0.15, 0.35, 1.0),
    "Ca": (1.0, 1.0, 0.2),
    "K": (1.0, 0.3, 1.0),
    "Mn": (0.6, 0.3, 1.0),
    "Sn": (0.8, 1.0, 0.3),
    "As": (0.3, 1.0, 0.3),
    "S": (1.0, 0.85, 0.5),
    "Ti": (0.85, 0.85, 1.0),
    "Zn": (0.3, 0.8, 0.8),
    "Ba": (1.0, 0.6, 0.8),
    "Cr": (0.2, 0.8, 0.2),
    "Ni": (0.6, 0.8, 0.4),
    "Sr": (0.9, 0.7, 0.3),
    "Si": (0.7, 0.7, 0.7),
    "P": (0.9, 0.5, 0.3),
    "Sb": (0.7, 0.9, 0.9),
    "Ag": (0.75, 0.75, 0.85),
    "Au": (1.0, 0.85, 0.0),
    "Cl": (0.5, 1.0, 0.5),
    "Ar": (0.5, 0.5, 0.5),
}


# ---------------------------------------------------------------- coordinates
def level0_to_um(yx_level0: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Level-0 mosaic pixel coordinates (pixel centres) to micrometres."""
    return np.asarray(yx_level0, dtype=np.float64) * float(pixel_size_um)


def um_to_level0(yx_um: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Micrometres (napari world coordinates) to level-0 mosaic pixel coordinates."""
    return np.asarray(yx_um, dtype=np.float64) / float(pixel_size_um)


def box_level0_to_um_corners(box: Sequence[float], pixel_size_um: float) -> np.ndarray:
    """The four corners (4, 2) in micrometres of a level-0 box ``y0, x0, y1, x1`` (pixel edges)."""
    y0, x0, y1, x1 = (float(v) - 0.5 for v in box)
    p = float(pixel_size_um)
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) * p


def box_level0_center_um(box: Sequence[float], pixel_size_um: float) -> np.ndarray:
    """Centre (y, x) in micrometres of a level-0 box ``y0, x0, y1, x1`` (pixel edges)."""
    y0, x0, y1, x1 = (float(v) for v in box)
    return np.array([(y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5]) * float(pixel_size_um)


def um_rect_to_level0_box(corners_um: np.ndarray, pixel_size_um: float) -> tuple[float, float, float, float]:
    """Bounding level-0 box ``y0, x0, y1, x1`` (pixel edges) of a rectangle given in micrometres.

    The inverse of :func:`box_level0_to_um_corners`; used to turn a Shapes
    rectangle or the current view into an exemplar region for the core.
    """
    c = np.asarray(corners_um, dtype=np.float64).reshape(-1, 2)[:, -2:] / float(pixel_size_um) + 0.5
    return (float(c[:, 0].min()), float(c[:, 1].min()), float(c[:, 0].max()), float(c[:, 1].max()))


def um_rect_to_xrf_box(
    corners_um: np.ndarray, affine_px: np.ndarray, mosaic_pixel_size_um: float
) -> tuple[float, float, float, float]:
    """Bounding box ``y0, x0, y1, x1`` in XRF pixel coordinates of a rectangle drawn in micrometres.

    Coordinates put pixel centres on integers, as :func:`napari_nightwatch.xrf.spectra.mean_spectrum`
    expects: the pixels whose centres lie inside the drawn rectangle are selected.
    """
    m = micrometre_affine(as_affine(affine_px), mosaic_pixel_size_um)
    inv = np.linalg.inv(m)
    c = np.asarray(corners_um, dtype=np.float64).reshape(-1, 2)[:, -2:]
    xy = c @ inv[:2, :2].T + inv[:2, 2]
    return (float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max()))


def um_to_xrf_coords(yx_um: np.ndarray, affine_px: np.ndarray, mosaic_pixel_size_um: float) -> np.ndarray:
    """Points (N, 2) in micrometres to continuous XRF pixel coordinates (pixel centres on integers)."""
    m = micrometre_affine(as_affine(affine_px), mosaic_pixel_size_um)
    inv = np.linalg.inv(m)
    p = np.atleast_2d(np.asarray(yx_um, dtype=np.float64))[:, -2:]
    return p @ inv[:2, :2].T + inv[:2, 2]


def um_to_xrf_pixel(yx_um: Sequence[float], affine_px: np.ndarray, mosaic_pixel_size_um: float) -> tuple[int, int]:
    """The XRF pixel (row, column) under a point given in micrometres."""
    m = micrometre_affine(as_affine(affine_px), mosaic_pixel_size_um)
    inv = np.linalg.inv(m)
    p = np.asarray(yx_um, dtype=np.float64)[-2:]
    yx = inv[:2, :2] @ p + inv[:2, 2]
    return int(np.floor(yx[0] + 0.5)), int(np.floor(yx[1] + 0.5))


def xrf_placement(affine_px: np.ndarray, mosaic_pixel_size_um: float) -> dict[str, Any]:
    """napari placement kwargs for an image on the XRF pixel grid.

    Parameters
    ----------
    affine_px
        3x3 affine, XRF pixel ``(y, x, 1)`` -> level-0 mosaic pixel.
    mosaic_pixel_size_um
        Size of a level-0 mosaic pixel in micrometres.

    Returns
    -------
    dict
        ``scale`` and ``translate`` when the affine has no rotation or shear (so the
        scale bar and napari's pixel readout stay simple), otherwise ``affine`` in
        micrometres.
    """
    m = micrometre_affine(as_affine(affine_px), mosaic_pixel_size_um)
    if abs(m[0, 1]) < 1e-12 and abs(m[1, 0]) < 1e-12 and m[0, 0] > 0 and m[1, 1] > 0:
        return {"scale": (float(m[0, 0]), float(m[1, 1])), "translate": (float(m[0, 2]), float(m[1, 2]))}
    return {"affine": m}


def grid_placement(grid, pixel_size_um: float) -> dict[str, Any]:
    """napari ``scale``/``translate`` in micrometres of a one-pixel-per-tile map of ``grid``."""
    (sy, sx), (ty, tx) = grid.map_transform()
    p = float(pixel_size_um)
    return {"scale": (sy * p, sx * p), "translate": (ty * p, tx * p)}


# ---------------------------------------------------------------- colours
def element_symbol(name: str) -> str:
    """The element symbol of a family name (``"Pb-L"`` -> ``"Pb"``, ``"predicted Hg-M"`` -> ``"Hg"``)."""
    base = name.split()[-1] if name.strip() else name
    return base.split("-")[0].split("_")[0]


def element_rgb(name: str) -> tuple[float, float, float]:
    """Display colour of an element family; stable for elements without a table entry."""
    sym = element_symbol(name)
    if sym in ELEMENT_COLORS:
        return ELEMENT_COLORS[sym]
    import colorsys

    hue = int(hashlib.sha1(sym.encode()).hexdigest()[:4], 16) / 0xFFFF
    return colorsys.hsv_to_rgb(hue, 0.8, 1.0)


def element_colormap(name: str):
    """A black-to-colour napari colormap for one element family (additive blending friendly)."""
    from napari.utils.colormaps import Colormap

    r, g, b = element_rgb(name)
    sym = element_symbol(name)
    return Colormap(colors=[[0.0, 0.0, 0.0, 1.0], [r, g, b, 1.0]], name=f"nightwatch-{sym}", display_name=sym)


def _robust_limits(values: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(v, [lo_pct, hi_pct])
    if not hi > lo:
        hi = lo + (abs(lo) if lo else 1.0)
    return (float(lo), float(hi))


# ---------------------------------------------------------------- store contents
def mosaic_layer(store, name: str | None = None) -> LayerDataTuple:
    """The visible mosaic as a multiscale Image layer in micrometres.

    Uses the store's pyramid (dask ``(y, x, c)`` per level). napari infers each
    level's downsampling from the array shapes, so only level 0's pixel size is
    given as ``scale``.
    """
    p = store.mosaic_pixel_size_um
    return image_levels_layer(store.mosaic_levels(), p, name or f"{store.name} mosaic",
                              {"nightwatch_store": str(store.path), "nightwatch_kind": "mosaic", "pixel_size_um": p})


def image_levels_layer(levels: Sequence, pixel_size_um: float | None, name: str, metadata: dict) -> LayerDataTuple:
    """An image given as ``(y, x, c)`` levels (finest first) as a (multiscale) Image layer.

    ``pixel_size_um`` None (a source with no physical size, e.g. Deep Zoom) leaves the layer in pixels.
    """
    levels = list(levels)
    p = pixel_size_um
    n_c = int(levels[0].shape[-1])
    if n_c == 1:
        levels = [lv[..., 0] for lv in levels]
    elif n_c == 4:
        levels = [lv[..., :3] for lv in levels]  # alpha carries nothing a scientist reads here
    rgb = n_c in (3, 4)
    dtype = np.dtype(levels[0].dtype)
    kwargs: dict[str, Any] = {
        "name": name,
        "rgb": rgb,
        "translate": (0.0, 0.0),
        "metadata": metadata,
    }
    if p is not None:
        kwargs["scale"] = (p, p)
        kwargs["units"] = UNITS
    if np.issubdtype(dtype, np.integer):
        kwargs["contrast_limits"] = (0, int(np.iinfo(dtype).max))
    elif rgb:
        kwargs["contrast_limits"] = (0.0, 1.0)
    if len(levels) > 1:
        kwargs["multiscale"] = True
        return (list(levels), kwargs, "image")
    return (levels[0], kwargs, "image")


def xrf_total_layer(store, name: str | None = None) -> LayerDataTuple:
    """Total XRF counts per pixel, at the XRF pixel grid, placed over the mosaic."""
    total = np.asarray(store.xrf_total().compute(), dtype=np.float32)
    kwargs = {
        "name": name or f"{store.name} XRF total counts",
        "colormap": "gray",
        "contrast_limits": _robust_limits(total),
        "opacity": 0.7,
        "units": UNITS,
        "metadata": {"nightwatch_store": str(store.path), "nightwatch_kind": "xrf_total"},
        **xrf_placement(store.xrf_affine, store.mosaic_pixel_size_um),
    }
    return (total, kwargs, "image")


def cube_total_counts(cube, rows_per_read: int = 64) -> np.ndarray:
    """Sum over energy of a ``(y, x, energy)`` cube, read a band of rows at a time (memory stays bounded)."""
    if hasattr(cube, "dask") or type(cube).__module__.startswith("dask"):
        return np.asarray(cube.sum(axis=-1, dtype=np.float64).compute(), dtype=np.float32)
    ny = int(cube.shape[0])
    out = np.empty(tuple(int(v) for v in cube.shape[:2]), np.float32)
    for y0 in range(0, ny, rows_per_read):
        out[y0 : y0 + rows_per_read] = np.asarray(cube[y0 : y0 + rows_per_read], dtype=np.float64).sum(axis=-1)
    return out


def cube_total_layer(cube, name: str, pixel_size_um: float | None = None, metadata: dict | None = None) -> LayerDataTuple:
    """Total counts of an XRF cube ``(y, x, energy)`` opened directly from a file."""
    total = cube_total_counts(cube)
    p = float(pixel_size_um) if pixel_size_um else 1.0
    kwargs = {
        "name": name,
        "colormap": "gray",
        "contrast_limits": _robust_limits(total),
        "scale": (p, p),
        "units": UNITS if pixel_size_um else ("pixel", "pixel"),
        "metadata": {"nightwatch_kind": "xrf_total", **(metadata or {})},
    }
    return (total, kwargs, "image")


def element_map_layers(
    maps: np.ndarray,
    names: Sequence[str],
    placement: dict[str, Any],
    prefix: str = "",
    suffix: str = "",
    visible: bool | Sequence[bool] = True,
    metadata: dict | None = None,
) -> list[LayerDataTuple]:
    """One Image layer per element family, coloured per element, blended additively.

    Parameters
    ----------
    maps
        ``(c, y, x)`` element intensities, one channel per name.
    names
        Element family names (``"Pb-L"``, ``"Hg-L"``, ...), one per channel.
    placement
        napari placement kwargs (:func:`xrf_placement` or :func:`grid_placement`).
    prefix, suffix
        Added around each name (``prefix="predicted "`` gives ``predicted Pb-L``).
    visible
        Visibility of every layer, or one flag per layer.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] != len(names):
        raise ValueError(f"element maps of shape {maps.shape} do not match {len(names)} names")
    flags = [visible] * len(names) if isinstance(visible, bool) else list(visible)
    out = []
    for i, el in enumerate(names):
        data = np.asarray(maps[i], dtype=np.float32)
        lo, hi = _robust_limits(data, 1.0, 99.5)
        kwargs = {
            "name": f"{prefix}{el}{suffix}",
            "colormap": element_colormap(el),
            "blending": "additive",
            "contrast_limits": (min(0.0, lo), hi),
            "visible": bool(flags[i]),
            "units": UNITS,
            "metadata": {"nightwatch_kind": "element_map", "element": el, **(metadata or {})},
            **placement,
        }
        out.append((data, kwargs, "image"))
    return out


def store_element_map_layers(store, names: Sequence[str] | None = None, visible: bool = True) -> list[LayerDataTuple]:
    """The store's fitted element maps (``xrf_maps/``), one layer per family, over the mosaic."""
    from ..io.ngff import multiscale_paths

    g = store.group("xrf_maps")
    elements = list(store.node_attrs("xrf_maps").get("elements", []))
    arr = g[multiscale_paths(g)[0]]
    idx = list(range(len(elements))) if names is None else [elements.index(n) for n in names if n in elements]
    maps = np.stack([np.asarray(arr[i]) for i in idx]) if idx else np.zeros((0,) + tuple(arr.shape[1:]))
    return element_map_layers(
        maps,
        [elements[i] for i in idx],
        xrf_placement(store.xrf_affine, store.mosaic_pixel_size_um),
        visible=visible,
        metadata={"nightwatch_store": str(store.path)},
    )


def store_overlap_layers(store) -> list[LayerDataTuple]:
    """Per-pixel error correlation of each overlapping pair of fitted families (``xrf_maps/correlation``).

    One hidden Image layer per pair (``error correlation Pb-L/As-K``), -1..1 on a diverging
    colormap: near -1 the fit cannot tell the two families apart in that pixel.
    """
    from ..xrf.maps import load_correlation

    pairs, corr = load_correlation(store)
    placement = xrf_placement(store.xrf_affine, store.mosaic_pixel_size_um)
    out = []
    for k, pair in enumerate(pairs):
        kwargs = {
            "name": f"error correlation {pair}",
            "colormap": "twilight_shifted",
            "contrast_limits": (-1.0, 1.0),
            "visible": False,
            "units": UNITS,
            "metadata": {"nightwatch_kind": "overlap_correlation", "pair": pair,
                         "nightwatch_store": str(store.path)},
            **placement,
        }
        out.append((np.nan_to_num(np.asarray(corr[k], np.float32), nan=0.0), kwargs, "image"))
    return out


def predicted_map_layers(
    maps: np.ndarray,
    names: Sequence[str],
    grid,
    pixel_size_um: float,
    metrics: dict[str, dict[str, float]] | None = None,
    suffix: str = "",
) -> list[LayerDataTuple]:
    """Element maps predicted from the photograph, named ``predicted Pb-L``, on their tile grid.

    ``metrics`` (element -> {"r": ..., "ssim": ...}) from held-out blocks is kept in
    each layer's metadata so the Bridge panel can show it beside the layer.
    """
    layers = element_map_layers(maps, names, grid_placement(grid, pixel_size_um), prefix="predicted ", suffix=suffix)
    for (_, kw, _), el in zip(layers, names, strict=True):
        kw["metadata"]["nightwatch_kind"] = "predicted_map"
        if metrics and el in metrics:
            kw["metadata"]["heldout"] = dict(metrics[el])
    return layers


def tile_mask_layer(mask: np.ndarray, grid, pixel_size_um: float, name: str) -> LayerDataTuple:
    """A boolean per-tile map (e.g. "no evidence in the photograph") as a translucent overlay."""
    data = np.asarray(mask, dtype=np.float32)
    kwargs = {
        "name": name,
        "colormap": "magenta",
        "contrast_limits": (0.0, 1.0),
        "opacity": 0.5,
        "blending": "additive",
        "units": UNITS,
        "metadata": {"nightwatch_kind": "tile_mask"},
        **grid_placement(grid, pixel_size_um),
    }
    return (data, kwargs, "image")


def tile_value_layer(values: np.ndarray, grid, pixel_size_um: float, name: str, colormap: str = "viridis") -> LayerDataTuple:
    """A per-tile scalar map (for example a prediction's uncertainty) on its tile grid."""
    data = np.asarray(values, dtype=np.float32)
    kwargs = {
        "name": name,
        "colormap": colormap,
        "contrast_limits": _robust_limits(data, 1.0, 99.0),
        "opacity": 0.8,
        "units": UNITS,
        "metadata": {"nightwatch_kind": "tile_values"},
        **grid_placement(grid, pixel_size_um),
    }
    return (data, kwargs, "image")


# ---------------------------------------------------------------- search results
def similarity_map_layer(scores: np.ndarray, grid, pixel_size_um: float, name: str) -> LayerDataTuple:
    """A similarity heat map (one score per tile) over the mosaic, additive, ``inferno``.

    Tiles outside the painting mask are NaN and show as transparent black.
    """
    data = np.asarray(scores, dtype=np.float32)
    lo, hi = _robust_limits(data, 2.0, 100.0)
    kwargs = {
        "name": name,
        "colormap": "inferno",
        "blending": "additive",
        "contrast_limits": (lo, hi),
        "opacity": 0.55,  # the painting stays readable under the heat map
        "units": UNITS,
        "metadata": {"nightwatch_kind": "similarity"},
        **grid_placement(grid, pixel_size_um),
    }
    return (np.nan_to_num(data, nan=lo), kwargs, "image")


def hit_layers(
    boxes_level0: np.ndarray,
    scores: np.ndarray,
    query: str,
    pixel_size_um: float,
    name: str | None = None,
    tiles: np.ndarray | None = None,
) -> list[LayerDataTuple]:
    """Search hits as a Points layer at their centres and a Shapes layer of their rectangles.

    Parameters
    ----------
    boxes_level0
        (N, 4) hit boxes ``y0, x0, y1, x1`` in level-0 pixels (edges), best first.
    scores
        (N,) similarity scores.
    query
        The query's display text; stored as a feature and used in layer names.
    pixel_size_um
        Level-0 pixel size.
    name
        Base layer name (defaults to the query).
    tiles
        Optional (N,) tile indices kept as a feature.

    Returns
    -------
    list
        ``[points, shapes]`` layer data. Points carry features ``rank, score,
        query`` (and ``tile``), a text label ``rank: score`` and a size and colour
        that grow with the score.
    """
    boxes = np.asarray(boxes_level0, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(boxes)
    base = name or query
    centers = np.array([box_level0_center_um(b, pixel_size_um) for b in boxes]).reshape(-1, 2)
    features: dict[str, Any] = {
        "rank": np.arange(1, n + 1, dtype=np.int64),
        "score": scores.astype(np.float64),
        "query": np.array([query] * n, dtype=object),
    }
    if tiles is not None:
        features["tile"] = np.asarray(tiles, dtype=np.int64)
    # the edge of the smallest tile, so markers stay inside their tile at any zoom
    edge_um = float(np.min(boxes[:, 2] - boxes[:, 0]) * pixel_size_um) if n else 10.0
    if n and np.ptp(scores) > 0:
        rel = (scores - scores.min()) / np.ptp(scores)
    else:
        rel = np.ones(n)
    sizes = edge_um * (0.25 + 0.35 * rel)
    points_kw = {
        "name": f"hits: {base}",
        "features": features,
        "size": sizes,
        "face_color": "score",
        "face_colormap": "viridis",
        "border_color": "white",
        "border_width": 0.08,
        "text": {"string": "{rank}: {score:.3f}", "size": 9, "color": "white", "anchor": "upper_left"},
        "units": UNITS,
        "metadata": {"nightwatch_kind": "hits", "query": query, "pixel_size_um": float(pixel_size_um),
                     "boxes_level0": boxes.tolist()},
    }
    if n == 0:  # a colour by score needs scores; an empty search still gets (empty) layers
        points_kw["face_color"] = "yellow"
        points_kw.pop("face_colormap")
        points_kw["size"] = 10.0
    rects = [box_level0_to_um_corners(b, pixel_size_um) for b in boxes]
    shapes_kw = {
        "name": f"hit boxes: {base}",
        "shape_type": "rectangle",
        "edge_color": "yellow",
        "face_color": "transparent",
        "edge_width": max(edge_um * 0.03, 1e-3),
        "features": {k: v for k, v in features.items()},
        "units": UNITS,
        "metadata": {"nightwatch_kind": "hit_boxes", "query": query},
    }
    return [(centers, points_kw, "points"), (rects, shapes_kw, "shapes")]


def store_predicted_layers(
    store, name: str, suffix: str = "", parts: Sequence[str] = ("maps",)
) -> list[LayerDataTuple]:
    """Layers of a stored prediction (``predicted/<name>``), one per element.

    Parameters
    ----------
    store
        The painting store.
    name
        The prediction's name under ``predicted/``.
    suffix
        Added to every layer name (e.g. ``" (random weights)"``).
    parts
        Any of ``"maps"`` (``predicted Pb-L``, with held-out r and SSIM in the layer
        metadata under ``heldout``), ``"uncertainty"`` (``uncertainty Pb-L``) and
        ``"no_evidence"`` (``no evidence Pb-L``: tiles where the photograph carries no
        evidence of the element).
    """
    from ..core.tiling import TileGrid

    g = store.group(f"predicted/{name}")
    attrs = dict(g.attrs.get("nightwatch", {}))
    names = list(attrs["elements"])
    grid = TileGrid.from_attrs(attrs["grid"])
    p = store.mosaic_pixel_size_um
    out: list[LayerDataTuple] = []
    common = {"nightwatch_store": str(store.path), "prediction": name}
    if "maps" in parts:
        metrics = {}
        for el, v in (attrs.get("validation") or {}).items():
            # map "0" holds, per element, the estimate that scored best on validation blocks
            metrics[el] = {"r": v.get("r"), "ssim": v.get("ssim"), "method": v.get("method"), "r_joint": v.get("r_joint"),
                           "ssim_joint": v.get("ssim_joint"), "evidence": v.get("evidence")}
        maps = np.nan_to_num(np.asarray(g["0"][...], dtype=np.float32), nan=0.0)
        layers = predicted_map_layers(maps, names, grid, p, metrics=metrics, suffix=suffix)
        for _, kw, _ in layers:
            kw["metadata"].update(common)
        out.extend(layers)
    if "uncertainty" in parts and "uncertainty" in g:
        unc = np.asarray(g["uncertainty"][...], dtype=np.float32)
        for i, el in enumerate(names):
            ld = tile_value_layer(np.nan_to_num(unc[i], nan=0.0), grid, p, f"uncertainty {el}{suffix}", colormap="magma")
            ld[1]["metadata"].update({"nightwatch_kind": "prediction_uncertainty", "element": el, **common})
            out.append(ld)
    if "no_evidence" in parts and "no_evidence" in g:
        ne = np.asarray(g["no_evidence"][...], dtype=np.float32)
        for i, el in enumerate(names):
            ld = tile_mask_layer(ne[i], grid, p, f"no evidence {el}{suffix}")
            ld[1]["metadata"].update({"nightwatch_kind": "prediction_no_evidence", "element": el, **common})
            out.append(ld)
    return out
