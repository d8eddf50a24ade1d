"""Remembered widget settings: one small JSON file in the user config folder.

A JSON file rather than QSettings keeps this testable without Qt and readable by
people; ``NAPARI_NIGHTWATCH_CONFIG_DIR`` overrides the folder (tests use it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def config_path() -> Path:
    """The settings file (``widgets.json`` in the user config folder)."""
    env = os.environ.get("NAPARI_NIGHTWATCH_CONFIG_DIR")
    if env:
        base = Path(env)
    else:
        try:
            from platformdirs import user_config_dir

            base = Path(user_config_dir("napari-nightwatch"))
        except ImportError:
            base = Path.home() / ".config" / "napari-nightwatch"
    return base / "widgets.json"


def load_settings(section: str) -> dict[str, Any]:
    """The remembered values of one widget (empty when none or unreadable)."""
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    val = data.get(section, {})
    return dict(val) if isinstance(val, dict) else {}


def save_settings(section: str, values: dict[str, Any]) -> None:
    """Remember ``values`` for one widget; other widgets' sections are kept."""
    path = config_path()
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[section] = values
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)  # atomic, so two napari windows never leave a torn file
