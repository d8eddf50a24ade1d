"""Embed panel end to end with the tiny model: progress, Cancel, resume, responsiveness."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from _napari_support import check_responsive, idle_gap_ms, private_config_dir  # noqa: F401 (autouse fixture)


@pytest.fixture
def painting(synthetic_store_factory):
    return synthetic_store_factory(256, 0).path


def test_embed_cancel_then_resume(make_napari_viewer, qtbot, painting, tmp_path):
    from napari_nightwatch._napari._qt.embed_widget import EmbedWidget
    from napari_nightwatch.store import PaintingStore

    store_path = tmp_path / "p.nightwatch.zarr"
    shutil.copytree(painting, store_path)
    viewer = make_napari_viewer()
    w = EmbedWidget(viewer)
    qtbot.addWidget(w)
    w.store_edit.setText(str(store_path))
    w.model_combo.setCurrentText("nightwatch-tiny")
    w.pretrained_edit.setText("none")
    w.tile_spin.setValue(8)
    w.batch_spin.setValue(16)
    w.device_combo.setCurrentText("cpu")
    w.index_check.setChecked(False)
    w.chunk_tiles = 32  # 1024 tiles -> 32 resumable chunks

    # cancel as soon as the first chunks are reported
    w.runner._progressed.connect(lambda done, total, stage: w.runner.cancel() if done >= 64 else None)
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)
    assert "cancelled" in w.runner.last_message
    grp = PaintingStore.open(store_path).root["grids/L0-t8-s8/embeddings/nightwatch-tiny__none"]
    done_before = int(np.asarray(grp["done"][...]).sum())
    assert 0 < done_before < 32

    # rerun: only the missing chunks are embedded
    w.runner._progressed.disconnect()
    w.runner._progressed.connect(w.runner._on_progress)
    idle = idle_gap_ms(qtbot)
    w.run_button.click()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=120_000)
    res = w.last_result
    assert res is not None and res["complete"] and res["chunks_skipped"] == done_before
    assert res["random_weights"] and "RANDOM WEIGHTS" in w.result_label.text()
    check_responsive("embed", w.runner, idle)
