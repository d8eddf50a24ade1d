"""XRF panel: element maps (auto or chosen) as layers, and a spectrum viewer with element lines."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QLineEdit, QPushButton

from ...core.errors import NightwatchError
from .. import layers as L
from .common import Panel, PathEdit, add_layer_data, fill_shapes_combo
from .plot import LinePlot


def remove_store_layers(viewer, store_path: str, kinds: tuple[str, ...]) -> None:
    """Remove the layers of one store whose ``nightwatch_kind`` is in ``kinds`` (before re-adding them)."""
    for layer in list(viewer.layers):
        md = layer.metadata or {}
        if md.get("nightwatch_store") == store_path and md.get("nightwatch_kind") in kinds:
            viewer.layers.remove(layer)


class XrfWidget(Panel):
    """Fit element maps and read spectra under the cursor or in a rectangle."""

    section = "xrf"

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        self.remember("store", self.store_edit)
        self.elements_edit = self.remember("elements", QLineEdit("auto"))
        self.elements_edit.setToolTip("auto, or element families such as Pb-L,Hg-L,Fe-K")
        self.form.addRow("Elements", self.elements_edit)
        self.include_edit = self.remember("include", QLineEdit(""))
        self.include_edit.setToolTip("families always fitted, e.g. Pb-L,As-K")
        self.form.addRow("Include", self.include_edit)
        self.exclude_edit = self.remember("exclude", QLineEdit(""))
        self.exclude_edit.setToolTip("families or elements never proposed, e.g. Ar,Rh-L")
        self.form.addRow("Exclude", self.exclude_edit)
        row = QHBoxLayout()
        self.fit_button = QPushButton("Fit element maps")
        self.show_button = QPushButton("Show maps")
        row.addWidget(self.fit_button)
        row.addWidget(self.show_button)
        self.layout_.addLayout(row)
        self.layout_.addWidget(self.runner)
        self.calibration_label = QLabel("")
        self.calibration_label.setWordWrap(True)
        self.layout_.addWidget(self.calibration_label)
        srow = QHBoxLayout()
        self.follow_check = self.remember("follow_cursor", QCheckBox("spectrum under the cursor"))
        self.shapes_combo = QComboBox()
        self.region_button = QPushButton("Spectrum of rectangle")
        srow.addWidget(self.follow_check)
        srow.addWidget(self.shapes_combo, 1)
        srow.addWidget(self.region_button)
        self.layout_.addLayout(srow)
        self.log_check = self.remember("log_counts", QCheckBox("log counts"))
        self.log_check.setChecked(True)
        self.layout_.addWidget(self.log_check)
        self.plot = LinePlot(x_label="energy (keV)", log_y=True)
        self.layout_.addWidget(self.plot, 1)
        # one spectrum file (.spx, .mca, .msa, .spe, .hspy): identified and fitted on its own
        self.spectrum_file_edit = self.remember("spectrum_file", PathEdit("SPECTRUM.spx / .mca / .msa / .spe"))
        self.pymca_config_edit = self.remember("pymca_config", PathEdit("optional PyMca .cfg", filter="*.cfg"))
        frow = QHBoxLayout()
        frow.addWidget(QLabel("Spectrum file"))
        frow.addWidget(self.spectrum_file_edit, 1)
        self.layout_.addLayout(frow)
        crow = QHBoxLayout()
        crow.addWidget(QLabel("PyMca config"))
        crow.addWidget(self.pymca_config_edit, 1)
        self.file_button = QPushButton("Fit spectrum file")
        crow.addWidget(self.file_button)
        self.layout_.addLayout(crow)
        self.file_table = QLabel("")
        self.file_table.setWordWrap(True)
        self.layout_.addWidget(self.file_table)
        self.file_fit = None

        self.fit_button.clicked.connect(self.guarded(self.fit))
        self.show_button.clicked.connect(self.guarded(self.show_maps))
        self.region_button.clicked.connect(self.guarded(self.region_spectrum))
        self.file_button.clicked.connect(self.guarded(self.fit_spectrum_file))
        self.follow_check.toggled.connect(self._toggle_follow)
        self.log_check.toggled.connect(self._set_log)
        self.viewer.layers.events.inserted.connect(self._refresh_shapes)
        self.viewer.layers.events.removed.connect(self._refresh_shapes)
        self._store = None
        self._last_pixel: tuple[int, int] | None = None
        self.families: list[str] = []
        self.last_spectrum: np.ndarray | None = None
        self.restore()
        self._refresh_shapes()

    # ------------------------------------------------------------------ store
    def store(self):
        """The store, opened read-only once per path (spectra are read on every cursor move)."""
        path = str(self.store_path())
        if self._store is None or str(self._store.path) != path:
            self._store = self.open_store()
            self._show_calibration()
        return self._store

    def _show_calibration(self) -> None:
        s = self._store
        c = s.xrf_calibration
        text = f"calibration: E = {c.offset_kev:.4f} keV + {c.gain_kev * 1000:.3f} eV x channel"
        if c.quadratic_kev:
            text += f" + {c.quadratic_kev:.3g} keV x channel^2"
        if s.has("xrf_maps") and s.is_complete("xrf_maps"):
            info = s.node_attrs("xrf_maps")
            used = info.get("calibration")
            if isinstance(used, dict) and "gain_kev" in used:
                text += (f"\nused for the maps: {used['offset_kev']:.4f} keV + {used['gain_kev'] * 1000:.3f} eV x channel")
            resid = info.get("calibration_residual_ev")
            if resid is not None:
                text += f" (residual {float(resid):.1f} eV)"
            self.families = list(info.get("elements", []))
        self.calibration_label.setText(text)

    def _refresh_shapes(self, event=None) -> None:
        fill_shapes_combo(self.viewer, self.shapes_combo)

    # ------------------------------------------------------------------ element maps
    def elements(self) -> str | list[str]:
        text = self.elements_edit.text().strip()
        if not text or text.lower() == "auto":
            return "auto"
        return [t.strip() for t in text.split(",") if t.strip()]

    def fit(self):
        """Fit element maps in a worker, then show one layer per family."""
        from ...xrf.maps import fit_store

        path = self.store_path()
        self.open_store()
        elements = self.elements()
        include, exclude = self.names(self.include_edit), self.names(self.exclude_edit)

        def job(progress):
            from ...store import PaintingStore

            store = PaintingStore.open(path, mode="r+")
            summary = fit_store(store, elements, include=include, exclude=exclude, progress=progress)
            return summary

        def done(summary):
            self._store = None
            self.show_maps()
            self.fit_summary = summary

        return self.start(job, done, "element maps")

    @staticmethod
    def names(edit) -> list[str]:
        """Comma-separated family or element names of a line edit."""
        return [t.strip() for t in edit.text().split(",") if t.strip()]

    def fit_spectrum_file(self):
        """Identify and fit one spectrum file in a worker; show spectrum, fit, lines and the table."""
        from pathlib import Path

        from ...xrf.single import fit_spectrum_file

        path = self.spectrum_file_edit.text()
        if not path:
            raise NightwatchError("Choose a spectrum file (.spx, .mca, .msa, .spe, .hspy) first.")
        cfg = self.pymca_config_edit.text() or None
        elements = self.elements()
        include, exclude = self.names(self.include_edit), self.names(self.exclude_edit)

        def job(progress):
            return fit_spectrum_file(path, elements=elements, pymca_config=cfg, include=include, exclude=exclude)

        def done(result):
            self.show_file_fit(result, Path(path).name)

        return self.start(job, done, "spectrum file")

    def show_file_fit(self, result, title: str) -> None:
        """Plot a :class:`~napari_nightwatch.xrf.single.SingleSpectrumFit` and list its families."""
        self.file_fit = result
        self.last_spectrum = np.asarray(result.counts, float)
        self.plot.clear()
        self.plot.title = f"{title}: reduced chi2 {result.chi2:.2f}"
        self.plot.set_curve("spectrum", result.energies_kev, result.counts)
        ok = np.isfinite(result.fitted)
        self.plot.set_curve("fit", result.energies_kev[ok], result.fitted[ok], (255, 80, 80))
        marks = []
        for f in result.families:
            r, g, b = L.element_rgb(f.name)
            marks.append((float(f.main_energy_kev), f.name, (int(r * 255), int(g * 255), int(b * 255))))
        self.plot.set_markers(marks)
        self.file_table.setText("\n".join(
            f"{row['family']} ({row['origin']}): {row['area']:.0f} +- {row['uncertainty']:.0f}" for row in result.table()
        ))

    def show_maps(self) -> list:
        """Add the store's fitted element maps as one additive layer per family (replacing old ones)."""
        store = self.store()
        if not (store.has("xrf_maps") and store.is_complete("xrf_maps")):
            raise NightwatchError(f"{store.path} has no element maps yet; press 'Fit element maps'.")
        remove_store_layers(self.viewer, str(store.path), ("element_map", "overlap_correlation"))
        added = [add_layer_data(self.viewer, ld) for ld in L.store_element_map_layers(store)]
        # how well overlapping families are told apart, pixel by pixel (hidden until asked for)
        added += [add_layer_data(self.viewer, ld) for ld in L.store_overlap_layers(store)]
        self._show_calibration()
        return added

    # ------------------------------------------------------------------ spectra
    def _set_log(self, on: bool) -> None:
        self.plot.log_y = on
        self.plot.update()

    def _toggle_follow(self, on: bool) -> None:
        cb = self._on_move
        if on and cb not in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.append(cb)
        elif not on and cb in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(cb)

    def _on_move(self, viewer, event) -> None:
        try:
            self.pixel_spectrum_at(event.position)
        except NightwatchError:
            pass  # outside the scan: keep the last spectrum

    def pixel_spectrum_at(self, position_um) -> np.ndarray | None:
        """Show the spectrum of the XRF pixel under a point given in micrometres."""
        store = self.store()
        yx = L.um_to_xrf_pixel(position_um, store.xrf_affine, store.mosaic_pixel_size_um)
        if yx == self._last_pixel:
            return self.last_spectrum
        from ...xrf.spectra import mean_spectrum

        spec = mean_spectrum(store, pixel=yx)
        self._last_pixel = yx
        self.show_spectrum(spec, f"XRF pixel {yx[0]}, {yx[1]}")
        return spec

    def region_spectrum(self) -> np.ndarray:
        """Show the mean spectrum of the XRF pixels inside the chosen Shapes rectangle."""
        from ...xrf.spectra import mean_spectrum

        name = self.shapes_combo.currentText()
        if not name or name not in self.viewer.layers or not len(self.viewer.layers[name].data):
            raise NightwatchError("Draw a rectangle in a Shapes layer over the XRF scan and choose that layer.")
        layer = self.viewer.layers[name]
        corners = np.array([layer.data_to_world(p) for p in np.asarray(layer.data[-1])])
        store = self.store()
        box = L.um_rect_to_xrf_box(corners, store.xrf_affine, store.mosaic_pixel_size_um)
        spec = mean_spectrum(store, region=box)
        self._last_pixel = None
        y0, x0, y1, x1 = (int(round(v)) for v in box)
        self.show_spectrum(spec, f"XRF region {y0},{x0}-{y1},{x1} (mean)")
        return spec

    def line_markers(self) -> list[tuple[float, str, tuple[int, int, int]]]:
        """Vertical markers at the main line of every fitted (or chosen) element family."""
        from ...xrf.lines import get_family

        names = self.families or ([] if self.elements() == "auto" else list(self.elements()))
        out = []
        for name in names:
            try:
                fam = get_family(name)
            except NightwatchError:
                continue
            r, g, b = L.element_rgb(name)
            out.append((float(fam.main_energy_kev), name, (int(r * 255), int(g * 255), int(b * 255))))
        return out

    def show_spectrum(self, counts: np.ndarray, title: str) -> None:
        store = self.store()
        e = store.xrf_energies()
        self.last_spectrum = np.asarray(counts, float)
        self.plot.title = title
        self.plot.set_curve("spectrum", e, self.last_spectrum)
        self.plot.set_markers(self.line_markers())
