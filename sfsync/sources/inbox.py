"""The inbox source: everything staged (polled or pushed), drained.

The engine claims staged reports thousands at a time; each batch's rows are marked done, by their
own inbox keys, in the transaction that records their outcomes. Staging is the sources' half:
``sfsync.sources.poll`` for the poll, ``sfsync.push.body`` for pushes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from sfsync.domain.keys import Item
from sfsync.domain.outcome import Counts, Tally
from sfsync.pipeline import BatchResult, OnCommit
from sfsync.sources.batch import Batch
from sfsync.store import StagedReport, Store
from sfsync.store.replicas import Claims, Solo

log = logging.getLogger("sfsync.sources.inbox")

# Staged reports claimed per pipeline batch: the reports of one message spread over a backlog still
# collapse into one write (10,000 raw reports stay well under 100 MB).
DRAIN_BATCH = 10_000


def drained(rows: list[StagedReport], result: BatchResult) -> list[str]:
    """The keys of the rows whose reports the batch made durable (the others were held, to be
    drained again): each row's own key, as the pipeline carried it."""
    durable = set(result.confirm)
    return [r.key for r in rows if r.key in durable]


class InboxSource:
    """Staged reports (polled and pushed), thousands at a time, in the order they were staged.
    ``skip``: keys not to hand over (a dry run planned them with the page already)."""

    def __init__(self, store: Store, counts: Counts, *, at_most: int | None = None,
                 count_fetched: bool = False, batch: int = DRAIN_BATCH, claims: Claims | None = None,
                 claimed: list[StagedReport] | None = None, skip: set[str] | None = None):
        self.store = store
        # Who claims: this process alone (SQLite), or a replica's claims on PostgreSQL (sfsync.store.replicas).
        self.claims: Claims = claims or Solo(store)
        self.counts = counts
        self.at_most = at_most  # reports to take in all (--max-reports with --inbox)
        self.count_fetched = count_fetched  # --inbox: what is claimed is what the run fetched
        self.batch = batch
        self.claimed = claimed or []  # the first batch, claimed already (by the look-ahead, sfsync.engine.lookahead)
        self.skip = skip or set()

    def batches(self) -> Iterator[Batch]:
        after = taken = 0
        while True:
            limit = self.batch if self.at_most is None else min(self.batch, self.at_most - taken)
            if limit <= 0:
                return
            if self.claimed:  # handed over by the look-ahead (one process alone: sfsync.engine.lookahead)
                rows, self.claimed = self.claimed, []
                after = rows[-1].seq
            else:
                rows, after = self.claims.claim_staged(limit, after)
            if not after:
                return
            rows = [r for r in rows if r.key not in self.skip]
            if not rows:
                continue  # all of them belong to messages another replica holds
            taken += len(rows)
            if self.count_fetched:
                self.counts[Tally.FETCHED] += len(rows)
            for source in dict.fromkeys(r.source for r in rows):
                group = [r for r in rows if r.source == source]
                yield Batch([Item(r.key, r.raw) for r in group], source, on_commit=self._mark_drained(group))

    def _mark_drained(self, rows: list[StagedReport]) -> OnCommit:
        def commit(result: BatchResult) -> None:
            self.counts[Tally.DRAINED] += len(self.claims.done(drained(rows, result)))  # those still claimed here

        return commit

    def pending(self) -> bool:
        return bool(self.store.inbox_pending(1))
