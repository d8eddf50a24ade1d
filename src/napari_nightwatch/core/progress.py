"""Progress reporting for long jobs, shared by the CLI (tqdm) and widgets (napari).

Long functions accept ``progress: ProgressCallback | None``. They call it as
``progress(done, total, stage)``. A callback may raise
:class:`~napari_nightwatch.core.errors.Cancelled` to stop the job; jobs write whole
chunks and keep a done-mask, so a cancelled job resumes where it stopped.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager

ProgressCallback = Callable[[int, int, str], None]


#: fault injection for the kill/resume tests: ``"STAGE:N"`` kills this process with SIGKILL (no cleanup,
#: as a power cut or the OOM killer would) at the first progress report of STAGE with done >= N
FAILPOINT_ENV = "NIGHTWATCH_KILL_AT"


def report(progress: ProgressCallback | None, done: int, total: int, stage: str) -> None:
    """Call ``progress`` if one was given (and honour the :data:`FAILPOINT_ENV` fault injection)."""
    point = os.environ.get(FAILPOINT_ENV)
    if point:
        where, _, n = point.rpartition(":")
        if where == stage and n.isdigit() and int(done) >= int(n):
            os.kill(os.getpid(), signal.SIGKILL)
    if progress is not None:
        progress(int(done), int(total), stage)


class StageTimer:
    """Accumulates wall time per named stage (read, preprocess, model, write, ...)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


def tqdm_progress(desc: str = "", disable: bool = False) -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback backed by a tqdm bar, and a function that closes it.

    The bar is created on the first call and re-created when the stage changes.
    """
    from tqdm.auto import tqdm

    state: dict = {"bar": None, "stage": None}

    def callback(done: int, total: int, stage: str) -> None:
        if disable:
            return
        if state["bar"] is None or state["stage"] != stage:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=total, desc=f"{desc}{stage}", unit="step", leave=False)
            state["stage"] = stage
        bar = state["bar"]
        if total != bar.total:
            bar.total = total
        bar.n = done
        bar.refresh()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()
            state["bar"] = None

    return callback, close
