"""Retries stay inside SFSYNC_RETRY_MAX_SECONDS and a stop signal ends any back-off at once.

Against the simulators' fault injection: a ``Retry-After`` longer than the cap ends the retries as a
transient failure (exit 8) without waiting; the waits of one call never add up past the cap; and a
SIGTERM while ``sfsync run`` waits to retry ends the run within a couple of seconds as a signal
stop, having confirmed nothing it did not write (the next run applies it).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from sfsync.engine import Worker, build_clients
from sfsync.errors import EXIT_OK, EXIT_UNAVAILABLE, RemoteError
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from tests.conftest import add_tasks, fields_of, new_message_id, report

SFSYNC = str(Path(sys.executable).parent / "sfsync")


def recording_worker(settings: Settings) -> tuple[Worker, list[float]]:
    """A worker whose back-off sleeps are recorded, not waited."""
    slept: list[float] = []
    mm, sf, retries = build_clients(settings, sleep=slept.append)
    return Worker(settings, mm=mm, sf=sf, retries=retries), slept


def test_a_retry_after_beyond_the_cap_ends_the_retries_at_once(sims: Simulators,
                                                              settings_for: Callable[..., Settings]) -> None:
    sims.mm.add_reports([report(new_message_id(), "delivered")])
    sims.mm.faults.configure(rate=1.0, kinds=["429"], retry_after=40)
    worker, slept = recording_worker(settings_for(SFSYNC_RETRY_MAX_SECONDS="5", SFSYNC_RETRY_ATTEMPTS="6"))
    with pytest.raises(RemoteError) as failure:
        worker.run()
    assert failure.value.transient and failure.value.exit_code == EXIT_UNAVAILABLE
    assert slept == []  # 40 s is past the 5 s cap: no wait at all
    assert sims.mm.stats()["faults"]["injected"] == {"429": 1}  # asked once, not six times
    assert sims.mm.confirm_log() == []


def test_the_waits_of_one_call_never_add_up_past_the_cap(sims: Simulators,
                                                         settings_for: Callable[..., Settings]) -> None:
    sims.mm.add_reports([report(new_message_id(), "delivered")])
    sims.mm.faults.configure(rate=1.0, kinds=["503"])
    worker, slept = recording_worker(settings_for(SFSYNC_RETRY_MAX_SECONDS="3", SFSYNC_RETRY_ATTEMPTS="30"))
    with pytest.raises(RemoteError):
        worker.run()
    assert slept and sum(slept) <= 3.0, slept
    assert len(slept) < 29  # the cap ended the retries, not the attempts


def test_sfsync_run_with_a_retry_after_beyond_the_cap_exits_8_in_seconds(sims: Simulators, tmp_path: Path,
                                                                       store_env: dict[str, str]) -> None:
    sims.mm.add_reports([report(new_message_id(), "delivered")])
    sims.mm.faults.configure(rate=1.0, kinds=["429"], retry_after=40)
    env = cli_env(sims, tmp_path, SFSYNC_RETRY_MAX_SECONDS="5", **store_env)
    started = time.monotonic()
    result = subprocess.run([SFSYNC, "run"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 10
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "retry_cap" for e in events), result.stderr
    summary = [e for e in events if e.get("event") == "run_summary"]
    assert summary and summary[0]["exit_code"] == EXIT_UNAVAILABLE


def test_sigterm_during_a_retry_wait_ends_the_run_at_once_and_loses_nothing(
        sims: Simulators, tmp_path: Path, make_worker: Callable[..., Worker], store_env: dict[str, str]) -> None:
    message = new_message_id()
    (task,) = add_tasks(sims, [message])
    sims.mm.add_reports([report(message, "delivered", "220")])
    # Salesforce answers 429 "try again in 30 s" to everything: the run sits in a retry wait.
    sims.sf.faults.configure(rate=1.0, kinds=["429"], retry_after=30)
    env = cli_env(sims, tmp_path, SFSYNC_RETRY_MAX_SECONDS="120", SFSYNC_RETRY_ATTEMPTS="6", **store_env)
    proc = subprocess.Popen([SFSYNC, "run"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        lines = line_reader(proc.stderr)
        retry = wait_for_event(lines, "retry", timeout=20)
        assert "30.0s" in retry["msg"], retry
        # The retry line is logged just before the wait: a signal now finds the run about to wait or
        # waiting, and either way must end it at once (the stop is checked before and during the wait).
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 3.0, f"SIGTERM took {took:.1f}s to end the run"
    assert code == EXIT_OK
    summary = wait_for_event(lines, "run_summary", timeout=5)
    assert summary["exit_reason"] == "signal" and summary["confirmed"] == 1  # staged, then confirmed
    assert fields_of(sims, task) == (None, None)

    sims.sf.faults.configure(rate=0.0)
    again = make_worker().run()  # the next run drains the staged report and applies it
    assert again.counts["applied"] == 1 and again.counts["fetched"] == 0
    assert fields_of(sims, task) == ("Delivered", "220")


# -- helpers ---------------------------------------------------------------------------------------------
def cli_env(sims: Simulators, tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, **sims.env(), "SFSYNC_STATE_DIR": str(tmp_path / "state"), "SFSYNC_LOG_FORMAT": "json", **extra}


def line_reader(stream: IO[str] | None) -> queue.Queue[str]:
    """Lines of a child's stderr, read by a thread so a test never blocks on the pipe."""
    assert stream is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_event(lines: queue.Queue[str], event: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {event!r} log line within {timeout}s")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                return dict(record)
