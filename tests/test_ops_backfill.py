"""Backfill ergonomics: `--until now`, a near-future end clamped, `--list` of resumable checkpoints."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sfsync.errors import UsageError
from sfsync.sim.harness import Simulators
from sfsync.sources.backfill import parse_window
from tests.conftest import store_of

SFSYNC = str(Path(sys.executable).with_name("sfsync"))
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def test_until_now_and_a_near_future_end_are_now() -> None:
    assert parse_window("2026-11-20", "now", now=NOW).until == NOW
    assert parse_window("2026-11-20", "NOW", now=NOW).until == NOW
    soon = (NOW + dt.timedelta(seconds=30)).isoformat()
    assert parse_window("2026-11-20", soon, now=NOW).until == NOW  # a clock a little ahead: clamped
    with pytest.raises(UsageError, match="in the future"):
        parse_window("2026-11-20", (NOW + dt.timedelta(hours=2)).isoformat(), now=NOW)
    with pytest.raises(UsageError, match="wrong way round"):
        parse_window("now", "2026-11-20", now=NOW)


def test_list_shows_resumable_checkpoints(tmp_path: Path, store_env: dict[str, str]) -> None:
    state = tmp_path / "state"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}, "SFSYNC_STATE_DIR": str(state),
           **store_env}
    store = store_of(env)
    store.save_checkpoint("backfill:reporting:2026-11-01T00:00:00.000Z:2026-11-08T00:00:00.000Z:FAILED", {
        "source": "reporting", "since": "2026-11-01T00:00:00.000Z", "until": "2026-11-08T00:00:00.000Z",
        "timezone": "UTC", "cursor": {"page": 3}, "counts": {"pages": 3, "fetched": 300, "applied": 120},
        "done": False})
    store.save_checkpoint("backfill:reporting:2026-10-01T00:00:00.000Z:2026-10-02T00:00:00.000Z:", {
        "source": "reporting", "since": "2026-10-01T00:00:00.000Z", "until": "2026-10-02T00:00:00.000Z",
        "timezone": "UTC", "cursor": {}, "counts": {"pages": 2}, "done": True})
    done = subprocess.run([SFSYNC, "backfill", "--list"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--since 2026-11-01T00:00:00.000Z --until 2026-11-08T00:00:00.000Z --status FAILED --resume" in done.stdout
    assert "3 page(s), 300 records read, 120 Tasks written" in done.stdout
    assert "2026-10-01" not in done.stdout  # finished: nothing to resume
    as_json = subprocess.run([SFSYNC, "backfill", "--list", "--json"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)
    (only,) = json.loads(as_json.stdout)
    assert only["since"] == "2026-11-01T00:00:00.000Z" and only["counts"]["applied"] == 120
    bare = subprocess.run([SFSYNC, "backfill"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "--since" in bare.stderr


class _Terminal(__import__("io").StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_says_pages_records_and_window_share_labelled(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    from collections import Counter

    from sfsync.sources.backfill import Progress, Window

    window = Window(dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 11, 2, tzinfo=dt.UTC),
                    "Australia/Sydney")
    terminal = _Terminal()
    bar = Progress(window, terminal)
    bar.update(0.97, Counter(pages=3, fetched=300, changed=120, applied=100))
    bar.close()
    shown = terminal.getvalue()
    assert "2026-11-01 11:00..2026-11-02 11:00 Australia/Sydney" in shown  # times, in the window's zone
    assert "of the window's time span" in shown and "page 3" in shown and "300 read" in shown
    caplog.set_level(logging.INFO, logger="sfsync.sources.backfill")
    quiet = Progress(window, __import__("io").StringIO(), every=1)
    quiet.update(0.5, Counter(pages=2, fetched=200, changed=50, applied=40))
    (line,) = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "backfill_progress"]
    assert "2 pages, 200 records read" in line and "50% of the window's time span (no total is known)" in line


def test_a_stopped_backfill_says_how_to_continue_once(sims: Simulators, worker_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    from tests.test_backfill import WINDOW, iso, seed

    seed(sims, 150)  # two pages
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}, **worker_env,
           "SFSYNC_LOG_FORMAT": "text"}
    done = subprocess.run([SFSYNC, "backfill", "--since", iso(WINDOW.since), "--until", iso(WINDOW.until),
                           "--max-pages", "1"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 page(s), 100 records read" in done.stdout
    said = done.stdout + done.stderr  # on a terminal, both show
    assert said.count("--resume") == 1, said
