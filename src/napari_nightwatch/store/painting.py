"""The painting store: one zarr (v3, OME-Zarr NGFF 0.5) store per painting.

Owns :class:`PaintingStore` (open/create, schema upgrades, metadata, the mosaic and
XRF accessors), the completion records and their provenance, the one-writer lock and
:meth:`PaintingStore.replace_part`, through which every part is (re)written: the new
part is written beside the old one under ``staging/`` and swapped in only when
complete, so a failed or killed write leaves the previous part intact. Every path is
named in :mod:`napari_nightwatch.store.layout`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.errors import NightwatchError
from ..core.geometry import as_affine
from ..core.jsonutil import jsonable
from ..core.spectra import EnergyCalibration
from ..io.remote import filesystem, is_url, join, location, with_retries
from ..io.remote import open_zarr_group as open_remote_group
from . import layout
from .layout import STORE_SUFFIX

SCHEMA_VERSION = 1
#: seconds a writer waits for another writer's short critical section before refusing
LOCK_WAIT_S = 30.0

# upgrade functions, keyed by the schema version they upgrade *from*
UPGRADES: dict[int, Any] = {}


#: what to rerun for a stale part, by its top-level name
_RERUN = {
    "xrf_maps": "nightwatch xrf-maps --overwrite",
    "grids": "nightwatch embed --overwrite (then nightwatch index)",
    "models": "nightwatch train-xrf",
    "predicted": "nightwatch predict-xrf",
}


def writes(part: str, what: str):
    """Decorator: run a long job ``f(store, ...)`` under the store's one-writer lock of ``part``.

    See :meth:`PaintingStore.job`. A first argument that is not an open
    :class:`PaintingStore` (a path) is passed through; the function opens it and
    locks nothing (library code that calls with a path writes no part).
    """

    def deco(fn):
        @functools.wraps(fn)
        def run(store, *args, **kwargs):
            if isinstance(store, PaintingStore) and store.mode != "r":
                with store.job(part, what):
                    return fn(store, *args, **kwargs)
            return fn(store, *args, **kwargs)

        return run

    return deco


#: job locks this process holds: (store path, part) -> (lock, depth)
_JOBS: dict[tuple[str, str], tuple[Any, int]] = {}


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def provenance(**made_from: Any) -> dict[str, Any]:
    """Provenance record for a derived array: what it was made from, version and date."""
    rec = {k: jsonable(v) for k, v in made_from.items()}
    rec["package_version"] = __version__
    rec["created"] = _now()
    return rec


def to_yxc(arr, axes: str):
    """View a dask array with NGFF/TIFF axes (e.g. "tczyx", "zyx", "yxs") as (y, x, c).

    Axes other than y, x and c (t, z, ...) are held at index 0; without a c axis one is added.
    """
    axes = axes.lower().replace("s", "c")
    arr = arr[tuple(slice(None) if a in "yxc" else 0 for a in axes)]
    kept = [a for a in axes if a in "yxc"]
    if "c" not in kept:
        arr = arr[..., None]
        kept.append("c")
    return arr.transpose([kept.index(a) for a in "yxc"])


#: chunk files of a folder source (an OME-Zarr used in place) whose bytes are hashed, sampled
#: evenly over the sorted file list so every pyramid level and every part of level 0 is seen
FOLDER_SAMPLE_FILES = 256
#: names of zarr metadata files, always hashed whole
_ZARR_META = frozenset({"zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata"})


def _folder_signature(p: Path) -> str:
    """Content signature of a folder (an OME-Zarr used in place): names and sizes of its files, the
    bytes of every metadata file and of a deterministic sample of chunk files (head and tail of large
    ones). An edited chunk changes its compressed bytes, so edits to sampled chunks are caught; edits
    to others change the signature when they change a chunk's size."""
    files = sorted(f for f in p.rglob("*") if f.is_file())
    h = hashlib.sha1(str(len(files)).encode())
    meta = [f for f in files if f.name in _ZARR_META]
    chunks = [f for f in files if f.name not in _ZARR_META]
    step = max(1, -(-len(chunks) // FOLDER_SAMPLE_FILES))
    sampled = set(chunks[::step])
    for f in files[:20000]:
        h.update(str(f.relative_to(p)).encode())
        h.update(str(f.stat().st_size).encode())
    for f in meta + sorted(sampled):
        with open(f, "rb") as fh:
            head = fh.read(1 << 20)
            h.update(head)
            if len(head) == 1 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return "dirc:" + h.hexdigest()[:16]


def file_signature(path: str | Path, max_bytes: int = 1 << 22) -> str:
    """Cheap, stable signature of a source file: size, and a hash of its head and tail.

    Sources can be hundreds of GB, so only the first and last ``max_bytes`` are hashed.
    """
    p = Path(path)
    if p.is_dir():
        return _folder_signature(p)
    size = p.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with open(p, "rb") as fh:
        h.update(fh.read(max_bytes))
        if size > 2 * max_bytes:
            fh.seek(size - max_bytes)
            h.update(fh.read(max_bytes))
    return f"sha1:{h.hexdigest()[:16]}:{size}"


def open_zarr_group(loc: str | Path, mode: str):
    """The zarr v3 group at a local path or a URL (fsspec options from the environment)."""
    import zarr

    if is_url(loc):
        return open_remote_group(str(loc), "opened", mode=mode, zarr_format=3)
    return zarr.open_group(str(loc), mode=mode, zarr_format=3)


def _root_document(loc: str | Path) -> dict | None:
    """The store root's ``zarr.json`` as a dict, or None where there is none."""
    if is_url(loc):
        fs, key = filesystem(str(loc))

        def read() -> bytes | None:
            try:
                return fs.cat_file(f"{key.rstrip('/')}/zarr.json")
            except FileNotFoundError:
                return None

        raw = with_retries(read, str(loc), "read")
    else:
        f = Path(loc) / "zarr.json"
        raw = f.read_bytes() if f.exists() else None
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {}


def store_exists(loc: str | Path) -> bool:
    """Whether anything is at a store location (a local path that exists, or a URL with a ``zarr.json``)."""
    if is_url(loc):
        return _root_document(loc) is not None
    return Path(loc).exists()


def delete_store(loc: str | Path) -> None:
    """Remove a store (local folder or every object under the URL); missing is fine."""
    if is_url(loc):
        fs, key = filesystem(str(loc))
        if fs.exists(key):
            with_retries(lambda: fs.rm(key, recursive=True), str(loc), "deleted")
        fs.invalidate_cache()
    else:
        shutil.rmtree(loc, ignore_errors=True)


class PaintingStore:
    """One painting's project store. Use :meth:`create` or :meth:`open`.

    ``path`` is where the store lives: a local folder (a :class:`~pathlib.Path`), or a URL
    string for a store on object storage (``s3://bucket/NAME.nightwatch.zarr``). Both take the
    same operations; on object storage the writer locks are leases (:mod:`.lease`) and a
    part swap is a server-side copy (see :meth:`replace_part`).
    """

    def __init__(self, path: str | Path, root, mode: str) -> None:
        self.path = location(path)
        self.root = root
        self.mode = mode

    @property
    def is_remote(self) -> bool:
        """Whether the store lives on object storage (a URL) rather than a local folder."""
        return isinstance(self.path, str)

    def _child(self, name: str) -> str | Path:
        """Location of a file or folder inside the store."""
        return join(self.path, name) if self.is_remote else self.path / name

    # ---- opening ----------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, *, name: str | None = None, overwrite: bool = False) -> PaintingStore:
        """Create an empty painting store at ``path`` (``NAME.nightwatch.zarr``)."""
        path = location(path)
        if store_exists(path):
            if not overwrite:
                raise NightwatchError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it.")
            doc = _root_document(path)
            if not doc or "nightwatch" not in doc.get("attributes", {}):
                raise NightwatchError(f"{path} exists and is not a nightwatch store; refusing to delete it.")
            delete_store(path)
        root = open_zarr_group(path, "w")
        if name is None:
            base = str(path).rstrip("/").rsplit("/", 1)[-1]
            name = base[: -len(STORE_SUFFIX)] if base.endswith(STORE_SUFFIX) else Path(base).stem
        root.attrs["nightwatch"] = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "created": _now(),
            "package_version": __version__,
            "complete": {},
        }
        return cls(path, root, "r+")

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> PaintingStore:
        """Open an existing store (``mode`` "r" or "r+"), checking its schema version."""
        path = location(path)
        if _root_document(path) is None:
            raise NightwatchError(f"{path} is not a painting store (no zarr.json); create one with `nightwatch synth` or import-mosaic.")
        try:
            root = open_zarr_group(path, mode)
        except NightwatchError:
            raise
        except Exception as exc:  # corrupt metadata
            raise NightwatchError(f"{path} could not be opened as a zarr v3 store ({exc}).") from exc
        meta = root.attrs.get("nightwatch")
        if not isinstance(meta, dict) or "schema_version" not in meta:
            raise NightwatchError(f"{path} is a zarr store but not a nightwatch painting store.")
        version = int(meta["schema_version"])
        if version > SCHEMA_VERSION:
            raise NightwatchError(
                f"{path} has store schema {version}, newer than this napari-nightwatch "
                f"({__version__}) understands (schema {SCHEMA_VERSION}); upgrade the package."
            )
        store = cls(path, root, mode)
        if version < SCHEMA_VERSION:
            if mode == "r":
                store = cls(path, open_zarr_group(path, "r+"), "r+")
            store._upgrade(version)
            if mode == "r":
                store = cls(path, open_zarr_group(path, "r"), "r")
        return store

    @classmethod
    def coerce(cls, store: PaintingStore | str | Path, mode: str = "r") -> PaintingStore:
        """``store`` itself (checked writable for ``mode="r+"``), or the store at that path opened."""
        if isinstance(store, PaintingStore):
            if mode == "r+":
                store.require_writable()
            return store
        return cls.open(store, mode=mode)

    def _upgrade(self, version: int) -> None:
        while version < SCHEMA_VERSION:
            UPGRADES[version](self)
            version += 1
            self._update_meta(schema_version=version)

    # ---- metadata -------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return dict(self.root.attrs["nightwatch"])

    def _fresh_meta(self) -> dict:
        """The root record as it is on disk now (another process may have changed it)."""
        return dict(open_zarr_group(self.path, "r").attrs["nightwatch"])

    def _update_meta(self, **kw: Any) -> None:
        with self.lock():
            m = self._fresh_meta()
            m.update(kw)
            self.root.attrs["nightwatch"] = jsonable(m)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @contextlib.contextmanager
    def lock(self, timeout: float = LOCK_WAIT_S) -> Iterator[None]:
        """Hold the store's writer lock (re-entrant within this process).

        Completion records and part swaps happen under it, from a fresh read of the
        root record, so two writers never lose each other's records.

        Raises
        ------
        NightwatchError
            When another process holds the lock longer than ``timeout`` seconds.
        """
        import filelock

        from .lease import LeaseLock, LeaseTimeout

        if getattr(self, "_lock", None) is None:
            self._lock = (LeaseLock(str(self._child(layout.LOCK_FILE)), {"what": "store record"})
                          if self.is_remote else filelock.FileLock(str(self._child(layout.LOCK_FILE))))
        try:
            self._lock.acquire(timeout=timeout)
        except (filelock.Timeout, LeaseTimeout) as exc:
            raise NightwatchError(
                f"{self.path} is being written by another process (lock {self._child(layout.LOCK_FILE)} held for "
                f"more than {timeout:.0f} s); wait for it to finish."
            ) from exc
        try:
            yield
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def job(self, part: str, what: str, wait: float = 0.0) -> Iterator[None]:
        """Hold the one-writer lock of ``part`` for a whole job (fit, embed, index, train, predict, import).

        Different parts may be written at the same time (embed while fitting element
        maps); the same part never: a second job on it is refused with one sentence
        naming the holder (its command, process, host and start time), or waits up to
        ``wait`` seconds. Re-entrant within a process. Readers never take it.

        Parameters
        ----------
        part
            The part the job writes, e.g. ``"xrf_maps"`` or ``layout.embeddings(grid_id, model_id)``.
        what
            The job in the user's words ("nightwatch embed"), shown to the one refused.
        wait
            Seconds to wait for the other job before refusing.
        """
        import socket

        import filelock

        self.require_writable()
        name = part.replace("/", "__")
        key = (str(self.path), part)
        held = _JOBS.get(key)
        if held is not None:  # this process already runs this part's job (a nested call)
            _JOBS[key] = (held[0], held[1] + 1)
            try:
                yield
            finally:
                lock, n = _JOBS[key]
                _JOBS[key] = (lock, n - 1)
            return
        from .lease import LeaseLock, LeaseTimeout

        if self.is_remote:  # the lock object itself names the holder
            lock: Any = LeaseLock(str(self._child(f".job.{name}.lock")), {"what": what, "started": _now()})
            info = None
        else:
            lock = filelock.FileLock(str(self._child(f".job.{name}.lock")))
            info = self._child(f".job.{name}.json")
        try:
            lock.acquire(timeout=wait)
        except (filelock.Timeout, LeaseTimeout) as exc:
            try:
                h = exc.holder if isinstance(exc, LeaseTimeout) else json.loads(info.read_text())
                holder = f"{h.get('what')} (process {h.get('pid')} on {h.get('host')}, since {h.get('started')})"
            except (OSError, ValueError):
                holder = "another job"
            raise NightwatchError(
                f"{part} of {self.path} is being written by {holder}; wait for it to finish or stop it, then run "
                "this again (it resumes)."
            ) from None
        _JOBS[key] = (lock, 1)
        try:
            if info is not None:
                info.write_text(json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                            "started": _now()}))
            yield
        finally:
            del _JOBS[key]
            if info is not None:
                with contextlib.suppress(OSError):
                    info.unlink()
            lock.release()

    def is_complete(self, part: str) -> bool:
        """Whether ``part`` (e.g. "mosaic", "xrf", "grids/L0-t224-s224") finished writing."""
        return part in self._fresh_meta().get("complete", {})

    def mark_complete(self, part: str, **made_from: Any) -> None:
        """Record that ``part`` is fully written, with its provenance (atomic under the lock).

        The record gets a fresh ``id`` and the ids of the parts it was made from
        (``inputs``, see :func:`.layout.inputs_of`), so a part whose input is rewritten
        later reads as stale (:meth:`stale_parts`).
        """
        with self.lock():
            m = self._fresh_meta()
            done = m.setdefault("complete", {})
            rec = provenance(**made_from)
            rec["id"] = uuid.uuid4().hex[:12]
            inputs = {p: done[p]["id"] for p in layout.inputs_of(part, rec)
                      if p != part and isinstance(done.get(p), dict) and "id" in done[p]}
            if inputs:
                rec["inputs"] = inputs
            done[part] = rec
            self.root.attrs["nightwatch"] = jsonable(m)

    def stale_parts(self) -> dict[str, str]:
        """Complete parts made from an input that was since rewritten or removed, with the reason.

        Staleness propagates: a part made from a stale part is stale too. Records
        written before the dependency graph (no ``inputs``) are never stale.
        """
        done = self.completed()
        out: dict[str, str] = {}
        for part, rec in done.items():
            for inp, rid in dict(rec.get("inputs", {})).items():
                cur = done.get(inp)
                if cur is None:
                    out[part] = f"{inp} is no longer complete"
                    break
                if cur.get("id") != rid:
                    out[part] = f"{inp} was rewritten after it was made ({cur.get('created')})"
                    break
        changed = True
        while changed:
            changed = False
            for part, rec in done.items():
                if part in out:
                    continue
                bad = next((inp for inp in dict(rec.get("inputs", {})) if inp in out), None)
                if bad is not None:
                    out[part] = f"{bad} is stale ({out[bad]})"
                    changed = True
        return out

    def check_fresh(self, part: str, fix: str) -> None:
        """Refuse a stale part with one sentence: what it is, why it is stale, and ``fix`` (what to rerun)."""
        reason = self.stale_parts().get(part)
        if reason is not None:
            raise NightwatchError(f"{part} in {self.path} is stale: {reason}; {fix}.")

    def mark_incomplete(self, part: str) -> None:
        """Forget the completion record of ``part`` (atomic under the lock)."""
        with self.lock():
            m = self._fresh_meta()
            m.setdefault("complete", {}).pop(part, None)
            self.root.attrs["nightwatch"] = jsonable(m)

    def completed(self) -> dict[str, dict]:
        return dict(self._fresh_meta().get("complete", {}))

    def remove_part(self, part: str) -> None:
        """Forget and delete a part (its record first, so it never looks complete half-deleted)."""
        self.require_writable()
        with self.lock():
            self.mark_incomplete(part)
            if part in self.root:
                del self.root[part]

    @contextlib.contextmanager
    def replace_part(self, part: str) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Write a new version of ``part`` beside the old one; swap it in when complete.

        Yields ``(group, made_from)``: write the part's arrays and attributes into
        ``group`` (a fresh group under ``staging/``) and put its provenance into the
        ``made_from`` dict. When the block ends without error, the old part is removed,
        the new one renamed into place and marked complete, all under the writer lock.
        On any error (including cancellation) the staging group is deleted and the old
        part, with everything derived from it, stays as it was.

        Parameters
        ----------
        part
            The part's path, e.g. ``layout.MOSAIC`` or ``layout.index(grid_id, model_id)``.
        """
        self.require_writable()
        with self.job(part, f"writing {part}"):
            staging = f"{layout.STAGING}/{uuid.uuid4().hex[:12]}"
            group = self.root.require_group(staging)
            made_from: dict[str, Any] = {}
            try:
                yield group, made_from
            except BaseException:
                with contextlib.suppress(Exception):
                    del self.root[staging]
                raise
            with self.lock():
                self.mark_incomplete(part)
                if part in self.root:
                    del self.root[part]
                parent = part.rpartition("/")[0]
                if parent:
                    self.root.require_group(parent)
                if self.is_remote:
                    self._move_remote(staging, part)
                else:
                    os.replace(self.path / staging, self.path / part)
                self.mark_complete(part, **made_from)

    def _move_remote(self, src: str, dst: str) -> None:
        """Move a staged part into place on object storage (no rename there: copy, then delete).

        Not atomic like a local rename, but the completion record is: the old part's record
        is already gone, so a copy killed half-way leaves ``dst`` incomplete (rerun the job),
        never a half part that reads as complete.
        """
        held = _JOBS.get((str(self.path), dst))
        if held is not None and getattr(held[0], "lost", False):
            raise NightwatchError(
                f"The lease on {dst} of {self.path} ran out while the job was running (the store was unreachable "
                "for longer than the lease); nothing was swapped in, run the job again."
            )
        fs, key = filesystem(str(self.path))
        a, b = f"{key.rstrip('/')}/{src}", f"{key.rstrip('/')}/{dst}"
        with_retries(lambda: fs.copy(a, b, recursive=True), str(self.path), f"written ({dst})")
        with_retries(lambda: fs.rm(a, recursive=True), str(self.path), f"written ({src})")
        fs.invalidate_cache()

    def require_writable(self) -> None:
        if self.mode == "r":
            raise NightwatchError(f"{self.path} was opened read-only; open it with mode='r+' to write.")

    def group(self, path: str, create: bool = False):
        """The zarr group at ``path`` (created when ``create``)."""
        if create:
            self.require_writable()
            return self.root.require_group(path)
        if path not in self.root:
            raise NightwatchError(f"{self.path} has no '{path}' yet.")
        return self.root[path]

    def has(self, path: str) -> bool:
        return path in self.root

    def node_attrs(self, path: str) -> dict:
        return dict(self.root[path].attrs.get("nightwatch", {}))

    # ---- mosaic -------------------------------------------------------------------------
    @property
    def has_mosaic(self) -> bool:
        return self.is_complete(layout.MOSAIC)

    def _mosaic_image_group(self):
        """The NGFF image group holding the mosaic pyramid (here, or referenced in place)."""
        import zarr

        if not self.has_mosaic:
            raise NightwatchError(f"{self.path} has no mosaic yet; import one with `nightwatch import-mosaic`.")
        g = self.root[layout.MOSAIC]
        ref = g.attrs.get("nightwatch", {}).get("reference")
        if ref:
            if is_url(ref):  # an OME-Zarr on a web server or object storage, read in place
                try:
                    return open_remote_group(ref, "opened")
                except NightwatchError as exc:
                    raise NightwatchError(f"The mosaic of {self.path} refers to {ref}, which cannot be read: {exc}") from exc
            if not Path(ref).exists():
                raise NightwatchError(f"The mosaic of {self.path} refers to {ref}, which no longer exists.")
            return zarr.open_group(ref, mode="r")
        return g

    @property
    def mosaic_info(self) -> dict:
        return dict(self.root[layout.MOSAIC].attrs.get("nightwatch", {}))

    def mosaic_levels(self) -> list:
        """Dask arrays ``(y, x, c)`` for each pyramid level, finest first."""
        import dask.array as da

        from ..io.ngff import multiscale_paths

        g = self._mosaic_image_group()
        axes = self.mosaic_info.get("axes", "cyx")
        levels = []
        for p in multiscale_paths(g):
            arr = da.from_zarr(g[p])
            if axes == "cyx":
                arr = arr.transpose(1, 2, 0)
            elif axes == "yx":
                arr = arr[..., None]
            elif axes != "yxc":
                arr = to_yxc(arr, axes)
            levels.append(arr)
        return levels

    @property
    def mosaic_shape(self) -> tuple[int, int]:
        """(height, width) of level 0 in pixels."""
        return tuple(int(v) for v in self.mosaic_info["shape"][:2])

    @property
    def mosaic_pixel_size_um(self) -> float:
        return float(self.mosaic_info["pixel_size_um"])

    @property
    def mosaic_downsamples(self) -> list[int]:
        return [int(v) for v in self.mosaic_info.get("downsamples", [1])]

    # ---- XRF ------------------------------------------------------------------------------
    @property
    def has_xrf(self) -> bool:
        return self.is_complete(layout.XRF)

    @property
    def xrf_info(self) -> dict:
        if not self.has_xrf:
            raise NightwatchError(f"{self.path} has no MA-XRF data yet; import a cube with `nightwatch import-xrf`.")
        return dict(self.root[layout.XRF].attrs["nightwatch"])

    @property
    def xrf_kind(self) -> str:
        """"cube" for a spectral cube, "maps" for imported element maps only."""
        return self.xrf_info.get("kind", "cube")

    def xrf_cube(self):
        """The MA-XRF cube as a dask array ``(y, x, energy)``."""
        import dask.array as da

        info = self.xrf_info
        if info.get("kind", "cube") != "cube":
            raise NightwatchError(f"{self.path} holds element maps, not a spectral cube.")
        return da.from_zarr(self.root[layout.XRF_CUBE])

    @property
    def xrf_calibration(self) -> EnergyCalibration:
        return EnergyCalibration.from_dict(self.xrf_info["calibration"])

    def xrf_energies(self) -> np.ndarray:
        n = int(self.root[layout.XRF_CUBE].shape[-1])
        return self.xrf_calibration.energies(n)

    @property
    def xrf_shape(self) -> tuple[int, int]:
        return tuple(int(v) for v in self.xrf_info["shape"][:2])

    @property
    def xrf_pixel_size_um(self) -> float:
        return float(self.xrf_info["pixel_size_um"])

    @property
    def xrf_affine(self) -> np.ndarray:
        """3x3 affine: XRF pixel (y, x, 1) -> level-0 mosaic pixel."""
        return as_affine(self.xrf_info["affine"])

    def set_xrf_affine(self, affine: np.ndarray, **made_from: Any) -> None:
        """Store a new XRF->mosaic affine with how it was obtained."""
        self.require_writable()
        a = as_affine(affine)
        g = self.root[layout.XRF]
        m = dict(g.attrs["nightwatch"])
        m["affine"] = a.tolist()
        m["registration"] = provenance(**made_from)
        g.attrs["nightwatch"] = jsonable(m)
        # a record of its own, so models and predictions made before it read as stale
        self.mark_complete(layout.REGISTRATION, **made_from)
        # other NGFF viewers place xrf/total and xrf_maps by their coordinate transformations
        from .sources import sync_xrf_placement

        sync_xrf_placement(self)

    def xrf_sum_spectrum(self) -> np.ndarray:
        return np.asarray(self.root[layout.XRF_SUM_SPECTRUM][...])

    def xrf_max_spectrum(self) -> np.ndarray:
        return np.asarray(self.root[layout.XRF_MAX_SPECTRUM][...])

    def xrf_total(self):
        """Total counts per XRF pixel, dask ``(y, x)``."""
        import dask.array as da

        return da.from_zarr(self.root[f"{layout.XRF_TOTAL}/0"])

    # ---- summary ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """What the store holds, and what is missing for each next step (for `info`)."""
        out: dict[str, Any] = {
            "path": str(self.path),
            "name": self.name,
            "schema_version": self.meta["schema_version"],
            "package_version": self.meta.get("package_version"),
            "complete": sorted(self.completed()),
        }
        if self.has_mosaic:
            info = self.mosaic_info
            out["mosaic"] = {
                "shape": info["shape"],
                "pixel_size_um": info["pixel_size_um"],
                "levels": len(info.get("downsamples", [1])),
                "source": info.get("source"),
                "reference": info.get("reference"),
            }
        if self.has_xrf:
            info = self.xrf_info
            out["xrf"] = {
                "kind": info.get("kind", "cube"),
                "shape": info["shape"],
                "pixel_size_um": info["pixel_size_um"],
                "calibration": info.get("calibration"),
                "affine": info["affine"],
                "source": info.get("source"),
            }
        if self.has(layout.XRF_MAPS) and self.is_complete(layout.XRF_MAPS):
            out["element_maps"] = list(self.node_attrs(layout.XRF_MAPS).get("elements", []))
        if self.has(layout.GRIDS):
            grids = {}
            for gid, g in self.root[layout.GRIDS].groups():
                models = []
                if "embeddings" in g:
                    models = [m for m, _ in g["embeddings"].groups()]
                grids[gid] = {"models": models, "n_tiles": g.attrs.get("nightwatch", {}).get("n_tiles")}
            out["grids"] = grids
        if self.has(layout.MODELS):
            out["models"] = sorted(m for m, _ in self.root[layout.MODELS].groups())
        if self.has(layout.PREDICTED):
            out["predicted"] = sorted(m for m, _ in self.root[layout.PREDICTED].groups())
        stale = self.stale_parts()
        from .sources import changed_reference

        changed = changed_reference(self)  # read here, not in stale_parts: it hashes the source's files
        if changed:
            stale = {"mosaic": changed, **stale}
        if stale:
            out["stale"] = stale
        out["next_steps"] = self.next_steps()
        return out

    def next_steps(self) -> list[str]:
        steps = []
        if not self.has_mosaic:
            steps.append("import a mosaic (nightwatch import-mosaic)")
        if not self.has_xrf:
            steps.append("import an MA-XRF cube (nightwatch import-xrf)")
        elif not self.is_complete(layout.XRF_MAPS) and self.xrf_info.get("kind", "cube") == "cube":
            steps.append("fit element maps (nightwatch xrf-maps)")
        if self.has_mosaic and not self.has(layout.GRIDS):
            steps.append("embed the mosaic tiles (nightwatch embed)")
        for part in sorted(self.stale_parts()):
            how = "nightwatch index" if "/index/" in part else _RERUN.get(part.split("/")[0], "rebuild it")
            steps.append(f"rerun {part}: {how}")
        return steps

    def __repr__(self) -> str:
        return f"PaintingStore({str(self.path)!r}, mode={self.mode!r})"


def open_worker_store(location: str, mode: str = "r+") -> PaintingStore:
    """The store at ``location`` opened inside a dask worker, or one sentence on why it cannot be.

    A worker that cannot see the store (a local path on another machine) is the usual
    mistake with a cluster; the sentence names the worker's host and what is needed.
    """
    try:
        return PaintingStore.open(location, mode=mode)
    except NightwatchError as exc:
        import socket

        raise NightwatchError(
            f"A dask worker on {socket.gethostname()} could not open the painting store {location} ({exc}); "
            "every worker needs the store at the same location, on a shared filesystem or object storage."
        ) from exc
