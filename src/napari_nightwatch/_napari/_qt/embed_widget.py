"""Embed panel: CLIP embeddings of the mosaic's tiles, with progress, Cancel and resume."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QComboBox, QLabel, QPushButton

from ...core.errors import NightwatchError
from .common import Panel, PathEdit, clip_engine, spin

MODEL_CHOICES = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "nightwatch-tiny")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


class EmbedWidget(Panel):
    """Model, tile grid, device and batch size; Run embeds every tile (a rerun resumes)."""

    section = "embed"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.model_combo = self.remember("model", QComboBox())
        self.model_combo.setEditable(True)
        self.model_combo.addItems(MODEL_CHOICES)
        self.pretrained_edit = self.remember("pretrained", PathEdit("laion2b_s34b_b79k | none | checkpoint file",
                                                                    filter="Checkpoints (*.bin *.pt *.safetensors)"))
        self.pretrained_edit.setText("laion2b_s34b_b79k")
        self.tile_spin = self.remember("tile", spin(8, 4096, 224))
        self.stride_spin = self.remember("stride", spin(0, 4096, 0))
        self.stride_spin.setSpecialValueText("= tile")
        self.level_spin = self.remember("level", spin(0, 12, 0))
        self.device_combo = self.remember("device", QComboBox())
        self.device_combo.addItems(DEVICE_CHOICES)
        self.batch_spin = self.remember("batch_size", spin(1, 4096, 64))
        self.index_check = self.remember("build_index", QCheckBox("build the search index afterwards"))
        self.index_check.setChecked(True)
        for label, w in (("Model", self.model_combo), ("Pretrained", self.pretrained_edit), ("Tile (px)", self.tile_spin),
                         ("Stride (px)", self.stride_spin), ("Pyramid level", self.level_spin),
                         ("Device", self.device_combo), ("Batch size", self.batch_spin), ("", self.index_check)):
            self.form.addRow(label, w)
        self.run_button = QPushButton("Run")
        self.layout_.addWidget(self.run_button)
        self.layout_.addWidget(self.runner)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        self.layout_.addWidget(self.result_label)
        self.layout_.addStretch(1)
        self.remember("store", self.store_edit)
        self.run_button.clicked.connect(self.guarded(self.run))
        self.last_result: dict | None = None
        #: tiles per resumable chunk (None: the library's default); for scripts and tests
        self.chunk_tiles: int | None = None
        self.restore()

    def engine(self, model: str, pretrained: str, device: str):
        """The CLIP engine (built once per session); called from the worker thread."""
        return clip_engine(model, pretrained, device)

    def run(self):
        """Embed the store's tiles (resuming finished chunks), then build the index."""
        from ...ml.embed import embed_store
        from ...store.tiles import make_grid

        path = self.store_path()
        self.open_store()  # a clear sentence now if the path is not a store
        model = self.model_combo.currentText().strip()
        pretrained = self.pretrained_edit.text() or "none"
        if not model:
            raise NightwatchError("Choose a model name (for example ViT-B-32).")
        device = self.device_combo.currentText()
        tile, level, batch = self.tile_spin.value(), self.level_spin.value(), self.batch_spin.value()
        stride = self.stride_spin.value() or None
        build = self.index_check.isChecked()

        def job(progress):
            from ...store import PaintingStore

            engine = self.engine(model, pretrained, device)
            store = PaintingStore.open(path, mode="r+")
            grid = make_grid(store, level=level, tile=tile, stride=stride)
            result = dict(embed_store(store, engine, grid, batch_size=batch, progress=progress,
                                      chunk_tiles=self.chunk_tiles))
            result.setdefault("grid_id", grid.grid_id)
            result.setdefault("model_id", engine.model_id)
            result["random_weights"] = bool(engine.random_weights)
            if build:
                from ...search.index import build_index

                result["index"] = build_index(store, grid.grid_id, engine.model_id, progress=progress)
            return result

        return self.start(job, self._show, "embed")

    def _show(self, result: dict) -> None:
        self.last_result = result
        parts = [f"grid {result.get('grid_id')}, model {result.get('model_id')}"]
        if "n_tiles" in result:
            parts.append(f"{result['n_tiles']} tiles, {result.get('tiles_processed', 0)} embedded now "
                         f"({result.get('chunks_skipped', 0)} chunks already done), {result.get('tiles_per_s', 0)} tiles/s")
        idx = result.get("index")
        if isinstance(idx, dict) and "index_type" in idx:
            parts.append(f"index {idx['index_type']}")
        if result.get("random_weights"):
            parts.append("RANDOM WEIGHTS: results are not a real search")
        self.result_label.setText("; ".join(str(p) for p in parts))
