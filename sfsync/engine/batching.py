"""Batches formed on purpose: a drain goes when a full write's worth is staged, or when the oldest
staged report has waited the window, whichever comes first (Kafka's ``batch.size`` and ``linger.ms``).

A drain takes a batch when the oldest unclaimed staged reports belong to at least ``full`` messages
(200: one sObject Collections write; a message is one Task as a rule), or when the oldest staged
report has waited ``window`` seconds. A final status is never held past the window for a fuller batch.
Each drain takes only what was staged when it began (``StagedOutlook.last_seq``), so it ends; the next
waits for the next batch, and due waiting reports, dead-letter retries and the run history go on
between drains under any stream of pushes.

For ``serve`` the window is ``--batch-window`` (``--drain-interval``); for replicas of ``run --loop``
it is the loop's ``--interval``: a replica that does not hold the poll lease drains only once no
other replica polls, or the poller has staged nothing new for the window (its poll is over or
stuck), or the oldest staged report has waited ten windows. The reports of one message, staged
page after page, then land in one claim, and more replicas never mean more Salesforce calls.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from sfsync.clients.salesforce import COLLECTION_LIMIT
from sfsync.store import StagedOutlook, Store, now_utc

FULL_BATCH = COLLECTION_LIMIT  # messages: one sObject Collections write
LOOK_AT = 5 * FULL_BATCH  # staged reports read to count messages (a message has a few reports at most)
SETTLE_WINDOWS = 10  # while another replica polls, the longest a staged report waits: this many windows


@dataclass(frozen=True)
class BatchWindow:
    window_s: float
    full: int = FULL_BATCH
    clock: Callable[[], dt.datetime] = now_utc

    def outlook(self, store: Store) -> StagedOutlook:
        return store.staged_outlook(max(LOOK_AT, self.full))

    def ready(self, store: Store) -> StagedOutlook | None:
        """What a drain would take now, when a batch is ready (full, or waited the window), or None."""
        seen = self.outlook(store)
        if seen.oldest is None:
            return None
        if seen.messages >= self.full:
            return seen
        return seen if self.waited(seen) else None

    def settled(self, store: Store) -> StagedOutlook | None:
        """For a replica that does not poll while another does: what is staged, once the poller has
        staged nothing new for the window (its poll is over, or stuck) or the oldest staged report
        has waited ``SETTLE_WINDOWS`` windows; else None. A message's reports, still being staged
        page after page, then land in one claim (one look-up, one write), however short the window."""
        seen = self.outlook(store)
        if seen.oldest is None or seen.newest is None:
            return None
        quiet = (self.clock() - seen.newest).total_seconds() >= self.window_s
        overdue = (self.clock() - seen.oldest).total_seconds() >= SETTLE_WINDOWS * self.window_s
        return seen if quiet or overdue else None

    def waited(self, seen: StagedOutlook) -> bool:
        return seen.oldest is not None and (self.clock() - seen.oldest).total_seconds() >= self.window_s

    def wait_s(self, seen: StagedOutlook | None) -> float:
        """Seconds until the oldest staged report has waited the window (the loop's next look)."""
        if seen is None or seen.oldest is None:
            return self.window_s
        return max(0.0, self.window_s - (self.clock() - seen.oldest).total_seconds())
