"""The demo pipeline (`make demo` without the window): every step runs and the results are labelled honestly."""

from __future__ import annotations

import json

import numpy as np

from napari_nightwatch.demo import load_demo_engine, run_pipeline
from napari_nightwatch.store import PaintingStore


def test_unavailable_weights_fall_back_loudly_to_random(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    said = []
    engine, suffix = load_demo_engine("nightwatch-tiny", "laion2b_s34b_b79k", log=said.append)
    assert engine.random_weights and suffix == " (random weights)"
    assert len(said) == 1 and "RANDOM" in said[0] and "(random weights)" in said[0]


def test_pipeline_runs_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    logged = []
    r = run_pipeline(tmp_path, size=256, model="nightwatch-tiny", pretrained="none", tile=32, stride=16,
                     epochs=5, log=logged.append)
    assert len([m for m in logged if m.startswith("[")]) == 8
    store = PaintingStore.open(r["store"])
    done = store.completed()
    for part in ("mosaic", "xrf", "xrf_maps", f"grids/{r['grid_id']}", f"predicted/{r['predicted']}"):
        assert part in done
    assert r["suffix"] == " (random weights)" and r["random_weights"]
    # offline: no text search; the pigment search (shown in front, so last) and an exemplar search
    kinds = [s["kind"] for s in r["searches"]]
    assert kinds == ["exemplar", "pigment"]
    for srch in r["searches"]:
        assert len(srch["hits"]) == 10 and srch["hits"][0]["rank"] == 1
        sim = np.asarray(srch["similarity"], float)
        assert sim.shape == (15, 15)
        # the best hit's score is the maximum of its map (float32 map of float64 scores)
        assert np.isclose(srch["hits"][0]["score"], np.nanmax(sim), atol=1e-3)
    pig = r["searches"][-1]
    assert pig["label"] == "pigment smalt" and all(h["source"] == "measured" for h in pig["hits"])
    # scored against the ground truth, and far above a random tile
    assert pig["precision_at_10"] >= 0.8 > 4 * pig["chance"]
    assert any("precision@10" in m for m in logged)
    assert set(r["validation"]) == set(r["elements"])
    json.dumps(r)  # the CLI prints it with --json
