"""The waiting source: reports kept while their Task did not exist, due for another try.

They are durable already (the waiting list in the store, each row under its report's key); the
pipeline takes a report off the list in the transaction that records its new outcome, or keeps it
with its next try (the back-off is ``sfsync.clients.retry.waiting_next_try``).
"""

from __future__ import annotations

from collections.abc import Iterator

from sfsync.domain.keys import Item
from sfsync.sources.batch import Batch
from sfsync.store import Store, now_utc

SOURCE = "waiting"
BATCH = 100


class WaitingSource:
    def __init__(self, store: Store, *, every: bool = False, batch: int = BATCH):
        self.store = store
        self.every = every  # every waiting report now, ignoring its back-off (--retry-waiting)
        self.batch = batch

    def batches(self) -> Iterator[Batch]:
        after = ""
        while True:
            rows = self.store.due_waiting(None if self.every else now_utc(), limit=self.batch, after=after)
            if not rows:
                return
            after = rows[-1].report_id
            yield Batch([Item(r.report_id, r.raw) for r in rows], SOURCE, waiting={r.report_id: r for r in rows})

    def due(self) -> bool:
        return bool(self.store.due_waiting(now_utc(), limit=1))
