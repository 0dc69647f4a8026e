"""The plain data a batch passes through: resolved reports, changes, plans, batch results.

Every report is known by its key (``sfsync.domain.keys``) from the source that hands it over to
the commit that records it: a batch result lists keys, never ids worked out again."""

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
class Resolved:
    """A parsed report, its key, and what the code map makes of it."""

    key: str
    report: Report
    status: Status
    known: bool

    @property
    def message_id(self) -> str:
        return self.report.message_id


@dataclass(frozen=True)
class Invalid:
    """A report that does not parse, with its key (kept as a dead letter)."""

    key: str
    raw: Any
    error: InvalidReport


@dataclass(frozen=True)
class Change:
    """One Task write the pipeline decided on."""

    task_id: str  # canonical 18-character Id
    outcome: Resolved
    fields: dict[str, Any]
    current: Status | None
    matched_by: MatchedBy = MatchedBy.MESSAGE_ID


@dataclass
class BatchResult:
    """What one batch came to. ``confirm``, ``held`` and ``dead`` list the keys of the batch's
    reports (``sfsync.domain.keys``): every report handed in is in ``confirm`` or ``held``."""

    confirm: list[str] = field(default_factory=list)  # keys with a durable outcome
    held: list[str] = field(default_factory=list)  # keys to try again later (not marked done)
    dead: list[str] = field(default_factory=list)  # keys kept as dead letters (new or already kept)
    counts: Counts = field(default_factory=Counts)
    changes: list[Change] = field(default_factory=list)  # what was (or, in a dry run, would be) written


@dataclass
class Plan:
    """What one batch would do, decided against the Tasks as they are now; nothing written yet."""

    result: BatchResult  # counts so far; ``changes`` set
    bad: list[Invalid] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)  # writes the precedence rule allows
    unchanged: list[Change] = field(default_factory=list)  # the Task already holds these values
    resolved: list[Resolved] = field(default_factory=list)  # matched winners and the reports they superseded
    unmatched: list[Resolved] = field(default_factory=list)  # no Task found
    rows: list[ReportResult] = field(default_factory=list)  # outcomes decided without a write (stale, invalid)
    refreshed: list[LedgerEntry] = field(default_factory=list)  # ledger entries a later same-value report moves on


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
class Sent:
    """What a write step did: answers per change, changes found already in place, changes not sent
    (the budget ran out, or a Bulk API job left them unprocessed), and that budget stop."""

    written: list[tuple[Change, WriteResult]] = field(default_factory=list)
    unchanged: list[Change] = field(default_factory=list)
    unsent: list[Change] = field(default_factory=list)
    budget_stop: BudgetExhausted | None = None


class BudgetStop(BudgetExhausted):
    """The budget ran out mid-batch; carries what was made durable before it did."""

    def __init__(self, result: BatchResult):
        super().__init__("Salesforce API budget reached mid-batch")
        self.result = result
