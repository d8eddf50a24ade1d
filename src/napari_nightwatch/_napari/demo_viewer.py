"""The demo's napari window: every result of :func:`napari_nightwatch.demo.run_pipeline`
as layers, with the plugin's widgets docked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..core.tiling import TileGrid
from . import layers as L

DOCKED_WIDGETS = ("Project", "Search", "XRF", "Bridge")


def demo_layers(result: dict[str, Any]) -> list:
    """Layer data for the demo: mosaic, measured and predicted element maps, a search."""
    from ..project import PaintingStore

    store = PaintingStore.open(result["store"])
    px = store.mosaic_pixel_size_um
    suffix = result.get("suffix", "")
    out = [L.mosaic_layer(store), L.xrf_total_layer(store)]
    out[-1][1]["visible"] = False
    measured = L.store_element_map_layers(store, visible=False)
    out += measured

    # predicted maps beside the measured ones, with the held-out agreement in metadata
    name = result.get("predicted")
    if name:
        g = store.group(f"predicted/{name}")
        attrs = dict(g.attrs["nightwatch"])
        grid = TileGrid.from_attrs(attrs["grid"])
        maps = np.asarray(g["0"][...])
        metrics = {
            el: {"r": v.get("r_head"), "ssim": v.get("ssim_head")} for el, v in attrs.get("validation", {}).items()
        }
        pred = L.predicted_map_layers(maps, attrs["elements"], grid, px, metrics=metrics, suffix=suffix)
        for layer in pred:
            layer[1]["visible"] = False
        out += pred

    # the demo search: similarity heat map + hits
    hits = result.get("hits", [])
    grid = TileGrid.from_attrs(store.node_attrs(f"grids/{result['grid_id']}")["grid"])
    query = result["query"] + suffix
    if "similarity" in result:
        out.append(L.similarity_map_layer(np.asarray(result["similarity"]), grid, px, f"similarity: {query}"))
    if hits:
        boxes = np.array([h["box"] for h in hits], float)
        scores = np.array([h["score"] for h in hits], float)
        out += L.hit_layers(boxes, scores, query, px, tiles=np.array([h["tile"] for h in hits]))
    return out


def show_demo(result: dict[str, Any], screenshot: str | Path | None = None, block: bool = True):
    """Open napari with the demo's layers and the plugin's widgets; optionally save a screenshot."""
    import napari

    viewer = napari.Viewer(title="napari-nightwatch demo")
    for data, kwargs, kind in demo_layers(result):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    for widget in DOCKED_WIDGETS:
        try:
            viewer.window.add_plugin_dock_widget("napari-nightwatch", widget)
        except Exception as exc:  # a widget that fails to dock must not take the demo down
            print(f"could not dock the {widget} widget: {exc}")
    viewer.scale_bar.visible = True
    viewer.scale_bar.unit = "um"
    viewer.reset_view()
    if screenshot:
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(screenshot), canvas_only=False)
        viewer.close()
        return None
    if block:
        napari.run()
    return viewer
