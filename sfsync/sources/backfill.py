"""The backfill source: a window's pages (``sfsync.sources.backfill_pages``: MessageMedia's reporting
API, or ``--from-salesforce``) as the engine's batches, the checkpoint moved as each is recorded.

``BackfillSource`` groups pages into batches of up to 10,000 reports (``BackfillOptions.bulk_job_rows``);
the engine's drain (``sfsync.engine.backfill``) takes each through the pipeline. A backfill acknowledges
by moving its checkpoint, in the transaction that records a batch's outcomes, only when none of them is
held: ``--resume`` continues from the first page whose reports are not all durable.

Pages go to the drain directly rather than through the store's inbox: reading a window back is
itself replayable from the checkpoint (the cursor is the durable part), and the inbox is keyed by
report id, so a second backfill of a window (after the fields were wiped) would find every report
"staged before" and do nothing. A batch is bounded, so memory stays flat over any window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from sfsync.domain.keys import keyed
from sfsync.domain.outcome import Counts, ExitReason, Tally, counts_from
from sfsync.pipeline import BatchResult, OnCommit
from sfsync.sources.backfill_pages import (
    Page,
    backfill_report_id,
    report_from_message,
    report_from_record,
)
from sfsync.sources.backfill_progress import Progress
from sfsync.sources.backfill_window import (
    BULK_JOB_ROWS,
    BackfillOptions,
    Window,
    parse_window,
    save_checkpoint,
)
from sfsync.sources.batch import Batch, StopCheck
from sfsync.store import Store

__all__ = ["BULK_JOB_ROWS", "BackfillOptions", "BackfillSource", "Page", "Progress", "Window",
           "backfill_report_id", "parse_window", "report_from_message", "report_from_record"]

log = logging.getLogger("sfsync.sources.backfill")

SOURCE = "backfill"  # the pipeline's source name: dead letters say where a report came from


class BackfillSource:
    """A window's pages as the engine's batches; the checkpoint moves as each batch is recorded."""

    def __init__(self, pages: Iterator[Page], store: Store, options: BackfillOptions, counts: Counts,
                 rules: StopCheck, start: dict[str, Any], *, progress: Progress,
                 on_page: Callable[[int], None]):
        self.pages = pages
        self.store = store
        self.options = options
        self.counts = counts  # the run's (the summary's)
        self.rules = rules
        self.progress = progress
        self.on_page = on_page
        self.base = counts_from(start.get("counts", {}))  # the window before this run
        self.resume_at: dict[str, Any] = dict(start.get("cursor", {}))  # first page not all durable
        self.read_to = self.resume_at  # just after the last page read
        self.unrecorded = 0  # reports read whose batch is not recorded yet
        self.held = 0  # reports a transient failure held: the checkpoint stays before their batch
        self.reason = ExitReason.NONE  # why the pages stopped before the window's end

    @property
    def batch_rows(self) -> int:
        return max(self.options.bulk_threshold + 1, self.options.bulk_job_rows)

    def batches(self) -> Iterator[Batch]:
        raws: list[Any] = []
        while not self.held:
            self.reason = self.rules.reason() or self._page_limit() or self.rules.reason(budget=True)
            page = None if self.reason else next(self.pages, None)
            if page is None:
                break
            self._read(page)
            raws += page.raws
            if len(raws) >= self.batch_rows:
                yield Batch(keyed(raws), SOURCE, on_commit=self._commit(page.resume_at))
                raws = []
        if raws and not self.held:  # stopped or complete: drain what was read, so --resume starts clean
            yield Batch(keyed(raws), SOURCE, on_commit=self._commit(self.read_to))

    def _read(self, page: Page) -> None:
        self.counts[Tally.FETCHED] += page.records
        self.counts[Tally.PAGES] += 1
        self.counts[Tally.NOT_FOUND] += page.not_found
        self.read_to = page.resume_at
        self.unrecorded += len(page.raws)
        self.progress.update(page.fraction, self.window_counts())
        self.on_page(page.number)

    def _page_limit(self) -> ExitReason:
        if self.options.max_pages is not None and self.counts[Tally.PAGES] >= self.options.max_pages:
            return ExitReason.MAX_PAGES
        return ExitReason.NONE

    def _commit(self, cursor: dict[str, Any]) -> OnCommit:
        def commit(result: BatchResult) -> None:  # inside the transaction recording the batch's outcomes
            self.counts[Tally.CHANGED] += len(result.changes)
            if result.held or self.held:
                self.held += len(result.held)
                return
            batch = result.counts.copy()
            self.resume_at, self.unrecorded = cursor, 0
            save_checkpoint(self.store, self.options, cursor, self.window_counts(batch), done=False)

        return commit

    def window_counts(self, more: Counts | None = None) -> Counts:
        counts = self.base + self.counts + (more or Counts())
        counts.pop(Tally.RECEIVED, None)
        return counts

    def finish(self, *, done: bool) -> Counts:
        """The checkpoint at the end of a run that stopped cleanly (or completed)."""
        if not self.unrecorded:
            self.resume_at = self.read_to  # past any trailing page without reports
        counts = self.window_counts()
        save_checkpoint(self.store, self.options, self.resume_at, counts, done=done)
        return counts


