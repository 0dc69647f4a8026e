"""One batch through the stages: parse -> resolve -> collapse -> match -> decide -> write -> record.

The caller (poll loop, waiting retry, push inbox, backfill) fetches the batch and, once
``process`` returns, confirms the ids it lists: every one of them has a durable outcome by then
(written to Salesforce or found already there, or committed to the store as waiting or dead).
Reports whose write failed transiently are listed as ``held``: never confirmed, they come back.

``process`` is ``plan`` (parse, resolve, collapse, match, decide: reads only) then ``apply``
(write, record). Backfill uses the halves on their own: it plans page by page and writes later,
by sObject Collections (``write_changes``) or by Bulk API (then ``record_written``).

Every stage is a small function over plain data; this module is the only one that knows their
order. ``on_stage`` lets tests crash the pipeline at any boundary.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sfsync.codes import CodeMap, default_map, normalise_code, resolve
from sfsync.config import Settings
from sfsync.errors import BudgetExhausted
from sfsync.precedence import Action, Status, decide, strongest, wins
from sfsync.reports import InvalidReport, Report, format_time, parse_report, parse_time
from sfsync.salesforce import COLLECTION_LIMIT, SalesforceClient, WriteResult, valid_task_id
from sfsync.store import LedgerEntry, Store, WaitingReport, now_utc

log = logging.getLogger(__name__)

Stage = Callable[[str], None]
WAIT_FIRST_RETRY_S = 60.0
WAIT_MAX_RETRY_S = 3600.0


@dataclass(frozen=True)
class Outcome:
    """A parsed report with what the code map makes of it."""

    report: Report
    status: Status
    known: bool

    @property
    def message_id(self) -> str:
        return self.report.message_id


@dataclass(frozen=True)
class Change:
    """One Task write the pipeline decided on."""

    task_id: str
    outcome: Outcome
    fields: dict[str, Any]
    current: Status | None


@dataclass
class BatchResult:
    confirm: list[str] = field(default_factory=list)  # report ids with a durable outcome
    held: list[str] = field(default_factory=list)  # report ids to try again later (not confirmed)
    counts: Counter[str] = field(default_factory=Counter)
    changes: list[Change] = field(default_factory=list)  # what was (or, in a dry run, would be) written


@dataclass
class Plan:
    """What one batch would do, decided against the Tasks as they are now; nothing written yet."""

    result: BatchResult  # counts so far; ``changes`` set
    bad: list[InvalidReport] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)  # writes the precedence rule allows
    unchanged: list[Change] = field(default_factory=list)  # the Task already holds these values
    resolved: list[Outcome] = field(default_factory=list)  # matched winners and the reports they superseded
    unmatched: list[Outcome] = field(default_factory=list)  # no Task found


# -- stages ---------------------------------------------------------------------------------------------
def parse(
    raws: Iterable[Any], source: str, default_tz: dt.tzinfo = dt.UTC
) -> tuple[list[Report], list[InvalidReport]]:
    good: dict[str, Report] = {}
    bad: list[InvalidReport] = []
    for raw in raws:
        try:
            report = parse_report(raw, source, default_tz)
        except InvalidReport as exc:
            exc.raw = raw  # type: ignore[attr-defined]
            bad.append(exc)
            continue
        good.setdefault(report.report_id, report)  # the same report twice in one batch counts once
    return list(good.values()), bad


def resolve_all(reports: Iterable[Report], code_map: CodeMap) -> list[Outcome]:
    outcomes = []
    for report in reports:
        r = resolve(report.status, report.code, code_map)
        status = Status(r.label, r.code, r.final, report.event_time, report.received_at, report.report_id)
        outcomes.append(Outcome(report, status, r.known))
    return outcomes


def collapse(outcomes: Iterable[Outcome]) -> tuple[dict[str, Outcome], list[Outcome]]:
    """Per message, the report that wins by the precedence rule; the others are superseded."""
    by_message: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_message[outcome.message_id].append(outcome)
    winners: dict[str, Outcome] = {}
    superseded: list[Outcome] = []
    for message_id, group in by_message.items():
        best = strongest([o.status for o in group])
        winner = next(o for o in group if o.status is best)
        winners[message_id] = winner
        superseded += [o for o in group if o is not winner]
    return winners, superseded


def task_id_from_metadata(report: Report, key: str) -> str | None:
    value = (report.metadata.get(key) or "").strip()
    return value if value and valid_task_id(value) else None


def current_status(row: Mapping[str, Any], settings: Settings, ledger: LedgerEntry | None,
                   code_map: CodeMap) -> Status | None:
    """What the Task holds now, with the best event time we know for it."""
    label = row.get(settings.field_status)
    if not label:
        return None
    label = str(label)
    code = normalise_code(row.get(settings.field_code))
    event_time = received = None
    tiebreak = ""
    if settings.field_updated and row.get(settings.field_updated):
        try:
            event_time = parse_time(row.get(settings.field_updated))
        except ValueError:
            event_time = None
    if event_time is None and ledger and ledger.task_id == row.get("Id") and ledger.label == label \
            and (ledger.code or None) == (code or None):
        event_time, received, tiebreak = ledger.event_time, ledger.received_time, ledger.report_id or ""
    return Status(label, code, code_map.is_final(label), event_time, received, tiebreak)


def task_fields(outcome: Outcome, settings: Settings) -> dict[str, Any]:
    values: dict[str, Any] = {settings.field_status: outcome.status.label, settings.field_code: outcome.status.code}
    if settings.field_updated and outcome.report.event_time:
        values[settings.field_updated] = format_time(outcome.report.event_time)
    return values


def _ledger_entry(change: Change) -> LedgerEntry:
    s = change.outcome.status
    return LedgerEntry(change.outcome.message_id, change.task_id, s.label, s.code, s.final, s.event_time,
                       s.received_time, change.outcome.report.report_id)


# -- the pipeline -------------------------------------------------------------------------------------------
class Pipeline:
    def __init__(self, settings: Settings, store: Store, salesforce: SalesforceClient, *,
                 code_map: CodeMap | None = None, dry_run: bool = False, on_stage: Stage | None = None,
                 clock: Callable[[], dt.datetime] = now_utc):
        self.settings = settings
        self.store = store
        self.sf = salesforce
        self.code_map = code_map or default_map()
        self.dry_run = dry_run
        self.on_stage = on_stage or (lambda stage: None)
        self.clock = clock
        self._field_lengths: dict[str, int] | None = None

    def process(self, raws: list[Any], source: str = "poll", *, default_tz: dt.tzinfo = dt.UTC,
                waiting: Mapping[str, WaitingReport] | None = None) -> BatchResult:
        """Take one batch to durable outcomes. ``waiting`` holds the batch's reports that come
        from the waiting list (report id -> its row), to age them and take them off it."""
        plan = self.plan(raws, source, default_tz=default_tz)
        if self.dry_run:
            plan.result.counts["would_write"] += len(plan.changes)
            plan.result.counts["would_wait"] += len(plan.unmatched)
            return plan.result
        return self.apply(plan, source, waiting=waiting)

    def plan(self, raws: Iterable[Any], source: str = "poll", *, default_tz: dt.tzinfo = dt.UTC) -> Plan:
        """Parse, resolve, collapse, match and decide. Reads Salesforce and the store; writes nothing."""
        result = BatchResult()
        reports, bad = parse(raws, source, default_tz)
        result.counts["received"] += len(reports) + len(bad)
        result.counts["invalid"] += len(bad)
        outcomes = resolve_all(reports, self.code_map)
        result.counts["unknown_code"] += sum(1 for o in outcomes if not o.known)
        winners, superseded = collapse(outcomes)
        result.counts["skipped_stale"] += len(superseded)
        self.on_stage("resolved")

        tasks_by_message = self._match(winners)
        self.on_stage("matched")
        ledger = self.store.ledger(winners)
        plan = Plan(result, bad, resolved=list(superseded))  # durable once the batch is recorded
        writing: dict[str, int] = {}  # Task (15-character Id) -> its change's index in plan.changes
        for message_id, outcome in winners.items():
            rows = tasks_by_message.get(message_id, [])
            if not rows:
                plan.unmatched.append(outcome)
                continue
            plan.resolved.append(outcome)
            for row in rows:
                current = current_status(row, self.settings, ledger.get(message_id), self.code_map)
                action = decide(current, outcome.status)
                change = Change(str(row["Id"]), outcome, task_fields(outcome, self.settings), current)
                if action is Action.WRITE:
                    self._keep_strongest(plan, writing, change)
                elif action is Action.UNCHANGED:
                    result.counts["skipped_unchanged"] += 1
                    plan.unchanged.append(change)
                else:
                    result.counts["skipped_stale"] += 1
        result.changes = plan.changes
        return plan

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
        plan.result.counts["skipped_stale"] += 1
        if wins(plan.changes[at].outcome.status, change.outcome.status):
            plan.changes[at] = change

    def apply(self, plan: Plan, source: str = "poll", *,
              waiting: Mapping[str, WaitingReport] | None = None) -> BatchResult:
        """Write a plan's changes and record every report's outcome (the poll loop's second half)."""
        self.dead_letter_invalid(plan.bad, source, plan.result)
        self._write_and_record(plan.changes, plan.unchanged, plan.resolved, plan.unmatched, source, waiting or {},
                               plan.result)
        return plan.result

    # -- match ----------------------------------------------------------------------------------------------
    def _match(self, winners: Mapping[str, Outcome]) -> dict[str, list[dict[str, Any]]]:
        """Tasks for each message: by a Task Id in metadata, else by the message-id field."""
        key = self.settings.metadata_task_key
        by_task_id: dict[str, list[str]] = defaultdict(list)  # several messages may name one Task (resends)
        by_message_field: list[str] = []
        for message_id, outcome in winners.items():
            task_id = task_id_from_metadata(outcome.report, key)
            if task_id:
                by_task_id[task_id].append(message_id)
            else:
                by_message_field.append(message_id)
        if not winners:
            return {}
        rows = self.sf.find_tasks(by_task_id, by_message_field)
        found: dict[str, list[dict[str, Any]]] = defaultdict(list)
        msg_field = self.settings.field_message_id
        for row in rows:
            task_id = str(row["Id"])
            owners = by_task_id.get(task_id) or by_task_id.get(task_id[:15]) or []
            if not owners and row.get(msg_field) in winners:
                owners = [str(row[msg_field])]
            for owner in owners:
                found[owner].append(row)
        # A Task Id from metadata that the query did not return is written blind, so that
        # Salesforce says why (ENTITY_IS_DELETED, INVALID_CROSS_REFERENCE_KEY): there is no
        # status on it that the write could regress.
        seen = {str(r["Id"]) for rows_ in found.values() for r in rows_}
        for task_id, message_ids in by_task_id.items():
            if task_id not in seen and not any(s.startswith(task_id) for s in seen):
                for message_id in message_ids:
                    found[message_id].append({"Id": task_id})
        return found

    # -- write and record ---------------------------------------------------------------------------------
    def _write_and_record(self, changes: list[Change], unchanged: list[Change], resolved: list[Outcome],
                          unmatched: list[Outcome], source: str, waiting: Mapping[str, WaitingReport],
                          result: BatchResult) -> None:
        written, budget_stop = self._send(changes)
        by_report: dict[str, list[WriteResult]] = defaultdict(list)
        for change, answer in written:
            by_report[change.outcome.report.report_id].append(answer)

        unwritten = {c.outcome.report.report_id for c in changes[len(written):]}
        now = self.clock()
        with self.store.transaction():
            self.record_written(written, unchanged, source, result)
            for outcome in unmatched:
                self._keep_waiting(outcome, source, waiting.get(outcome.report.report_id), now, result)
            result.confirm += [o.report.report_id for o in unmatched]
            held = {rid for rid, answers in by_report.items() if any(a.transient for a in answers)} | unwritten
            # A message whose winning report is held keeps its superseded reports unconfirmed too.
            held_messages = {o.message_id for o in resolved if o.report.report_id in held}
            for outcome in resolved:
                target = result.held if outcome.message_id in held_messages else result.confirm
                target.append(outcome.report.report_id)
            self.store.remove_waiting([o.report.report_id for o in resolved
                                       if o.report.report_id in waiting and o.message_id not in held_messages])
        result.counts["held"] += len(result.held)
        self.on_stage("recorded")
        if budget_stop:
            raise _BudgetStop(result) from budget_stop

    def write_changes(self, changes: list[Change], source: str, result: BatchResult
                      ) -> list[tuple[Change, WriteResult]]:
        """Write changes by sObject Collections and record what happened (ledger, dead letters).
        Returns each change with its answer; a transient failure is returned, not recorded.
        When the API budget runs out part-way, what was written is recorded, then ``_BudgetStop``."""
        written, budget_stop = self._send(changes)
        self.record_written(written, [], source, result)
        if budget_stop:
            raise _BudgetStop(result) from budget_stop
        return written

    def _send(self, changes: list[Change]) -> tuple[list[tuple[Change, WriteResult]], BudgetExhausted | None]:
        """sObject Collections writes, 200 a call, until done or the API budget runs out."""
        written: list[tuple[Change, WriteResult]] = []
        for start in range(0, len(changes), COLLECTION_LIMIT):
            chunk = changes[start : start + COLLECTION_LIMIT]
            try:
                answers = self.sf.update_tasks([{"id": c.task_id, **self.fit(c.fields)} for c in chunk])
            except BudgetExhausted as exc:
                return written, exc  # record what was written, confirm only that, then stop
            written += list(zip(chunk, answers, strict=True))
            self.on_stage("wrote")
        return written, None

    def record_written(self, written: Iterable[tuple[Change, WriteResult]], unchanged: Iterable[Change],
                       source: str, result: BatchResult) -> None:
        """Ledger entries for what Salesforce took (and for Tasks that already held the values),
        dead letters with Salesforce's error for what it refused for good; transient failures
        are left for the caller (held, tried again)."""
        written = list(written)
        with self.store.transaction():
            applied = [c for c, a in written if a.ok]
            self.store.record_applied([_ledger_entry(c) for c in [*applied, *unchanged]])
            result.counts["applied"] += len(applied)
            for change, answer in written:
                if not answer.ok and not answer.transient:
                    result.counts["dead_lettered"] += self.store.add_dead_letter(
                        change.outcome.report.report_id, change.outcome.message_id, change.outcome.report.raw, source,
                        f"Salesforce refused the update of Task {change.task_id}",
                        f"{answer.error_code}: {answer.message}",
                    )
                    log.warning("report %s dead-lettered: Task %s %s", change.outcome.report.report_id,
                                change.task_id, answer.error_code, extra={"event": "dead_letter"})

    def _keep_waiting(self, outcome: Outcome, source: str, row: WaitingReport | None, now: dt.datetime,
                      result: BatchResult) -> None:
        """Keep a report whose Task does not exist yet; past the maximum age, dead-letter it."""
        report = outcome.report
        first_seen = row.first_seen if row else now
        max_age = dt.timedelta(hours=self.settings.wait_max_age_hours)
        if now - first_seen >= max_age:
            result.counts["dead_lettered"] += self.store.add_dead_letter(
                report.report_id, report.message_id, report.raw, source,
                f"no Task found for message {report.message_id} within {self.settings.wait_max_age_hours:g} h",
            )
            return
        tried = row.attempts if row else 0
        delay = min(WAIT_FIRST_RETRY_S * 2**tried, WAIT_MAX_RETRY_S)  # 1 min, 2, 4, ... 1 h
        self.store.add_waiting(report.report_id, report.message_id, report.raw, row.source if row else source,
                               f"no Task with {self.settings.field_message_id} = {report.message_id} yet",
                               now + dt.timedelta(seconds=delay))
        result.counts["waiting"] += 1

    def dead_letter_invalid(self, bad: list[InvalidReport], source: str, result: BatchResult) -> None:
        """Keep reports that cannot be parsed; those with an id are confirmed (they never will parse)."""
        if not bad or self.dry_run:
            return
        with self.store.transaction():
            for exc in bad:
                raw = getattr(exc, "raw", None)
                if self.store.add_dead_letter(exc.report_id, None, raw if raw is not None else "", source,
                                              f"invalid report: {exc.reason}"):
                    result.counts["dead_lettered"] += 1
                    log.warning("invalid report dead-lettered: %s", exc.reason,
                                extra={"event": "invalid_report", "report_id": exc.report_id})
                if exc.report_id:
                    result.confirm.append(exc.report_id)

    def fit(self, values: dict[str, Any]) -> dict[str, Any]:
        """Cut text to the field's length, only for fields listed in SFSYNC_TRUNCATE_FIELDS."""
        if not self.settings.truncate_fields:
            return values
        if self._field_lengths is None:
            described = self.sf.describe_task().get("fields", [])
            self._field_lengths = {f["name"]: int(f.get("length") or 0) for f in described if isinstance(f, dict)}
        fitted = dict(values)
        for name in self.settings.truncate_fields:
            limit = self._field_lengths.get(name, 0)
            value = fitted.get(name)
            if isinstance(value, str) and limit and len(value) > limit:
                log.warning("cut %s to %d characters as configured", name, limit, extra={"event": "truncated"})
                fitted[name] = value[:limit]
        return fitted


class _BudgetStop(BudgetExhausted):
    """The budget ran out mid-batch; carries what was made durable before it did."""

    def __init__(self, result: BatchResult):
        super().__init__("Salesforce API budget reached mid-batch")
        self.result = result
