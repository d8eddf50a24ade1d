"""The whole workflow through the command line, as a script on a GPU box would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_nightwatch.cli import main


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_synth_then_info_from_a_fresh_shell(tmp_path):
    script = Path(sys.executable).with_name("nightwatch")
    if not script.exists():
        pytest.fail(f"the console script {script} is not installed; `pip install -e .` creates it")
    store = tmp_path / "p.nightwatch.zarr"
    subprocess.run([str(script), "synth", str(store), "--size", "256", "--json"], check=True, capture_output=True)
    out = subprocess.run([str(script), "info", str(store), "--json"], check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    assert info["mosaic"]["shape"] == [256, 256, 3] and info["mosaic"]["pixel_size_um"] == 5.0
    assert info["xrf"]["shape"][:2] == [32, 32] and "ground_truth" in info["complete"]
    bad = subprocess.run([str(script), "info", str(tmp_path / "missing.nightwatch.zarr")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_cli_workflow_end_to_end(tmp_path, capsys):
    store = str(tmp_path / "p.nightwatch.zarr")
    assert main(["synth", store, "--size", "256", "--json"]) == 0
    capsys.readouterr()
    assert main(["xrf-maps", store, "--json"]) == 0
    maps = _json(capsys)
    assert {"Hg-L", "Pb-L", "Cu-K"} <= set(maps["elements"])
    assert main(["register", store, "--auto", "--json"]) == 0
    capsys.readouterr()
    assert main(["embed", store, "--model", "nightwatch-tiny", "--pretrained", "none", "--tile", "32",
                 "--stride", "16", "--json"]) == 0
    emb = _json(capsys)
    assert main(["index", store, "--json"]) == 0
    capsys.readouterr()
    # an exemplar region finds its own tile first
    assert main(["search", store, "--region", "0,0,32,32", "-k", "5", "--json"]) == 0
    res = _json(capsys)["results"]
    assert res[0]["tile"] == 0 and res[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert main(["train-xrf", store, "--epochs", "15", "--json"]) == 0
    capsys.readouterr()
    assert main(["search", store, "--xrf-pixel", "10,10", "-k", "5", "--json"]) == 0
    assert len(_json(capsys)["results"]) == 5
    export = tmp_path / "predicted"
    assert main(["predict-xrf", store, "--export", str(export), "--json"]) == 0
    pred = _json(capsys)
    assert (export / "Hg-L.tif").exists() and "Hg-L" in pred["validation"]
    assert emb["grid_id"] == "L0-t32-s16"
