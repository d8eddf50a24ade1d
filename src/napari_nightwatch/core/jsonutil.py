"""JSON helpers: turn numpy scalars, arrays and paths into plain JSON values.

Owns :func:`jsonable`, the one conversion every store attribute, provenance record
and ``--json`` output goes through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def jsonable(value: Any) -> Any:
    """A JSON-serialisable copy of ``value`` (numpy scalars/arrays, paths, nested dicts and lists).

    Parameters
    ----------
    value
        Anything made of dicts, lists, tuples, numpy values, paths and plain scalars.

    Returns
    -------
    Any
        The same structure with only dict, list, str, int, float, bool and None.
    """
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(x) for x in value]
    return value
