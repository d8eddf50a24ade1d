"""The demo in napari: every result of :func:`napari_nightwatch.demo.run_pipeline` as layers.

Opens the painting (mosaic, XRF total counts, element maps), shows the demo searches
through the Search panel (hits, hit boxes, heat map, results table; the pigment
search in front, the exemplar search under it, a text search only with real
weights), the
element maps predicted from the photograph beside the measured ones, and docks the
plugin's panels.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

# docked as tabs; the last one is in front
PANELS = ("Painting project", "Embed tiles", "XRF", "Bridge", "Search")
#: element maps shown at start (the others are in the layer list, hidden): all sixteen
#: additive maps at once would wash the painting out
SHOWN_ELEMENTS = ("Hg-L", "Cu-K", "Co-K")


def add_demo_layers(viewer, result: dict[str, Any]) -> dict[str, Any]:
    """Add the demo's layers and panels to ``viewer``; returns the docked panels by name."""
    from ..store import PaintingStore
    from . import layers as L
    from ._compat import avoid_llvm_clash
    from ._qt.common import add_layer_data, show_scale_bar
    from ._qt.search_widget import SearchResult, grid_of
    from .reader import store_layers

    avoid_llvm_clash()
    store = PaintingStore.open(result["store"])
    suffix = result.get("suffix") or (" (random weights)" if result.get("random_weights") else "")
    for ld in store_layers(store.path):
        kind = ld[1].get("metadata", {}).get("nightwatch_kind")
        if kind == "xrf_total":
            ld[1]["visible"] = False
        elif kind == "element_map":
            ld[1]["visible"] = ld[1]["metadata"].get("element") in SHOWN_ELEMENTS
            ld[1]["opacity"] = 0.6
        add_layer_data(viewer, ld)
    panels = {}
    for name in PANELS:
        _, panels[name] = viewer.window.add_plugin_dock_widget("napari-nightwatch", name, tabify=True)
    if result.get("predicted"):
        for ld in L.store_predicted_layers(store, result["predicted"], suffix):
            ld[1]["visible"] = False  # the measured maps show first; tick a predicted one to compare
            add_layer_data(viewer, ld)
    searches = result.get("searches") or []
    if searches and result.get("grid_id"):
        grid = grid_of(store, result["grid_id"])
        for srch in searches:  # the last one shown (the pigment search) is on top and in the table
            res = SearchResult(
                label=srch["label"].removesuffix(suffix) if suffix else srch["label"],
                hits=srch["hits"],
                scores_map=np.asarray(srch["similarity"], np.float32),
                grid=grid,
                pixel_size_um=store.mosaic_pixel_size_um,
                random_weights=bool(srch.get("random_weights")),
            )
            panels["Search"].show_result(res)
            hidden = srch is not searches[-1]
            for layer in panels["Search"].last_layers:
                if hidden and layer.metadata.get("nightwatch_kind") == "similarity":
                    layer.visible = False  # one heat map at a time
        panel = panels["Search"]
        last = searches[-1]["query"]
        if "pigment" in last:
            panel.source_combo.setCurrentText("pigment")
            panel.pigment_edit.setText(last["pigment"])
        elif "text" in last:
            panel.text_edit.setText(last["text"])
    show_scale_bar(viewer)
    viewer.reset_view()
    return panels


def show_demo(result: dict[str, Any], screenshot: str | Path | None = None, block: bool = True):
    """Open napari with the demo's results; save a screenshot (and close) when asked."""
    import napari

    viewer = napari.Viewer(title="napari-nightwatch demo")
    viewer.window.resize(1600, 1000)
    if result.get("random_weights"):
        from napari.utils.notifications import show_warning

        from ..demo import HOW_TO_GET_WEIGHTS

        show_warning("No pretrained CLIP weights here: text search is off. Shown: a pigment search (element maps) "
                     "and an exemplar search with the random-weights model. " + HOW_TO_GET_WEIGHTS)
    add_demo_layers(viewer, result)
    if screenshot:
        from qtpy.QtWidgets import QApplication

        for _ in range(20):  # let the canvas draw every layer once
            QApplication.processEvents()
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(screenshot), canvas_only=False)
        viewer.close()
        return None
    if block:
        napari.run()
    return viewer


def run_demo(
    out: str | Path = "demo_out",
    *,
    viewer: bool = True,
    screenshot: str | Path | None = None,
    size: int = 1024,
) -> dict[str, Any]:
    """``make demo``: run the pipeline, then open napari with every result as layers.

    With ``screenshot`` the viewer is saved to that PNG and closed (used headless,
    under Xvfb); otherwise napari runs until the window is closed.
    """
    from ..demo import run_pipeline

    result = run_pipeline(out, size=size, log=lambda m: print(m, file=sys.stderr, flush=True))
    if viewer or screenshot:
        show_demo(result, screenshot=screenshot, block=screenshot is None)
        if screenshot:
            result["screenshot"] = str(screenshot)
    return result
