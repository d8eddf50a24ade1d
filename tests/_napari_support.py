"""Helpers shared by the GUI tests: the event-loop responsiveness checks, a private config dir
and the prepared synthetic painting (fitted maps, tiny-model embeddings, optionally a trained bridge)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: element families fitted on the prepared painting: a few keep the layers (and the test time) small
FAMILIES = ("Pb-L", "Hg-L", "Fe-K", "Cu-K")


def prepare_painting(source, path: Path, *, search_grid: bool = True, bridge_epochs: int = 0) -> Path:
    """Copy the synthetic painting ``source`` to ``path`` and make it ready for the panels.

    Element maps of :data:`FAMILIES` are fitted; tiny-model (random weights) embeddings
    are made on a 16 px grid (for the bridge) and, with ``search_grid``, an indexed
    32 px grid (for search). With ``bridge_epochs`` the spectrum encoder is trained on
    the 16 px grid for that many epochs, so the spectrum queries have an encoder.
    """
    from napari_nightwatch.ml.clip import load_clip
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.search.index import build_index
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.tiles import make_grid
    from napari_nightwatch.xrf.maps import fit_store

    shutil.copytree(source.path, path)
    store = PaintingStore.open(path, mode="r+")
    fit_store(store, elements=list(FAMILIES), refine=False)
    engine = load_clip("nightwatch-tiny", "none", device="cpu")
    if search_grid:
        grid = make_grid(store, tile=32, stride=32)
        embed_store(store, engine, grid, batch_size=64)
        build_index(store, grid.grid_id, engine.model_id)
    grid16 = make_grid(store, tile=16, stride=16, mask="none")
    embed_store(store, engine, grid16, batch_size=64)
    build_index(store, grid16.grid_id, engine.model_id)
    if bridge_epochs:
        from napari_nightwatch.ml.bridge import train_xrf_bridge

        train_xrf_bridge(store, grid_id=grid16.grid_id, image_model_id=engine.model_id, epochs=bridge_epochs)
    return path


def click_and_wait(qtbot, button, runner, timeout_ms: int = 60_000) -> None:
    """Click a panel's button and wait for its job; the job must end without a message."""
    button.click()
    qtbot.waitUntil(lambda: not runner.running, timeout=timeout_ms)
    assert runner.last_message == ""


def idle_gap_ms(qtbot, ms: int = 700) -> float:
    """Largest event-loop gap of the idle GUI: what the OS alone costs on a busy machine."""
    from napari_nightwatch._napari._qt.jobs import EventLoopProbe

    probe = EventLoopProbe()
    probe.start()
    qtbot.wait(ms)
    return probe.stop()


def check_responsive(what: str, runner, idle_ms: float) -> None:
    """The job may not freeze the GUI: under 100 ms, or no worse than the idle loop on an overloaded host."""
    gap = runner.job_max_gap_ms
    print(f"\n{what}: largest event-loop gap while the job ran {gap:.1f} ms ({runner.elapsed_s:.2f} s job; "
          f"idle loop {idle_ms:.1f} ms); adding its layers took {runner.show_s * 1000:.0f} ms")
    assert gap < max(100.0, 1.5 * idle_ms)


@pytest.fixture(autouse=True)
def private_config_dir(tmp_path, monkeypatch):
    """Widgets remember their settings in a per-test folder, never in the user's config."""
    monkeypatch.setenv("NAPARI_NIGHTWATCH_CONFIG_DIR", str(tmp_path / "config"))

