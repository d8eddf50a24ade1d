"""Layering (STYLE.md): the library packages never pull in Qt, napari or magicgui."""

from __future__ import annotations

import json
import subprocess
import sys

GUI_MODULES = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy")

_SCRIPT = r"""
import importlib, json, pkgutil, sys
import napari_nightwatch
names = []
for pkg in ("core", "io", "xrf", "ml", "search"):
    mod = importlib.import_module("napari_nightwatch." + pkg)
    names.append(mod.__name__)
    for info in pkgutil.walk_packages(mod.__path__, mod.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
for extra in ("napari_nightwatch.project", "napari_nightwatch.cli", "napari_nightwatch.synth", "napari_nightwatch.demo"):
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
    assert "napari_nightwatch.project" in res["imported"] and "napari_nightwatch.core.tiling" in res["imported"]
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
