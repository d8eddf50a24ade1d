"""Connecting long jobs to an existing dask.distributed cluster.

Every long job (embed, xrf-maps, tile pairing, predict-xrf, index) takes ``client``: a
``distributed.Client``, a scheduler address ``"tcp://HOST:PORT"``, or None (in-process).
Workers open the store themselves by its location (a shared filesystem path or an object
storage URL) and write only their own chunks; the submitting process keeps the done-masks
and completion records, so a job is resumable however it was spread.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import NightwatchError

#: seconds to wait for a TCP connection to the scheduler's port before saying it cannot be reached
PROBE_TIMEOUT_S = 5.0
#: seconds the dask client may take for its handshake once the port answers
CONNECT_TIMEOUT_S = 30.0


def _unreachable(address: str, why: object) -> NightwatchError:
    return NightwatchError(
        f"--scheduler {address} could not be reached ({why}); start a dask scheduler there first "
        "(dask scheduler, dask-jobqueue or dask-kubernetes, see docs/scaling.md)."
    )


def _probe(address: str, timeout: float) -> None:
    """Fail in seconds where nothing listens: dask's own client retries a refused port until its timeout."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme not in ("tcp", "tls"):
        return  # other transports (inproc, ucx) have no TCP port to knock on
    host, _, port = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")  # an IPv6 literal is written [::1]:8786
    try:
        port_n = int(port)
    except ValueError:
        raise NightwatchError(f"--scheduler {address} is not a scheduler address; expected tcp://HOST:PORT.") from None
    if not host or not 0 < port_n < 65536:
        raise NightwatchError(f"--scheduler {address} is not a scheduler address; expected tcp://HOST:PORT.")
    try:
        with socket.create_connection((host, port_n), timeout=timeout):
            pass
    except OSError as exc:
        raise _unreachable(address, exc) from exc


def connect(client: Any, *, timeout: float = CONNECT_TIMEOUT_S) -> tuple[Any, bool]:
    """``(client, owned)``: the given client, or a new one connected to a scheduler address.

    ``owned`` is True when this call made the client (the caller closes it). An address
    where nothing answers is refused within :data:`PROBE_TIMEOUT_S` seconds.

    Raises
    ------
    NightwatchError
        When the address is malformed or cannot be reached.
    """
    if client is None or not isinstance(client, str):
        return client, False
    _probe(client, min(PROBE_TIMEOUT_S, timeout))
    try:
        from distributed import Client

        return Client(client, timeout=timeout), True
    except OSError as exc:
        raise _unreachable(client, exc) from exc


@contextlib.contextmanager
def connected(client: Any) -> Iterator[Any]:
    """Context manager over :func:`connect` that closes a client it made."""
    c, owned = connect(client)
    try:
        yield c
    finally:
        if owned:
            c.close()


def n_workers(client: Any) -> int:
    """Number of workers the scheduler knows (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def task_batches(todo: Sequence[int], client: Any, *, max_per_task: int = 16) -> list[list[int]]:
    """``todo`` (chunk ids) cut into batches, one task each: about four tasks per worker.

    Several chunks per task spread the cost of opening the store; several tasks per
    worker keep every worker busy and make progress (and cancellation) come in steps.
    """
    per_task = max(1, min(int(max_per_task), math.ceil(len(todo) / (4 * n_workers(client)))))
    items = [int(c) for c in todo]
    return [items[i : i + per_task] for i in range(0, len(items), per_task)]
