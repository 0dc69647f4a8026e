"""A backfill's progress: a tqdm bar on a terminal, elsewhere a log line every few pages."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sys
import time
from typing import Any

from sfsync.domain.outcome import Counts, ReportOutcome, Tally
from sfsync.sources.backfill_window import Window
from sfsync.terminal import raw

log = logging.getLogger("sfsync.sources.backfill")
LOG_EVERY_PAGES = 10


class Progress:
    """A tqdm bar on a terminal, elsewhere a log line every few pages: pages and records read (the
    reporting API gives no total), and the share of the window's time span covered by send time,
    labelled as such."""

    def __init__(self, window: Window, stream: Any = None, every: int = LOG_EVERY_PAGES):
        def when(moment: dt.datetime) -> str:
            return window.local(moment)[:16].replace("T", " ")

        title = f"backfill {when(window.since)}..{when(window.until)} {window.timezone}"
        self.stream = stream or raw(sys.stderr)  # the bar's own \r and cursor moves (its text is ours)
        self.every = every
        self.started = time.monotonic()
        self.fraction = 0.0
        self.bar: Any = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=100.0, desc=title, file=self.stream, dynamic_ncols=True, leave=True,
                            bar_format="{desc}: {percentage:3.0f}% of the window's time span|{bar}| "
                                       "[{elapsed}]{postfix}")

    def update(self, fraction: float | None, counts: Counts, *, final: bool = False) -> None:
        """``counts`` are the window's (resumed runs included)."""
        now = time.monotonic()
        pages = counts[Tally.PAGES]
        if fraction is not None:
            self.fraction = max(self.fraction, fraction)  # never backwards
        records = counts[Tally.FETCHED]
        changed, applied = counts[Tally.CHANGED], counts[ReportOutcome.APPLIED]
        rate = records / max(now - self.started, 1e-6)
        if self.bar is not None:
            self.bar.update(self.fraction * 100 - self.bar.n)
            self.bar.set_postfix_str(f"page {pages}, {records} read, {changed} changed, "
                                     f"{applied} written, {rate:.0f}/s", refresh=True)
            return
        if final or pages % self.every == 0:
            # No time left is shown: records are not spread evenly over the window's time span.
            log.info("backfill: %d pages, %d records read, %d changed, %d written, %.0f records/s, %.0f%% of the "
                     "window's time span (no total is known)", pages, records, changed, applied,
                     rate, self.fraction * 100, extra={"event": "backfill_progress", "pages": pages,
                                                       "records": records, "percent": round(self.fraction * 100, 1)})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()



def redirect_logs(progress: Progress) -> contextlib.AbstractContextManager[Any]:
    """Log lines above the bar rather than through it."""
    if progress.bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()
