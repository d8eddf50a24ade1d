"""The demo in napari: every result of :func:`napari_nightwatch.demo.run_pipeline` as layers.

Opens the painting (mosaic, XRF total counts, element maps), shows the demo search
through the Search panel (hits, hit boxes, similarity map, results table), the
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
    if result.get("hits") is not None and result.get("grid_id"):
        grid = grid_of(store, result["grid_id"])
        res = SearchResult(
            label=result["query"],
            hits=result["hits"],
            scores_map=np.asarray(result["similarity"], np.float32),
            grid=grid,
            pixel_size_um=store.mosaic_pixel_size_um,
            random_weights=bool(result.get("random_weights")),
        )
        panels["Search"].show_result(res)
        panels["Search"].text_edit.setText(result["query"])
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

        show_warning("The pretrained CLIP weights could not be fetched: the demo runs the same architecture at "
                     "RANDOM weights and every search result is noise (layers are marked '(random weights)').")
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
