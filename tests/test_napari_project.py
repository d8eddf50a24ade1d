"""Project panel and the job infrastructure: import with progress, errors as notifications, cancel."""

from __future__ import annotations

import threading

import numpy as np

from _napari_support import private_config_dir  # noqa: F401 (autouse fixture)
from napari_nightwatch.core.errors import NightwatchError


def wait_job(qtbot, runner, timeout=60_000):
    """Wait until the panel's job has finished and its results were added."""
    qtbot.waitUntil(lambda: not runner.running, timeout=timeout)


def test_project_create_import_open(make_napari_viewer, qtbot, tmp_path):
    from PIL import Image

    from napari_nightwatch._napari._qt.project_widget import ProjectWidget

    viewer = make_napari_viewer()
    w = ProjectWidget(viewer)
    qtbot.addWidget(w)
    store = tmp_path / "p.nightwatch.zarr"
    w.store_edit.setText(str(store))
    w.create_button.click()
    assert "import a mosaic" in w.summary_text.toPlainText()

    rgb = np.random.default_rng(0).integers(0, 255, (300, 280, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    w.mosaic_edit.setText(str(tmp_path / "m.png"))
    w.mosaic_pixel.setValue(2.5)
    w.mosaic_button.click()
    wait_job(qtbot, w.runner)
    assert w.runner.last_message == ""
    assert w.runner.last_progress[1] > 0  # progress reached the panel
    layer = viewer.layers[-1]
    assert layer.rgb and np.allclose(layer.scale, [2.5, 2.5])
    np.testing.assert_array_equal(np.asarray(layer.data[0] if layer.multiscale else layer.data), rgb)
    assert w.last_summary["mosaic"]["shape"][:2] == [300, 280]

    # an MA-XRF cube from a numpy file, with its calibration and pixel size given in the panel
    cube = np.random.default_rng(1).poisson(2.0, (30, 28, 64)).astype(np.uint16)
    np.save(tmp_path / "cube.npy", cube)
    w.xrf_edit.setText(str(tmp_path / "cube.npy"))
    w.xrf_pixel.setValue(25.0)
    w.xrf_offset.setValue(0.0)
    w.xrf_gain.setValue(0.04)
    w.xrf_button.click()
    wait_job(qtbot, w.runner)
    assert w.runner.last_message == ""
    xrf = viewer.layers[-1]
    np.testing.assert_allclose(xrf.data, cube.sum(axis=-1))
    np.testing.assert_allclose(xrf.scale, [25.0, 25.0])
    # identity in micrometres: the XRF pixel footprint [0, 25) um starts where the mosaic's does
    np.testing.assert_allclose(np.asarray(xrf.data_to_world((0, 0))) - 12.5, np.asarray(layer.data_to_world((0, 0))) - 1.25)
    assert w.last_summary["xrf"]["shape"] == [30, 28, 64]

    # the panel remembers its settings
    w2 = ProjectWidget(viewer)
    qtbot.addWidget(w2)
    assert w2.mosaic_edit.text() == str(tmp_path / "m.png") and w2.mosaic_pixel.value() == 2.5

    # opening the store shows its layers, replacing (not duplicating) those already shown
    w.open_button.click()
    wait_job(qtbot, w.runner)
    assert [ly.name for ly in viewer.layers] == ["p mosaic", "p XRF total counts"]


def test_bad_input_is_a_notification(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    from napari_nightwatch._napari._qt import jobs
    from napari_nightwatch._napari._qt.project_widget import ProjectWidget

    shown = []
    monkeypatch.setattr(jobs, "notify_error", shown.append)
    monkeypatch.setattr("napari_nightwatch._napari._qt.common.notify_error", shown.append)
    viewer = make_napari_viewer()
    w = ProjectWidget(viewer)
    qtbot.addWidget(w)
    w.store_edit.setText(str(tmp_path / "p.nightwatch.zarr"))
    w.create_button.click()
    w.mosaic_edit.setText(str(tmp_path / "missing.png"))
    w.mosaic_button.click()
    wait_job(qtbot, w.runner)
    assert shown and "missing.png" in shown[-1]
    # an empty store path is caught before any work starts
    w.store_edit.setText("")
    w.open_button.click()
    assert "Choose a painting store" in shown[-1]
    assert w.isEnabled()


def test_runner_cancel_and_probe(qtbot, make_napari_viewer):
    """Cancel stops a job at its next progress report; the GUI loop keeps ticking meanwhile."""
    from napari_nightwatch._napari._qt.jobs import EventLoopProbe, JobRunner

    make_napari_viewer()
    runner = JobRunner()
    qtbot.addWidget(runner)
    seen = []
    started = threading.Event()

    def job(progress):
        for i in range(10_000):
            progress(i, 10_000, "counting")
            seen.append(i)
            started.set()
            threading.Event().wait(0.001)
        return "finished"

    probe = EventLoopProbe()
    probe.start()
    results = []
    runner.run(job, results.append, "count")
    qtbot.waitUntil(started.is_set, timeout=10_000)
    qtbot.wait(100)
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    gap = probe.stop()
    assert results == [] and "cancelled" in runner.last_message
    assert 0 < len(seen) < 10_000
    assert probe.ticks > 5 and gap < 500

    # a failure that is not a NightwatchError still ends as a message
    def broken(progress):
        raise RuntimeError("boom")

    runner.run(broken, None, "broken")
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert "RuntimeError: boom" in runner.last_message

    def bad(progress):
        raise NightwatchError("The tile size 0 must be positive.")

    runner.run(bad, None, "bad")
    qtbot.waitUntil(lambda: not runner.running, timeout=10_000)
    assert runner.last_message == "The tile size 0 must be positive."


def test_every_widget_docks_through_the_manifest(make_napari_viewer):
    from napari_nightwatch._napari._qt.bridge_widget import BridgeWidget
    from napari_nightwatch._napari._qt.embed_widget import EmbedWidget
    from napari_nightwatch._napari._qt.project_widget import ProjectWidget
    from napari_nightwatch._napari._qt.search_widget import SearchWidget
    from napari_nightwatch._napari._qt.xrf_widget import XrfWidget

    viewer = make_napari_viewer()
    expected = {"Painting project": ProjectWidget, "Embed tiles": EmbedWidget, "Search": SearchWidget,
                "XRF": XrfWidget, "Bridge": BridgeWidget}
    for name, cls in expected.items():
        _, widget = viewer.window.add_plugin_dock_widget("napari-nightwatch", name)
        assert isinstance(widget, cls)
