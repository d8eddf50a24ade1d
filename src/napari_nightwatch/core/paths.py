"""Files the package writes for the user: names that cannot escape their folder, and no silent overwrite."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from .errors import NightwatchError

#: what a file name made from store content (an element family, a map name) may hold
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,120}$")


def safe_file_stem(name: str, what: str) -> str:
    """``name`` as a file name stem, or one sentence when it could leave its folder or is not a plain name.

    Names come from store attributes (element families, map names), which a crafted
    or damaged store can set to ``../../x``; they are never joined to a path unchecked.
    """
    text = str(name)
    if not _SAFE.match(text) or ".." in text:
        raise NightwatchError(
            f"{what} {text!r} cannot be used as a file name (letters, digits, '_', '.', '+', '-' only, no '..'); "
            "the store's attributes look damaged."
        )
    return text


def check_export_folder(folder: str | Path, option: str = "--export") -> Path:
    """The export folder, refused with one sentence when it is an existing file."""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise NightwatchError(f"{option} {p} is a file; give a folder to write into.")
    return p


def check_targets(paths: Iterable[Path], overwrite: bool, option: str = "--overwrite") -> list[Path]:
    """The files about to be written; existing ones are refused unless ``overwrite``."""
    paths = list(paths)
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(p.name for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
        raise NightwatchError(
            f"{existing[0].parent} already holds {shown}; pass {option} to replace them, or export elsewhere."
        )
    return paths
