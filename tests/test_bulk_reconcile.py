"""Bulk API jobs left behind by an interrupted backfill: recorded in the store, waited for and
reconciled before a later run or backfill writes, so a job that lands late never leaves an older
status over a newer one. Asserts on the Salesforce simulator's Tasks and per-Task write history."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from sfsync.clients.bulk import BulkClient
from sfsync.engine import Worker, build_clients
from sfsync.engine.backfill import Backfill
from sfsync.errors import RemoteError
from sfsync.settings.config import Settings
from sfsync.sources.backfill import BackfillOptions, Window
from sfsync.store import LedgerEntry
from tests.conftest import add_tasks, fields_of, new_message_id, report, store_of, wait_until

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
WINDOW = Window(NOW - dt.timedelta(days=2), NOW)
SENT = NOW - dt.timedelta(days=1)
N = 12


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (no abort, no clean-up)."""


def no_sleep(seconds: float) -> None:
    return None


def seed_submitted(sims: object, n: int = N) -> list[tuple[str, str]]:
    """Tasks whose messages the reporting API says are 'submitted' (code 210): (message id, Task Id)."""
    messages = [new_message_id() for _ in range(n)]
    tasks = add_tasks(sims, messages)  # type: ignore[arg-type]
    sims.mm.add_messages([  # type: ignore[attr-defined]
        {"message_id": m, "status": "submitted", "status_code": "210",
         "timestamp": (SENT + dt.timedelta(seconds=i)).isoformat(), "metadata": {}}
        for i, m in enumerate(messages)])
    return list(zip(messages, tasks, strict=True))


def backfill_killed_after_upload_complete(settings: Settings) -> None:
    mm, sf, retries = build_clients(settings, sleep=no_sleep)
    backfill = Backfill(settings, BackfillOptions(WINDOW, bulk_threshold=5), mm=mm, sf=sf, retries=retries)

    def kill(step: str, job_id: str) -> None:
        if step == "UploadComplete":
            raise Crash

    backfill.bulk.on_step = kill
    with pytest.raises(Crash):
        backfill.run()


def worker(settings: Settings, **options: float) -> Worker:
    mm, sf, retries = build_clients(settings, sleep=no_sleep)
    return Worker(settings, mm=mm, sf=sf, retries=retries, **options)  # type: ignore[arg-type]


def wait_for_jobs(sims: object, timeout: float = 10.0) -> None:
    """Until the simulator has processed every Bulk API job (as Salesforce eventually does)."""
    def states() -> set[str]:
        return {j.state for j in sims.sf.bulk.jobs.values()}  # type: ignore[attr-defined]

    assert wait_until(lambda: states() <= {"JobComplete", "Failed", "Aborted"}, timeout), \
        f"jobs never finished: {states()}"


def vias(sims: object, task_id: str) -> list[tuple[str, object]]:
    return [(h["via"], h["fields"].get("SMS_Status__c")) for h in sims.sf.history(task_id)]  # type: ignore


def test_a_job_landing_after_a_kill_never_leaves_an_older_status(sims: object,
                                                                 settings_for: Callable[..., Settings]) -> None:
    sims.sf.configure(bulk_processing_s=1.5)  # type: ignore[attr-defined]
    seeded = seed_submitted(sims)
    settings = settings_for()
    backfill_killed_after_upload_complete(settings)
    assert all(sims.sf.history(t) == [] for _, t in seeded)  # type: ignore[attr-defined]  # closed, not landed
    assert len(store_of(settings).open_bulk_jobs()) == 1

    # Newer reports arrive before the job lands; `sfsync run` applies them.
    sims.mm.add_reports([report(m, "delivered", "220") for m, _ in seeded])  # type: ignore[attr-defined]
    summary = worker(settings).run()
    assert summary.counts["applied"] == N and summary.counts["confirmed"] == N

    wait_for_jobs(sims)  # whatever the run did, the job has landed by now
    later = worker(settings).run()
    assert later.exit_code == 0
    for _, task_id in seeded:
        assert fields_of(sims, task_id) == ("Delivered", "220")  # type: ignore[arg-type]
        assert vias(sims, task_id) == [("bulk", "Submitted"), ("composite", "Delivered")]
    assert store_of(settings).open_bulk_jobs() == []


def test_a_job_that_wrote_over_a_newer_status_is_undone_from_the_ledger(
        sims: object, settings_for: Callable[..., Settings], tmp_path: Path) -> None:
    sims.sf.configure(bulk_processing_s=0.2)  # type: ignore[attr-defined]
    messages = [new_message_id() for _ in range(3)]
    tasks = add_tasks(sims, messages)  # type: ignore[arg-type]
    settings = settings_for()
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])  # type: ignore[attr-defined]
    assert worker(settings).run().counts["applied"] == 3
    # A job with older values, queued before those writes and processed after them (as a job
    # closed by an sfsync without this fix could), recorded as a backfill records its jobs.
    store = store_of(settings)
    _, sf, _ = build_clients(settings, sleep=no_sleep)
    path = tmp_path / "older.csv"
    with path.open("w", newline="") as out:
        rows = csv.writer(out, lineterminator="\n")
        rows.writerow(["Id", "SMS_Status__c", "SMS_Status_Code__c"])
        rows.writerows([t, "Submitted", "210"] for t in tasks)
    older = [LedgerEntry(m, t, "Submitted", "210", False, SENT, SENT, f"backfill:{m}:submitted:210")
             for m, t in zip(messages, tasks, strict=True)]
    BulkClient(sf).update(path, on_created=lambda job_id: store.add_bulk_job(job_id, older))
    sf.call("person", lambda api: api.Task.update(tasks[2], {"SMS_Status__c": "Read by a person"}))

    later = worker(settings).run()
    assert later.counts["reconciled"] == 2
    for task_id in tasks[:2]:
        assert fields_of(sims, task_id) == ("Delivered", "220")  # type: ignore[arg-type]
        assert [v for v, _ in vias(sims, task_id)] == ["composite", "bulk", "composite"]
    # What someone else wrote after the job is not the job's to undo: left as it is.
    assert fields_of(sims, tasks[2])[0] == "Read by a person"  # type: ignore[arg-type]
    assert store.open_bulk_jobs() == []


def test_a_job_still_running_after_the_bound_blocks_every_write(sims: object,
                                                                 settings_for: Callable[..., Settings]) -> None:
    sims.sf.configure(bulk_processing_s=3.0)  # type: ignore[attr-defined]
    seeded = seed_submitted(sims, 6)
    settings = settings_for()
    backfill_killed_after_upload_complete(settings)
    sims.mm.add_reports([report(m, "delivered", "220") for m, _ in seeded])  # type: ignore[attr-defined]

    with pytest.raises(RemoteError, match="still"):
        worker(settings, bulk_wait_s=0.3).run()
    assert store_of(settings).open_bulk_jobs() != []  # left recorded for the next run
    # Staged in the store, then confirmed: the drain waits for the job before it writes anything.
    assert sims.mm.stats()["unconfirmed"] == 0  # type: ignore[attr-defined]
    assert store_of(settings).inbox_backlog()[0] == 6
    assert all(h["via"] == "bulk" for _, t in seeded for h in sims.sf.history(t))  # type: ignore[attr-defined]

    summary = worker(settings).run()  # the job lands within this run's wait
    assert summary.counts["applied"] == 6
    assert all(fields_of(sims, t) == ("Delivered", "220") for _, t in seeded)  # type: ignore[arg-type]
    assert store_of(settings).open_bulk_jobs() == []


def test_a_job_never_closed_is_aborted_and_a_resumed_backfill_settles_first(
        sims: object, settings_for: Callable[..., Settings]) -> None:
    sims.sf.configure(bulk_processing_s=0.5)  # type: ignore[attr-defined]
    seeded = seed_submitted(sims, 8)
    settings = settings_for()
    store = store_of(settings)
    # A backfill killed after UploadComplete: its --resume waits for that job before it writes.
    backfill_killed_after_upload_complete(settings)
    # A process killed between creating a job and closing it leaves it Open: Salesforce never runs it.
    _, sf, _ = build_clients(settings, sleep=no_sleep)
    stray = BulkClient(sf)._create("Task")
    store.add_bulk_job(stray, [LedgerEntry(m, t, "Submitted", "210", False, SENT, SENT, None) for m, t in seeded])
    assert len(store.open_bulk_jobs()) == 2

    mm, sf, retries = build_clients(settings, sleep=no_sleep)
    resumed = Backfill(settings, BackfillOptions(WINDOW, bulk_threshold=5, resume=True), mm=mm, sf=sf,
                       retries=retries).run()
    assert resumed.exit_reason == "complete" and resumed.exit_code == 0
    assert sims.sf.bulk.jobs[stray].state == "Aborted"  # type: ignore[attr-defined]
    assert store.open_bulk_jobs() == []
    for _, task_id in seeded:  # written once, by the job that landed; the resume found it done
        assert fields_of(sims, task_id) == ("Submitted", "210")  # type: ignore[arg-type]
        assert vias(sims, task_id) == [("bulk", "Submitted")]
