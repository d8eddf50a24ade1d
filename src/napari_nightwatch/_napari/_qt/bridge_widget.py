"""Bridge panel: register the XRF onto the mosaic, train the spectrum encoder, predict element maps."""

from __future__ import annotations

import re

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ...core.errors import NightwatchError
from .. import layers as L
from .common import Panel, add_layer_data, spin
from .plot import LinePlot

_LOSS = re.compile(r"loss=([-+0-9.eE]+)")
_VAL = re.compile(r"val_similarity@10=([-+0-9.eE]+)")


def control_points(xrf_layer, mosaic_layer, store) -> tuple[np.ndarray, np.ndarray]:
    """Paired control points from two Points layers: XRF pixels and level-0 mosaic pixels.

    Points are paired in the order they were placed. The XRF points are read in
    micrometres and mapped back through the store's current XRF affine, so they can be
    clicked on any XRF layer (total counts or an element map).
    """
    xw = np.array([xrf_layer.data_to_world(p) for p in np.asarray(xrf_layer.data)]).reshape(-1, 2)
    mw = np.array([mosaic_layer.data_to_world(p) for p in np.asarray(mosaic_layer.data)]).reshape(-1, 2)
    if len(xw) != len(mw):
        raise NightwatchError(
            f"The Points layers '{xrf_layer.name}' ({len(xw)} points) and '{mosaic_layer.name}' ({len(mw)} points) "
            "must hold the same number of points, placed in the same order.")
    xrf_px = L.um_to_xrf_coords(xw, store.xrf_affine, store.mosaic_pixel_size_um)
    mosaic_px = L.um_to_level0(mw, store.mosaic_pixel_size_um)
    return xrf_px, mosaic_px


def place_xrf_layers(viewer, store) -> int:
    """Move the store's XRF-grid layers (total counts, element maps) to its current affine."""
    placement = L.xrf_placement(store.xrf_affine, store.mosaic_pixel_size_um)
    n = 0
    for layer in viewer.layers:
        md = layer.metadata or {}
        if md.get("nightwatch_store") == str(store.path) and md.get("nightwatch_kind") in ("xrf_total", "element_map"):
            if "affine" in placement:
                layer.scale, layer.translate = (1.0, 1.0), (0.0, 0.0)
                layer.affine = placement["affine"]
            else:
                layer.affine = np.eye(3)
                layer.scale, layer.translate = placement["scale"], placement["translate"]
            n += 1
    return n


class BridgeWidget(Panel):
    """Registration, spectrum-encoder training with a live loss curve, and predicted element maps."""

    section = "bridge"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.remember("store", self.store_edit)
        # ---- registration
        reg = QGroupBox("Register XRF onto the mosaic")
        rl = QVBoxLayout(reg)
        self.xrf_points_combo = QComboBox()
        self.mosaic_points_combo = QComboBox()
        self.kind_combo = self.remember("kind", QComboBox())
        self.kind_combo.addItems(["affine", "similarity"])
        self.auto_check = self.remember("auto_refine", QCheckBox("auto-refine by image agreement"))
        self.register_button = QPushButton("Register")
        self.registration_label = QLabel("")
        self.registration_label.setWordWrap(True)
        for label, w in (("XRF points", self.xrf_points_combo), ("mosaic points", self.mosaic_points_combo),
                         ("transform", self.kind_combo)):
            row = QHBoxLayout()
            row.addWidget(QLabel(label))
            row.addWidget(w, 1)
            rl.addLayout(row)
        rl.addWidget(self.auto_check)
        rl.addWidget(self.register_button)
        rl.addWidget(self.registration_label)
        self.layout_.addWidget(reg)
        # ---- training
        tr = QGroupBox("Train the spectrum encoder")
        tl = QVBoxLayout(tr)
        self.embeddings_combo = QComboBox()
        self.epochs_spin = self.remember("epochs", spin(1, 100_000, 200))
        self.region_combo = QComboBox()
        row = QHBoxLayout()
        row.addWidget(QLabel("grid / model"))
        row.addWidget(self.embeddings_combo, 1)
        tl.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("epochs"))
        row.addWidget(self.epochs_spin)
        row.addWidget(QLabel("train only inside"))
        row.addWidget(self.region_combo, 1)
        tl.addLayout(row)
        self.train_button = QPushButton("Train")
        tl.addWidget(self.train_button)
        self.loss_plot = LinePlot(x_label="epoch")
        self.loss_plot.setMinimumHeight(110)
        tl.addWidget(self.loss_plot)
        self.layout_.addWidget(tr)
        # ---- prediction
        pr = QGroupBox("Predict element maps from the photograph")
        pl = QVBoxLayout(pr)
        self.predict_button = QPushButton("Predict")
        pl.addWidget(self.predict_button)
        self.metrics_table = QTableWidget(0, len(METRIC_COLUMNS))
        self.metrics_table.setHorizontalHeaderLabels([c[0] for c in METRIC_COLUMNS])
        self.metrics_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        pl.addWidget(self.metrics_table)
        row = QHBoxLayout()
        self.uncertainty_check = QCheckBox("show uncertainty")
        self.evidence_check = QCheckBox("show no-evidence mask")
        self.scan_next_check = QCheckBox("show where to scan next")
        row.addWidget(self.uncertainty_check)
        row.addWidget(self.evidence_check)
        row.addWidget(self.scan_next_check)
        pl.addLayout(row)
        self.layout_.addWidget(pr)
        self.layout_.addWidget(self.runner)

        self.register_button.clicked.connect(self.guarded(self.register))
        self.train_button.clicked.connect(self.guarded(self.train))
        self.predict_button.clicked.connect(self.guarded(self.predict))
        self.uncertainty_check.toggled.connect(self.guarded(lambda: self._toggle_part("uncertainty")))
        self.evidence_check.toggled.connect(self.guarded(lambda: self._toggle_part("no_evidence")))
        self.scan_next_check.toggled.connect(self.guarded(self._toggle_scan_next))
        self.runner._progressed.connect(self._on_progress)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.store_edit.edit.editingFinished.connect(self.guarded(self.refresh_embeddings))
        self.losses: list[float] = []
        self.val_scores: list[float] = []
        self.last_registration: dict | None = None
        self.last_training: dict | None = None
        self.last_prediction: dict | None = None
        self.prediction_layers: list = []
        self.restore()
        self._refresh_layers()

    # ------------------------------------------------------------------ inputs
    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Points, Shapes

        def fill(combo, names, none=None):
            cur = combo.currentText()
            combo.clear()
            if none:
                combo.addItem(none)
            combo.addItems(names)
            if cur and combo.findText(cur) >= 0:
                combo.setCurrentText(cur)

        points = [ly.name for ly in self.viewer.layers if isinstance(ly, Points) and not ly.name.startswith("hits:")]
        fill(self.xrf_points_combo, points)
        fill(self.mosaic_points_combo, points)
        shapes = [ly.name for ly in self.viewer.layers if isinstance(ly, Shapes) and not ly.name.startswith("hit boxes")]
        fill(self.region_combo, shapes, none="(whole painting, split by blocks)")

    def refresh_embeddings(self) -> None:
        self.fill_embeddings_combo(self.embeddings_combo)

    # ------------------------------------------------------------------ registration
    def register(self):
        """Fit the XRF->mosaic affine from the two Points layers (and/or refine it automatically)."""
        from ...xrf.registration import register_store

        store = self.open_store()
        auto = self.auto_check.isChecked()
        xname, mname = self.xrf_points_combo.currentText(), self.mosaic_points_combo.currentText()
        points = None
        if xname and mname and xname != mname:
            points = control_points(self.viewer.layers[xname], self.viewer.layers[mname], store)
        elif not auto:
            raise NightwatchError("Choose two different Points layers (XRF and mosaic control points) or tick auto-refine.")
        kind, path = self.kind_combo.currentText(), store.path

        def job(progress):
            from ...store import PaintingStore

            return register_store(PaintingStore.open(path, mode="r+"), points=points, auto=auto, kind=kind,
                                  progress=progress)

        def done(result):
            self.last_registration = result.to_dict()
            moved = place_xrf_layers(self.viewer, self.open_store())
            d = self.last_registration
            text = f"{d['method']} ({d['kind']})"
            if d.get("residual_rms_um") is not None:
                text += f": residual RMS {d['residual_rms_um']:.2f} um, max {d['residual_max_um']:.2f} um"
            if d.get("score") is not None:
                text += f"; agreement {d.get('score_before') or 0:.3f} -> {d['score']:.3f}"
            self.registration_label.setText(text + f"; {moved} layers moved")

        return self.start(job, done, "register")

    # ------------------------------------------------------------------ training
    def _on_progress(self, done: int, total: int, stage: str) -> None:
        m = _LOSS.search(stage)
        if not m:
            return
        self.losses.append(float(m.group(1)))
        v = _VAL.search(stage)
        if v:
            self.val_scores.append(float(v.group(1)))
        self.loss_plot.title = f"training loss {self.losses[-1]:.4f}" + (
            f", val similarity@10 {self.val_scores[-1]:.3f}" if self.val_scores else "")
        self.loss_plot.set_curve("loss", np.arange(1, len(self.losses) + 1), self.losses, (240, 180, 60))

    def train_region(self) -> tuple[float, float, float, float] | None:
        name = self.region_combo.currentText()
        if not name or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        if not len(layer.data):
            raise NightwatchError(f"The Shapes layer '{name}' has no rectangle to train inside.")
        corners = np.array([layer.data_to_world(p) for p in np.asarray(layer.data[-1])])
        return L.um_rect_to_level0_box(corners, self.open_store().mosaic_pixel_size_um)

    def train(self):
        """Train the spectrum encoder and inverse head in a worker, drawing the loss as it falls."""
        from ...ml.bridge import train_xrf_bridge

        store = self.open_store()
        grid_id, model_id = self.chosen_embeddings(store, self.embeddings_combo)
        epochs, region, path = self.epochs_spin.value(), self.train_region(), store.path
        self.losses.clear()
        self.val_scores.clear()
        self.loss_plot.clear()

        def job(progress):
            from ...store import PaintingStore

            return train_xrf_bridge(PaintingStore.open(path, mode="r+"), grid_id=grid_id, image_model_id=model_id,
                                    epochs=epochs, train_region=region, progress=progress)

        def done(result):
            self.last_training = result

        return self.start(job, done, "train spectrum encoder")

    # ------------------------------------------------------------------ prediction
    def predict(self):
        """Predict element maps for every tile; show them beside the measured maps with held-out r and SSIM."""
        from ...ml.bridge import predict_xrf_maps

        store = self.open_store()
        encoder_id = (self.last_training or {}).get("encoder_id")
        path = store.path

        def job(progress):
            from ...store import PaintingStore

            return predict_xrf_maps(PaintingStore.open(path, mode="r+"), encoder_id=encoder_id, progress=progress)

        return self.start(job, self.show_prediction, "predict element maps")

    def show_prediction(self, result: dict) -> None:
        """Add ``predicted <el>`` layers (replacing those of an earlier run) and the held-out figures."""
        store = self.open_store()
        name = result["name"]
        for layer in list(self.viewer.layers):
            if (layer.metadata or {}).get("prediction") == name:
                self.viewer.layers.remove(layer)
        model_id = store.node_attrs(f"predicted/{name}").get("image_model_id", "")
        sig = store.node_attrs(f"grids/{result['grid_id']}/embeddings/{model_id}").get("signature", {})
        self._suffix = " (random weights)" if str(sig.get("pretrained", "")).lower() == "none" else ""
        self._prediction = name
        self.prediction_layers = [add_layer_data(self.viewer, ld)
                                  for ld in L.store_predicted_layers(store, name, self._suffix)]
        for part, check in (("uncertainty", self.uncertainty_check), ("no_evidence", self.evidence_check)):
            if check.isChecked():
                self._toggle_part(part)
        if self.scan_next_check.isChecked():
            self._toggle_scan_next()
        self.last_prediction = result
        val = result.get("validation") or {}
        self.metrics_table.setRowCount(len(val))
        for r, (el, v) in enumerate(val.items()):
            for c, (_, cell) in enumerate(METRIC_COLUMNS):
                self.metrics_table.setItem(r, c, QTableWidgetItem(cell(el, v)))

    def scan_next_layer(self):
        """The "scan here next" Image layer of the shown prediction (added on first use)."""
        from ...ml.bridge import scan_next_map

        have = [ly for ly in self.prediction_layers
                if ly.metadata.get("nightwatch_kind") == "scan_next" and ly in self.viewer.layers]
        if have:
            return have[0]
        store = self.open_store()
        score, info = scan_next_map(store, self._prediction)
        from ...core.tiling import TileGrid

        grid = TileGrid.from_attrs(store.node_attrs(f"predicted/{self._prediction}")["grid"])
        ld = L.tile_value_layer(np.nan_to_num(score, nan=0.0), grid, store.mosaic_pixel_size_um,
                                f"scan here next{self._suffix}", colormap="inferno")
        ld[1]["metadata"].update({"nightwatch_kind": "scan_next", "nightwatch_store": str(store.path),
                                  "prediction": self._prediction})
        layer = add_layer_data(self.viewer, ld)
        self.prediction_layers.append(layer)
        return layer

    def _toggle_scan_next(self) -> None:
        if not getattr(self, "_prediction", None):
            return
        on = self.scan_next_check.isChecked()
        if on:
            self.scan_next_layer().visible = True
        else:
            for ly in self.prediction_layers:
                if ly.metadata.get("nightwatch_kind") == "scan_next" and ly in self.viewer.layers:
                    ly.visible = False

    def _toggle_part(self, part: str) -> None:
        """Show or hide the uncertainty / no-evidence layers, building them on first use."""
        kind = {"uncertainty": "prediction_uncertainty", "no_evidence": "prediction_no_evidence"}[part]
        on = (self.uncertainty_check if part == "uncertainty" else self.evidence_check).isChecked()
        if not getattr(self, "_prediction", None):
            return
        have = [ly for ly in self.prediction_layers if ly.metadata.get("nightwatch_kind") == kind and ly in self.viewer.layers]
        if on and not have:
            store = self.open_store()
            have = [add_layer_data(self.viewer, ld)
                    for ld in L.store_predicted_layers(store, self._prediction, self._suffix, parts=(part,))]
            self.prediction_layers.extend(have)
        for layer in have:
            layer.visible = on


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{float(v):.3f}"


#: columns of the held-out figures: the kept method beside the best baseline, and the
#: evidence that follows from the same held-out r
METRIC_COLUMNS = (
    ("element", lambda el, v: el),
    ("kept method", lambda el, v: str(v.get("method", ""))),
    ("held-out r", lambda el, v: _fmt(v.get("r"))),
    ("SSIM", lambda el, v: _fmt(v.get("ssim"))),
    ("best baseline", lambda el, v: str(v.get("baseline", ""))),
    ("baseline r", lambda el, v: _fmt(v.get("r_baseline"))),
    ("baseline SSIM", lambda el, v: _fmt(v.get("ssim_baseline"))),
    ("skill (r)", lambda el, v: _fmt(v.get("skill"))),
    ("evidence", lambda el, v: "yes" if v.get("evidence") else "no"),
)
