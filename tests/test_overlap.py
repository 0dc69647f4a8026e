"""Polling and the drain's look-ups overlap (``sfsync.engine.lookahead``), at no extra Salesforce call.

Assertions are on what the simulators saw: when each Salesforce call and each confirmation
arrived, how many calls of each kind, the Tasks' fields and write history, the store's inbox.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sfsync.domain.keys import keyed
from sfsync.engine import Worker, build_clients
from sfsync.engine.lookahead import Lookahead
from sfsync.errors import EXIT_OK, RemoteError
from sfsync.pipeline import Pipeline
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.sources.poll import PollSource
from sfsync.store import Store
from tests.conftest import (
    add_tasks,
    call_times,
    composite_calls,
    fields_of,
    look_ups,
    new_message_id,
    on_postgresql,
    report,
    sf_calls,
    wait_until,
)

MakeWorker = Callable[..., Worker]


def _two_rounds(sims: Simulators, n_messages: int) -> tuple[list[str], list[dict[str, object]]]:
    """Every message enroute, then every message submitted: a message's reports in different pages."""
    messages = [new_message_id() for _ in range(n_messages)]
    tasks = add_tasks(sims, messages)
    reports = [report(m, "enroute", minute=1) for m in messages] + [report(m, "submitted", minute=2) for m in messages]
    sims.mm.add_reports(reports)
    return tasks, reports


def test_look_ups_go_out_while_the_poll_runs_at_no_extra_call(sims: Simulators, make_worker: MakeWorker) -> None:
    tasks, reports = _two_rounds(sims, 1500)  # 3,000 reports: 30 pages; 15 look-ups + 8 writes at the floor
    sims.mm.faults.configure(latency_ms=25)
    summary = make_worker().run()
    assert summary.exit_code == EXIT_OK
    # 15 look-ups and 8 Collections writes, plain or inside Composite requests: at most 15 + 2 calls (the
    # look-ahead's look-ups go out page by page, as the poll stages them; the 8 writes, together, in 2).
    assert look_ups(sims) == 15 and composite_calls(sims) == 8
    assert sf_calls(sims) <= 17
    last_confirm = max(at for _, at in sims.mm.confirm_log())
    queries = call_times(sims, "query")
    if not on_postgresql():  # the look-ahead runs only for a process alone on its store (SQLite)
        assert sum(at < last_confirm for at in queries) >= 10, "the look-ups did not overlap the poll"
    assert all(fields_of(sims, t) == ("Submitted", None) and len(sims.sf.history(t)) == 1 for t in tasks)

    # The same reports again under new ids: decided against the ledger, by the look-ahead too: no call.
    before = sims.sf.stats()["api_calls_total"]
    sims.mm.add_reports([{**r, "delivery_report_id": str(uuid.uuid4())} for r in reports])
    again = make_worker().run()
    assert again.exit_code == EXIT_OK and again.counts["fetched"] == 3000
    assert sims.sf.stats()["api_calls_total"] == before


def test_salesforce_down_while_polling_polls_on_into_the_store(sims: Simulators, make_worker: MakeWorker) -> None:
    tasks, _ = _two_rounds(sims, 300)
    sims.sf.faults.configure(rate=1.0, kinds=["503"])
    worker = make_worker(SFSYNC_RETRY_ATTEMPTS="2")
    with pytest.raises(RemoteError):
        worker.run()
    # The look-ahead met the failure; polling went on: the queue is drained into the store, nothing written.
    assert sims.mm.stats()["unconfirmed"] == 0 and worker.store.inbox_backlog()[0] == 600
    assert all(sims.sf.history(t) == [] for t in tasks)

    sims.sf.faults.configure(rate=0.0)
    again = make_worker().run()
    assert again.exit_code == EXIT_OK and again.exit_reason == "backlog_drained"
    assert all(fields_of(sims, t) == ("Submitted", None) and len(sims.sf.history(t)) == 1 for t in tasks)
    assert worker.store.inbox_backlog() == (0, None)


def test_a_stop_mid_poll_leaves_the_look_ahead_claim_staged(sims: Simulators, make_worker: MakeWorker) -> None:
    tasks, _ = _two_rounds(sims, 300)
    worker = make_worker()
    pages = []

    def stop_after_four_pages(stage: str) -> None:
        if stage == "staged":
            pages.append(1)
            if len(pages) == 4:
                worker.stop.set()

    worker.on_stage = stop_after_four_pages
    summary = worker.run()
    assert summary.exit_reason == "signal" and summary.counts["fetched"] == 400
    assert worker.store.inbox_backlog()[0] == 400 and all(sims.sf.history(t) == [] for t in tasks)
    again = make_worker().run()
    assert again.exit_code == EXIT_OK
    assert all(fields_of(sims, t) == ("Submitted", None) and len(sims.sf.history(t)) == 1 for t in tasks)


def test_a_long_poll_remembers_only_the_latest_confirmations(sims: Simulators, settings_for: Callable[..., Settings],
                                                             tmp_path: Path) -> None:
    """Memory stays flat over a large queue: the ids confirmed this run are not all kept; each report
    is still confirmed once, and staged once."""
    messages = [new_message_id() for _ in range(500)]
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    settings = settings_for()
    mm, _, _ = build_clients(settings, sleep=lambda seconds: None)
    store = Store(tmp_path / "sfsync.db")
    source = PollSource(mm, store, wait_seconds=1, stop=threading.Event(), on_stage=lambda stage: None, remember=150)
    kept = []
    while source.next_check().raws:
        kept.append(len(source.confirmed))
    assert max(kept) <= 150 and len(kept) == 5
    counts = sims.mm.stats()["confirm_counts"]
    assert len(counts) == 500 and set(counts.values()) == {1}
    assert store.inbox_backlog()[0] == 500


def test_the_look_ahead_holds_at_most_one_drain_batch(sims: Simulators, make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(1000)]
    add_tasks(sims, messages)
    worker = make_worker()
    worker.store.stage("poll", keyed([report(m, "delivered", "220") for m in messages]))
    pipeline = Pipeline(worker.settings, worker.store, worker.sf)
    ahead = Lookahead(pipeline, worker.store, limit=600, on_stage=lambda stage: None).start()
    wait_until(lambda: look_ups(sims) >= 5, 20)
    rows = ahead.finish()
    assert ahead.error is None and len(rows) == 600 and ahead.cache.readings_held <= 600
    assert [r.key for r in rows] == [r.key for r in worker.store.claim_staged(600)]  # the oldest, in order
    # One whole Composite call of five queries (500 of its 600 messages); the other 100 go with the drain.
    assert look_ups(sims) == 5 and sims.sf.stats()["api_calls"].get("composite_batch") == 1


# -- writing final statuses ahead, while the poll runs -----------------------------------------------------
# The look-ahead runs only for a process alone on its store (SQLite): replicas claim through leases instead.
sqlite_only = pytest.mark.skipif(on_postgresql(), reason="the look-ahead runs only for a process alone on its "
                                 "store (SQLite); on PostgreSQL replicas claim staged reports through leases")


@dataclass
class Hold:
    """A poll held (bounded) until the look-ahead wrote ahead: ``wrote`` once it did, ``timed_out``
    when the bound ended the hold instead (the overlap was not there: a test asserts it was)."""

    wrote: threading.Event = field(default_factory=threading.Event)
    timed_out: bool = False

    @property
    def held_until_written(self) -> bool:
        return self.wrote.is_set() and not self.timed_out


def _waits_for_the_write_ahead(worker: Worker, after_pages: int, until: Callable[[], bool] = lambda: True) -> Hold:
    """Holds the poll after ``after_pages`` pages are staged until the look-ahead has written ahead and
    ``until`` holds (bounded), so that the overlap is there to be checked whatever the machine's speed."""
    hold = Hold()
    stages: list[str] = []

    def on_stage(stage: str) -> None:
        stages.append(stage)
        if stage == "wrote_ahead":
            hold.wrote.set()
        elif stage == "staged" and stages.count("staged") == after_pages:
            hold.timed_out = not wait_until(lambda: hold.wrote.is_set() and until(), 20, step=0.01)

    worker.on_stage = on_stage
    return hold


@sqlite_only
def test_final_statuses_are_written_while_the_poll_runs_at_no_extra_call(sims: Simulators,
                                                                        make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(1600)]
    tasks = add_tasks(sims, messages)
    late = [new_message_id() for _ in range(400)]  # still enroute at the end: the drain's, as before
    late_tasks = add_tasks(sims, late)
    sims.mm.add_reports([report(m, "enroute", minute=1) for m in messages + late]
                        + [report(m, "delivered", "220", minute=2) for m in messages]
                        + [report(m, "enroute", minute=3) for m in messages[:100]])  # late and stale
    sims.mm.faults.configure(latency_ms=10)
    worker = make_worker()
    # The last page waits (bounded) for the 1,600 finals, staged and looked up by then, to be written.
    hold = _waits_for_the_write_ahead(worker, after_pages=37, until=lambda: composite_calls(sims) >= 5)
    summary = worker.run()

    assert summary.exit_code == EXIT_OK and hold.held_until_written
    last_confirm = max(at for _, at in sims.mm.confirm_log())
    writes = call_times(sims, "composite")
    # 1,000 of them in one Composite call of five writes while the poll ran; the other 600 with the drain.
    assert sum(at < last_confirm for at in writes) == 5, "the final statuses were not written while the poll ran"
    # 2,000 messages looked up in 20 queries, 2,000 changed Tasks in 10 Collections writes (plain or inside
    # Composite requests, fewer calls than 30); each Task once.
    assert look_ups(sims) == 20 and composite_calls(sims) == 10 and sf_calls(sims) < 30
    assert all(fields_of(sims, t) == ("Delivered", "220") and len(sims.sf.history(t)) == 1 for t in tasks)
    assert all(fields_of(sims, t) == ("Sending", None) and len(sims.sf.history(t)) == 1 for t in late_tasks)
    assert summary.counts["applied"] == 2000 and summary.counts["drained"] == 3700
    assert summary.counts["skipped_stale"] == 1700 and worker.store.inbox_backlog() == (0, None)


@sqlite_only
def test_a_task_written_ahead_is_looked_up_again_before_another_report_decides_on_it(
        sims: Simulators, make_worker: MakeWorker) -> None:
    """Two messages name one Task: the first's final is written ahead; the second's report, looked up
    before that write, must not be decided on the stale row (it would replace Delivered by Sending)."""
    # 1,500 values to look up (whole Composite calls): 1,000 of the finals written ahead, the first among them.
    messages = [new_message_id() for _ in range(1499)]
    tasks = add_tasks(sims, messages)
    other = new_message_id()  # names the first Task in its metadata, its own id on no Task
    sims.mm.add_reports([report(other, "enroute", minute=5, metadata={"sf_task_id": tasks[0]})]
                        + [report(m, "delivered", "220", minute=1) for m in messages]
                        + [report(new_message_id(), "enroute") for _ in range(300)])  # no Task: they wait
    worker = make_worker(SFSYNC_SF_CONCURRENCY="1")
    hold = _waits_for_the_write_ahead(worker, after_pages=15)
    summary = worker.run()

    assert summary.exit_code == EXIT_OK and hold.held_until_written
    assert all(fields_of(sims, t) == ("Delivered", "220") and len(sims.sf.history(t)) == 1 for t in tasks)
    assert summary.counts["applied"] == 1499 and summary.counts["skipped_stale"] == 1


@sqlite_only
def test_the_look_ahead_hears_of_a_page_once_it_is_staged_not_once_it_is_confirmed(
        sims: Simulators, make_worker: MakeWorker) -> None:
    """The page that completes a write-ahead group wakes the look-ahead as soon as it is committed:
    the group is written while that page's confirmation is still to come. (It used to be woken after
    the confirmation: a look-ahead idle between pages saw the group complete only a page later.)"""
    messages = [new_message_id() for _ in range(1000)]  # a whole write-ahead group, in ten pages
    tasks = add_tasks(sims, messages)
    reports = [report(m, "delivered", "220") for m in messages]
    sims.mm.add_reports(reports)
    sims.mm.faults.configure(latency_ms=50)  # a slow poll: the look-ahead is idle between pages
    worker = make_worker()
    # Held at the tenth page's staging (bounded) until the group is written ahead.
    hold = _waits_for_the_write_ahead(worker, after_pages=10)
    summary = worker.run()

    assert summary.exit_code == EXIT_OK and hold.held_until_written
    last_page = {r["delivery_report_id"] for r in reports[900:]}
    last_page_confirmed = min(at for report_id, at in sims.mm.confirm_log() if report_id in last_page)
    writes = call_times(sims, "composite")
    assert sum(at < last_page_confirmed for at in writes) == 5, "the group was written only after its last confirm"
    assert all(fields_of(sims, t) == ("Delivered", "220") and len(sims.sf.history(t)) == 1 for t in tasks)


@sqlite_only
def test_rows_locked_while_written_ahead_are_written_in_the_same_run(sims: Simulators,
                                                                     make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(1000)]  # a whole write-ahead group
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages]
                        + [report(new_message_id(), "enroute") for _ in range(400)])  # no Task: they wait
    worker = make_worker(SFSYNC_SF_CONCURRENCY="1", SFSYNC_RETRY_ATTEMPTS="1")  # a locked row is held at once
    hold = _waits_for_the_write_ahead(worker, after_pages=10)
    held_ahead = worker.on_stage

    def unlock_after_the_write_ahead(stage: str) -> None:
        held_ahead(stage)
        if stage == "wrote_ahead":
            sims.sf.configure(lock_row_rate=0.0)

    worker.on_stage = unlock_after_the_write_ahead
    sims.sf.configure(lock_row_rate=0.3)
    summary = worker.run()
    assert summary.exit_code == EXIT_OK and hold.held_until_written and summary.counts["held"] > 0
    # Held by the write ahead, drained again by the run's second pass: nothing left, each Task once.
    assert all(fields_of(sims, t) == ("Delivered", "220") and len(sims.sf.history(t)) == 1 for t in tasks)
    assert summary.counts["applied"] == 1000 and summary.counts["waiting"] == 400
    assert worker.store.inbox_backlog() == (0, None)
