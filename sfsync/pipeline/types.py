"""The plain data a batch passes through: outcomes, changes, plans, batch results."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sfsync.clients.salesforce import WriteResult
from sfsync.domain.outcome import Counts, ReportResult
from sfsync.domain.precedence import Status
from sfsync.domain.reports import InvalidReport, Report
from sfsync.errors import BudgetExhausted
from sfsync.store import LedgerEntry

Stage = Callable[[str], None]
OnCommit = Callable[["BatchResult"], None]
# Leases on the Tasks about to be written, held until their outcomes are recorded; yields the Ids
# granted, or None when this process is the only writer (nothing to re-check).
TaskGuard = Callable[[Iterable[str]], AbstractContextManager[set[str] | None]]
# A write naming a Task that is not there (another org's Id, a deleted record): for a Task found by
# the Id in metadata, the message-id match is tried before the report is dead-lettered.
TASK_GONE = frozenset({"INVALID_CROSS_REFERENCE_KEY", "ENTITY_IS_DELETED"})
TASK_DELETED = "ENTITY_IS_DELETED"  # Salesforce's answer to a write to a Task in the recycle bin (or purged)


class MatchedBy(Enum):
    TASK_ID = "task_id"  # the Task Id in the report's metadata
    MESSAGE_ID = "message_id"  # the Task's message-id field


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

    task_id: str  # canonical 18-character Id
    outcome: Outcome
    fields: dict[str, Any]
    current: Status | None
    matched_by: MatchedBy = MatchedBy.MESSAGE_ID


@dataclass
class BatchResult:
    confirm: list[str] = field(default_factory=list)  # report ids with a durable outcome
    held: list[str] = field(default_factory=list)  # report ids to try again later (not confirmed)
    dead: list[str] = field(default_factory=list)  # report ids kept as dead letters (new or already kept)
    counts: Counts = field(default_factory=Counts)
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
    rows: list[ReportResult] = field(default_factory=list)  # outcomes decided without a write (stale, invalid)
    refreshed: list[LedgerEntry] = field(default_factory=list)  # ledger entries a later same-value report moves on


Parsed = dict[int, tuple[Any, "Report | InvalidReport"]]  # id(raw) -> (that raw, what it reads as)


@dataclass
class Matches:
    """The Tasks of each message (rows as the look-up returned them, Ids canonical)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    by_task_id: set[str] = field(default_factory=set)  # messages matched by the Task Id in their metadata

    def add(self, message_id: str, row: dict[str, Any]) -> None:
        if all(r["Id"] != row["Id"] for r in self.rows[message_id]):
            self.rows[message_id].append(row)



@contextmanager
def sole_writer(task_ids: Iterable[str]) -> Iterator[set[str] | None]:
    yield None


@dataclass(frozen=True)
class _Sent:
    """What a write step did: answers per change, changes found already in place, changes not sent."""

    written: list[tuple[Change, WriteResult]]
    unchanged: list[Change]
    unsent: list[Change]
    budget_stop: BudgetExhausted | None


class _BudgetStop(BudgetExhausted):
    """The budget ran out mid-batch; carries what was made durable before it did."""

    def __init__(self, result: BatchResult):
        super().__init__("Salesforce API budget reached mid-batch")
        self.result = result
