"""Servers the tests start themselves on 127.0.0.1: a static HTTP server and a local S3 (moto).

Nothing here contacts any other address. ``s3_env`` points boto/s3fs at the local server
through the standard environment variables (what a lab would set for MinIO), so the code
under test takes its endpoint and credentials exactly as in production.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import threading
from pathlib import Path

import pytest


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


class HttpFolder:
    """A folder served read-only over HTTP on 127.0.0.1; ``url(rel)`` gives a file's URL."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, rel: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{str(rel).lstrip('/')}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_folder(tmp_path):
    """An :class:`HttpFolder` over a fresh temporary folder (put files into ``.root``)."""
    root = tmp_path / "served"
    root.mkdir()
    srv = HttpFolder(root)
    yield srv
    srv.close()


class LocalS3:
    """moto's S3 server on 127.0.0.1 (state kept across stop/start within this process)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._cls = ThreadedMotoServer
        self.server = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def make_bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_folder(self, folder: Path, url: str) -> None:
        import fsspec

        fs = fsspec.filesystem("s3", endpoint_url=self.endpoint)
        fs.put(str(folder), url.removeprefix("s3://"), recursive=True)


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3 server with the standard AWS environment pointing at it (fake credentials)."""
    pytest.importorskip("moto.server", reason="moto[server] is a testing extra")
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = LocalS3()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", srv.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", srv.endpoint)
    # s3fs caches filesystem instances (and their endpoint) per process; start clean
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    try:
        from s3fs import S3FileSystem

        S3FileSystem.clear_instance_cache()
    except ImportError:
        pass
    yield srv
    srv.stop()
    S3FileSystem.clear_instance_cache()
