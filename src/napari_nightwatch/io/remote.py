"""Locations that are URLs: sources and stores over HTTP(S) or on S3-compatible object storage.

Everything remote goes through fsspec (``http(s)://`` via aiohttp, ``s3://`` via s3fs) so
zarr's own ``FsspecStore`` reads OME-Zarr in place. Credentials and endpoints come from the
standard environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for S3-compatible servers such as MinIO); no
secret is ever written into a store. Transient failures (connection reset, timeout, HTTP
5xx) are retried with exponential back-off; 403/404 and exhausted retries become one
sentence (:func:`remote_error`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.errors import NightwatchError

#: URL schemes this package reads and writes through fsspec
REMOTE_SCHEMES = ("http", "https", "s3")
#: requests in flight at once for :func:`fetch_many`: enough to hide network latency, few enough for a
#: small server (Python's http.server accepts 5 pending connections and drops the rest for a second)
FETCH_CONCURRENCY = 4
#: attempts for one remote read or write, and the first back-off (doubled after each failure)
RETRIES = 4
BACKOFF_S = 0.25

T = TypeVar("T")


def is_url(location: Any) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a local path."""
    return isinstance(location, str) and "://" in location and location.split("://", 1)[0].lower() in REMOTE_SCHEMES


def location(path: Any) -> Any:
    """A store or source location as kept: a URL (``s3://...``, ``http(s)://...``) as a string, else a Path."""
    from pathlib import Path

    return path if is_url(path) else Path(path)


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for ``url`` from the standard environment (never stored)."""
    if scheme(url) == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        opts: dict[str, Any] = {}
        if endpoint:
            opts["endpoint_url"] = endpoint
        # the library's own retries are short; ours (below) back off between whole requests
        opts["config_kwargs"] = {"retries": {"max_attempts": 2, "mode": "standard"},
                                 "connect_timeout": 10, "read_timeout": 60}
        return opts
    if scheme(url) in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=60, connect=10)}}
    return {}


def filesystem(url: str) -> tuple[Any, str]:
    """``(fs, path)``: the fsspec filesystem for ``url`` and the path within it."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as exc:  # pragma: no cover - s3fs/aiohttp are dependencies
        raise NightwatchError(f"{url}: the package for {scheme(url)}:// is not installed ({exc}).") from exc


def join(url: str, *parts: str) -> str:
    """``url`` with path ``parts`` appended (no normalisation of ``..``)."""
    out = url.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def _status(exc: BaseException) -> int | None:
    for attr in ("status", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int):
            return v
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        return resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a failed remote call is worth retrying (network hiccup, timeout, server error)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, NightwatchError)):
        return False
    st = _status(exc)
    if st is not None:
        return st >= 500 or st in (408, 429)
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or type(exc).__name__ in (
        "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "EndpointConnectionError",
        "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError", "ServerTimeoutError",
    )


def remote_error(exc: BaseException, url: str, what: str = "read") -> NightwatchError:
    """One sentence for a failed remote access: not found, forbidden, or unreachable."""
    st = _status(exc)
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) or st == 404:
        return NightwatchError(f"{url} was not found (404) when it was {what}; check the URL.")
    if isinstance(exc, PermissionError) or st in (401, 403):
        return NightwatchError(
            f"{url} refused access ({st or 403}) when it was {what}; check the credentials in the environment "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE) or that the object is public."
        )
    rerun = "(rerun the command when it is: what was finished is kept, the rest resumes)"
    if isinstance(exc, TimeoutError) or "Timeout" in name:
        return NightwatchError(f"{url} timed out when it was {what} (after {RETRIES} attempts); is the server up? "
                               f"{rerun}")
    return NightwatchError(
        f"{url} could not be {what} ({name}: {str(exc)[:200]}) after {RETRIES} attempts; is the server reachable? "
        f"{rerun}"
    )


def with_retries(call: Callable[[], T], url: str, what: str = "read", attempts: int = RETRIES) -> T:
    """Run ``call()``; retry transient failures with exponential back-off, then raise one sentence."""
    delay = BACKOFF_S
    for i in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classified below
            if isinstance(exc, NightwatchError):
                raise
            if not is_transient(exc) or i == attempts - 1:
                raise remote_error(exc, url, what) from exc
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------------------ reading objects
def url_path(url: str) -> str:
    """The path part of ``url`` without query or fragment (for suffix checks)."""
    from urllib.parse import urlsplit

    return urlsplit(url).path


def fetch(url: str, what: str = "read") -> bytes:
    """The bytes of one object at ``url``, with retries; 403/404/unreachable become one sentence."""
    fs, path = filesystem(url)
    return with_retries(lambda: fs.cat_file(path), url, what)


def fetch_many(urls: list[str], what: str = "read", concurrency: int = FETCH_CONCURRENCY) -> dict[str, bytes]:
    """The bytes of several objects on one server, ``concurrency`` requests at a time.

    One round through fsspec; an object that fails there is fetched again on its own through
    :func:`fetch`, so it gets the retries with back-off and, if it still fails, the
    one-sentence error.
    """
    if not urls:
        return {}
    fs, _ = filesystem(urls[0])
    paths = {fs._strip_protocol(u): u for u in urls}  # what url_to_fs gives, without building it per URL
    try:
        got = fs.cat(list(paths), on_error="return", batch_size=int(concurrency))
    except Exception:  # noqa: BLE001 - the round as a whole failed: fall back to one by one
        got = {}
    out: dict[str, bytes] = {}
    for path, url in paths.items():
        data = got.get(path)
        out[url] = data if isinstance(data, bytes) else fetch(url, what)
    return out


def fetch_if_present(url: str, what: str = "read") -> bytes | None:
    """Like :func:`fetch`, but None where the object does not exist (a zarr chunk never written)."""
    fs, path = filesystem(url)

    def call() -> bytes | None:
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    return with_retries(call, url, what)


def content_token(url: str, what: str = "read") -> str:
    """A short token that changes when the object at ``url`` changes: its ETag where the server
    gives one (S3, most static web servers), else a hash of its bytes; ``"absent"`` when missing.

    Last-Modified is not used: rewriting identical bytes would read as a change.
    """
    import hashlib

    fs, path = filesystem(url)

    def call() -> str:
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return "absent"
        etag = info.get("ETag") or info.get("etag")
        if etag:
            return f"etag:{str(etag).strip(chr(34))}:{info.get('size')}"
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return "absent"
        return f"sha1:{hashlib.sha1(data).hexdigest()[:16]}:{len(data)}"

    return with_retries(call, url, what)


def zarr_store(url: str, read_only: bool = True):
    """A zarr store for ``url`` (fsspec, options from the environment) that retries transient failures."""
    from zarr.storage import FsspecStore

    from .retrying_store import RetryingStore  # zarr is imported only when a remote zarr is opened

    inner = FsspecStore.from_url(url, storage_options=storage_options(url), read_only=read_only)
    return RetryingStore(inner, url)


def open_zarr_group(url: str, what: str = "opened as a zarr group", mode: str = "r", zarr_format: int | None = None):
    """The zarr group at ``url`` through fsspec (:func:`zarr_store`: every chunk access retried), with retries.

    ``mode`` as for ``zarr.open_group`` (read-only by default; zarr v2 or v3 unless
    ``zarr_format``). A missing group (no ``zarr.json``, ``.zgroup`` or ``.zattrs`` there)
    is one sentence.
    """
    import zarr

    def call():
        return zarr.open_group(store=zarr_store(url, read_only=mode == "r"), mode=mode, zarr_format=zarr_format)

    try:
        return with_retries(call, url, what)
    except NightwatchError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise NightwatchError(
                f"{url} has no zarr metadata (zarr.json, .zgroup or .zattrs): it was not found (404) or is not "
                "a zarr group; check the URL."
            ) from exc.__cause__
        raise
