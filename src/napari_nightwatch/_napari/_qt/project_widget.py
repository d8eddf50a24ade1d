"""Project panel: open or create a painting store, import a mosaic and an MA-XRF file, see what is next."""

from __future__ import annotations

import json

from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QPlainTextEdit, QPushButton, QVBoxLayout

from ...core.errors import NightwatchError
from .common import Panel, PathEdit, add_layer_data, dspin


def format_summary(summary: dict) -> str:
    """A store summary as short readable text, next steps last."""
    lines = [f"{summary.get('name')}  (schema {summary.get('schema_version')})"]
    if "mosaic" in summary:
        m = summary["mosaic"]
        lines.append(f"mosaic: {m['shape'][0]} x {m['shape'][1]} px at {m['pixel_size_um']} um, {m['levels']} levels")
    if "xrf" in summary:
        x = summary["xrf"]
        lines.append(f"MA-XRF {x['kind']}: {' x '.join(str(v) for v in x['shape'])} at {x['pixel_size_um']} um")
    if summary.get("element_maps"):
        lines.append("element maps: " + ", ".join(summary["element_maps"]))
    for gid, g in (summary.get("grids") or {}).items():
        lines.append(f"grid {gid}: {g.get('n_tiles')} tiles; embeddings: {', '.join(g.get('models') or []) or 'none'}")
    if summary.get("models"):
        lines.append("spectrum encoders: " + ", ".join(summary["models"]))
    if summary.get("predicted"):
        lines.append("predicted maps: " + ", ".join(summary["predicted"]))
    steps = summary.get("next_steps") or []
    lines.append("next: " + ("; ".join(steps) if steps else "everything is in place - search away"))
    return "\n".join(lines)


class ProjectWidget(Panel):
    """Open or create a painting store and import its mosaic and MA-XRF data."""

    section = "project"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.remember("store", self.store_edit)
        row = QHBoxLayout()
        self.open_button = QPushButton("Open")
        self.create_button = QPushButton("Create")
        row.addWidget(self.open_button)
        row.addWidget(self.create_button)
        self.layout_.addLayout(row)

        box = QGroupBox("Import")
        lay = QVBoxLayout(box)
        self.mosaic_edit = self.remember("mosaic_source", PathEdit("mosaic: TIFF, PNG/JPEG, OME-Zarr, .dzi"))
        self.mosaic_pixel = self.remember("mosaic_pixel_um", dspin(0, 1e4, 0.0, 3))
        self.mosaic_pixel.setSpecialValueText("from file")
        self.mosaic_button = QPushButton("Import mosaic")
        self.xrf_edit = self.remember("xrf_source", PathEdit("MA-XRF: .rpl, .bcf, .h5, .npy, .zarr"))
        self.xrf_pixel = self.remember("xrf_pixel_um", dspin(0, 1e4, 0.0, 3))
        self.xrf_pixel.setSpecialValueText("from file")
        self.xrf_offset = self.remember("xrf_offset_kev", dspin(-1.0, 10.0, 0.0, 4, 0.01))
        self.xrf_gain = self.remember("xrf_gain_kev", dspin(0.0, 1.0, 0.0, 5, 0.001))
        self.xrf_gain.setSpecialValueText("from file")
        self.xrf_button = QPushButton("Import MA-XRF")
        for w in (self.mosaic_edit, self.mosaic_pixel, self.mosaic_button, self.xrf_edit, self.xrf_pixel,
                  self.xrf_offset, self.xrf_gain, self.xrf_button):
            lay.addWidget(w)
        self.layout_.addWidget(box)
        self.layout_.addWidget(self.runner)
        self.summary_text = QPlainTextEdit()
        self.summary_text.setReadOnly(True)
        self.layout_.addWidget(self.summary_text, 1)

        self.open_button.clicked.connect(self.guarded(self.open_project))
        self.create_button.clicked.connect(self.guarded(self.create_project))
        self.mosaic_button.clicked.connect(self.guarded(self.import_mosaic))
        self.xrf_button.clicked.connect(self.guarded(self.import_xrf))
        self.restore()
        self.last_summary: dict = {}

    # ------------------------------------------------------------------ actions
    def refresh_summary(self) -> dict:
        summary = self.open_store().summary()
        self.last_summary = summary
        self.summary_text.setPlainText(format_summary(summary) + "\n\n" + json.dumps(summary, indent=1, default=str))
        return summary

    def open_project(self):
        """Show the store's layers (mosaic, XRF total, element maps) and its contents."""
        from ..reader import store_layers

        path = self.store_path()
        self.open_store()  # a clear error now rather than in the worker

        def show(layer_data):
            from .xrf_widget import remove_store_layers

            # opening again refreshes the painting's layers instead of duplicating them
            remove_store_layers(self.viewer, str(path), ("mosaic", "xrf_total", "element_map"))
            for ld in layer_data:
                add_layer_data(self.viewer, ld)
            self.refresh_summary()

        return self.start(lambda progress: store_layers(path), show, "open store")

    def create_project(self):
        from ...store import PaintingStore

        PaintingStore.create(self.store_path())
        self.save()
        self.refresh_summary()

    def import_mosaic(self):
        from ...store.sources import import_mosaic
        from ..layers import mosaic_layer

        src, path = self.mosaic_edit.text(), self.store_path()
        if not src:
            raise NightwatchError("Choose a mosaic file or folder to import.")
        px = self.mosaic_pixel.value() or None

        def done(store):
            from .xrf_widget import remove_store_layers

            remove_store_layers(self.viewer, str(store.path), ("mosaic",))
            add_layer_data(self.viewer, mosaic_layer(store))
            self.refresh_summary()

        return self.start(lambda progress: import_mosaic(src, path, pixel_size_um=px, progress=progress), done,
                          "import mosaic")

    def import_xrf(self):
        from ...core.spectra import EnergyCalibration
        from ...store.sources import import_xrf
        from ..layers import xrf_total_layer

        src, path = self.xrf_edit.text(), self.store_path()
        if not src:
            raise NightwatchError("Choose an MA-XRF file to import.")
        px = self.xrf_pixel.value() or None
        calib = EnergyCalibration(self.xrf_offset.value(), self.xrf_gain.value()) if self.xrf_gain.value() > 0 else None

        def done(store):
            from .xrf_widget import remove_store_layers

            remove_store_layers(self.viewer, str(store.path), ("xrf_total", "element_map"))
            add_layer_data(self.viewer, xrf_total_layer(store))
            self.refresh_summary()

        return self.start(
            lambda progress: import_xrf(src, path, calibration=calib, pixel_size_um=px, progress=progress), done,
            "import MA-XRF")
