"""Search panel: text, exemplar, spectrum and pigment queries, any of them filtered by composition;
results as layers and a navigable table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QCompleter,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

from ...core.errors import NightwatchError
from ...ml.encoders import query_encoders
from .. import layers as L
from .common import Panel, PathEdit, add_layer_data, canvas_size, fill_shapes_combo, spin

SOURCES = (
    "text",
    "Shapes rectangle",
    "current view",
    "image file",
    "XRF pixel",
    "XRF rectangle",
    "spectrum file",
    "pigment",
)

#: element maps the pigment door reads (see :data:`napari_nightwatch.search.composition.MAPS`)
MAPS = ("auto", "measured", "predicted")

#: how an XRF pixel or rectangle ranks tiles (see :data:`napari_nightwatch.search.composition.XRF_MATCH`)
XRF_MATCH = ("joint", "composition", "both")


@dataclass
class SearchRequest:
    """Everything a search needs, read from the panel on the main thread."""

    store: Path
    grid_id: str
    model_id: str
    source: str
    text: str = ""
    negative: str = ""
    box_level0: tuple[float, float, float, float] | None = None
    image_path: str = ""
    xrf_pixel: tuple[int, int] | None = None
    xrf_box: tuple[float, float, float, float] | None = None
    spectrum_path: str = ""
    k: int = 20
    pigment: str = ""
    where: str = ""
    maps: str = "auto"
    xrf_match: str = "joint"


@dataclass
class SearchResult:
    """What a search returns to the main thread: hits, heat map and labels."""

    label: str
    hits: list
    scores_map: np.ndarray
    grid: Any
    pixel_size_um: float
    random_weights: bool


def grid_of(store, grid_id: str):
    """The TileGrid stored for ``grid_id`` (with its keep-mask)."""
    from ...store.tiles import load_grid

    return load_grid(store, grid_id)


def to_query(req: SearchRequest):
    """The panel's request as the query every front end runs (:class:`~napari_nightwatch.search.run.Query`)."""
    from ...search.run import Query

    q = Query(grid_id=req.grid_id or None, model_id=req.model_id or None, k=req.k, with_map=True,
              negative=[req.negative] if req.negative and req.source != "pigment" else [],
              where=req.where or None, maps=req.maps)
    if req.source == "text":
        q.text = req.text
    elif req.source in ("Shapes rectangle", "current view"):
        q.region = tuple(float(v) for v in req.box_level0)
    elif req.source == "image file":
        q.image = req.image_path
    elif req.source == "XRF pixel":
        q.xrf_pixel = req.xrf_pixel
        q.xrf_match = req.xrf_match
    elif req.source == "XRF rectangle":
        q.xrf_region = tuple(int(round(v)) for v in req.xrf_box)
        q.xrf_match = req.xrf_match
    elif req.source == "pigment":
        q.pigment = req.pigment
    else:
        q.spectrum_file = req.spectrum_path
    return q


def query_label(req: SearchRequest) -> str:
    """Layer base name describing the query in the user's words."""
    return to_query(req).label()


def run_search(req: SearchRequest, encoders, progress=None, indexes: dict | None = None) -> SearchResult:
    """Run the panel's request through :func:`~napari_nightwatch.search.run.run_query` (worker thread)."""
    from ...search.run import run_query
    from ...store import PaintingStore

    store = PaintingStore.open(req.store)
    res = run_query([store], to_query(req), encoders, progress=progress, indexes=indexes)
    grid = grid_of(store, res.grid_id)
    return SearchResult(res.label, res.hits, np.asarray(res.similarity, np.float32), grid, store.mosaic_pixel_size_um,
                        res.random_weights)


class SearchWidget(Panel):
    """One panel for the three doors: words, exemplars and XRF spectra."""

    section = "search"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.remember("store", self.store_edit)
        self.embeddings_combo = QComboBox()
        self.refresh_button = QPushButton("Refresh")
        row = QHBoxLayout()
        row.addWidget(self.embeddings_combo, 1)
        row.addWidget(self.refresh_button)
        self.form.addRow("Grid / model", row)
        self.source_combo = self.remember("source", QComboBox())
        self.source_combo.addItems(SOURCES)
        self.form.addRow("Query from", self.source_combo)
        self.text_edit = self.remember("text", QLineEdit())
        self.text_edit.setPlaceholderText("e.g. craquelure, blue pigment particles")
        self.form.addRow("Text", self.text_edit)
        self.negative_edit = self.remember("negative", QLineEdit())
        self.negative_edit.setPlaceholderText("optional: not like this text")
        self.form.addRow("Not", self.negative_edit)
        self.shapes_combo = QComboBox()
        self.form.addRow("Shapes layer", self.shapes_combo)
        self.image_edit = self.remember("image", PathEdit("exemplar image file", filter="Images (*.png *.jpg *.jpeg *.tif *.tiff)"))
        self.form.addRow("Image", self.image_edit)
        self.xrf_y = spin(0, 1_000_000, 0)
        self.xrf_x = spin(0, 1_000_000, 0)
        self.pick_button = QPushButton("Pick on viewer")
        self.pick_button.setCheckable(True)
        prow = QHBoxLayout()
        prow.addWidget(self.xrf_y)
        prow.addWidget(self.xrf_x)
        prow.addWidget(self.pick_button)
        self.form.addRow("XRF pixel y, x", prow)
        self.spectrum_edit = self.remember("spectrum", PathEdit("spectrum file (.spx .mca .msa .spe .csv)"))
        self.form.addRow("Spectrum", self.spectrum_edit)
        self.pigment_edit = self.remember("pigment", QLineEdit())
        self.pigment_edit.setPlaceholderText("e.g. smalt, vermilion, loodwit, blanc de plomb")
        self.pigment_edit.setCompleter(self._pigment_completer())
        self.form.addRow("Pigment", self.pigment_edit)
        self.where_edit = self.remember("where", QLineEdit())
        self.where_edit.setPlaceholderText("optional, for any query: Hg-L > 0.5 and Pb-L < 0.3")
        self.form.addRow("Where", self.where_edit)
        self.maps_combo = self.remember("maps", QComboBox())
        self.maps_combo.addItems(MAPS)
        self.maps_combo.setToolTip("element maps for pigment and Where: measured where scanned, predicted elsewhere "
                                   "(auto), or only one kind")
        self.form.addRow("Element maps", self.maps_combo)
        self.xrf_match_combo = self.remember("xrf_match", QComboBox())
        self.xrf_match_combo.addItems(XRF_MATCH)
        self.xrf_match_combo.setToolTip("XRF pixel or rectangle: match through the joint embedding space, by the "
                                        "tiles' composition (Element maps) against the query's, or both rankings fused")
        self.form.addRow("XRF match", self.xrf_match_combo)
        self.k_spin = self.remember("k", spin(1, 1000, 20))
        self.form.addRow("k", self.k_spin)
        self.search_button = QPushButton("Search")
        self.layout_.addWidget(self.search_button)
        self.layout_.addWidget(self.runner)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["rank", "score", "y (um)", "x (um)", "maps"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.currentCellChanged.connect(lambda row, *_: self.go_to_hit(row))
        self.table.cellClicked.connect(lambda row, _c: self.go_to_hit(row))
        self.layout_.addWidget(self.table, 1)

        self.refresh_button.clicked.connect(self.guarded(self.refresh_embeddings))
        self.search_button.clicked.connect(self.guarded(self.search))
        self.pick_button.toggled.connect(self._toggle_pick)
        self.viewer.layers.events.inserted.connect(self._refresh_shapes)
        self.viewer.layers.events.removed.connect(self._refresh_shapes)
        self.store_edit.edit.editingFinished.connect(self.guarded(self.refresh_embeddings))
        self._indexes: dict = {}
        # the same encoders (and engine cache) as the CLI and the demo
        self.encoders = query_encoders()
        self.hits: list[dict] = []
        self.last_result: SearchResult | None = None
        self.last_layers: list = []
        self.restore()
        self._refresh_shapes()
        if self.store_edit.text():
            try:
                self.refresh_embeddings()
            except NightwatchError:
                pass

    # ------------------------------------------------------------------ inputs
    def _pigment_completer(self) -> QCompleter:
        """Completion over every pigment name and synonym (all languages), case-insensitive, anywhere in the name."""
        from ...xrf.pigments import pigment_names

        completer = QCompleter(pigment_names(include_synonyms=True), self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        return completer

    def _refresh_shapes(self, event=None) -> None:
        fill_shapes_combo(self.viewer, self.shapes_combo)

    def refresh_embeddings(self) -> None:
        """List the store's grid/model pairs that can be searched."""
        self._indexes.clear()  # a re-embedded grid gets a new index
        self.fill_embeddings_combo(self.embeddings_combo)

    def _toggle_pick(self, on: bool) -> None:
        cb = self._on_click
        if on and cb not in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.append(cb)
        elif not on and cb in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(cb)

    def _on_click(self, viewer, event) -> None:
        self.pick_xrf_pixel(event.position)

    def pick_xrf_pixel(self, position_um) -> tuple[int, int]:
        """Set the XRF pixel from a point in micrometres (a click on the viewer)."""
        store = self.open_store()
        y, x = L.um_to_xrf_pixel(position_um, store.xrf_affine, store.mosaic_pixel_size_um)
        self.xrf_y.setValue(max(0, y))
        self.xrf_x.setValue(max(0, x))
        self.source_combo.setCurrentText("XRF pixel")
        return y, x

    def _rectangle_um(self) -> np.ndarray:
        name = self.shapes_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise NightwatchError("Draw a rectangle in a Shapes layer and choose that layer for the exemplar.")
        layer = self.viewer.layers[name]
        if not len(layer.data):
            raise NightwatchError(f"The Shapes layer '{name}' has no shapes; draw a rectangle on the painting.")
        sel = sorted(layer.selected_data)
        idx = sel[-1] if sel else len(layer.data) - 1
        return np.array([layer.data_to_world(p) for p in np.asarray(layer.data[idx])])

    def view_box_um(self) -> np.ndarray:
        """Corners (4, 2) in micrometres of what the canvas shows now."""
        cy, cx = self.viewer.camera.center[-2:]
        h, w = canvas_size(self.viewer)
        zoom = self.viewer.camera.zoom
        hh, hw = h / zoom / 2, w / zoom / 2
        return np.array([[cy - hh, cx - hw], [cy - hh, cx + hw], [cy + hh, cx + hw], [cy + hh, cx - hw]])

    def request(self) -> SearchRequest:
        """Read the panel's inputs (main thread) into a :class:`SearchRequest`."""
        store = self.open_store()
        src = self.source_combo.currentText()
        if src == "pigment" and not self.embeddings_combo.currentText():
            grid_id, model_id = "", ""  # the pigment door needs a tile grid, not embeddings
        else:
            grid_id, model_id = self.chosen_embeddings(store, self.embeddings_combo)
        req = SearchRequest(store.path, grid_id, model_id, src, negative=self.negative_edit.text().strip(),
                            k=self.k_spin.value(), where=self.where_edit.text().strip(),
                            maps=self.maps_combo.currentText(), xrf_match=self.xrf_match_combo.currentText())
        p = store.mosaic_pixel_size_um
        if src == "text":
            req.text = self.text_edit.text().strip()
            if not req.text:
                raise NightwatchError("Type what to look for in the Text box (for example 'craquelure').")
        elif src == "Shapes rectangle":
            req.box_level0 = L.um_rect_to_level0_box(self._rectangle_um(), p)
        elif src == "current view":
            h, w = store.mosaic_shape
            y0, x0, y1, x1 = L.um_rect_to_level0_box(self.view_box_um(), p)
            req.box_level0 = (max(0.0, y0), max(0.0, x0), min(float(h), y1), min(float(w), x1))
        elif src == "image file":
            req.image_path = self.image_edit.text()
            if not req.image_path:
                raise NightwatchError("Choose an exemplar image file.")
        elif src == "XRF pixel":
            req.xrf_pixel = (self.xrf_y.value(), self.xrf_x.value())
        elif src == "XRF rectangle":
            box = L.um_rect_to_xrf_box(self._rectangle_um(), store.xrf_affine, p)
            # whole pixels: those whose centres lie inside the rectangle, [y0, y1) x [x0, x1)
            req.xrf_box = tuple(int(np.ceil(v)) for v in box)
        elif src == "pigment":
            req.pigment = self.pigment_edit.text().strip()
            if not req.pigment:
                raise NightwatchError("Type a pigment in the Pigment box (for example 'smalt').")
        else:
            req.spectrum_path = self.spectrum_edit.text()
            if not req.spectrum_path:
                raise NightwatchError("Choose a spectrum file (.spx, .mca, .msa, .spe or two-column .csv).")
        return req

    # ------------------------------------------------------------------ running
    def search(self):
        req = self.request()
        return self.start(lambda progress: run_search(req, self.encoders, progress, self._indexes), self.show_result,
                          "search")

    def show_result(self, res: SearchResult) -> None:
        """Add the hits, their boxes and the similarity map as new layers; fill the table."""
        suffix = " (random weights)" if res.random_weights else ""
        name = res.label + suffix
        boxes = np.array([list(_get(h, "box")) for h in res.hits], float).reshape(-1, 4)
        scores = np.array([float(_get(h, "score")) for h in res.hits])
        tiles = np.array([int(_get(h, "tile")) for h in res.hits], dtype=np.int64)
        new = []
        heat = "pigment score" if res.label.startswith(("pigment", "where")) else "similarity"
        new.append(add_layer_data(self.viewer, L.similarity_map_layer(res.scores_map, res.grid, res.pixel_size_um,
                                                                      f"{heat}: {name}")))
        for ld in L.hit_layers(boxes, scores, res.label, res.pixel_size_um, name=name, tiles=tiles):
            new.append(add_layer_data(self.viewer, ld))
        self.last_result = res
        self.last_layers = new
        self.hits = [{"rank": i + 1, "score": float(scores[i]), "box": boxes[i],
                      "center_um": L.box_level0_center_um(boxes[i], res.pixel_size_um),
                      "source": str(_get(res.hits[i], "source") or "")} for i in range(len(boxes))]
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.hits))
        for r, h in enumerate(self.hits):
            for c, v in enumerate((str(h["rank"]), f"{h['score']:.4f}", f"{h['center_um'][0]:.1f}",
                                   f"{h['center_um'][1]:.1f}", h["source"])):
                item = QTableWidgetItem(v)
                item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(r, c, item)
        self.table.blockSignals(False)

    def go_to_hit(self, row: int) -> None:
        """Centre the camera on hit ``row`` and zoom so that its tile fills about a third of the view."""
        if not (0 <= row < len(self.hits)):
            return
        h = self.hits[row]
        tile_um = float(h["box"][2] - h["box"][0]) * self.last_result.pixel_size_um
        self.viewer.camera.center = tuple(float(v) for v in h["center_um"])
        ch, cw = canvas_size(self.viewer)
        self.viewer.camera.zoom = max(min(ch, cw) / (3.0 * tile_um), 1e-6)
        if self.last_layers:
            pts = self.last_layers[1]
            pts.selected_data = {row}


def _get(hit, key: str):
    """A field of a hit, whether a :class:`Hit` or its JSON (which leaves out empty pigment-door fields)."""
    return hit.get(key) if isinstance(hit, dict) else getattr(hit, key, None)
