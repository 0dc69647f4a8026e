"""`sfsync run` end to end against the simulators: assertions are on the Tasks' fields in the
Salesforce simulator and on what MessageMedia was told (confirmations), never on mocks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sfsync.engine import RunOptions, Worker
from sfsync.errors import EXIT_BUDGET, EXIT_OK, EXIT_PARTIAL, AlreadyRunning, AuthError, ConfigError, RemoteError
from sfsync.sim.harness import Simulators
from sfsync.store.lock import RunLock
from tests.conftest import (
    add_tasks,
    composite_calls,
    fields_of,
    look_ups,
    new_message_id,
    on_postgresql,
    report,
    sf_calls,
    store_of,
)

MakeWorker = Callable[..., Worker]


def confirmed_once(sims: Simulators, report_ids: list[str]) -> bool:
    counts = sims.mm.stats()["confirm_counts"]
    return all(counts.get(r, 0) >= 1 for r in report_ids)


def test_happy_path(sims: Simulators, make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(250)]
    tasks = add_tasks(sims, messages)
    reports = [report(m, "delivered", "221", minute=i) for i, m in enumerate(messages)]
    sims.mm.add_reports(reports)

    summary = make_worker().run()

    assert summary.exit_code == EXIT_OK
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)
    assert sims.mm.stats()["unconfirmed"] == 0
    assert confirmed_once(sims, [r["delivery_report_id"] for r in reports])
    # 250 reports: 3 look-ups (100 Tasks each) and 2 collection writes (200 each); the two writes go in one
    # Composite request (one call), the look-ups too when they are made together (the look-ahead may make
    # them page by page, as the poll stages them).
    assert look_ups(sims) == 3 and composite_calls(sims) == 2
    assert sims.sf.stats()["api_calls"].get("composite_batch", 0) >= 1 and sf_calls(sims) <= 4
    assert summary.counts["applied"] == 250


def test_match_by_task_id_in_metadata(sims: Simulators, make_worker: MakeWorker) -> None:
    [task] = sims.sf.add_tasks([{"Subject": "no message id on this Task"}])
    sims.mm.add_reports([report(new_message_id(), "delivered", "220", metadata={"sf_task_id": task})])
    make_worker().run()
    assert fields_of(sims, task) == ("Delivered", "220")


def test_out_of_order_in_one_batch_and_across_batches(sims: Simulators, make_worker: MakeWorker) -> None:
    in_batch, across = new_message_id(), new_message_id()
    t1, t2 = add_tasks(sims, [in_batch, across])
    filler = [new_message_id() for _ in range(120)]
    add_tasks(sims, filler)
    sims.mm.add_reports([
        report(in_batch, "delivered", "221", minute=5),
        report(in_batch, "enroute", "200", minute=1),
        report(across, "delivered", "220", minute=5),
        *[report(m, "submitted", "210", minute=1) for m in filler],
        report(across, "submitted", "210", minute=2),  # arrives in a later batch, older and non-final
        report(in_batch, "submitted", None, minute=9),  # later in time but non-final: never over a final
    ])
    make_worker().run()
    assert fields_of(sims, t1) == ("Delivered", "221")
    assert fields_of(sims, t2) == ("Delivered", "220")
    assert all(h["fields"].get("SMS_Status__c") != "Submitted" for h in sims.sf.history(t2)[1:])


def test_later_event_wins_among_non_final(sims: Simulators, make_worker: MakeWorker) -> None:
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    worker = make_worker()
    sims.mm.add_reports([report(message, "submitted", "210", minute=3)])
    worker.run()
    sims.mm.add_reports([report(message, "enroute", "200", minute=1)])  # older event, arrives later
    worker.run()
    assert fields_of(sims, task) == ("Submitted", "210")


@pytest.mark.parametrize("updated_field", ["", "SMS_Status_Updated__c"])
@pytest.mark.parametrize("labels", [("failed", "400", "delivered", "220"), ("submitted", "210", "enroute", "200"),
                                    ("delivered", None, "failed", "400")])
def test_a_repeat_of_the_status_moves_its_time_on_so_an_older_report_still_loses(
        sims: Simulators, make_worker: MakeWorker, updated_field: str, labels: tuple[str, ...]) -> None:
    """Each report in its own run: A at minute 0 (written), A again at minute 2 (nothing to write),
    then B at minute 1. B is older than the Task's latest known event: it must lose to A@2 (found by
    the property test: the ledger kept A@0, so B won)."""
    kept, kept_code, older, older_code = labels
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    for status, code, minute in [(kept, kept_code, 0), (kept, kept_code, 2), (older, older_code, 1)]:
        sims.mm.add_reports([report(message, status, code, minute=minute)])
        assert make_worker(SFSYNC_FIELD_UPDATED=updated_field).run().exit_code == EXIT_OK
    label = {"failed": "Failed", "delivered": "Delivered", "submitted": "Submitted"}[kept]
    assert fields_of(sims, task) == (label, kept_code)
    assert len(sims.sf.history(task)) == 1  # the repeat and the older report cost no write


def test_rerun_of_the_same_reports_makes_zero_writes(sims: Simulators, make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(150)]
    add_tasks(sims, messages)
    first = [report(m, "delivered", "220", minute=1) for m in messages]
    sims.mm.add_reports(first)
    worker = make_worker()
    worker.run()
    writes = composite_calls(sims)
    # MessageMedia serves the same statuses again (new report ids): nothing to write.
    sims.mm.add_reports([report(m, "delivered", "220", minute=1) for m in messages])
    summary = worker.run()
    assert composite_calls(sims) == writes
    assert summary.counts["skipped_unchanged"] + summary.counts["skipped_stale"] == 150
    assert summary.counts["applied"] == 0
    assert sims.mm.stats()["unconfirmed"] == 0


def test_task_that_appears_later_waits_then_applies(sims: Simulators, make_worker: MakeWorker) -> None:
    message = new_message_id()
    r = report(message, "delivered", "221", minute=1)
    sims.mm.add_reports([r])
    worker = make_worker()
    first = worker.run()
    assert first.counts["waiting"] == 1
    assert confirmed_once(sims, [r["delivery_report_id"]])  # kept locally, so confirmed
    assert worker.store.waiting_count() == 1

    [task] = add_tasks(sims, [message])
    not_due = worker.run()  # back-off: not retried yet
    assert not_due.counts["applied"] == 0 and fields_of(sims, task) == (None, None)
    worker.run(RunOptions(retry_waiting=True))
    assert fields_of(sims, task) == ("Delivered", "221")
    assert worker.store.waiting_count() == 0


def test_waiting_report_becomes_dead_letter_after_max_age(sims: Simulators, make_worker: MakeWorker) -> None:
    sims.mm.add_reports([report(new_message_id(), "delivered", "221")])
    worker = make_worker(SFSYNC_WAIT_MAX_AGE_HOURS="0.0000001")
    worker.run()
    summary = worker.run(RunOptions(retry_waiting=True))
    assert summary.exit_code == EXIT_PARTIAL
    assert worker.store.waiting_count() == 0
    [letter] = worker.store.dead_letters()
    assert "no Task found" in letter.reason


def test_deleted_task_is_a_dead_letter_with_the_salesforce_error(sims: Simulators, make_worker: MakeWorker) -> None:
    # Deleted between the look-up and the write, with no other Task holding its message id.
    # (A deleted Task named in metadata is never written blind: tests/test_ids.py.)
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    r = report(message, "delivered", "220")
    sims.mm.add_reports([r])

    def delete_after_match(stage: str) -> None:
        if stage == "matched" and sims.sf.task(task) is not None:
            sims.sf.delete_task(task)

    worker = make_worker(on_stage=delete_after_match)
    summary = worker.run()
    assert summary.exit_code == EXIT_PARTIAL
    [letter] = worker.store.dead_letters()
    assert letter.report_id == r["delivery_report_id"]
    assert "ENTITY_IS_DELETED" in (letter.sf_error or "")
    assert confirmed_once(sims, [r["delivery_report_id"]])


def test_validation_errors_become_dead_letters_others_still_written(sims: Simulators,
                                                                    make_worker: MakeWorker) -> None:
    good, rule, long_code = new_message_id(), new_message_id(), new_message_id()
    t_good, t_rule, t_long = add_tasks(sims, [good, rule, long_code])
    sims.sf.add_validation_rule("SMS_Status__c", "Rejected", "Rejected SMS need a follow-up first")
    sims.mm.add_reports([report(good, "delivered", "220"), report(rule, "rejected", "411"),
                         report(long_code, "failed", "12345678901")])  # an unknown code longer than the field
    worker = make_worker()
    summary = worker.run()
    assert fields_of(sims, t_good) == ("Delivered", "220")
    assert fields_of(sims, t_rule) == (None, None) and fields_of(sims, t_long) == (None, None)
    errors = sorted((d.sf_error or "").split(":")[0] for d in worker.store.dead_letters())
    assert errors == ["FIELD_CUSTOM_VALIDATION_EXCEPTION", "STRING_TOO_LONG"]
    assert summary.exit_code == EXIT_PARTIAL and sims.mm.stats()["unconfirmed"] == 0


def test_truncation_only_where_configured(sims: Simulators, make_worker: MakeWorker) -> None:
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    sims.mm.add_reports([report(message, "failed", "12345678901")])
    make_worker(SFSYNC_TRUNCATE_FIELDS="SMS_Status_Code__c").run()
    assert fields_of(sims, task) == ("Failed", "1234567890")


def test_expired_token_mid_run_gets_one_new_token(sims: Simulators, make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(300)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    batches = []

    def expire_after_first_batch(stage: str) -> None:  # between the look-ups and two writes sent together
        if stage == "matched":
            batches.append(1)
            if len(batches) == 1:
                sims.sf.expire_tokens()

    summary = make_worker(on_stage=expire_after_first_batch).run()
    assert summary.exit_code == EXIT_OK
    assert all(fields_of(sims, t) == ("Delivered", "220") for t in tasks)
    assert sims.sf.stats()["api_calls"]["token"] == 2


@pytest.mark.parametrize("kinds", [["429"], ["503", "502", "500"], ["reset", "malformed"]])
def test_fault_bursts_are_retried_and_nothing_is_lost(sims: Simulators, make_worker: MakeWorker,
                                                      kinds: list[str]) -> None:
    messages = [new_message_id() for _ in range(200)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221") for m in messages])
    # Seeds whose first draw is a fault (a reset, with the third kinds): retries happen however few
    # calls the run makes (Composite packing leaves only a handful of Salesforce calls).
    sims.mm.faults.configure(rate=0.3, kinds=kinds, seed=13, retry_after=0)
    sims.sf.faults.configure(rate=0.3, kinds=kinds, seed=14, retry_after=0)
    summary = make_worker(SFSYNC_RETRY_ATTEMPTS="12").run()
    sims.mm.faults.configure(rate=0.0)
    assert summary.retries > 0
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)
    assert sims.mm.stats()["unconfirmed"] == 0


def test_row_lock_errors_retry_only_the_locked_records(sims: Simulators, make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(100)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221") for m in messages])
    sims.sf.configure(lock_row_rate=0.3)
    # Enough tries that no row stays locked through all of them (0.3^15); the sleeps are injected.
    summary = make_worker(SFSYNC_RETRY_ATTEMPTS="15", SFSYNC_RETRY_MAX_SECONDS="3600").run()
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)
    assert summary.retries > 0
    assert all(len(sims.sf.history(t)) == 1 for t in tasks)  # each Task written once


def test_api_budget_stops_cleanly_and_the_next_run_resumes(sims: Simulators, make_worker: MakeWorker) -> None:
    # 2,400 Tasks: at least three write calls however the writes are packed (at most 1,000 records a call).
    messages = [new_message_id() for _ in range(2400)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    sims.sf.configure(daily_limit=1000)
    stages: list[str] = []

    def reach_the_budget_after_the_first_write(stage: str) -> None:
        stages.append(stage)
        if stage == "wrote" and stages.count("wrote") == 1:
            sims.sf.configure(api_usage=900)  # 90% of 1,000: seen on the next answer, then no call more

    worker = make_worker(reach_the_budget_after_the_first_write, SFSYNC_SF_CONCURRENCY="1")
    summary = worker.run()
    assert summary.exit_code == EXIT_BUDGET and summary.exit_reason == "api_budget"
    written = [t for t in tasks if fields_of(sims, t) == ("Delivered", "220")]
    assert 0 < len(written) < len(tasks)
    # Polling went on: every report is staged in the store, so MessageMedia's queue is drained.
    assert sims.mm.stats()["unconfirmed"] == 0 and summary.counts["confirmed"] == 2400
    backlog, oldest = worker.store.inbox_backlog()
    assert backlog == len(tasks) - len(written) and oldest is not None

    sims.sf.configure(daily_limit=100_000)
    again = make_worker().run()
    assert again.exit_code == EXIT_OK and again.counts["fetched"] == 0 and again.exit_reason == "backlog_drained"
    assert all(fields_of(sims, t) == ("Delivered", "220") for t in tasks)
    assert all(len(sims.sf.history(t)) == 1 for t in tasks)
    assert worker.store.inbox_backlog() == (0, None)


def test_messagemedia_failing_mid_poll_still_drains_what_was_staged(sims: Simulators,
                                                                    make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(250)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221", minute=i) for i, m in enumerate(messages)])
    confirms = []

    def fail_second_confirm(stage: str) -> None:
        if stage == "confirming":
            confirms.append(1)
            if len(confirms) == 2:
                sims.mm.faults.configure(rate=1.0, kinds=["503"])

    worker = make_worker(on_stage=fail_second_confirm, SFSYNC_RETRY_ATTEMPTS="2")
    with pytest.raises(RemoteError):
        worker.run()
    # Both staged pages were written; only the first was confirmed: the second comes back, staged already.
    assert sum(fields_of(sims, t) == ("Delivered", "221") for t in tasks) == 200
    assert worker.store.inbox_backlog()[0] == 0 and sims.mm.stats()["unconfirmed"] == 150
    sims.mm.faults.configure(rate=0.0)
    again = make_worker().run()
    assert again.exit_code == EXIT_OK and again.counts["applied"] == 50
    assert all(fields_of(sims, t) == ("Delivered", "221") and len(sims.sf.history(t)) == 1 for t in tasks)


def test_request_limit_exceeded_stops_cleanly(sims: Simulators, make_worker: MakeWorker, worker_env: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    messages = [new_message_id() for _ in range(50)]
    add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    sims.sf.configure(daily_limit=10, api_usage=10)
    worker = make_worker(SFSYNC_API_BUDGET_PCT="100")
    summary = worker.run()
    assert summary.exit_code == EXIT_BUDGET
    assert sims.mm.stats()["unconfirmed"] == 0 and worker.store.inbox_backlog()[0] == 50
    # `sfsync status` shows the staged backlog and its oldest age.
    from sfsync.cli.main import main

    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["status"]) == EXIT_OK
    assert "staged, not yet written to Salesforce: 50 (oldest" in capsys.readouterr().out
    assert main(["status", "--json"]) == EXIT_OK
    status = json.loads(capsys.readouterr().out)
    assert status["inbox_pending"] == 50 and status["staged_oldest_age_s"] >= 0


@pytest.mark.parametrize("crash_at", ["fetched", "staged", "confirming", "confirmed", "resolved", "matched", "wrote",
                                      "recorded"])
def test_crash_at_any_stage_then_rerun_ends_right(sims: Simulators, make_worker: MakeWorker, crash_at: str) -> None:
    messages = [new_message_id() for _ in range(150)]
    tasks = add_tasks(sims, messages)
    waiting_message = new_message_id()
    sims.mm.add_reports([*[report(m, "submitted", "210", minute=1) for m in messages],
                         *[report(m, "delivered", "221", minute=2) for m in messages],
                         report(waiting_message, "delivered", "220")])

    class Crash(BaseException):
        pass

    def crash(stage: str) -> None:
        if stage == crash_at:
            raise Crash(stage)

    with pytest.raises(Crash):
        make_worker(on_stage=crash).run()
    writes_before_rerun = {t: len(sims.sf.history(t)) for t in tasks}
    rerun = make_worker().run()
    assert rerun.exit_code == EXIT_OK
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)
    assert sims.mm.stats()["unconfirmed"] == 0
    # Nothing written twice: a Task already right before the rerun is not written again.
    for t in tasks:
        if writes_before_rerun[t] and sims.sf.history(t)[writes_before_rerun[t] - 1]["fields"].get(
                "SMS_Status__c") == "Delivered":
            assert len(sims.sf.history(t)) == writes_before_rerun[t]
    assert make_worker().store.waiting_count() == 1


def test_a_second_run_exits_while_the_lock_is_held(sims: Simulators, make_worker: MakeWorker) -> None:
    worker = make_worker()
    if on_postgresql():  # workers take no run lock there (the lease `run` is backfill's): they share the store
        with store_of(worker.settings).run_lock(worker.settings.lock_path):
            assert worker.run().exit_code == EXIT_OK
        return
    with RunLock(worker.settings.lock_path), pytest.raises(AlreadyRunning, match="another sfsync run"):
        worker.run()
    assert worker.run().exit_code == EXIT_OK  # free again once released


def test_dry_run_writes_nothing_and_confirms_nothing(sims: Simulators, make_worker: MakeWorker) -> None:
    messages = [new_message_id() for _ in range(10)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "220") for m in messages])
    summary = make_worker().run(RunOptions(dry_run=True))
    assert summary.counts["would_write"] == 10
    assert composite_calls(sims) == 0
    assert all(fields_of(sims, t) == (None, None) for t in tasks)
    assert sims.mm.stats()["unconfirmed"] == 10 and sims.mm.stats()["confirmed"] == 0


@pytest.mark.parametrize("nasty", ["it's", "back\\slash", "x' OR Id != null OR Subject = 'y", "\\' OR ''='",
                                   "SELECT Id FROM Task", "%_wild%", "ünïcödé 🚀"])
def test_message_ids_are_escaped_in_soql(sims: Simulators, make_worker: MakeWorker, nasty: str) -> None:
    [target] = add_tasks(sims, [nasty])
    bystanders = add_tasks(sims, [new_message_id() for _ in range(3)])
    sims.mm.add_reports([report(nasty, "delivered", "220")])
    make_worker().run()
    assert fields_of(sims, target) == ("Delivered", "220")
    assert all(fields_of(sims, t) == (None, None) for t in bystanders)


def test_bad_reports_are_dead_lettered_not_fatal(sims: Simulators, make_worker: MakeWorker) -> None:
    message = new_message_id()
    [task] = add_tasks(sims, [message])
    bad = [
        report(new_message_id(), "delivered", "220", metadata=42),  # neither an object nor a list
        report("", "delivered"),  # missing message id
        report(new_message_id(), "delivered", ["220"]),  # wrong type
        report(new_message_id(), 42),  # status not a string
        "not an object",
        {"message_id": new_message_id(), "status": "delivered"},  # no report id: cannot be confirmed
    ]
    sims.mm.add_raw_reports(bad)
    sims.mm.add_reports([report(message, "delivered", "221")])
    worker = make_worker()
    summary = worker.run()
    assert summary.counts["invalid"] == 6 and summary.exit_code == EXIT_PARTIAL
    assert summary.exit_reason == "unconfirmable"  # the two id-less reports stay at the head of the queue
    assert fields_of(sims, task) == ("Delivered", "221")
    assert sims.mm.stats()["unconfirmed"] == 2  # only the two with no id to confirm them by
    again = worker.run()
    assert again.counts["dead_lettered"] == 0  # already kept: not stored twice
    reasons = " ".join(d.reason for d in worker.store.dead_letters())
    assert "metadata must be" in reasons and "missing message_id" in reasons


def test_a_head_of_unconfirmable_reports_ends_every_run_non_zero_naming_them(
        sims: Simulators, make_worker: MakeWorker, caplog: pytest.LogCaptureFixture) -> None:
    """100 reports whose ids MessageMedia will not accept at the head of the queue: each check
    serves the same 100, nothing behind them can be reached. Never exit 0 while stuck."""
    sims.mm.add_raw_reports([report(new_message_id(), "delivered", delivery_report_id=bad)
                             for bad in ["", None, 42, "  "] * 25])
    behind = [new_message_id() for _ in range(5)]
    add_tasks(sims, behind)
    sims.mm.add_reports([report(m, "delivered", "220") for m in behind])
    worker = make_worker()
    for attempt in range(2):
        caplog.clear()
        summary = worker.run()
        assert summary.exit_code == EXIT_PARTIAL and summary.exit_reason == "unconfirmable_head", attempt
        [line] = [r for r in caplog.records if getattr(r, "event", "") == "queue_wedged"]
        assert "100 report(s)" in line.getMessage() and "''" in line.getMessage()
        assert "MessageMedia support" in line.getMessage() and "dead-letters list" in line.getMessage()
    assert worker.store.dead_letter_count() == 100  # each kept once, by its content
    assert sims.mm.stats()["unconfirmed"] == 105


def test_report_ids_are_confirmed_exactly_as_served(sims: Simulators, make_worker: MakeWorker) -> None:
    """An id is an opaque token: one with characters Python's strip() removes (U+0085, a tab, spaces)
    was confirmed stripped, so MessageMedia served it for ever and the run ended confirm_pending."""
    messages = [new_message_id() for _ in range(3)]
    tasks = add_tasks(sims, messages)
    odd = ["\x85r-1\x85", "  r-2\t", "r-3 "]
    sims.mm.configure(confirm_uuid_only=False)  # a lenient MessageMedia: ids are opaque tokens
    sims.mm.add_raw_reports([report(m, "delivered", "220", delivery_report_id=rid)
                             for m, rid in zip(messages, odd, strict=True)])
    summary = make_worker().run()
    assert summary.exit_code == EXIT_OK, summary.exit_reason
    assert sims.mm.stats()["unconfirmed"] == 0
    assert [fields_of(sims, t) for t in tasks] == [("Delivered", "220")] * 3


def test_wrong_credentials_are_authentication_errors(sims: Simulators, make_worker: MakeWorker) -> None:
    sims.mm.add_reports([report(new_message_id(), "delivered")])
    with pytest.raises(AuthError, match="SFSYNC_MM_API_KEY"):
        make_worker(SFSYNC_MM_API_SECRET="wrong").run()
    assert sims.mm.stats()["unconfirmed"] == 1
    worker = make_worker(SFSYNC_SF_CLIENT_SECRET="wrong")
    with pytest.raises(AuthError, match="SFSYNC_SF_CLIENT_ID"):
        worker.run()
    # Staged before it was confirmed: it waits in the store for Salesforce.
    assert sims.mm.stats()["unconfirmed"] == 0 and worker.store.inbox_backlog()[0] == 1


def test_a_field_salesforce_rejects_fails_fast(sims: Simulators, make_worker: MakeWorker) -> None:
    message = new_message_id()
    add_tasks(sims, [message])
    sims.mm.add_reports([report(message, "delivered")])
    worker = make_worker(SFSYNC_FIELD_STATUS="No_Such_Field__c")
    with pytest.raises(ConfigError, match="SFSYNC_FIELD"):
        worker.run()
    assert sims.mm.stats()["unconfirmed"] == 0 and worker.store.inbox_backlog()[0] == 1


def test_run_history_records_each_run(sims: Simulators, make_worker: MakeWorker) -> None:
    worker = make_worker()
    sims.mm.add_reports([report(new_message_id(), "delivered")])
    worker.run()
    worker.run()
    runs: list[dict[str, Any]] = worker.store.recent_runs()
    assert [r["exit_reason"] for r in runs] == ["nothing_to_do", "queue_empty"]
    assert runs[1]["counts"]["fetched"] == 1


def test_dead_letter_retry_after_the_cause_is_fixed(sims: Simulators, make_worker: MakeWorker,
                                                     worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from sfsync.cli.main import main

    message = new_message_id()
    [task] = add_tasks(sims, [message])
    sims.sf.set_schema([{**f, "length": 5} if f["name"] == "SMS_Status__c" else f for f in sims.sf.schema()])
    sims.mm.add_reports([report(message, "delivered", "221")])
    worker = make_worker()
    assert worker.run().exit_code == EXIT_PARTIAL
    [letter] = worker.store.dead_letters()
    assert "STRING_TOO_LONG" in (letter.sf_error or "")

    sims.sf.set_schema([{**f, "length": 40} if f["name"] == "SMS_Status__c" else f for f in sims.sf.schema()])
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(["dead-letters", "retry"]) == 0
    assert "0 remain" in capsys.readouterr().out
    assert fields_of(sims, task) == ("Delivered", "221")
    assert worker.store.dead_letter_count() == 0


def _three_dead_letters(sims: Simulators, make_worker: MakeWorker) -> tuple[Worker, list[str]]:
    """Three reports dead-lettered by Salesforce (a value too long for the field), then the cause fixed."""
    messages = [new_message_id() for _ in range(3)]
    tasks = add_tasks(sims, messages)
    sims.sf.set_schema([{**f, "length": 5} if f["name"] == "SMS_Status__c" else f for f in sims.sf.schema()])
    sims.mm.add_reports([report(m, "delivered", "221") for m in messages])
    worker = make_worker()
    assert worker.run().exit_code == EXIT_PARTIAL
    assert worker.store.dead_letter_count() == 3
    sims.sf.set_schema([{**f, "length": 40} if f["name"] == "SMS_Status__c" else f for f in sims.sf.schema()])
    return worker, tasks


@pytest.mark.parametrize("failure", ["UNABLE_TO_LOCK_ROW", "503"])
def test_dead_letter_retry_keeps_every_letter_through_a_transient_failure(
        sims: Simulators, make_worker: MakeWorker, worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any, capsys: pytest.CaptureFixture[str], failure: str) -> None:
    from sfsync.cli.main import main
    from sfsync.errors import EXIT_UNAVAILABLE

    worker, tasks = _three_dead_letters(sims, make_worker)
    before = [(d.id, d.sf_error) for d in worker.store.dead_letters()]
    for key, value in {**worker_env, "SFSYNC_RETRY_ATTEMPTS": "2", "SFSYNC_RETRY_MAX_SECONDS": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    if failure == "503":
        sims.sf.faults.configure(rate=1.0, kinds=["503"])
    else:
        sims.sf.configure(lock_row_rate=1.0)
    capsys.readouterr()
    assert main(["dead-letters", "retry"]) == EXIT_UNAVAILABLE
    out = capsys.readouterr().out
    assert "0 retired" in out and "3 kept as they were" in out and "try again later" in out and "3 remain" in out
    assert [(d.id, d.sf_error) for d in worker.store.dead_letters()] == before  # every letter, as it was
    assert all(fields_of(sims, t) == (None, None) for t in tasks)

    sims.sf.faults.configure(rate=0.0)
    sims.sf.configure(lock_row_rate=0.0)
    assert main(["dead-letters", "retry"]) == EXIT_OK
    assert "3 retired" in capsys.readouterr().out
    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks)
    assert worker.store.dead_letter_count() == 0


def test_dead_letter_retry_refused_again_keeps_the_same_letter_with_the_new_error(
        sims: Simulators, make_worker: MakeWorker, worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from sfsync.cli.main import main

    worker, tasks = _three_dead_letters(sims, make_worker)
    ids = sorted(d.id for d in worker.store.dead_letters())
    sims.sf.add_validation_rule("SMS_Status__c", "Delivered", "No deliveries today")
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    assert main(["dead-letters", "retry"]) == EXIT_PARTIAL
    assert "3 failed again" in capsys.readouterr().out
    letters = worker.store.dead_letters()
    assert sorted(d.id for d in letters) == ids
    assert all("FIELD_CUSTOM_VALIDATION_EXCEPTION" in (d.sf_error or "") for d in letters), letters
    assert all(fields_of(sims, t) == (None, None) for t in tasks)


def test_reports_that_cannot_change_what_was_written_cost_no_salesforce_call(
        sims: Simulators, make_worker: MakeWorker) -> None:
    """Decided against the ledger first: a duplicate final, an older or equal non-final."""
    messages = [new_message_id() for _ in range(150)]
    tasks = add_tasks(sims, messages)
    sims.mm.add_reports([report(m, "delivered", "221", minute=5) for m in messages])
    assert make_worker().run().counts["applied"] == 150
    # The same statuses again under new report ids, and older intermediate ones.
    sims.mm.add_reports([report(m, "delivered", "221", minute=5) for m in messages[:100]])
    sims.mm.add_reports([report(m, "submitted", "210", minute=1) for m in messages[100:]])
    again = make_worker().run()
    assert again.exit_code == EXIT_OK and again.counts["fetched"] == 150
    assert again.salesforce_calls == 0
    assert again.counts["skipped_unchanged"] + again.counts["skipped_stale"] == 150
    assert sims.mm.stats()["unconfirmed"] == 0
    assert all(fields_of(sims, t) == ("Delivered", "221") and len(sims.sf.history(t)) == 1 for t in tasks)

    # A later report that does change a Task still reaches Salesforce.
    sims.mm.add_reports([report(messages[0], "failed", "402", minute=9)])
    third = make_worker().run()
    assert third.counts["applied"] == 1 and third.salesforce_calls == 3  # a token, a look-up, a write
