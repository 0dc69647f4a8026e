"""Plan: parse, resolve, collapse, match and decide one batch, by the precedence rule; nothing written."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sfsync.domain.outcome import ReportOutcome, ReportResult, Tally
from sfsync.domain.precedence import Action, Status, decide, known_later, merge, wins
from sfsync.domain.reports import Report
from sfsync.pipeline.match import Matcher
from sfsync.pipeline.stages import (
    _ledger_status,
    _read,
    _stale_reason,
    change_row,
    collapse,
    current_status,
    parse,
    resolve_all,
    result_row,
    task_fields,
)
from sfsync.pipeline.types import BatchResult, Change, MatchedBy, Matches, Outcome, Plan
from sfsync.store import LedgerEntry


class Planner(Matcher):
    """Parse, resolve, collapse, match and decide: reads only."""

    def plan(self, raws: Iterable[Any], source: str = "poll", *, default_tz: dt.tzinfo = dt.UTC) -> Plan:
        """Parse, resolve, collapse, match and decide. Reads Salesforce and the store; writes nothing."""
        result = BatchResult()
        reports, bad = parse(raws, default_tz, self.parsed)
        result.counts[Tally.RECEIVED] += len(reports) + len(bad)
        result.counts[ReportOutcome.INVALID] += len(bad)
        outcomes = resolve_all(reports, self.code_map)
        result.counts[Tally.UNKNOWN_CODE] += sum(1 for o in outcomes if not o.known)
        winners, superseded = collapse(outcomes)
        result.counts[ReportOutcome.SKIPPED_STALE] += len(superseded)
        self.on_stage("resolved")

        settled, rows, refreshed = self._settled_by_ledger(winners, result)
        winners = {m: o for m, o in winners.items() if m not in settled}
        matches = self._match(winners)
        self.on_stage("matched")
        plan = Plan(result, bad, resolved=[*superseded, *settled.values()],  # durable once the batch is recorded
                    refreshed=refreshed)
        plan.rows += [ReportResult(ReportOutcome.INVALID, exc.report_id, None, error=f"invalid report: {exc.reason}")
                      for exc in bad]
        plan.rows += [result_row(ReportOutcome.SKIPPED_STALE, o, error=f"superseded by report "
                                 f"{winners.get(o.message_id, settled.get(o.message_id, o)).report.report_id} "
                                 "of the same message") for o in superseded]
        plan.rows += rows
        writing: dict[str, int] = {}  # Task -> its change's index in plan.changes
        for change, action in self._decide(winners, matches):
            if action is Action.WRITE:
                self._keep_strongest(plan, writing, change)
            elif action is Action.UNCHANGED:
                result.counts[ReportOutcome.SKIPPED_UNCHANGED] += 1
                plan.unchanged.append(change)
            else:
                result.counts[ReportOutcome.SKIPPED_STALE] += 1
                plan.rows.append(change_row(ReportOutcome.SKIPPED_STALE, change, _stale_reason(change.current)))
        for message_id, outcome in winners.items():
            (plan.resolved if matches.rows.get(message_id) else plan.unmatched).append(outcome)
        result.changes = plan.changes
        return plan

    def _settled_by_ledger(self, winners: Mapping[str, Outcome], result: BatchResult
                           ) -> tuple[dict[str, Outcome], list[ReportResult], list[LedgerEntry]]:
        """Messages whose report cannot change what sfsync last wrote on any of their Tasks (an older
        or equal non-final, a duplicate final): decided against the ledger, at no Salesforce call.
        Returns them with their rows (one per Task the ledger knows), and the ledger entries a later
        report of the same values moves on (its event time: an older report arriving next must lose
        to it, not to the first one written)."""
        settled: dict[str, Outcome] = {}
        rows: list[ReportResult] = []
        refreshed: list[LedgerEntry] = []
        for message_id, entries in self.store.ledger_by_message(winners).items():
            outcome = winners[message_id]
            actions = [decide(_ledger_status(e), outcome.status) for e in entries]
            if Action.WRITE in actions:
                continue
            settled[message_id] = outcome
            key = (ReportOutcome.SKIPPED_UNCHANGED if all(a is Action.UNCHANGED for a in actions)
                   else ReportOutcome.SKIPPED_STALE)
            result.counts[key] += 1
            for entry, action in zip(entries, actions, strict=True):
                old = _ledger_status(entry)
                if action is Action.UNCHANGED:
                    rows.append(result_row(ReportOutcome.SKIPPED_UNCHANGED, outcome, task=entry.task_id, old=old))
                    if known_later(old, outcome.status):
                        refreshed.append(_moved_on(entry, merge(old, outcome.status), outcome))
                else:
                    rows.append(result_row(ReportOutcome.SKIPPED_STALE, outcome, task=entry.task_id, old=old,
                                           error=_stale_reason(old)))
        return settled, rows, refreshed

    def _decide(self, winners: Mapping[str, Outcome], matches: Matches) -> list[tuple[Change, Action]]:
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
                held = Outcome(outcome.report, merge(current, outcome.status), outcome.known)
                decided.append((Change(tid, held, task_fields(held, self.settings), current, how), action))
        return decided

    @staticmethod
    def _keep_strongest(plan: Plan, writing: dict[str, int], change: Change) -> None:
        """One write per Task: when two messages of a batch change the same Task, the winner by the
        precedence rule (what writing them one after the other would leave)."""
        key = change.task_id[:15]
        at = writing.get(key)
        if at is None:
            writing[key] = len(plan.changes)
            plan.changes.append(change)
            return
        plan.result.counts[ReportOutcome.SKIPPED_STALE] += 1
        loser = change
        if wins(plan.changes[at].outcome.status, change.outcome.status):
            loser, plan.changes[at] = plan.changes[at], change
        plan.rows.append(change_row(ReportOutcome.SKIPPED_STALE, loser, "another report of this batch for the same "
                                    f"Task wins ({plan.changes[at].outcome.report.report_id})"))

    def emit_planned(self, plan: Plan, *, wait: bool) -> None:
        """A dry run's rows: what the plan would write, leave, and (``wait``) keep waiting for its Task."""
        counts = plan.result.counts
        counts[ReportOutcome.WOULD_WRITE] += len(plan.changes)
        for change in plan.changes:
            self.results(change_row(ReportOutcome.WOULD_WRITE, change))
        for change in plan.unchanged:
            self.results(change_row(ReportOutcome.SKIPPED_UNCHANGED, change))
        if wait:
            counts[ReportOutcome.WOULD_WAIT] += len(plan.unmatched)
            for outcome in plan.unmatched:
                self.results(result_row(ReportOutcome.WOULD_WAIT, outcome, error=self._no_task(outcome)))
        else:
            counts[ReportOutcome.NO_TASK] += len(plan.unmatched)
            self.emit(self._no_task_rows(plan.unmatched))
        self.emit(plan.rows)

    def lookup_values(self, raws: Iterable[Any]) -> list[tuple[str, str]]:
        """The values the match stage would look up for these reports now (reads the store only):
        nothing for a message the ledger settles at no call. Their readings are kept for the drain."""
        reports: dict[str, Report] = {}
        for raw in raws:
            known = self.parsed[id(raw)] = (raw, _read(raw, dt.UTC))
            if isinstance(known[1], Report):
                reports.setdefault(known[1].report_id, known[1])
        winners, _ = collapse(resolve_all(reports.values(), self.code_map))
        settled, _, _ = self._settled_by_ledger(winners, BatchResult())
        named, by_field = self._look_up_keys({m: o for m, o in winners.items() if m not in settled})
        return [("Id", t) for t in named] + [("msg", m) for m in sorted(by_field)]


def _moved_on(entry: LedgerEntry, held: Status, outcome: Outcome) -> LedgerEntry:
    """The ledger entry of a Task whose values a later report repeats: the same values, known from
    that report's time on."""
    return LedgerEntry(entry.message_id, entry.task_id, entry.label, entry.code, entry.final, held.event_time,
                       held.received_time, outcome.report.report_id, entry.account)
