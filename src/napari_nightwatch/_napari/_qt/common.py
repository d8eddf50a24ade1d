"""Shared pieces of the panels: store picker, remembered settings, adding layer data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...core.errors import NightwatchError
from ..settings import load_settings, save_settings
from .jobs import JobRunner, notify_error


def clip_engine(model: str, pretrained: str, device: str = "auto"):
    """A CLIP engine shared by the panels, the CLI and dask workers (:func:`~napari_nightwatch.ml.clip.cached_engine`).

    Building ViT-B-32 takes seconds and hundreds of MB; the Embed and Search panels
    ask for the same one, so it is built once per (model, pretrained, device).
    """
    from ...ml.clip import cached_engine

    return cached_engine({"model": str(model), "pretrained": str(pretrained), "device": str(device)})


def add_layer_data(viewer, layer_data: tuple) -> Any:
    """Add one ``(data, kwargs, layer_type)`` tuple to ``viewer`` and return the layer."""
    from napari.layers import Layer

    layer = Layer.create(*layer_data)
    viewer.add_layer(layer)
    return layer


def canvas_size(viewer) -> tuple[float, float]:
    """(height, width) of the canvas in screen pixels (napari >= 0.9: ``viewer.canvas.size``)."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    if size is None:  # older napari
        size = getattr(viewer, "_canvas_size", (600, 800))
    return float(size[0]), float(size[1])


def show_scale_bar(viewer) -> None:
    """Show napari's scale bar; it reads micrometres from the layers' units."""
    canvas = getattr(viewer, "canvas", None)
    bar = canvas.overlays.scale_bar if canvas is not None and hasattr(canvas, "overlays") else viewer.scale_bar
    bar.visible = True


def stores_in_viewer(viewer) -> list[str]:
    """Paths of the painting stores whose layers are in the viewer, most recently added first."""
    seen: list[str] = []
    for layer in reversed(list(viewer.layers)):
        p = (layer.metadata or {}).get("nightwatch_store")
        if p and p not in seen:
            seen.append(p)
    return seen


class PathEdit(QWidget):
    """A line edit with a Browse button (file or folder)."""

    def __init__(self, placeholder: str = "", folder: bool = False, filter: str = "", save: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self._folder, self._filter, self._save = folder, filter, save
        btn = QPushButton("Browse")
        btn.clicked.connect(self._browse)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit, 1)
        lay.addWidget(btn)

    def _browse(self) -> None:
        if self._folder:
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", self.text())
        elif self._save:
            path, _ = QFileDialog.getSaveFileName(self, "Save as", self.text(), self._filter)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Choose a file", self.text(), self._filter)
        if path:
            self.edit.setText(path)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:  # noqa: N802 (Qt name)
        self.edit.setText(text)


class Panel(QWidget):
    """Base of the dock panels: a painting store field, a job runner and remembered settings.

    Subclasses register their input widgets with :meth:`remember` so their values are
    saved after each run and restored when the panel opens again.
    """

    section = "panel"

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from .._compat import avoid_llvm_clash

        avoid_llvm_clash()
        self.viewer = napari_viewer
        self.layout_ = QVBoxLayout(self)
        self.form = QFormLayout()
        self.store_edit = PathEdit("PAINTING.nightwatch.zarr", folder=True)
        self.form.addRow("Painting store", self.store_edit)
        self.layout_.addLayout(self.form)
        self.runner = JobRunner(self)
        self._remembered: dict[str, QWidget] = {}
        self.viewer.layers.events.inserted.connect(self._guess_store)
        self._guess_store()

    # ------------------------------------------------------------------ store
    def _guess_store(self, event=None) -> None:
        if not self.store_edit.text():
            found = stores_in_viewer(self.viewer)
            if found:
                self.store_edit.setText(found[0])

    def store_path(self) -> Path:
        """The chosen store path; a clear error when none is given."""
        text = self.store_edit.text()
        if not text:
            raise NightwatchError("Choose a painting store (a .nightwatch.zarr folder) first.")
        return Path(text)

    def open_store(self, mode: str = "r"):
        from ...store import PaintingStore

        return PaintingStore.open(self.store_path(), mode=mode)

    # ------------------------------------------------------------------ settings
    def remember(self, key: str, widget: QWidget) -> QWidget:
        self._remembered[key] = widget
        return widget

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, w in self._remembered.items():
            if isinstance(w, (QSpinBox, QDoubleSpinBox)):
                out[k] = w.value()
            elif isinstance(w, QCheckBox):
                out[k] = w.isChecked()
            elif isinstance(w, QComboBox):
                out[k] = w.currentText()
            elif isinstance(w, (QLineEdit, PathEdit)):
                out[k] = w.text()
        return out

    def save(self) -> None:
        save_settings(self.section, self.settings())

    def restore(self) -> None:
        vals = load_settings(self.section)
        for k, v in vals.items():
            w = self._remembered.get(k)
            try:
                if isinstance(w, QSpinBox):
                    w.setValue(int(v))
                elif isinstance(w, QDoubleSpinBox):
                    w.setValue(float(v))
                elif isinstance(w, QCheckBox):
                    w.setChecked(bool(v))
                elif isinstance(w, QComboBox):
                    if w.isEditable() or w.findText(str(v)) >= 0:
                        w.setCurrentText(str(v))
                elif isinstance(w, (QLineEdit, PathEdit)):
                    w.setText(str(v))
            except (TypeError, ValueError):  # a stale or hand-edited value: keep the default
                continue
        # the painting open in the viewer beats the remembered one
        found = stores_in_viewer(self.viewer)
        if found:
            self.store_edit.setText(found[0])

    # ------------------------------------------------------------------ shared inputs
    def fill_embeddings_combo(self, combo) -> None:
        """List the store's searchable ``grid / model`` pairs in ``combo``, keeping the current choice."""
        from ...store.embeddings import list_embeddings

        store = self.open_store()
        current = combo.currentText()
        combo.clear()
        for gid, models in list_embeddings(store).items():
            for mid in models:
                combo.addItem(f"{gid} / {mid}")
        if current and combo.findText(current) >= 0:
            combo.setCurrentText(current)

    def chosen_embeddings(self, store, combo) -> tuple[str, str]:
        """The (grid_id, model_id) picked in ``combo``; a sentence when the store has none."""
        if not combo.count():
            self.fill_embeddings_combo(combo)
        choice = combo.currentText()
        if not choice:
            raise NightwatchError(f"{store.path} has no tile embeddings yet; run the Embed panel first.")
        grid_id, model_id = (part.strip() for part in choice.split("/", 1))
        return grid_id, model_id

    # ------------------------------------------------------------------ running
    def start(self, func, on_result=None, label: str = ""):
        """Save settings, then run ``func(progress)`` in a worker; input errors become notifications."""
        self.save()
        try:
            return self.runner.run(func, on_result, label)
        except NightwatchError as exc:
            notify_error(str(exc))
            return None

    def guarded(self, fn):
        """Wrap a button handler so a NightwatchError becomes a notification, not a traceback."""

        def call(*_args):
            try:
                return fn()
            except NightwatchError as exc:
                self.runner.last_message = str(exc)
                notify_error(str(exc))
                return None

        return call


def fill_shapes_combo(viewer, combo) -> None:
    """List the viewer's Shapes layers (not our own hit boxes) in ``combo``, keeping the current choice."""
    from napari.layers import Shapes

    current = combo.currentText()
    combo.clear()
    names = [ly.name for ly in viewer.layers if isinstance(ly, Shapes) and not ly.name.startswith("hit boxes")]
    combo.addItems(names)
    if current in names:
        combo.setCurrentText(current)


def spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setValue(value)
    s.setSingleStep(step)
    return s


def dspin(lo: float, hi: float, value: float, decimals: int = 4, step: float = 0.1) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setDecimals(decimals)
    s.setRange(lo, hi)
    s.setValue(value)
    s.setSingleStep(step)
    return s
