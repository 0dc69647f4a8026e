"""`sfsync backfill` against the simulators: assertions are on the Tasks' fields in the Salesforce
simulator, on what each simulator was asked, and on the local store, never on mocks."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sfsync.cli import main as cli
from sfsync.domain.outcome import ReportOutcome, ReportResult, ResultSink, discard
from sfsync.domain.reports import parse_report
from sfsync.engine import Worker, build_clients
from sfsync.engine.backfill import Backfill, BackfillSummary
from sfsync.errors import EXIT_BUDGET, EXIT_OK, EXIT_PARTIAL, AlreadyRunning, UsageError
from sfsync.settings.config import Settings, load_settings
from sfsync.sim.harness import Simulators
from sfsync.sources.backfill import (
    BackfillOptions,
    Window,
    parse_window,
    report_from_record,
)
from sfsync.store import Store
from tests.conftest import composite_calls, fields_of, report, store_of

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
WINDOW = Window(NOW - dt.timedelta(days=2), NOW)
SENT = NOW - dt.timedelta(days=1)  # when the seeded messages were sent: inside WINDOW
# (status, code) the seeded messages are in now, in turn; None: a status without a code.
STORIES = [("delivered", "221"), ("failed", "414"), ("rejected", "411"), ("submitted", "210"), ("delivered", None),
           ("delivered", "999")]
EXPECTED = {("delivered", "221"): ("Delivered", "221"), ("failed", "414"): ("Failed", "414"),
            ("rejected", "411"): ("Rejected", "411"), ("submitted", "210"): ("Submitted", "210"),
            ("delivered", None): ("Delivered", None), ("delivered", "999"): ("Delivered", "999")}

MakeBackfill = Callable[..., Backfill]


@pytest.fixture
def make_backfill(settings_for: Callable[..., Settings]) -> MakeBackfill:
    """A backfill configured like `sfsync backfill`, whose retries never sleep."""

    def make(window: Window = WINDOW, *, env: dict[str, str] | None = None,
             on_page: Callable[[int], None] | None = None, progress_stream: Any = None,
             results: ResultSink = discard, **options: Any) -> Backfill:
        settings = settings_for(**(env or {}))
        mm, sf, retries = build_clients(settings, sleep=lambda seconds: None)
        return Backfill(settings, BackfillOptions(window, **options), mm=mm, sf=sf, retries=retries,
                        on_page=on_page, progress_stream=progress_stream, results=results)

    return make


@pytest.fixture(autouse=True)
def instant_bulk_jobs(sims: Simulators) -> None:
    sims.sf.configure(bulk_processing_s=0.0)  # one test puts the delay back to see the polling


Seeded = list[tuple[str, str, tuple[str, str | None]]]


def seed(sims: Simulators, n: int, *, seed_: int = 1, by_metadata_every: int = 3) -> Seeded:
    """``n`` Tasks and their messages, sent a second apart inside WINDOW, in the STORIES states.
    Every ``by_metadata_every``-th Task carries no message id: its message names it in metadata.
    Deterministic for a seed (same ids, same order). Returns (message id, Task Id, story)."""
    rng = random.Random(seed_)
    message_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    by_metadata = [by_metadata_every and i % by_metadata_every == 0 for i in range(n)]
    tasks = sims.sf.add_tasks([{"Subject": f"SMS {i}", **({} if meta else {"SMS_Message_Id__c": m})}
                               for i, (m, meta) in enumerate(zip(message_ids, by_metadata, strict=True))])
    messages = []
    for i, (message_id, task_id) in enumerate(zip(message_ids, tasks, strict=True)):
        status, code = STORIES[i % len(STORIES)]
        messages.append({"message_id": message_id, "status": status, "status_code": code,
                         "timestamp": (SENT + dt.timedelta(seconds=i)).isoformat(),
                         "metadata": {"sf_task_id": task_id, "campaign": "spring"} if by_metadata[i] else {}})
    sims.mm.add_messages(messages)
    return [(m, t, STORIES[i % len(STORIES)]) for i, (m, t) in enumerate(zip(message_ids, tasks, strict=True))]


def assert_filled(sims: Simulators, seeded: Seeded) -> None:
    wrong = [(t, fields_of(sims, t), EXPECTED[s]) for _, t, s in seeded if fields_of(sims, t) != EXPECTED[s]]
    assert not wrong, wrong[:5]


def reporting_calls(sims: Simulators) -> int:
    return int(sims.mm.stats()["calls"].get("POST /v2-preview/reporting/messages/detail", 0))


def bulk_calls(sims: Simulators) -> int:
    return int(sims.sf.stats()["api_calls"].get("bulk", 0))


# -- the reporting source ---------------------------------------------------------------------
def test_a_window_of_several_pages_fills_every_task(sims: Simulators, make_backfill: MakeBackfill) -> None:
    seeded = seed(sims, 350)
    backfill = make_backfill()
    summary = backfill.run()

    assert summary.exit_code == EXIT_OK and summary.exit_reason == "complete"
    assert_filled(sims, seeded)
    assert reporting_calls(sims) == 4  # 100 a page while has_next
    assert summary.counts["fetched"] == 350 and summary.counts["applied"] == 350
    assert composite_calls(sims) == 2 and bulk_calls(sims) == 0  # under the threshold: 200 + 150
    assert summary.counts["unknown_code"] == 350 // 6  # 999: kept as received
    checkpoint = backfill.store.checkpoint(backfill.options.key)
    assert checkpoint is not None and checkpoint["done"] is True
    assert checkpoint["cursor"] == {"page": 4} and checkpoint["counts"]["applied"] == 350
    # The ledger knows each status with its event time, as if the worker had written it.
    message_id, task_id, _ = seeded[7]
    entry = backfill.store.ledger([message_id])[message_id]
    assert (entry.task_id, entry.label, entry.code) == (task_id, "Failed", "414")
    assert entry.event_time == SENT + dt.timedelta(seconds=7)
    assert entry.report_id == f"backfill:{message_id}:failed:414"


@pytest.mark.parametrize("shape", ["object", "list"])
def test_both_metadata_shapes_match_tasks_by_their_id(sims: Simulators, make_backfill: MakeBackfill,
                                                      shape: str) -> None:
    sims.mm.configure(reporting_metadata_shape=shape)
    seeded = seed(sims, 30, by_metadata_every=1)  # no Task has a message id: metadata is the only link
    summary = make_backfill().run()
    assert_filled(sims, seeded)
    assert summary.counts["applied"] == 30


def test_zone_less_timestamps_are_read_in_the_windows_timezone(sims: Simulators,
                                                               make_backfill: MakeBackfill) -> None:
    sims.mm.configure(reporting_naive_timestamps=True)
    [(message_id, task_id, _)] = seed(sims, 1)
    sydney = Window(WINDOW.since, WINDOW.until, "Australia/Sydney")
    backfill = make_backfill(sydney)
    backfill.run()
    assert fields_of(sims, task_id) == ("Delivered", "221")
    # The record said e.g. "2026-11-21T15:00:00" (Sydney, no zone): stored as the same instant in UTC.
    assert backfill.store.ledger([message_id])[message_id].event_time == SENT


def test_status_and_metadata_filters_are_passed_to_the_reporting_api(sims: Simulators,
                                                                     make_backfill: MakeBackfill) -> None:
    seeded = seed(sims, 60)
    summary = make_backfill(statuses=("DELIVERED",), metadata_key="campaign", metadata_values=("spring",)).run()
    wanted = {t for i, (_, t, story) in enumerate(seeded) if story[0] == "delivered" and i % 3 == 0}
    assert summary.counts["applied"] == len(wanted) == 10
    assert all(fields_of(sims, t)[0] == ("Delivered" if t in wanted else None) for _, t, _ in seeded)


# -- the Bulk API path ------------------------------------------------------------------------
@pytest.mark.parametrize("api_version", ["59.0", "52.0"])  # before 53.0 failed results have no sf__Id
def test_bulk_path_records_failed_rows_as_dead_letters(sims: Simulators, make_backfill: MakeBackfill,
                                                       api_version: str) -> None:
    sims.sf.configure(bulk_processing_s=0.2)  # the job takes a moment: it is polled until JobComplete
    seeded = seed(sims, 240)
    sims.sf.add_validation_rule("SMS_Status__c", "Rejected", "Rejected SMS need a follow-up first")
    gone = seeded[3][1]  # named in its message's metadata
    sims.sf.delete_task(gone)
    backfill = make_backfill(bulk_threshold=10, env={"SFSYNC_SF_API_VERSION": api_version})
    summary = backfill.run()

    assert summary.counts["bulk_jobs"] == 1 and composite_calls(sims) == 0
    rejected = {t for _, t, story in seeded if story[0] == "rejected"}
    assert all(fields_of(sims, t) == (None, None) for t in rejected)
    assert_filled(sims, [s for s in seeded if s[1] not in rejected and s[1] != gone])
    letters = {d.message_id: d for d in backfill.store.dead_letters(1000)}
    assert len(letters) == len(rejected) and summary.exit_code == EXIT_PARTIAL
    by_task = {t: m for m, t, _ in seeded}
    assert all("FIELD_CUSTOM_VALIDATION_EXCEPTION" in (letters[by_task[t]].sf_error or "") for t in rejected)
    assert all(letter.source == "backfill" for letter in letters.values())
    # The deleted Task named in metadata is not returned by the look-up: never written blind, no Task.
    assert summary.counts["no_task"] == 1 and not sims.sf.history(gone)
    # The ledger holds what was written, and nothing Salesforce refused.
    ledger = backfill.store.ledger(by_task.values())
    assert len(ledger) == 240 - len(rejected) - 1 and not set(ledger) & {by_task[t] for t in rejected}


def test_five_thousand_rows_go_by_bulk_in_jobs_of_bounded_size(sims: Simulators,
                                                               make_backfill: MakeBackfill,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    seeded = seed(sims, 5000, by_metadata_every=0)
    caplog.set_level(logging.INFO, logger="sfsync.sources.backfill")
    summary = make_backfill(bulk_threshold=100, bulk_job_rows=2000).run()
    assert_filled(sims, seeded)
    # The buffer is written whenever it holds a job's worth: 2,000 + 2,000, then the last 1,000.
    assert summary.counts["bulk_jobs"] == 3 and summary.counts["bulk_rows"] == 5000
    assert summary.counts["applied"] == 5000 and composite_calls(sims) == 0
    assert all(len(sims.sf.history(t)) == 1 for _, t, _ in seeded[:500])
    progress = [r for r in caplog.records if getattr(r, "event", "") == "backfill_progress"]
    assert len(progress) == 6  # off a terminal: a line every 10 of the 50 pages, and one at the end
    assert progress[-1].percent == 100.0


def test_row_locks_in_a_bulk_job_are_retried_and_nothing_is_written_twice(
        sims: Simulators, make_backfill: MakeBackfill) -> None:
    seeded = seed(sims, 150, by_metadata_every=0)
    # The simulator's lock coin is seeded: the same rows are locked on every run (in the job and in
    # each Collections retry; the draws happen in one order: the job's rows, then each retry's), so the
    # outcome cannot depend on an unseeded generator's luck.
    sims.sf.faults.configure(seed=20)
    sims.sf.configure(lock_row_rate=0.3)
    # 15 attempts, and a time cap that lets them all happen (the injected sleeps still count against
    # SFSYNC_RETRY_MAX_SECONDS: with the tests' 30 s a row got 6 tries, locked in all of them 1 run in 30).
    summary = make_backfill(bulk_threshold=10, env={"SFSYNC_RETRY_ATTEMPTS": "15", "SFSYNC_RETRY_MAX_SECONDS": "3600",
                                                    "SFSYNC_FIELD_UPDATED": "SMS_Status_Updated__c"}).run()
    assert summary.exit_code == EXIT_OK
    assert_filled(sims, seeded)
    assert composite_calls(sims) > 0  # the locked rows, again through sObject Collections
    assert all(len(sims.sf.history(t)) == 1 for _, t, _ in seeded)
    # The event time goes in the optional date-time field, by CSV or by JSON alike.
    updated = {str((sims.sf.task(t) or {}).get("SMS_Status_Updated__c"))[:19] for _, t, _ in seeded[:3]}
    assert updated == {f"{SENT + dt.timedelta(seconds=i):%Y-%m-%dT%H:%M:%S}" for i in range(3)}


# -- resume, rerun, precedence ----------------------------------------------------------------
def task_state(sims: Simulators) -> dict[str, tuple[Any, Any]]:
    return {t["Subject"]: (t.get("SMS_Status__c"), t.get("SMS_Status_Code__c")) for t in sims.sf.tasks()}


def store_state(store: Store, message_ids: list[str]) -> Any:
    ledger = {m: (e.label, e.code, e.event_time, e.report_id) for m, e in store.ledger(message_ids).items()}
    return ledger, sorted((d.report_id, d.sf_error) for d in store.dead_letters(1000))


class Crash(BaseException):
    pass


@pytest.mark.parametrize("how,after_page,restart", [
    ("stop", 3, 3),  # a clean stop writes what it decided: the resume starts at page 3
    ("crash", 3, 0),  # under the threshold nothing was written yet: the resume starts over
    ("crash_bulk", 5, 3),  # a bulk job wrote pages 0-2; pages 3-4 were still in the buffer
])
def test_interrupted_then_resumed_ends_as_an_uninterrupted_run(sims: Simulators, make_backfill: MakeBackfill,
                                                               tmp_path: Path, how: str, after_page: int,
                                                               restart: int) -> None:
    options: dict[str, Any] = {"bulk_threshold": 50, "bulk_job_rows": 250} if how == "crash_bulk" else {}
    seeded = seed(sims, 730)
    sims.sf.add_validation_rule("SMS_Status__c", "Rejected", "Rejected SMS need a follow-up first")

    def crash(page: int) -> None:
        if page == after_page:
            raise Crash

    if how == "stop":
        first = make_backfill(max_pages=after_page, **options).run()
        assert first.exit_reason == "max_pages" and first.counts["pages"] == after_page
    else:
        with pytest.raises(Crash):
            make_backfill(on_page=crash, **options).run()
    calls_before = reporting_calls(sims)
    resumed = make_backfill(resume=True, **options).run()
    assert resumed.exit_reason == "complete" and resumed.window_counts["pages"] == 8
    assert reporting_calls(sims) - calls_before == 8 - restart

    # The same story, uninterrupted, in fresh simulators.
    with Simulators() as fresh:
        fresh.sf.configure(bulk_processing_s=0.0)
        seed(fresh, 730)
        fresh.sf.add_validation_rule("SMS_Status__c", "Rejected", "Rejected SMS need a follow-up first")
        env = {**fresh.env(), "SFSYNC_STATE_DIR": str(tmp_path / "fresh")}
        settings = load_settings(environ=env)
        mm, sf, retries = build_clients(settings, sleep=lambda s: None)
        whole = Backfill(settings, BackfillOptions(WINDOW, **options), mm=mm, sf=sf, retries=retries)
        whole.run()
        assert task_state(sims) == task_state(fresh)
        ids = [m for m, _, _ in seeded]
        assert store_state(make_backfill().store, ids) == store_state(whole.store, ids)
    assert_filled(sims, [s for s in seeded if s[2][0] != "rejected"])
    assert all(len(sims.sf.history(t)) <= 1 for _, t, _ in seeded)  # nothing written twice


@pytest.mark.parametrize("stage,nth,options,reread", [
    ("wrote", 1, {}, 4),  # Collections: 200 of 350 written, not recorded: the whole batch again
    ("wrote", 1, {"bulk_threshold": 50, "bulk_job_rows": 100}, 4),  # a Bulk job read back, not recorded
    ("recorded", 1, {"bulk_threshold": 50, "bulk_job_rows": 100}, 3),  # recorded with its checkpoint: page 2 on
])
def test_a_kill_between_a_batchs_write_and_its_checkpoint_writes_nothing_twice(
        sims: Simulators, make_backfill: MakeBackfill, stage: str, nth: int, options: dict[str, Any],
        reread: int) -> None:
    """Backfill's batches go through the engine's drain (the pipeline's stages, the checkpoint moved
    in the transaction that records the outcomes): a kill at either side of the record loses nothing,
    and the resumed run writes no Task a second time."""
    seeded = seed(sims, 350)
    seen: list[str] = []

    def kill(at: str) -> None:
        seen.append(at)
        if at == stage and seen.count(stage) == nth:
            raise Crash

    settings = make_backfill().settings
    mm, sf, retries = build_clients(settings, sleep=lambda s: None)
    with pytest.raises(Crash):
        Backfill(settings, BackfillOptions(WINDOW, **options), mm=mm, sf=sf, retries=retries, on_stage=kill).run()
    assert {"resolved", "matched", "wrote"} <= set(seen)  # the drain's pipeline, stage by stage
    calls = reporting_calls(sims)
    resumed = make_backfill(resume=True, **options).run()
    assert resumed.exit_reason == "complete" and resumed.exit_code == EXIT_OK
    assert reporting_calls(sims) - calls == reread
    assert_filled(sims, seeded)
    assert all(len(sims.sf.history(t)) == 1 for _, t, _ in seeded)  # nothing written twice
    ledger = resumed.window_counts
    assert ledger["pages"] == 4 and len(make_backfill().store.ledger([m for m, _, _ in seeded])) == 350


def test_a_backfill_over_tasks_the_worker_wrote_makes_no_salesforce_write(
        sims: Simulators, make_backfill: MakeBackfill, make_worker: Callable[..., Worker]) -> None:
    """Decided against the ledger in the drain: what `sfsync run` wrote costs no Salesforce write."""
    seeded = seed(sims, 150, by_metadata_every=0)
    sims.mm.add_reports([report(m, status, code, submitted_date=iso(SENT + dt.timedelta(seconds=i)))
                         for i, (m, _, (status, code)) in enumerate(seeded)])
    assert make_worker().run().counts["applied"] == 150
    writes = composite_calls(sims), bulk_calls(sims)
    for options in ({}, {"bulk_threshold": 10}):
        summary = make_backfill(**options).run()
        assert summary.exit_reason == "complete" and summary.counts["applied"] == 0
        assert summary.counts["skipped_unchanged"] + summary.counts["skipped_stale"] == 150
        assert (composite_calls(sims), bulk_calls(sims)) == writes
    assert all(len(sims.sf.history(t)) == 1 for _, t, _ in seeded)


def test_a_rerun_of_a_completed_window_makes_zero_writes(sims: Simulators, make_backfill: MakeBackfill) -> None:
    seed(sims, 250)
    make_backfill(bulk_threshold=100).run()
    writes = composite_calls(sims), bulk_calls(sims)
    again = make_backfill(bulk_threshold=100).run()
    assert (composite_calls(sims), bulk_calls(sims)) == writes
    assert again.counts["applied"] == 0 and again.counts["changed"] == 0
    assert again.counts["skipped_unchanged"] + again.counts["skipped_stale"] == 250
    # --resume of a completed window has nothing to do, and does not even read it.
    calls = reporting_calls(sims)
    assert make_backfill(resume=True).run().exit_reason == "already_complete"
    assert reporting_calls(sims) == calls


def test_a_final_status_written_by_the_worker_is_not_regressed(sims: Simulators, make_backfill: MakeBackfill,
                                                               make_worker: Callable[..., Worker]) -> None:
    sent, later = (iso(SENT + dt.timedelta(minutes=m)) for m in (0, 60))
    lagging, resent = str(uuid.uuid4()), str(uuid.uuid4())
    t1, t2 = sims.sf.add_tasks([{"Subject": "lagging", "SMS_Message_Id__c": lagging}, {"Subject": "resent"}])
    # Delivered, then a late non-final report with a later time: MessageMedia's reporting shows
    # the later one (SUBMITTED 210); the worker rightly kept Delivered.
    sims.mm.add_reports([report(lagging, "delivered", "221", submitted_date=sent),
                         report(lagging, "submitted", "210", submitted_date=later)])
    # The Task's Delivered came from another message of the same Task; a resend is still in flight.
    sims.mm.add_reports([report(str(uuid.uuid4()), "delivered", "220", metadata={"sf_task_id": t2},
                                submitted_date=sent)])
    sims.mm.add_messages([{"message_id": resent, "status": "enroute", "status_code": "200", "timestamp": sent,
                           "metadata": {"sf_task_id": t2}}])
    make_worker().run()
    assert fields_of(sims, t1) == ("Delivered", "221") and fields_of(sims, t2) == ("Delivered", "220")
    history = len(sims.sf.history(t1)), len(sims.sf.history(t2))

    summary = make_backfill().run()
    assert fields_of(sims, t1) == ("Delivered", "221") and fields_of(sims, t2) == ("Delivered", "220")
    assert (len(sims.sf.history(t1)), len(sims.sf.history(t2))) == history
    assert summary.counts["skipped_stale"] >= 2 and summary.counts["applied"] == 0


def test_the_api_budget_stops_cleanly_and_resume_finishes(sims: Simulators, make_backfill: MakeBackfill) -> None:
    seeded = seed(sims, 800, by_metadata_every=0)
    sims.sf.configure(daily_limit=1000, api_usage=880)  # 90% is reached a few pages in
    first = make_backfill(bulk_threshold=50, bulk_job_rows=200).run()
    assert first.exit_code == EXIT_BUDGET and first.exit_reason == "api_budget"
    written = [t for _, t, _ in seeded if fields_of(sims, t)[0] is not None]
    assert 0 < len(written) < 800

    sims.sf.configure(daily_limit=100_000)
    resumed = make_backfill(bulk_threshold=50, bulk_job_rows=200, resume=True).run()
    assert resumed.exit_code == EXIT_OK
    assert_filled(sims, seeded)
    assert all(len(sims.sf.history(t)) == 1 for _, t, _ in seeded)


def test_backfill_and_the_worker_never_write_together(sims: Simulators, make_backfill: MakeBackfill) -> None:
    seed(sims, 5)
    backfill = make_backfill()
    # The run lock the store names: the flock beside the SQLite file, or PostgreSQL's lease `run`.
    with store_of(backfill.settings).run_lock(backfill.settings.lock_path), pytest.raises(AlreadyRunning):
        backfill.run()
    assert composite_calls(sims) == 0 and reporting_calls(sims) == 0


# -- the Salesforce source --------------------------------------------------------------------
def test_from_salesforce_fills_tasks_whose_status_is_empty_or_not_final(sims: Simulators,
                                                                        make_backfill: MakeBackfill) -> None:
    empty = [str(uuid.uuid4()) for _ in range(430)]
    in_flight, still, final, unknown = (str(uuid.uuid4()) for _ in range(4))
    tasks = sims.sf.add_tasks([
        *[{"Subject": f"e{i}", "SMS_Message_Id__c": m} for i, m in enumerate(empty)],
        {"Subject": "in flight", "SMS_Message_Id__c": in_flight, "SMS_Status__c": "Submitted",
         "SMS_Status_Code__c": "210"},
        {"Subject": "still in flight", "SMS_Message_Id__c": still, "SMS_Status__c": "Submitted",
         "SMS_Status_Code__c": "211"},
        {"Subject": "final", "SMS_Message_Id__c": final, "SMS_Status__c": "Failed", "SMS_Status_Code__c": "414"},
        {"Subject": "gone from MessageMedia", "SMS_Message_Id__c": unknown},
        {"Subject": "not an SMS"},
    ])
    statuses = ["delivered", "failed", "rejected", "submitted", "cancelled"]
    sims.mm.add_messages([{"message_id": m, "status": statuses[i % 5]} for i, m in enumerate(empty)]
                         + [{"message_id": in_flight, "status": "delivered"},
                            {"message_id": still, "status": "submitted"}, {"message_id": final, "status": "sent"}])
    window = Window(NOW - dt.timedelta(hours=1), dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2))
    summary = make_backfill(window, from_salesforce=True).run()

    labels = {"delivered": "Delivered", "failed": "Failed", "rejected": "Rejected", "submitted": "Submitted",
              "cancelled": "Stopped"}
    assert all(fields_of(sims, t) == (labels[statuses[i % 5]], None) for i, t in enumerate(tasks[:430]))
    assert fields_of(sims, tasks[430]) == ("Delivered", None)  # not final before: the message's word wins
    # The look-up has no code and no time: the same label again says nothing new, the code stays.
    assert fields_of(sims, tasks[431]) == ("Submitted", "211") and not sims.sf.history(tasks[431])
    assert fields_of(sims, tasks[432]) == ("Failed", "414") and not sims.sf.history(tasks[432])  # never selected
    assert fields_of(sims, tasks[433]) == (None, None) and summary.counts["not_found"] == 1
    assert summary.counts["pages"] == 3 and summary.counts["applied"] == 431
    assert sims.mm.stats()["calls"].get("GET /v1/messages/{message_id}") == 433
    checkpoint = make_backfill(window, from_salesforce=True).store.checkpoint(summary_key(window))
    assert checkpoint is not None and checkpoint["done"] and checkpoint["cursor"] == {"after": tasks[433]}


def summary_key(window: Window) -> str:
    return BackfillOptions(window, from_salesforce=True).key


# -- dry run ----------------------------------------------------------------------------------
def test_dry_run_writes_nothing_and_counts_per_sms_status(sims: Simulators, make_backfill: MakeBackfill) -> None:
    seeded = seed(sims, 120)
    rows: list[ReportResult] = []
    backfill = make_backfill(dry_run=True, bulk_threshold=10, results=rows.append)
    summary = backfill.run()
    assert summary.exit_reason == "dry_run" and summary.counts[ReportOutcome.WOULD_WRITE] == 120
    assert summary.by_label == {"Delivered": 60, "Failed": 20, "Rejected": 20, "Submitted": 20}
    assert len(rows) == 120 and {r.outcome for r in rows} == {ReportOutcome.WOULD_WRITE}
    assert rows[0].old_status is None and {r.task_id for r in rows} == {t for _, t, _ in seeded}
    assert composite_calls(sims) == 0 and bulk_calls(sims) == 0
    assert all(fields_of(sims, t) == (None, None) for _, t, _ in seeded)
    assert backfill.store.checkpoint(backfill.options.key) is None
    assert backfill.store.ledger([m for m, _, _ in seeded]) == {}


# -- the command line -------------------------------------------------------------------------
@pytest.fixture
def cli_env(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("SFSYNC_")]:
        monkeypatch.delenv(name)
    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def test_command_line_dry_run_then_run(sims: Simulators, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    seeded = seed(sims, 40)
    argv = ["backfill", "--since", iso(WINDOW.since), "--until", iso(WINDOW.until), "--log-format", "json"]
    assert cli.main([*argv, "--dry-run"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "dry run: 40 Task update(s) would be written" in out
    assert "by SMS Status: Delivered 19, Failed 7, Rejected 7, Submitted 7" in out
    assert all(fields_of(sims, t) == (None, None) for _, t, _ in seeded)

    assert cli.main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert out.startswith("backfill complete: 1 page(s), 40 records read, 40 Tasks written")
    assert_filled(sims, seeded)


@pytest.mark.parametrize("argv,message", [
    (["--since", "2026-11-08", "--until", "2026-11-01"], "wrong way round"),
    (["--since", "2026-11-01", "--until", "2999-01-01"], "in the future"),
    (["--since", "last week", "--until", "2026-11-01"], "not an ISO date"),
    (["--since", "2026-11-01", "--until", "2026-11-02", "--timezone", "Mars/Olympus"], "not a time zone"),
    (["--since", "2026-11-01", "--until", "2026-11-02", "--from-salesforce", "--status", "failed"], "--status"),
    (["--since", "2026-11-01", "--until", "2026-11-02", "--metadata", "a=1", "--metadata", "b=2"], "one key"),
])
def test_usage_errors_are_clear(cli_env: None, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
                                argv: list[str], message: str) -> None:
    assert cli.main(["backfill", *argv]) == 2
    assert message in capsys.readouterr().err + caplog.text


def test_resume_without_an_interrupted_run_is_a_usage_error(sims: Simulators, make_backfill: MakeBackfill) -> None:
    with pytest.raises(UsageError, match="no interrupted backfill"):
        make_backfill(resume=True).run()


def test_windows_read_dates_and_times_in_the_given_zone() -> None:
    now = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    w = parse_window("2026-11-01", "2026-11-08", "Australia/Sydney", now=now)
    assert (w.since, w.until) == (dt.datetime(2026, 10, 31, 13, tzinfo=dt.UTC), dt.datetime(2026, 11, 7, 13,
                                                                                            tzinfo=dt.UTC))
    assert w.local(w.since) == "2026-11-01T00:00:00"  # as the reporting API wants it, with "timezone"
    w = parse_window("2026-11-01T09:30", "2026-11-01T10:00:00+00:00", "UTC", now=now)
    assert w.since == dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)
    assert parse_window("2026-11-01", "2026-11-02", "Z", now=now).timezone == "UTC"


# -- the pipeline change backfill needed (it never waits for a Task) ---------------------------
def test_two_messages_naming_one_task_in_a_batch_both_resolve(sims: Simulators,
                                                              make_worker: Callable[..., Worker]) -> None:
    [task] = sims.sf.add_tasks([{"Subject": "sent twice"}])
    first, resend = str(uuid.uuid4()), str(uuid.uuid4())
    sims.mm.add_reports([report(resend, "delivered", "221", minute=5, metadata={"sf_task_id": task}),
                         report(first, "failed", "414", minute=1, metadata={"sf_task_id": task})])
    worker = make_worker()
    summary = worker.run()
    # Matched both (neither waits), written once: the later final status, as one after the other would leave it.
    assert summary.counts["waiting"] == 0 and worker.store.waiting_count() == 0
    assert fields_of(sims, task) == ("Delivered", "221") and len(sims.sf.history(task)) == 1
    assert sims.mm.stats()["unconfirmed"] == 0


# -- small parts ------------------------------------------------------------------------------
def test_reporting_records_become_the_reports_the_worker_parses() -> None:
    record = {"message_id": "m-1", "status": "DELIVERED", "status_code": 221, "timestamp": "2026-11-01T10:00:00",
              "delivered_timestamp": "2026-11-01T10:00:05", "last_status_update": "2026-11-01T10:00:07",
              "metadata": [{"key": "sf_task_id", "value": "00T000000000001"}]}
    raw = report_from_record(record, dt.timezone(dt.timedelta(hours=10)))
    assert raw == {"delivery_report_id": "backfill:m-1:delivered:221", "message_id": "m-1", "status": "delivered",
                   "error_code": "221", "submitted_date": "2026-11-01T00:00:07.000Z",
                   "date_received": "2026-11-01T00:00:07.000Z", "metadata": {"sf_task_id": "00T000000000001"}}
    assert parse_report(raw).code == "221"
    no_code = report_from_record({**record, "status_code": None, "last_status_update": None}, dt.UTC)
    assert "error_code" not in no_code and no_code["submitted_date"] == "2026-11-01T10:00:05.000Z"
    assert report_from_record("garbage", dt.UTC) == "garbage"  # the pipeline dead-letters it


def test_one_write_per_task_across_pages_by_the_precedence_rule(sims: Simulators,
                                                                 make_backfill: MakeBackfill) -> None:
    """Two messages naming one Task on different pages of one batch: collapsed per Task by the
    precedence rule, written once (the final status, though the in-flight one was sent later)."""
    seeded = seed(sims, 150, by_metadata_every=0)
    [task] = sims.sf.add_tasks([{"Subject": "sent twice"}])
    first, resend = str(uuid.uuid4()), str(uuid.uuid4())
    sims.mm.add_messages([
        {"message_id": first, "status": "delivered", "status_code": "221", "metadata": {"sf_task_id": task},
         "timestamp": (SENT - dt.timedelta(seconds=1)).isoformat()},  # on the first page
        {"message_id": resend, "status": "submitted", "status_code": "210", "metadata": {"sf_task_id": task},
         "timestamp": (SENT + dt.timedelta(seconds=500)).isoformat()},  # on the second
    ])
    summary = make_backfill().run()
    assert summary.counts["pages"] == 2 and summary.exit_code == EXIT_OK
    assert fields_of(sims, task) == ("Delivered", "221") and len(sims.sf.history(task)) == 1
    assert_filled(sims, seeded)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_bar_on_a_terminal(sims: Simulators, make_backfill: MakeBackfill) -> None:
    seed(sims, 250)
    terminal = _Terminal()
    summary: BackfillSummary = make_backfill(progress_stream=terminal).run()
    assert summary.exit_code == EXIT_OK
    shown = terminal.getvalue()
    assert "100% of the window's time span|" in shown and "250 read" in shown
    assert "250 written" in shown and "/s" in shown


# -- `sfsync backfill` against `sfsync sim`, as an engineer runs it (scripts/backfill execs it) --
def test_sfsync_backfill_against_sfsync_sim(tmp_path: Path, store_env: dict[str, str]) -> None:
    sfsync = str(Path(sys.executable).parent / "sfsync")
    sim = subprocess.Popen([sfsync, "sim", "--seed-demo", "60", "--late-after", "600"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        assert sim.stdout is not None
        info = json.loads(sim.stdout.readline())
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")},
               "SFSYNC_MM_BASE_URL": info["messagemedia_url"], "SFSYNC_MM_API_KEY": info["mm_api_key"],
               "SFSYNC_MM_API_SECRET": info["mm_api_secret"], "SFSYNC_SF_LOGIN_URL": info["salesforce_login_url"],
               "SFSYNC_SF_CLIENT_ID": info["sf_client_id"], "SFSYNC_SF_CLIENT_SECRET": info["sf_client_secret"],
               "SFSYNC_CA_BUNDLE": info["ca_bundle"], "SFSYNC_STATE_DIR": str(tmp_path / "state"), **store_env}
        today = dt.datetime.now(dt.UTC).date()
        argv = [sfsync, "backfill", "--since", str(today - dt.timedelta(days=1)), "--until",
                iso(dt.datetime.now(dt.UTC))]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        # The demo's deleted Task, named in metadata, is never written blind: a message "without a Task".
        assert done.returncode == EXIT_OK, done.stderr[-2000:]
        assert "backfill complete" in done.stdout
        from sfsync.clients.http import make_session

        with make_session(info["ca_bundle"]) as http:
            tasks = http.get(info["salesforce_url"] + "/_sim/tasks", timeout=10).json()["records"]
        # Every Task the demo logged (late ones are not there yet) has its status, and a code
        # wherever MessageMedia's reporting knows one.
        assert tasks and all(t["SMS_Status__c"] for t in tasks)
        assert sum(1 for t in tasks if t["SMS_Status_Code__c"]) > len(tasks) // 2
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert "0 Tasks written" in again.stdout
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(timeout=15)
        finally:
            if sim.poll() is None:
                sim.kill()
