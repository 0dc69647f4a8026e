"""Plan: parse, resolve, collapse, match and decide one batch, by the precedence rule; nothing written."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping

from sfsync.domain.codes import CodeMap
from sfsync.domain.keys import Item
from sfsync.domain.outcome import ReportOutcome, ReportResult, Tally
from sfsync.domain.precedence import Action, Status, decide, known_later, merge
from sfsync.domain.reports import Report
from sfsync.pipeline.cache import ReadAhead, Value
from sfsync.pipeline.match import Matcher
from sfsync.pipeline.stages import (
    change_row,
    collapse,
    current_status,
    keep_strongest,
    ledger_status,
    parse,
    read_report,
    resolve_all,
    result_row,
    stale_reason,
    task_fields,
)
from sfsync.pipeline.types import BatchResult, Change, MatchedBy, Matches, Plan, Resolved
from sfsync.settings.config import Settings
from sfsync.store import LedgerEntry, Store


class Planner:
    """Parse, resolve, collapse, match and decide: reads Salesforce and the store, writes nothing."""

    def __init__(self, settings: Settings, store: Store, code_map: CodeMap, matcher: Matcher,
                 on_stage: Callable[[str], None]):
        self.settings = settings
        self.store = store
        self.code_map = code_map
        self.matcher = matcher
        self.on_stage = on_stage

    def plan(self, items: Iterable[Item], *, default_tz: dt.tzinfo = dt.UTC, ahead: ReadAhead | None = None) -> Plan:
        result = BatchResult()
        reports, bad = parse(items, default_tz, ahead)
        result.counts[Tally.RECEIVED] += len(reports) + len(bad)
        result.counts[ReportOutcome.INVALID] += len(bad)
        outcomes = resolve_all(reports, self.code_map)
        result.counts[Tally.UNKNOWN_CODE] += sum(1 for o in outcomes if not o.known)
        winners, superseded = collapse(outcomes)
        result.counts[ReportOutcome.SKIPPED_STALE] += len(superseded)
        self.on_stage("resolved")

        settled, rows, refreshed = self.settled_by_ledger(winners, result)
        winners = {m: o for m, o in winners.items() if m not in settled}
        matches = self.matcher.match(winners, ahead)
        self.on_stage("matched")
        plan = Plan(result, bad, resolved=[*superseded, *settled.values()],  # durable once the batch is recorded
                    refreshed=refreshed)
        plan.rows += [ReportResult(ReportOutcome.INVALID, b.error.report_id, None,
                                   error=f"invalid report: {b.error.reason}") for b in bad]
        plan.rows += [result_row(ReportOutcome.SKIPPED_STALE, o, error=f"superseded by report "
                                 f"{winners.get(o.message_id, settled.get(o.message_id, o)).report.report_id} "
                                 "of the same message") for o in superseded]
        plan.rows += rows
        writing: dict[str, Change] = {}
        for change, action in self.decide(winners, matches):
            if action is Action.WRITE:
                loser = keep_strongest(writing, change)
                if loser is not None:
                    result.counts[ReportOutcome.SKIPPED_STALE] += 1
                    winner = writing[change.task_id[:15]].outcome.report.report_id
                    plan.rows.append(change_row(ReportOutcome.SKIPPED_STALE, loser, "another report of this batch "
                                                f"for the same Task wins ({winner})"))
            else:
                self.tally_skipped(change, action, result, plan.unchanged, plan.rows)
        plan.changes = list(writing.values())
        for message_id, outcome in winners.items():
            (plan.resolved if matches.rows.get(message_id) else plan.unmatched).append(outcome)
        result.changes = plan.changes
        return plan

    @staticmethod
    def tally_skipped(change: Change, action: Action, result: BatchResult, unchanged: list[Change],
                      rows: list[ReportResult], *, reason: str | None = None) -> None:
        """The one tally of a change not written: the Task holds it already (kept for the ledger),
        or the precedence rule prefers what the Task holds (a stale row in ``rows``, saying ``reason``)."""
        if action is Action.UNCHANGED:
            result.counts[ReportOutcome.SKIPPED_UNCHANGED] += 1
            unchanged.append(change)
            return
        result.counts[ReportOutcome.SKIPPED_STALE] += 1
        rows.append(change_row(ReportOutcome.SKIPPED_STALE, change,
                               stale_reason(change.current) if reason is None else reason))

    def settled_by_ledger(self, winners: Mapping[str, Resolved], result: BatchResult
                          ) -> tuple[dict[str, Resolved], list[ReportResult], list[LedgerEntry]]:
        """Messages whose report cannot change what sfsync last wrote on any of their Tasks (an older
        or equal non-final, a duplicate final): decided against the ledger, at no Salesforce call.
        Returns them with their rows (one per Task the ledger knows), and the ledger entries a later
        report of the same values moves on (its event time: an older report arriving next must lose
        to it, not to the first one written)."""
        settled: dict[str, Resolved] = {}
        rows: list[ReportResult] = []
        refreshed: list[LedgerEntry] = []
        for message_id, entries in self.store.ledger_by_message(winners).items():
            outcome = winners[message_id]
            actions = [decide(ledger_status(e), outcome.status) for e in entries]
            if Action.WRITE in actions:
                continue
            settled[message_id] = outcome
            key = (ReportOutcome.SKIPPED_UNCHANGED if all(a is Action.UNCHANGED for a in actions)
                   else ReportOutcome.SKIPPED_STALE)
            result.counts[key] += 1
            for entry, action in zip(entries, actions, strict=True):
                old = ledger_status(entry)
                if action is Action.UNCHANGED:
                    rows.append(result_row(ReportOutcome.SKIPPED_UNCHANGED, outcome, task=entry.task_id, old=old))
                    if known_later(old, outcome.status):
                        refreshed.append(_moved_on(entry, merge(old, outcome.status), outcome))
                else:
                    rows.append(result_row(ReportOutcome.SKIPPED_STALE, outcome, task=entry.task_id, old=old,
                                           error=stale_reason(old)))
        return settled, rows, refreshed

    def decide(self, winners: Mapping[str, Resolved], matches: Matches) -> list[tuple[Change, Action]]:
        """Each matched Task against its report, by the precedence rule, with the ledger's entry for
        that Task (the state is kept per Task: two Tasks may share a message id)."""
        ledger = self.store.ledger_for_tasks(str(r["Id"]) for rows in matches.rows.values() for r in rows)
        decided = []
        for message_id, outcome in winners.items():
            how = MatchedBy.TASK_ID if message_id in matches.by_task_id else MatchedBy.MESSAGE_ID
            for row in matches.rows.get(message_id, []):
                tid = str(row["Id"])
                current = current_status(row, self.settings, ledger.get(tid), self.code_map)
                action = decide(current, outcome.status)
                # What the Task holds after it (a code of the same label kept): written, and in the ledger.
                held = Resolved(outcome.key, outcome.report, merge(current, outcome.status), outcome.known)
                decided.append((Change(tid, held, task_fields(held, self.settings), current, how), action))
        return decided

    def lookup_values(self, items: Iterable[Item], ahead: ReadAhead) -> list[Value]:
        """The values the match stage would look up for these reports now (reads the store only):
        nothing for a message the ledger settles at no call. Their readings are kept ``ahead``."""
        reports: dict[str, Report] = {}
        for key, raw in items:
            reading = read_report(raw)
            ahead.keep_reading(key, reading)
            if isinstance(reading, Report):
                reports.setdefault(key, reading)
        winners, _ = collapse(resolve_all(reports.items(), self.code_map, quiet=True))
        settled, _, _ = self.settled_by_ledger(winners, BatchResult())
        return self.matcher.values({m: o for m, o in winners.items() if m not in settled})


def _moved_on(entry: LedgerEntry, held: Status, outcome: Resolved) -> LedgerEntry:
    """The ledger entry of a Task whose values a later report repeats: the same values, known from
    that report's time on."""
    return LedgerEntry(entry.message_id, entry.task_id, entry.label, entry.code, entry.final, held.event_time,
                       held.received_time, outcome.report.report_id, entry.account)
