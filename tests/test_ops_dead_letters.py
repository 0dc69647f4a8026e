"""`sfsync dead-letters` for people: purge refuses without --yes off a terminal, show and list mask
phone numbers and message text, list --csv."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from sfsync.store import Store
from tests.conftest import store_of

SFSYNC = str(Path(sys.executable).with_name("sfsync"))
PHONE = "+61491570156"
TEXT = "Your code is 4711, meet me at 9"


def env_for(state: Path, store_env: dict[str, str]) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, "SFSYNC_STATE_DIR": str(state), "SFSYNC_LOG_FORMAT": "json", **store_env}


def seeded(tmp_path: Path, store_env: dict[str, str]) -> tuple[dict[str, str], Store]:
    """Two dead letters in the store of the returned environment (SQLite in tmp_path/state, or PostgreSQL)."""
    env = env_for(tmp_path / "state", store_env)
    store = store_of(env)
    raw = {"delivery_report_id": "dr-1", "message_id": "m-1", "source_number": PHONE, "original_text": TEXT,
           "status": "delivered", "metadata": {"note": f"call {PHONE}"}}
    store.add_dead_letter("dr-1", "m-1", raw, "poll", f"no Task for {PHONE}")
    store.add_dead_letter("dr-2", "m-2", {"delivery_report_id": "dr-2"}, "push", "code too long",
                          sf_error="STRING_TOO_LONG")
    return env, store


def sfsync(env: dict[str, str], *args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, "dead-letters", *args], env=env, cwd=Path(env["SFSYNC_STATE_DIR"]).parent,
                          stdin=stdin, capture_output=True, text=True, timeout=60)


def test_purge_refuses_without_yes_off_a_terminal(tmp_path: Path, store_env: dict[str, str]) -> None:
    env, store = seeded(tmp_path, store_env)
    done = sfsync(env, "purge")
    assert done.returncode == 2
    assert "--yes" in done.stderr
    assert store.dead_letter_count() == 2  # nothing deleted
    done = sfsync(env, "purge", "--yes")
    assert done.returncode == 0 and "purged 2" in done.stdout
    assert store.dead_letter_count() == 0


def test_show_and_list_mask_phone_numbers_and_message_text(tmp_path: Path, store_env: dict[str, str]) -> None:
    env, _ = seeded(tmp_path, store_env)
    shown = sfsync(env, "show", "1")
    listed = sfsync(env, "list", "--json")
    for done in (shown, listed):
        assert done.returncode == 0, done.stderr
        assert PHONE not in done.stdout and "4711" not in done.stdout
        assert "*******156" in done.stdout  # as the logs mask it: the last three digits kept
    letter = json.loads(shown.stdout)
    assert letter["raw"]["original_text"] == f"[{len(TEXT)} characters hidden]"
    assert letter["raw"]["status"] == "delivered" and letter["report_id"] == "dr-1"


def test_list_csv(tmp_path: Path, store_env: dict[str, str]) -> None:
    env, _ = seeded(tmp_path, store_env)
    done = sfsync(env, "list", "--csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["id"] for r in rows] == ["1", "2"]
    assert rows[1]["sf_error"] == "STRING_TOO_LONG" and rows[1]["source"] == "push"
    assert rows[0]["message_id"] == "m-1" and PHONE not in done.stdout
    assert set(rows[0]) >= {"id", "created_at", "report_id", "message_id", "source", "reason", "sf_error"}


def test_status_shows_exit_statuses_and_hides_idle_runs(tmp_path: Path, store_env: dict[str, str]) -> None:
    env, store = seeded(tmp_path, store_env)
    busy = store.start_run("run")
    store.finish_run(busy, {"fetched": 5, "applied": 4, "dead_lettered": 1}, "queue_empty", 6)
    for _ in range(3):
        idle = store.start_run("run")
        store.finish_run(idle, {"fetched": 0}, "nothing_to_do", 0)
    done = subprocess.run([SFSYNC, "status"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    runs = [line for line in done.stdout.splitlines() if line.strip().startswith("#")]
    assert len(runs) == 1 and "exit 6" in runs[0] and "queue_empty" in runs[0]
    assert "3 idle run(s) hidden" in done.stdout
    shown = subprocess.run([SFSYNC, "status", "--all", "--json"], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    data = json.loads(shown.stdout)
    assert [r["exit_code"] for r in data["runs"]] == [0, 0, 0, 6]
    hidden = json.loads(subprocess.run([SFSYNC, "status", "--json"], env=env, cwd=tmp_path, capture_output=True,
                                       text=True, timeout=60).stdout)
    assert [r["exit_code"] for r in hidden["runs"]] == [6] and hidden["idle_runs_hidden"] == 3


def test_show_of_a_letter_that_does_not_exist_is_not_found(tmp_path: Path, store_env: dict[str, str]) -> None:
    env, _ = seeded(tmp_path, store_env)
    done = sfsync(env, "show", "1", "99")
    assert done.returncode == 10, done.stderr  # as documented: not found, not a usage error
    assert done.stderr.count("no dead letter #99") == 1, done.stderr
    assert json.loads(done.stdout)["report_id"] == "dr-1"  # the ones that exist are shown
