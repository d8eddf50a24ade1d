"""Layering (STYLE.md): the import contract of pyproject.toml holds and catches a wrong import;
the library packages never pull in Qt, napari or magicgui at run time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GUI_MODULES = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy")

_SCRIPT = r"""
import importlib, json, pkgutil, sys
import napari_nightwatch
names = []
for pkg in ("core", "io", "store", "xrf", "ml", "search"):
    mod = importlib.import_module("napari_nightwatch." + pkg)
    names.append(mod.__name__)
    for info in pkgutil.walk_packages(mod.__path__, mod.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
for extra in ("napari_nightwatch.cli", "napari_nightwatch.synth", "napari_nightwatch.demo"):
    try:
        importlib.import_module(extra)
        names.append(extra)
    except ModuleNotFoundError as exc:
        if exc.name != extra:
            raise
gui = sorted(m for m in sys.modules if m.split(".")[0] in %r)
print(json.dumps({"imported": names, "gui": gui}))
"""


def test_library_imports_no_gui():
    out = subprocess.run([sys.executable, "-c", _SCRIPT % (GUI_MODULES,)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "napari_nightwatch.store.painting" in res["imported"] and "napari_nightwatch.core.tiling" in res["imported"]
    assert res["gui"] == [], f"library modules imported GUI packages: {res['gui'][:10]}"


def test_reader_module_is_light():
    """napari imports the reader at start-up: it must not pull in torch, faiss or open_clip."""
    script = (
        "import sys, json; import napari_nightwatch._napari.reader, napari_nightwatch._napari.layers;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'faiss', 'open_clip'))))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _lint_imports(src: Path, config: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(src))
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), str(config), "--no-cache"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(src))


def test_import_contract_holds():
    out = _lint_imports(ROOT / "src", ROOT / "pyproject.toml")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "4 kept, 0 broken" in out.stdout


def test_import_contract_fails_on_a_wrong_import(tmp_path):
    # a copy of the package where core/ (the bottom layer) imports the store, and xrf/ imports
    # faiss: the contract must name both
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "napari_nightwatch", src / "napari_nightwatch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    tiling = src / "napari_nightwatch" / "core" / "tiling.py"
    tiling.write_text(tiling.read_text() + "\nfrom ..store import layout  # deliberately wrong\n")
    lines = src / "napari_nightwatch" / "xrf" / "lines.py"
    lines.write_text(lines.read_text() + "\nimport faiss  # deliberately wrong\n")
    out = _lint_imports(src, ROOT / "pyproject.toml")
    assert out.returncode != 0
    assert "napari_nightwatch.core.tiling -> napari_nightwatch.store" in out.stdout
    assert "napari_nightwatch.xrf is not allowed to import faiss" in out.stdout
    assert "napari_nightwatch.xrf.lines -> faiss" in out.stdout
    assert "2 kept, 2 broken" in out.stdout
