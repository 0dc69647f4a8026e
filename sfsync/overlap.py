"""The drain's reads, overlapped with polling: while the poll source stages, look up the Tasks.

Polling is bound by MessageMedia's round trips (a check, then a confirm, per 100 reports); the
drain's look-ups (one per 100 distinct messages) need nothing but staged reports. So while the
poll runs, a thread claims what it staged (read only: the inbox, the ledger), works out which
values the match stage will look up, and looks them up in whole queries of 100 values; the first
drain batch then takes those rows instead of asking Salesforce again.

It costs no extra call: a message the ledger settles is never looked up, only whole queries go
out (the remainder is looked up with the rest, as before), and every value is looked up once per
run. Nothing is written ahead: writing a non-final before its message's last report of the run
has been staged could cost a second write of the same Task. The thread never writes the store
(the poll and the drain, on the run's own thread, remain its only writers), holds at most one
drain batch of staged reports (bounded memory), and any error it meets is handed to the drain,
which would have met it first thing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sfsync.clients.salesforce import IN_LIST_LIMIT
from sfsync.errors import SfsyncError
from sfsync.pipeline import Pipeline
from sfsync.store import StagedReport, Store

log = logging.getLogger("sfsync.overlap")


class Lookahead:
    """A thread that looks up, while the poll stages, the Tasks the first drain batch will need."""

    def __init__(self, pipeline: Pipeline, store: Store, *, limit: int, on_stage: Callable[[str], None]):
        self.pipeline = pipeline
        self.store = store
        self.limit = limit  # staged reports held at most (one drain batch)
        self.on_stage = on_stage
        self.rows: list[StagedReport] = []  # claimed in staging order, handed to the drain
        self.error: SfsyncError | None = None  # what stopped the look-ups (the drain raises it)
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
        rows = self.store.claim_staged(room, self.rows[-1].seq if self.rows else 0)
        self.rows += rows
        if not plan:
            return
        for value in self.pipeline.lookup_values([r.raw for r in rows]):
            if value not in self._seen:
                self._seen.add(value)
                self._pending[value] = None

    def _look_up(self) -> None:
        """Whole queries only: what is left over goes with the drain's own look-ups."""
        per_round = IN_LIST_LIMIT * max(1, self.pipeline.settings.sf_concurrency)
        while len(self._pending) >= IN_LIST_LIMIT and not self._finish.is_set():
            take = min(per_round, len(self._pending) // IN_LIST_LIMIT * IN_LIST_LIMIT)
            values = list(self._pending)[:take]
            for value in values:
                del self._pending[value]
            self.pipeline.prefetch(values)
            self.on_stage("looked_ahead")
