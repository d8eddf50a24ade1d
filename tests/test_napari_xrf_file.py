"""The XRF panel opens one spectrum file: identification, fit, lines and table (issue 16 item 5)."""

from __future__ import annotations

import numpy as np

from _napari_support import click_and_wait
from conftest import shared_file


def test_xrf_panel_fits_a_spectrum_file(make_napari_viewer, qtbot):
    from napari_nightwatch._napari._qt.xrf_widget import XrfWidget

    viewer = make_napari_viewer()
    w = XrfWidget(viewer)
    qtbot.addWidget(w)
    w.elements_edit.setText("auto")
    w.include_edit.setText("")
    w.exclude_edit.setText("")
    w.spectrum_file_edit.setText(str(shared_file("pymca-spectra/Steel.spe")))
    w.pymca_config_edit.setText(str(shared_file("pymca-spectra/Steel.cfg")))
    click_and_wait(qtbot, w.file_button, w.runner, 120_000)
    assert w.runner.last_message == ""
    fit = w.file_fit
    names = {f.name for f in fit.families}
    assert {"Fe-K", "Cr-K", "Ni-K", "Mn-K"} <= names and not {"Sb-L", "La-L"} & names
    assert set(w.plot.curves) == {"spectrum", "fit"}
    np.testing.assert_allclose(w.plot.curves["spectrum"][1], fit.counts)
    assert {name for _, name, _ in w.plot.markers} == names
    assert "Fe-K (sample)" in w.file_table.text()


def test_xrf_panel_spectrum_file_bad_input_is_one_sentence(make_napari_viewer, qtbot, tmp_path):
    from napari_nightwatch._napari._qt.xrf_widget import XrfWidget

    viewer = make_napari_viewer()
    w = XrfWidget(viewer)
    qtbot.addWidget(w)
    w.spectrum_file_edit.setText(str(tmp_path / "missing.spe"))
    w.pymca_config_edit.setText("")
    w.file_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert "does not exist" in w.runner.last_message and "\n" not in w.runner.last_message
    assert w.file_fit is None
