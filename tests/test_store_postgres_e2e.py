"""The worker and the commands on a PostgreSQL store (SFSYNC_STORE_URL), end to end against the
simulators: a handful of the SQLite end-to-end tests run again here unchanged (this module's
``worker_env`` points them at a fresh PostgreSQL database), plus what only PostgreSQL has: the run
lock across hosts, connection errors from the CLI, ``store migrate`` and ``store copy``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from sfsync.engine import RunOptions, Worker
from sfsync.errors import EXIT_CONFIG, EXIT_OK, AlreadyRunning
from sfsync.sim.harness import Simulators
from sfsync.store import SCHEMA_VERSION, Store, open_store, parse_store_url
from tests import pgcluster
from tests.conftest import add_tasks, composite_calls, fields_of, new_message_id, report
from tests.test_push import (  # noqa: F401 - fixtures and tests used again here, on PostgreSQL
    MakeServer,
    http,
    make_server,
    post,
    test_duplicate_pushes_are_stored_once,
    test_shared_secret_pushes_are_stored,
    wait_until,
)
from tests.test_worker_e2e import (  # noqa: F401 - collected again here, on PostgreSQL
    test_dead_letter_retry_after_the_cause_is_fixed,
    test_happy_path,
    test_rerun_of_the_same_reports_makes_zero_writes,
    test_task_that_appears_later_waits_then_applies,
)

MakeWorker = Callable[..., Worker]
SFSYNC = str(Path(sys.executable).parent / "sfsync")


@pytest.fixture
def worker_env(sims: Simulators, state_dir: Path, pg_url: str, pg_server: pgcluster.Server) -> dict[str, str]:
    return {**sims.env(), "SFSYNC_STATE_DIR": str(state_dir), "SFSYNC_RETRY_MAX_SECONDS": "30",
            "SFSYNC_STORE_URL": pg_url, "SFSYNC_STORE_PASSWORD": pg_server.password}


def cli(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SFSYNC_", "PG"))}
    return subprocess.run([SFSYNC, *argv], env={**keep, "SFSYNC_LOG_FORMAT": "json", **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_worker_uses_postgresql_and_sqlite_stays_untouched(sims: Simulators, make_worker: MakeWorker,
                                                                state_dir: Path) -> None:
    worker = make_worker()
    assert worker.store.dialect == "postgresql"
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    sims.mm.add_reports([report(message, "delivered", "220")])
    assert worker.run().exit_code == EXIT_OK
    assert fields_of(sims, task) == ("Delivered", "220")
    assert worker.store.ledger([message])[message].task_id == task
    assert not (state_dir / "sfsync.db").exists()


def test_staged_pushes_drain_from_postgresql(sims: Simulators, make_worker: MakeWorker) -> None:
    worker = make_worker()
    messages = [new_message_id() for _ in range(30)]
    tasks = add_tasks(sims, messages)
    for m in messages:
        body = report(m, "delivered", "221")
        assert worker.store.stage("push", [(body["delivery_report_id"], body)])
    summary = worker.run(RunOptions(inbox=True))
    assert summary.counts["applied"] == 30 and worker.store.inbox_count() == 0
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)


def test_replicas_run_at_once_and_the_run_lock_keeps_exclusive_commands_one_at_a_time(
        sims: Simulators, make_worker: MakeWorker, tmp_path: Path) -> None:
    """The lock is in the database (a lease): another host's backfill or dead-letter retry is kept
    out, while workers on any host share the work by leases and claims (tests/test_replicas.py)."""
    worker = make_worker()
    elsewhere = make_worker(SFSYNC_STATE_DIR=str(tmp_path / "other-host"))
    with worker.store.run_lock(worker.settings.lock_path):
        with pytest.raises(AlreadyRunning, match="run lock"):
            elsewhere.store.run_lock(elsewhere.settings.lock_path).__enter__()
        assert elsewhere.run().exit_code == EXIT_OK
    assert elsewhere.store.run_lock(elsewhere.settings.lock_path).is_free()


def test_cli_errors_on_a_bad_store_are_one_clear_line(sims: Simulators, worker_env: dict[str, str],
                                                      tmp_path: Path, pg_server: pgcluster.Server) -> None:
    wrong = cli(["run"], {**worker_env, "SFSYNC_STORE_PASSWORD": "not-the-password-42"}, tmp_path)
    leaky = cli(["run"], {**worker_env, "SFSYNC_STORE_URL": worker_env["SFSYNC_STORE_URL"].replace(
        "postgres@", f"postgres:{pg_server.password}@")}, tmp_path)
    for result, phrase in ((wrong, "password authentication failed"), (leaky, "must not hold the password")):
        assert result.returncode == EXIT_CONFIG, result.stderr
        assert phrase in result.stderr and "Traceback" not in result.stderr
        assert "not-the-password-42" not in result.stderr + result.stdout
        assert pg_server.password not in result.stderr + result.stdout


def test_store_migrate_says_from_and_to(worker_env: dict[str, str], tmp_path: Path) -> None:
    first = cli(["store", "migrate", "--json"], worker_env, tmp_path)
    assert first.returncode == EXIT_OK, first.stderr
    assert {k: v for k, v in json.loads(first.stdout).items() if k != "store"} == {"from": 0, "to": SCHEMA_VERSION}
    again = cli(["store", "migrate"], worker_env, tmp_path)
    assert again.returncode == EXIT_OK and "nothing to do" in again.stdout


def test_a_sqlite_deployment_moves_to_postgresql_without_losing_anything(
        sims: Simulators, make_worker: MakeWorker, worker_env: dict[str, str], tmp_path: Path,
        pg_url: str, pg_server: pgcluster.Server) -> None:
    """Run on SQLite (applied reports, one waiting for its Task, a dead letter), copy the store with the
    CLI, then run on PostgreSQL: no Salesforce write repeated, the waiting report applied once its Task exists."""
    on_sqlite = {k: v for k, v in worker_env.items() if k != "SFSYNC_STORE_URL"}
    applied_messages = [new_message_id() for _ in range(20)]
    tasks = add_tasks(sims, applied_messages)
    late = new_message_id()
    sims.mm.add_reports([report(m, "delivered", "220", minute=1) for m in applied_messages]
                        + [report(late, "delivered", "221", minute=1)])
    sims.mm.add_raw_reports([report(new_message_id(), "delivered", ["220"])])  # a dead letter
    old = make_worker(SFSYNC_STORE_URL="")
    old.run()
    assert old.store.dialect == "sqlite" and old.store.waiting_count() == 1
    letters = old.store.dead_letter_count()
    assert letters == 1
    old.store.dispose()

    copied = cli(["store", "copy", "--to", pg_url, "--json"], on_sqlite, tmp_path)
    assert copied.returncode == EXIT_OK, copied.stderr
    rows = json.loads(copied.stdout)["rows"]
    assert (rows["ledger"], rows["waiting"], rows["dead_letters"]) == (20, 1, letters)
    again = cli(["store", "copy", "--to", pg_url], on_sqlite, tmp_path)  # the target holds data now
    assert again.returncode == EXIT_CONFIG and "already holds data" in again.stderr

    writes = composite_calls(sims)
    new = make_worker()
    sims.mm.add_reports([report(m, "delivered", "220", minute=1) for m in applied_messages])  # served again
    summary = new.run()
    assert summary.counts["applied"] == 0 and composite_calls(sims) == writes  # the ledger came across
    [task] = add_tasks(sims, [late])
    new.run(RunOptions(retry_waiting=True))
    assert fields_of(sims, task) == ("Delivered", "221") and new.store.waiting_count() == 0
    assert all(fields_of(sims, t) == ("Delivered", "220") for t in tasks)
    assert new.store.dead_letter_count() == letters


def test_a_newer_schema_is_refused_by_the_cli(worker_env: dict[str, str], tmp_path: Path, pg_url: str,
                                              pg_server: pgcluster.Server) -> None:
    store: Store = open_store(parse_store_url(pg_url, tmp_path, password=pg_server.password))
    with store.transaction() as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    store.dispose()
    result = cli(["status"], worker_env, tmp_path)
    assert result.returncode == EXIT_CONFIG and "newer than this sfsync" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_doctor_names_the_backend_and_checks_postgresql(worker_env: dict[str, str], tmp_path: Path) -> None:
    result = cli(["doctor", "--json"], worker_env, tmp_path)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert checks["store"]["status"] == "ok", checks["store"]
    assert "PostgreSQL 15" in checks["store"]["detail"] and "may apply migrations" in checks["store"]["detail"]
    assert checks["run lock"]["status"] == "ok"


def test_the_receiver_and_its_drain_share_postgresql(sims: Simulators, make_server: MakeServer) -> None:  # noqa: F811
    """Pushes from 8 threads while the drain runs: every one stored once and written, none answered
    before it was committed (a 200 is checked against the rows afterwards)."""
    server = make_server(drain=True, drain_interval=0.2)
    assert server.store.dialect == "postgresql"
    messages = [new_message_id() for _ in range(400)]
    tasks = add_tasks(sims, messages)
    reports = [report(m, "delivered", "221", minute=1) for m in messages]

    def push_share(share: list[dict[str, object]]) -> list[int]:
        with requests.Session() as session:
            return [post(session, server, body).status_code for body in share + share[:5]]  # a few twice

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for part in pool.map(push_share, [reports[i::8] for i in range(8)]) for s in part]
    assert set(statuses) == {200} and server.counts["stored"] == 400
    assert server.store.inbox_count(pending_only=False) == 400
    assert wait_until(lambda: server.store.inbox_count() == 0, timeout=60)
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)
