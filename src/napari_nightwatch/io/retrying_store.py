"""A zarr store that retries the transient failures of a remote (fsspec) store.

In its own module so that importing :mod:`.remote` (the CLI, the napari reader) does not
import zarr; :func:`.remote.zarr_store` builds it.
"""

from __future__ import annotations

import asyncio

from zarr.storage import WrapperStore

from ..core.errors import NightwatchError
from .remote import BACKOFF_S, RETRIES, is_transient, remote_error


class RetryingStore(WrapperStore):
    """A zarr store that retries every transient failure of the wrapped (fsspec) store.

    zarr reads a remote array chunk by chunk for as long as a job runs (an embed of a whole
    painting: hours); one dropped connection must not end it. Each get/set/exists/delete
    is retried with exponential back-off like :func:`with_retries`; when the attempts run
    out, or the failure is not transient (403, 404 is "no chunk": a fill value), the
    error is one sentence naming the URL.
    """

    def __init__(self, store, url: str = "") -> None:
        super().__init__(store)
        self.url = url or str(store)
        self.retried = 0  # how many calls needed another attempt (for tests and logs)

    def _with_store(self, store):
        return type(self)(store, self.url)

    async def _retry(self, what: str, make):
        delay = BACKOFF_S
        for i in range(RETRIES):
            try:
                return await make()
            except Exception as exc:  # noqa: BLE001 - classified below
                if isinstance(exc, NightwatchError) or not is_transient(exc):
                    raise
                if i == RETRIES - 1:
                    raise remote_error(exc, self.url, what) from exc
                self.retried += 1
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, key, prototype, byte_range=None):
        return await self._retry(f"read ({key})", lambda: self._store.get(key, prototype, byte_range))

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        return await self._retry("read", lambda: self._store.get_partial_values(prototype, key_ranges))

    async def exists(self, key):
        return await self._retry(f"read ({key})", lambda: self._store.exists(key))

    async def set(self, key, value):  # a PUT of the same bytes: safe to repeat
        return await self._retry(f"written ({key})", lambda: self._store.set(key, value))

    async def delete(self, key):
        return await self._retry(f"written ({key})", lambda: self._store.delete(key))
