"""Exclusive locks for painting stores on object storage (S3 and compatible servers).

Object storage has no file locks and no rename. A lock here is an object created with a
conditional put (``If-None-Match: *``, which S3, MinIO and moto honour: of two writers
racing to create it, exactly one succeeds) that holds a *lease*: the holder's identity and
an expiry time, renewed by a background thread while the job runs. A holder that dies
stops renewing, so its lease expires and the next writer breaks it; hosts sharing a store
need clocks within a few seconds of each other (NTP), which the lease length absorbs.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from ..core.errors import NightwatchError
from ..io.remote import filesystem, with_retries

#: seconds a lease lasts without renewal; renewed every third of it while held
LEASE_S = 60.0

#: tokens of the leases this process holds now (a record of ours not in here is stale)
_LIVE_TOKENS: set[str] = set()


def _dead_holder(rec: dict[str, Any]) -> bool:
    """Whether ``rec`` was written by a process of *this* host that no longer holds it.

    A job that failed because the server went away cannot delete its lock object; a rerun on
    the same machine need not wait for the lease to expire: the writer is this very process
    (and the lease is not among its live ones) or a process that has exited.
    """
    if rec.get("host") != socket.gethostname():
        return False
    try:
        pid = int(rec.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():
        return rec.get("token") not in _LIVE_TOKENS
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists but not ours (EPERM): alive
        return False
    return False


class LeaseTimeout(Exception):
    """Raised by :meth:`LeaseLock.acquire` when another holder keeps the lock; ``holder`` says who."""

    def __init__(self, holder: dict[str, Any] | None) -> None:
        super().__init__(str(holder))
        self.holder = holder or {}


class LeaseLock:
    """An exclusive lease on the object at ``url`` (re-entrant within one instance).

    Parameters
    ----------
    url
        The lock object's URL, e.g. ``s3://bucket/p.nightwatch.zarr/.job.xrf_maps.lock``.
    info
        What the holder is doing (shown to whoever is refused), stored in the object.
    lease_s
        Lease length in seconds.
    """

    def __init__(self, url: str, info: dict[str, Any] | None = None, lease_s: float = LEASE_S) -> None:
        self.url = url
        self.fs, self.key = filesystem(url)
        self.info = dict(info or {})
        self.lease_s = float(lease_s)
        self.token: str | None = None
        self.depth = 0
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # ---- the lock object ----------------------------------------------------------------
    def _record(self) -> bytes:
        rec = {**self.info, "token": self.token, "pid": os.getpid(), "host": socket.gethostname(),
               "expires": time.time() + self.lease_s}
        return json.dumps(rec).encode()

    def holder(self) -> dict[str, Any] | None:
        """The current lock object's record, or None when there is none (or it is unreadable)."""
        try:
            return json.loads(with_retries(lambda: self.fs.cat_file(self.key), self.url, "read"))
        except NightwatchError:
            return None
        except ValueError:  # a torn/empty object: treat as expired
            return {"expires": 0}

    def _create(self) -> bool:
        """Create the lock object if absent (atomic); False when it exists."""
        data = self._record()

        def put() -> bool:
            try:
                with self.fs.open(self.key, "xb") as fh:
                    fh.write(data)
            except FileExistsError:
                return False
            return True

        return with_retries(put, self.url, "locked")

    # ---- public -------------------------------------------------------------------------
    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lease, waiting up to ``timeout`` seconds; raises :class:`LeaseTimeout`."""
        if self.depth:
            self.depth += 1
            return
        self.token = uuid.uuid4().hex
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self.fs.invalidate_cache()
            if self._create():
                break
            cur = self.holder()
            if cur is None or float(cur.get("expires", 0)) < time.time() or _dead_holder(cur):
                # the holder died (its lease ran out, or its process is gone) or released
                # between our two calls: break it, retry
                self._remove_if(cur)
                continue
            if time.monotonic() >= deadline:
                raise LeaseTimeout(cur)
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        self.depth, self.lost = 1, False
        _LIVE_TOKENS.add(self.token)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, daemon=True, name="nightwatch-lease")
        self._renewer.start()

    def _remove_if(self, expected: dict[str, Any] | None) -> None:
        cur = self.holder()
        if cur is None or expected is None or cur.get("token") == expected.get("token"):
            try:
                self.fs.rm_file(self.key)
            except FileNotFoundError:
                pass

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            cur = self.holder()
            if cur is None or cur.get("token") != self.token:
                self.lost = True  # broken by another writer after our lease ran out
                return
            try:
                self.fs.pipe_file(self.key, self._record())
            except Exception:  # noqa: BLE001 - retried at the next tick; the lease outlives two misses
                continue

    @property
    def is_held(self) -> bool:
        return self.depth > 0 and not self.lost

    def release(self) -> None:
        """Give the lease back (deletes the lock object if it is still ours)."""
        if self.depth == 0:
            return
        self.depth -= 1
        if self.depth:
            return
        self._stop.set()
        _LIVE_TOKENS.discard(self.token or "")
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        cur = self.holder()
        if cur is not None and cur.get("token") == self.token:
            try:
                self.fs.rm_file(self.key)
            except (FileNotFoundError, NightwatchError):
                pass
            except Exception:  # noqa: BLE001 - an unreachable server: the lease expires by itself
                pass
        self.token = None
