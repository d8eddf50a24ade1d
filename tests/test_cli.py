"""The CLI shell: exit codes, JSON output and the human summary of search results."""

from __future__ import annotations

import json

from napari_nightwatch.cli import _human, main


def test_info_on_a_missing_store_is_one_sentence_and_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.nightwatch.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a painting store" in err[0]


def test_info_json_is_one_object(tmp_path, capsys):
    from napari_nightwatch.store import PaintingStore

    PaintingStore.create(tmp_path / "p.nightwatch.zarr")
    assert main(["info", str(tmp_path / "p.nightwatch.zarr"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "p" and out["next_steps"]


def test_search_results_print_as_a_table():
    hits = [
        {"rank": 1, "score": 0.91234, "tile": 7, "y": 32.0, "x": 96.0, "y_um": 160.0, "x_um": 480.0, "store": "/a/b.nightwatch.zarr"},
        {"rank": 2, "score": 0.5, "tile": 9, "y": 32.0, "x": 160.0, "y_um": 160.0, "x_um": 800.0, "store": "/a/b.nightwatch.zarr"},
    ]
    text = _human({"query": "craquelure", "results": hits})
    lines = text.splitlines()
    assert lines[0] == "query: craquelure"
    assert lines[1].split()[:3] == ["rank", "score", "tile"]
    assert lines[2].split() == ["1", "0.9123", "7", "32.0", "96.0", "160.0", "480.0", "b.nightwatch.zarr"]
    assert len(lines) == 4


def test_half_a_calibration_is_refused(tmp_path, capsys):
    import numpy as np

    from napari_nightwatch.store import PaintingStore

    np.save(tmp_path / "cube.npy", np.ones((4, 4, 256), np.uint16))
    assert main(["import-xrf", str(tmp_path / "cube.npy"), str(tmp_path / "s.nightwatch.zarr"),
                 "--energy-offset-kev", "0.0"]) == 2
    assert "Give both --energy-offset-kev and --energy-gain-kev" in capsys.readouterr().err
    assert not (tmp_path / "s.nightwatch.zarr").exists()
    PaintingStore.create(tmp_path / "t.nightwatch.zarr")
    assert main(["xrf-maps", str(tmp_path / "t.nightwatch.zarr"), "--energy-gain-kev", "0.01"]) == 2
    assert "Give both --energy-offset-kev and --energy-gain-kev" in capsys.readouterr().err
