"""The poll source: fetch from MessageMedia's queue, stage in the store, then confirm.

Each check's reports are committed to the store's inbox in one transaction and only then confirmed
to MessageMedia, so MessageMedia's queue drains at its own pace, whatever Salesforce is doing.
Staging is idempotent by report id: a report served again (its confirmation not in effect yet, or a
crash between commit and confirm) is recognised and never staged twice. A report without an id
MessageMedia accepts is staged by a key made of its content; it cannot be confirmed. An id
MessageMedia refuses in a confirmation (the client isolates it) is remembered for the run and
counted with those: its report is staged as usual, and stays at the head of the queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import StopAwareSleep, poll_until
from sfsync.domain.keys import confirmable_id, keyed
from sfsync.sources.batch import Batch
from sfsync.store import Store

log = logging.getLogger("sfsync.sources.poll")
PAGE = 100  # MessageMedia serves at most this many reports a check
FIRST_RECHECK_S = 0.1  # first wait before checking again while confirmed reports are still served
RECHECK_GROWTH = 1.5  # each later wait this much longer, up to MAX_RECHECK_S
MAX_RECHECK_S = 1.0
# Ids confirmed this run that a check does not confirm again: the latest ones only (a long poll of a
# large queue must not grow with it). One served again after that is confirmed again, harmlessly.
CONFIRMED_KEPT = 10_000
# A report still served this long after its confirmation is confirmed again: a 202 only says it "will
# be marked as confirmed", and one that never takes effect must not keep the queue from draining.
RECONFIRM_AFTER_S = 2.0


@dataclass(frozen=True)
class Check:
    """One check of the queue: what it served, staged and confirmed."""

    raws: list[Any]
    new: int  # reports staged for the first time
    confirmed: int  # ids confirmed by this check for the first time this run
    served_again: int  # confirmable reports already staged (and confirmed by this run)
    unconfirmable: list[Any]  # reports without an id MessageMedia accepts

    @property
    def moved(self) -> bool:
        """The queue gave something new, or nothing a later check could change."""
        return bool(self.new) or not self.served_again


class PollSource:
    def __init__(self, mm: MessageMediaClient, store: Store, *, wait_seconds: float,
                 stop: threading.Event, on_stage: Callable[[str], None],
                 sleep: Callable[[float], Any] | None = None, remember: int = CONFIRMED_KEPT):
        self.mm = mm
        self.store = store
        self.wait_seconds = wait_seconds
        self.on_stage = on_stage
        self.sleep = StopAwareSleep(stop, sleep)
        self.confirmed: OrderedDict[str, float] = OrderedDict()  # ids confirmed lately (when), oldest first
        self.remember = remember
        self.shared: set[str] = set()  # ids served on two reports at once: one confirm cannot clear both
        # Ids MessageMedia refused in a confirmation: never sent again by this source (one run). Their
        # reports are staged like any other; they stay at the head of the queue, as unconfirmable ones do.
        self.refused: set[str] = set()

    def check(self) -> Check:
        """Fetch one page, commit it to the inbox, then confirm its ids not yet confirmed this run."""
        raws = self.mm.fetch_reports()
        self.on_stage("fetched")
        if not raws:
            return Check([], 0, 0, 0, [])
        new = self.store.stage("poll", keyed(raws))
        self.on_stage("staged")
        served = [i for i in map(confirmable_id, raws) if i is not None]
        self.shared.update(i for i, n in Counter(served).items() if n > 1)
        ids = list(dict.fromkeys(served))
        now = time.monotonic()
        first = [i for i in ids if i not in self.confirmed and i not in self.refused]
        lost = [i for i in ids if i in self.confirmed and now - self.confirmed[i] >= RECONFIRM_AFTER_S]
        if first or lost:
            self.on_stage("confirming")
            refused = set(self.mm.confirm(first + lost))
            self.refused |= refused
            first = [i for i in first if i not in refused]
            for i in first + lost:
                if i in refused:
                    continue
                self.confirmed[i] = now
                self.confirmed.move_to_end(i)
            while len(self.confirmed) > self.remember:
                self.confirmed.popitem(last=False)
            self.on_stage("confirmed")
        if lost:
            log.info("%d report(s) still served %gs or more after their confirmation: confirmed again", len(lost),
                     RECONFIRM_AFTER_S, extra={"event": "confirmed_again"})
        again = sum(1 for i in ids if i not in new and i not in self.shared and i not in self.refused)
        unconfirmable = [r for r in raws if confirmable_id(r) is None or confirmable_id(r) in self.refused
                         or (confirmable_id(r) in self.shared and confirmable_id(r) not in new)]
        return Check(raws, len(new), len(first), again, unconfirmable)

    def next_check(self) -> Check:
        """A check that moved the queue on; while MessageMedia serves only reports already staged
        and confirmed (a confirmation takes effect some time after its 202), wait and check again,
        for at most ``wait_seconds``."""
        return poll_until(self.check, lambda c: c.moved, max_seconds=self.wait_seconds, first=FIRST_RECHECK_S,
                          max_wait=MAX_RECHECK_S, sleep=self.sleep, growth=RECHECK_GROWTH)


def describe_ids(raws: list[Any], limit: int = 5) -> str:
    """The ids of unconfirmable reports as served, shortened, for a log line."""
    shown = []
    for raw in raws[:limit]:
        rid = raw.get("delivery_report_id") if isinstance(raw, dict) else None
        text = repr(rid)
        shown.append(text if len(text) <= 40 else text[:37] + "...")
    more = f" and {len(raws) - limit} more" if len(raws) > limit else ""
    return ", ".join(shown) + more


class PageSource:
    """A dry run's look at MessageMedia: the first page of each account's queue, neither staged nor
    confirmed (MessageMedia serves the oldest reports, the same ones until they are confirmed)."""

    def __init__(self, clients: list[MessageMediaClient], on_stage: Callable[[str], None]):
        self.clients = clients
        self.on_stage = on_stage
        self.keys: set[str] = set()  # the keys of the reports on the pages: planned already
        self.fetched = 0

    def batches(self) -> Iterator[Batch]:
        page = [r for mm in self.clients for r in mm.fetch_reports()]
        self.on_stage("fetched")
        self.fetched = len(page)
        if page:
            items = keyed(page)
            self.keys = {i.key for i in items}
            yield Batch(items, "poll")
