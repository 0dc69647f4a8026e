"""The drain's reads, and its writes of final statuses, overlapped with polling.

Polling is bound by MessageMedia's round trips (a check, then a confirm, per 100 reports); the
drain needs nothing but staged reports. So while the poll runs, a thread claims what it staged,
works out which values the match stage will look up, and looks them up in whole Composite calls (five
queries of 100 values, one API call); the first drain batch then takes those rows instead of asking
Salesforce again.

It also writes final statuses ahead: once enough messages have a final status staged (a final is
never replaced by a non-final one; only a second, later final of the same message, a rare case,
would cost a second write) and their Tasks looked up, the thread takes their reports through the
pipeline in groups of 1,000 messages (one Composite call of five sObject Collections writes at
most), and marks them
drained in the transaction that records their outcomes, exactly as the drain would.
A non-final is never written ahead: the message's next report, still to be polled, would cost a
second write of the same Task. A Task written ahead is looked up again before anything else of
this run decides on it (its looked-up row is stale).

It costs no extra call: a message the ledger settles is never looked up, only whole Composite calls
of look-ups go out and writes only for whole groups (the remainder goes with the drain, as before), and every value is
looked up once per run (again only for a Task written ahead that another message names). The
thread holds at most one drain batch of staged reports (bounded memory); any error it meets is
handed to the drain, which would have met it first thing. Only for a process alone on its store
(SQLite: ``sfsync.store.replicas.Solo``).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from sfsync.clients.salesforce import COLLECTION_LIMIT, COMPOSITE_LIMIT, IN_LIST_LIMIT
from sfsync.domain.codes import resolve
from sfsync.domain.keys import Item
from sfsync.domain.outcome import Counts, Tally
from sfsync.domain.reports import Report
from sfsync.errors import SfsyncError
from sfsync.pipeline import BatchResult, BudgetStop, OnCommit, Pipeline, ReadAhead
from sfsync.pipeline.stages import task_id_from_metadata
from sfsync.sources.inbox import drained
from sfsync.store import StagedReport, Store

log = logging.getLogger("sfsync.engine.lookahead")

LOOK_UP_GROUP = IN_LIST_LIMIT * COMPOSITE_LIMIT  # values one Composite call of five queries looks up
WRITE_GROUP = COLLECTION_LIMIT * COMPOSITE_LIMIT  # messages one Composite call of five writes writes


class Lookahead:
    """A thread that looks up, while the poll stages, the Tasks the first drain batch will need,
    and writes ahead the final statuses among them."""

    def __init__(self, pipeline: Pipeline, store: Store, *, limit: int, on_stage: Callable[[str], None]):
        self.pipeline = pipeline
        self.store = store
        self.limit = limit  # staged reports held at most (one drain batch)
        self.on_stage = on_stage
        # Messages with a final status are written ahead in groups of this many: whole sObject
        # Collections writes (no Bulk API job: pipeline.bulk is the backfill's).
        self.write_group = WRITE_GROUP
        self.look_up_group = LOOK_UP_GROUP
        self.rows: list[StagedReport] = []  # claimed in staging order, not written ahead: the drain's
        self.results: list[BatchResult] = []  # the batches written ahead, recorded (the run counts them)
        self.counts: Counts = Counter()  # what they drained
        self.error: SfsyncError | None = None  # what stopped the look-ups (the drain raises it)
        # What it read: Task rows per looked-up value and the readings of the reports it claimed,
        # handed to the drain (``cache``), which takes each once.
        self.cache = ReadAhead()
        self._after = 0  # the last staged report claimed
        self._finals: dict[str, tuple[str, str]] = {}  # held messages with a final, oldest first: their look-up
        self._pending: dict[tuple[str, str], None] = {}  # values to look up, in order
        self._seen: set[tuple[str, str]] = set()  # values pending or looked up
        self._wake = threading.Event()
        self._finish = threading.Event()
        self._failure: BaseException | None = None  # a bug: raised again on the run's thread
        self._thread = threading.Thread(target=self._run, name="sfsync-lookahead", daemon=True)

    def start(self) -> Lookahead:
        self._wake.set()  # a backlog staged by earlier runs is drained first: read it now
        self._thread.start()
        return self

    def staged(self) -> None:
        """The poll committed a batch to the inbox."""
        self._wake.set()

    def finish(self) -> list[StagedReport]:
        """Stop (after the look-up in flight) and hand over the staged reports claimed so far."""
        self._finish.set()
        self._wake.set()
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        self._claim(plan=False)  # a full drain batch, as a fresh claim would take (one write per Task)
        return self.rows

    def _run(self) -> None:
        try:
            while not self._finish.is_set():
                self._wake.wait()
                self._wake.clear()
                if self._finish.is_set():
                    return
                self._claim(plan=True)
                self._look_up()
                self._write_ahead()
        except BudgetStop as stop:  # what was written before the budget ran out is recorded
            self.results.append(stop.result)
            self.error = stop
            log.info("look-ahead stopped: %s", stop, extra={"event": "lookahead_stopped"})
        except SfsyncError as exc:  # the budget, Salesforce unavailable, credentials: the drain's to report
            self.error = exc
            log.info("look-ahead stopped: %s", exc, extra={"event": "lookahead_stopped"})
        except BaseException as exc:  # a bug: raised again by finish(), on the run's thread
            self._failure = exc
        finally:
            self.store.close()  # this thread's own connection (a reader's; the run's thread writes)

    def _claim(self, *, plan: bool) -> None:
        """Staged reports after those held, up to the limit; with ``plan``, what they need looked up."""
        room = self.limit - len(self.rows)
        if room <= 0:
            return
        rows = self.store.claim_staged(room, self._after)
        if not rows:
            return
        self._after = rows[-1].seq
        self.rows += rows
        if not plan:
            return
        for value in self.pipeline.lookup_values([Item(r.key, r.raw) for r in rows], self.cache):
            if value not in self._seen:
                self._seen.add(value)
                self._pending[value] = None
        self._note_finals(rows)

    def _look_up(self) -> None:
        """Whole queries only: what is left over goes with the drain's own look-ups."""
        call = self.look_up_group
        per_round = call * max(1, self.pipeline.settings.sf_concurrency)
        while len(self._pending) >= call and not self._finish.is_set():
            take = min(per_round, len(self._pending) // call * call)
            values = list(self._pending)[:take]
            for value in values:
                del self._pending[value]
            self.pipeline.look_up(values, self.cache)
            self.on_stage("looked_ahead")

    def _write_ahead(self) -> None:
        """Whole groups of messages whose final status is staged and looked up (or settled by the
        ledger): their reports through the pipeline, oldest first, while the poll goes on."""
        if self._finish.is_set():
            return
        ready = self._ready()
        take = len(ready) // self.write_group * self.write_group
        if not take:
            return
        chosen = set(ready[:take])
        for message_id in chosen:
            del self._finals[message_id]
        mine: list[StagedReport] = []
        kept: list[StagedReport] = []
        for row in self.rows:
            (mine if _message_of(self.cache.reading(row.key)) in chosen else kept).append(row)
        self.rows = kept
        for source in dict.fromkeys(r.source for r in mine):
            group = [r for r in mine if r.source == source]
            result = self.pipeline.process([Item(r.key, r.raw) for r in group], source,
                                           on_commit=self._drained(group), ahead=self.cache)
            self.results.append(result)
            self._forget_rows_of({c.task_id[:15] for c in result.changes})
        self.on_stage("wrote_ahead")

    def _ready(self) -> list[str]:
        """Messages, oldest first, with a final status staged and their Task looked up (or settled
        by the ledger: never queued for a look-up)."""
        return [m for m, value in self._finals.items() if self.cache.has(value) or value not in self._seen]

    def _note_finals(self, rows: list[StagedReport]) -> None:
        """The messages of newly claimed reports that are final, each with the value its Task is
        looked up by (a final beats every non-final: the message's status is final from now on)."""
        key, code_map = self.pipeline.settings.metadata_task_key, self.pipeline.code_map
        for row in rows:
            report = _report(self.cache.reading(row.key))
            if report is None or report.message_id in self._finals:
                continue
            if resolve(report.status, report.code, code_map, message_id=report.message_id, quiet=True).final:
                named = task_id_from_metadata(report, key)
                self._finals[report.message_id] = ("Id", named) if named else ("msg", report.message_id)

    def _drained(self, rows: list[StagedReport]) -> OnCommit:
        def commit(result: BatchResult) -> None:  # in the transaction that records the outcomes
            done = drained(rows, result)
            self.store.inbox_done(done)
            self.counts[Tally.DRAINED] += len(done)

        return commit

    def _forget_rows_of(self, written: set[str]) -> None:
        """Looked-up rows of Tasks just written are stale: their values are looked up again (in a
        whole query with others, or by the drain), and no message waiting on them is ready until then."""
        if not written:
            return
        for value in self.cache.forget_tasks(written):
            self._pending[value] = None


def _report(reading: object) -> Report | None:
    return reading if isinstance(reading, Report) else None


def _message_of(reading: object) -> str | None:
    report = _report(reading)
    return report.message_id if report is not None else None
