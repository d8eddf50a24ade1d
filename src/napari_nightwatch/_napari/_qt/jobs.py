"""Run one library call in a napari thread worker, with progress, Cancel and clear errors.

The library function gets a ``progress(done, total, stage)`` callback. Called from
the worker thread, the callback raises :class:`~napari_nightwatch.core.errors.Cancelled`
once Cancel was pressed, and otherwise forwards the figures to the main thread
through a Qt signal (a queued connection), throttled so that a job reporting every
tile does not flood the event loop. The result is delivered on the main thread,
where the widget turns it into layers.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QElapsedTimer, QObject, QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ...core.errors import Cancelled, NightwatchError

log = logging.getLogger(__name__)

#: seconds between progress updates forwarded to the GUI
PROGRESS_INTERVAL_S = 0.05
#: Python's GIL switch interval while a job runs (CPython's default is 0.005 s)
SWITCH_INTERVAL_S = 0.001


class _Outcome:
    """What a job ended with; errors travel as values so napari never re-raises them."""

    def __init__(self, value: Any = None, error: BaseException | None = None, tb: str = "") -> None:
        self.value = value
        self.error = error
        self.tb = tb


def notify_error(message: str) -> None:
    """Show ``message`` as a napari error notification."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    """Show ``message`` as a napari info notification."""
    from napari.utils.notifications import show_info

    show_info(message)


class JobRunner(QWidget):
    """A progress bar, a stage label and a Cancel button running one job at a time.

    Signals
    -------
    succeeded(object)
        The job's return value, on the main thread.
    failed(str)
        The message shown to the user (also for a cancelled job).
    done()
        Emitted last, whatever the outcome.
    """

    succeeded = Signal(object)
    failed = Signal(str)
    done = Signal()
    _progressed = Signal(int, int, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._bar = QProgressBar()
        self._bar.setRange(0, 1)
        self._bar.setValue(0)
        self._stage = QLabel("")
        self._stage.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self._bar, 1)
        row.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self._stage)
        self._progressed.connect(self._on_progress)
        self._cancel = threading.Event()
        self._worker = None
        self._napari_bar = None
        self.last_message = ""
        self.last_progress: tuple[int, int, str] = (0, 0, "")
        self.elapsed_s = 0.0
        #: largest GUI event-loop gap (ms) while the last job ran in its worker, and the
        #: seconds the main thread then spent turning its result into layers
        self.job_max_gap_ms = 0.0
        self.show_s = 0.0
        self._probe = EventLoopProbe(parent=self)

    # ------------------------------------------------------------------ API
    @property
    def running(self) -> bool:
        return self._worker is not None

    def cancel(self) -> None:
        """Ask the running job to stop at its next progress report."""
        self._cancel.set()
        self._stage.setText("cancelling...")

    def run(
        self,
        func: Callable[[Callable[[int, int, str], None]], Any],
        on_result: Callable[[Any], None] | None = None,
        label: str = "",
    ):
        """Start ``func(progress)`` in a thread worker; ``on_result(value)`` runs on the main thread.

        Returns the napari worker (tests may wait on its ``finished`` signal).
        """
        from napari.qt.threading import create_worker

        from .._compat import avoid_llvm_clash

        avoid_llvm_clash()
        if self.running:
            notify_error(f"{label or 'A job'} is already running; wait for it or press Cancel.")
            return None
        self._cancel.clear()
        self._label = label
        last = [0.0]

        def progress(done: int, total: int, stage: str) -> None:
            if self._cancel.is_set():
                raise Cancelled(f"{label} cancelled")
            now = time.perf_counter()
            if now - last[0] >= PROGRESS_INTERVAL_S or done >= total:
                last[0] = now
                self._progressed.emit(int(done), int(total), str(stage))

        def job() -> _Outcome:
            try:
                return _Outcome(func(progress))
            except BaseException as exc:  # delivered to the main thread, shown there
                return _Outcome(error=exc, tb=traceback.format_exc())

        worker = create_worker(job, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda out: self._on_returned(out, on_result))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._clock = QElapsedTimer()
        self._clock.start()
        self.cancel_button.setEnabled(True)
        self._bar.setRange(0, 0)  # busy until the first report
        self._stage.setText(f"{label}: starting")
        self._probe.start()
        # a shorter GIL switch interval while a job runs: the GUI thread waits less for the
        # interpreter when the worker runs pure-Python stretches (costs the worker ~nothing)
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
        worker.start()
        return worker

    # ------------------------------------------------------------------ slots (main thread)
    def _on_progress(self, done: int, total: int, stage: str) -> None:
        self.last_progress = (done, total, stage)
        if total > 0:
            self._bar.setRange(0, total)
            self._bar.setValue(min(done, total))
        self._stage.setText(f"{self._label}: {stage} {done}/{total}")
        try:
            from napari.utils import progress as napari_progress

            if self._napari_bar is None or self._napari_bar.total != total:
                if self._napari_bar is not None:
                    self._napari_bar.close()
                self._napari_bar = napari_progress(total=max(total, 1), desc=f"{self._label}: {stage}")
            self._napari_bar.set_description(f"{self._label}: {stage}")
            self._napari_bar.n = min(done, total)
            self._napari_bar.refresh()
        except Exception:  # the activity dock is a convenience; never fail a job over it
            log.debug("napari progress update failed", exc_info=True)

    def _on_returned(self, out: _Outcome, on_result: Callable[[Any], None] | None) -> None:
        self.elapsed_s = self._clock.elapsed() / 1000.0
        self.job_max_gap_ms = self._probe.stop()
        if out.error is None:
            self.last_message = ""
            t0 = time.perf_counter()
            try:
                if on_result is not None:
                    on_result(out.value)
                self.show_s = time.perf_counter() - t0
            except NightwatchError as exc:
                self._fail(str(exc))
                return
            except Exception as exc:
                log.error("adding the results of %s failed:\n%s", self._label, traceback.format_exc())
                self._fail(f"{self._label} finished but its results could not be shown: {type(exc).__name__}: {exc}")
                return
            self._stage.setText(f"{self._label}: done in {self.elapsed_s:.1f} s")
            self.succeeded.emit(out.value)
        elif isinstance(out.error, Cancelled):
            msg = f"{self._label} cancelled; finished parts are kept, run it again to resume."
            self.last_message = msg
            self._stage.setText(msg)
            notify_info(msg)
            self.failed.emit(msg)
        elif isinstance(out.error, NightwatchError):
            self._fail(str(out.error))
        else:
            log.error("%s failed:\n%s", self._label, out.tb)
            self._fail(f"{self._label} failed: {type(out.error).__name__}: {out.error}")

    def _fail(self, msg: str) -> None:
        self.last_message = msg
        self._stage.setText(msg)
        notify_error(msg)
        self.failed.emit(msg)

    def _on_finished(self) -> None:
        sys.setswitchinterval(getattr(self, "_switch_interval", sys.getswitchinterval()))
        self._worker = None
        self.cancel_button.setEnabled(False)
        self._bar.setRange(0, 1)
        self._bar.setValue(1 if not self.last_message else 0)
        if self._napari_bar is not None:
            self._napari_bar.close()
            self._napari_bar = None
        self.done.emit()


class EventLoopProbe(QObject):
    """Measures the largest gap between Qt event-loop ticks (how long the GUI was frozen).

    A zero-interval-ish ``QTimer`` fires whenever the loop is free; the largest time
    between two firings is the longest the user would have waited for a repaint.
    """

    def __init__(self, interval_ms: int = 5, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None
        self.max_gap_ms = 0.0
        self.ticks = 0

    def start(self) -> None:
        self._last = time.perf_counter()
        self.max_gap_ms = 0.0
        self.ticks = 0
        self._timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.max_gap_ms = max(self.max_gap_ms, (now - self._last) * 1000.0)
        self._last = now
        self.ticks += 1

    def stop(self) -> float:
        """Stop probing; returns the largest gap in milliseconds."""
        self._timer.stop()
        return self.max_gap_ms
