"""Helpers shared by the GUI tests: the event-loop responsiveness checks and a private config dir."""

from __future__ import annotations

import pytest


def idle_gap_ms(qtbot, ms: int = 700) -> float:
    """Largest event-loop gap of the idle GUI: what the OS alone costs on a busy machine."""
    from napari_nightwatch._napari._qt.jobs import EventLoopProbe

    probe = EventLoopProbe()
    probe.start()
    qtbot.wait(ms)
    return probe.stop()


def check_responsive(what: str, runner, idle_ms: float) -> None:
    """The job may not freeze the GUI: under 100 ms, or no worse than the idle loop on an overloaded host."""
    gap = runner.job_max_gap_ms
    print(f"\n{what}: largest event-loop gap while the job ran {gap:.1f} ms ({runner.elapsed_s:.2f} s job; "
          f"idle loop {idle_ms:.1f} ms); adding its layers took {runner.show_s * 1000:.0f} ms")
    assert gap < max(100.0, 1.5 * idle_ms)


@pytest.fixture(autouse=True)
def private_config_dir(tmp_path, monkeypatch):
    """Widgets remember their settings in a per-test folder, never in the user's config."""
    monkeypatch.setenv("NAPARI_NIGHTWATCH_CONFIG_DIR", str(tmp_path / "config"))
