"""Result rows: every report a run decides gets one row (per Task) with a typed outcome, and the run's
counts are keyed by the same enum. Asserted against the simulators' state, never on mocks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from sfsync.domain.outcome import ReportOutcome, ReportResult, Tally
from sfsync.engine import RunOptions, Worker, build_clients
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from tests.conftest import add_tasks, fields_of, new_message_id, report


def worker_with(settings: Settings, rows: list[ReportResult]) -> Worker:
    mm, sf, retries = build_clients(settings, sleep=lambda seconds: None)
    return Worker(settings, mm=mm, sf=sf, retries=retries, results=rows.append)


def test_every_report_of_a_run_has_a_result_row(sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    written = [new_message_id() for _ in range(230)]
    refused = [new_message_id() for _ in range(4)]
    tasks = add_tasks(sims, written + refused)
    no_task = [new_message_id() for _ in range(5)]
    sims.sf.add_validation_rule("SMS_Status__c", "Failed", "Failed needs a reason")
    reports = [report(m, "delivered", "221", minute=2) for m in written]
    # Superseded: decided in the same batch as the newer report or against the ledger, as the poll's
    # pages fall; either way skipped_stale, so the outcome is asserted, not the wording of the reason.
    older = [report(m, "enroute", "200", minute=1) for m in written[:7]]
    reports += older + [report(m, "failed", "414") for m in refused] + [report(m, "submitted") for m in no_task]
    sims.mm.add_reports(reports)
    sims.mm.add_raw_reports([{"delivery_report_id": f"bad-{n}", "status": "delivered"} for n in range(3)])

    rows: list[ReportResult] = []
    summary = worker_with(settings_for(), rows).run()

    assert all(fields_of(sims, t) == ("Delivered", "221") for t in tasks[:230])
    by_report = {r.report_id: r for r in rows}
    assert len(rows) == len(by_report) == len(reports) + 3  # one row per report: none left out, none twice
    outcomes = Counter(r.outcome for r in rows)
    assert outcomes == {ReportOutcome.APPLIED: 230, ReportOutcome.SKIPPED_STALE: 7, ReportOutcome.DEAD_LETTERED: 4,
                        ReportOutcome.WAITING: 5, ReportOutcome.INVALID: 3}
    for outcome, n in outcomes.items():  # the summary counts the same, keyed by the same enum
        # (an invalid report is kept as a dead letter too: counted among the run's new dead letters)
        also = outcomes[ReportOutcome.INVALID] if outcome is ReportOutcome.DEAD_LETTERED else 0
        assert summary.counts[outcome] == n + also
    assert summary.counts[Tally.FETCHED] == len(reports) + 3
    applied = by_report[reports[0]["delivery_report_id"]]
    assert (applied.task_id, applied.message_id, applied.old_status, applied.new_status, applied.new_code) == (
        tasks[0], written[0], None, "Delivered", "221")
    for report_, message_id, task_id in zip(older, written, tasks, strict=False):
        stale = by_report[report_["delivery_report_id"]]
        assert (stale.outcome, stale.message_id, stale.new_code) == (ReportOutcome.SKIPPED_STALE, message_id, "200")
        assert stale.error  # says why (which words depends on the batch boundaries)
        assert fields_of(sims, task_id) == ("Delivered", "221")  # the newer report's values stay
    dead = by_report[reports[-len(no_task) - 1]["delivery_report_id"]]
    assert dead.task_id == tasks[-1] and dead.error.startswith("FIELD_CUSTOM_VALIDATION_EXCEPTION")
    assert "Failed needs a reason" in dead.error
    assert all(r.error.startswith("invalid report: missing message_id") for r in rows
               if r.outcome is ReportOutcome.INVALID)
    # The run history keeps the summary's field names (dashboards read them).
    assert summary.as_dict()["applied"] == 230 and summary.as_dict()["dead_lettered"] == 7


def test_a_rerun_reports_what_the_ledger_settled(sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    messages = [new_message_id() for _ in range(3)]
    tasks = add_tasks(sims, messages)
    settings = settings_for()
    sims.mm.add_reports([report(m, "delivered", "221", minute=2) for m in messages])
    worker_with(settings, []).run()
    rows: list[ReportResult] = []
    again = [report(m, "delivered", "221", minute=2) for m in messages] + [report(messages[0], "enroute", minute=1)]
    sims.mm.add_reports(again)
    summary = worker_with(settings, rows).run()
    assert summary.salesforce_calls == 0
    assert len(rows) == 4 and {r.outcome for r in rows} <= {ReportOutcome.SKIPPED_UNCHANGED,
                                                            ReportOutcome.SKIPPED_STALE}
    [stale] = [r for r in rows if r.report_id == again[-1]["delivery_report_id"]]
    assert stale.outcome is ReportOutcome.SKIPPED_STALE
    assert "superseded by report" in stale.error
    settled = [r for r in rows if r is not stale]  # decided against the ledger: the Task and its values known
    assert sorted(str(r.task_id) for r in settled) == sorted(tasks)
    assert all((r.old_status, r.old_code) == ("Delivered", "221") for r in settled)


def test_a_dry_run_plans_every_report_fetched(sims: Simulators, settings_for: Callable[..., Settings]) -> None:
    messages = [new_message_id() for _ in range(30)]
    tasks = add_tasks(sims, messages[:25])
    sims.mm.add_reports([report(m, "delivered", "221") for m in messages])
    rows: list[ReportResult] = []
    summary = worker_with(settings_for(), rows).run(RunOptions(dry_run=True))
    assert Counter(r.outcome for r in rows) == {ReportOutcome.WOULD_WRITE: 25, ReportOutcome.WOULD_WAIT: 5}
    assert summary.counts[ReportOutcome.WOULD_WRITE] == 25 and summary.counts[ReportOutcome.WOULD_WAIT] == 5
    assert all(fields_of(sims, t) == (None, None) for t in tasks)
