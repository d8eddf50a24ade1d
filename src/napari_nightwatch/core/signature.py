"""Signatures of derived parts: what a part was made from, and the one check of it.

Every derived part of a painting store (tile grid, embeddings, index, element maps,
spectrum encoder, predicted maps) records a signature: a flat dict of the inputs it was
made from (source content hash, model id and weights hash, tile grid, keep-mask hash,
registration, package version, ...). A consumer compares the recorded signature with
the current one through :func:`check`:

* **hard keys** must agree, or the part is stale and is refused with one sentence that
  names the first differing entry and the command that rebuilds it;
* **soft keys** (e.g. ``package_version``, ``created``) are recorded for provenance and
  never compared.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import NightwatchError
from .jsonutil import jsonable

#: recorded for provenance, never compared
SOFT_KEYS = frozenset({"package_version", "created", "build_seconds", "timings"})


def _short(value: Any) -> str:
    return json.dumps(jsonable(value), default=str, sort_keys=True)[:120]


def mismatch(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    keys: Iterable[str] | None = None,
    labels: tuple[str, str] = ("stored", "now"),
) -> str | None:
    """Name the first hard entry where two signatures differ, or None when they agree.

    Parameters
    ----------
    stored
        The signature recorded with the part.
    current
        The signature of the inputs as they are now; only its keys are compared.
    keys
        Restrict the comparison to these keys (default: every key of ``current`` that
        is not a soft key).
    labels
        How the two sides are named in the sentence.

    Returns
    -------
    str or None
        ``"<key> <stored> (stored) vs <current> (now)"`` for the first difference.
    """
    names = [k for k in (current if keys is None else keys) if k not in SOFT_KEYS]
    for k in names:
        if k in current and jsonable(stored.get(k)) != jsonable(current.get(k)):
            return f"{k} {_short(stored.get(k))} ({labels[0]}) vs {_short(current.get(k))} ({labels[1]})"
    return None


def check(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    what: str,
    fix: str,
    keys: Iterable[str] | None = None,
) -> None:
    """Refuse a stale part with one sentence.

    Parameters
    ----------
    stored, current, keys
        As for :func:`mismatch`.
    what
        The part, as the user knows it (e.g. "Embeddings grids/L0-t64-s64/... of x.zarr").
    fix
        The command that rebuilds it (e.g. "re-embed with `nightwatch embed --overwrite`").

    Raises
    ------
    NightwatchError
        When a hard key differs.
    """
    bad = mismatch(stored, current, keys)
    if bad:
        raise NightwatchError(f"{what} is stale: {bad}; {fix}.")


def digest(*parts: Any, length: int = 16) -> str:
    """Short sha1 of numpy arrays, bytes and JSON-able values (a content hash for signatures)."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        elif isinstance(p, (bytes, bytearray, memoryview)):
            h.update(bytes(p))
        else:
            h.update(json.dumps(jsonable(p), sort_keys=True, default=str).encode())
    return h.hexdigest()[:length]
