"""A backfill's window, its options and its checkpoint (``sfsync backfill``).

The checkpoint, one row in the store per window and filters, is how a backfill acknowledges: it
names the first page whose reports do not all have a durable outcome yet, and it moves in the
transaction that records the outcomes of the pages before it (``sfsync.sources.backfill``).
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from dataclasses import dataclass
from typing import Any

from sfsync.domain.outcome import Counts
from sfsync.domain.reports import format_time
from sfsync.errors import UsageError
from sfsync.settings import timeargs
from sfsync.store import Store, now_utc

log = logging.getLogger("sfsync.sources.backfill")

BULK_JOB_ROWS = 10_000  # reports per batch: bounds memory, a Bulk API job, and the rework after a crash
RETENTION_DAYS = 45  # MessageMedia keeps reports and messages this long


# -- the window ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    since: dt.datetime  # UTC, included
    until: dt.datetime  # UTC, excluded
    timezone: str = "UTC"  # IANA name: dates and zone-less times (ours and MessageMedia's) are read in it

    @property
    def zone(self) -> dt.tzinfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def local(self, moment: dt.datetime) -> str:
        """A bound as the reporting API wants it: a date-time without zone, in ``timezone``."""
        return moment.astimezone(self.zone).replace(tzinfo=None).isoformat(timespec="seconds")

    def fraction(self, moment: dt.datetime | None) -> float | None:
        if moment is None:
            return None
        span = (self.until - self.since).total_seconds()
        return min(max((moment - self.since).total_seconds() / span, 0.0), 1.0)

    def __str__(self) -> str:
        return f"{format_time(self.since)} to {format_time(self.until)} (end excluded)"


def zone_named(name: str) -> str:
    return timeargs.zone_name(name, "--timezone")


def parse_bound(text: str, option: str, zone: dt.tzinfo) -> dt.datetime:
    """An ISO date (midnight in ``zone``) or date-time (zone-less: in ``zone``), as UTC."""
    return timeargs.instant(text, option, zone)


FUTURE_SLACK = dt.timedelta(minutes=5)  # an end this far ahead (a clock a little fast, "until the top of the hour")


def parse_window(since: str, until: str, timezone: str = "UTC", now: dt.datetime | None = None) -> Window:
    """The window; ``now`` (any case) for either bound is the current time, and an end up to
    ``FUTURE_SLACK`` ahead is clamped to now (MessageMedia has nothing later)."""
    name = zone_named(timezone)
    zone = zoneinfo.ZoneInfo(name)
    now = (now or now_utc()).replace(microsecond=0)

    def bound(text: str, option: str) -> dt.datetime:
        return now if text.strip().lower() == "now" else parse_bound(text, option, zone)

    start, end = bound(since, "--since"), bound(until, "--until")
    if end <= start:
        raise UsageError(f"the window is the wrong way round: --since {since} is not before --until {until}")
    if end > now + FUTURE_SLACK:
        raise UsageError(f"--until {until} is in the future ({format_time(end)}, now {format_time(now)}): "
                         "a backfill covers the past; give an end up to now (or 'now')")
    if end > now:
        log.info("--until %s is a little ahead of now: the window ends now, %s", until, format_time(now),
                 extra={"event": "backfill_until_clamped"})
        end = now
    return Window(start, end, name)


# The statuses the reporting API filters on: MessageMedia's OpenAPI spec, components/schemas/MessageStatus
# (the items of detailrequest.status, POST /v2-preview/reporting/messages/detail). Anything else is
# refused with 400, so `--status` is checked against this list before anything is sent.
REPORTING_STATUSES = ("UNDEFINED", "QUEUED", "PROCESSING", "PROCESSED", "FAILED", "SCHEDULED", "CANCELLED",
                      "DELIVERED", "EXPIRED", "ENROUTE", "HELD", "SUBMITTED", "REJECTED", "READ")


def reporting_statuses(given: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``--status`` values (repeated or comma-separated, any case) as the reporting API wants them:
    UPPERCASE, each one of ``REPORTING_STATUSES`` (a usage error naming them otherwise)."""
    statuses = tuple(dict.fromkeys(s.strip().upper() for value in given for s in value.split(",") if s.strip()))
    unknown = [s for s in statuses if s not in REPORTING_STATUSES]
    if unknown or (given and not statuses):
        shown = ", ".join(repr(s.lower()) for s in unknown[:3]) if unknown else "an empty value"
        raise UsageError(f"--status {shown} is not a status MessageMedia's reporting API knows; give one or more "
                         f"of {', '.join(REPORTING_STATUSES)} (any case)")
    return statuses


@dataclass(frozen=True)
class BackfillOptions:
    window: Window
    from_salesforce: bool = False
    statuses: tuple[str, ...] = ()  # UPPERCASE, as the reporting API wants them
    metadata_key: str = ""
    metadata_values: tuple[str, ...] = ()
    bulk_threshold: int = 2000  # more changed Tasks than this in one write: Bulk API 2.0
    bulk_job_rows: int = BULK_JOB_ROWS
    resume: bool = False
    dry_run: bool = False
    max_pages: int | None = None
    # The MessageMedia account (SFSYNC_MM_ACCOUNTS) read: `--account`, or each configured account in turn;
    # "" for the one account of a configuration without SFSYNC_MM_ACCOUNTS (or all, --from-salesforce).
    account: str = ""

    @property
    def source(self) -> str:
        return "salesforce" if self.from_salesforce else "reporting"

    @property
    def key(self) -> str:
        """The checkpoint's name: the same window and filters resume the same run."""
        filters = ",".join(self.statuses)
        if self.metadata_key:
            filters += f";{self.metadata_key}=" + "|".join(self.metadata_values)
        source = f"{self.source}@{self.account}" if self.account else self.source  # one checkpoint per account
        return f"backfill:{source}:{format_time(self.window.since)}:{format_time(self.window.until)}:{filters}"


# -- the checkpoint -----------------------------------------------------------------------------------
def fresh_checkpoint() -> dict[str, Any]:
    return {"cursor": {}, "pages": 0, "counts": {}, "done": False}


def starting_point(store: Store, options: BackfillOptions) -> dict[str, Any]:
    """The checkpoint to continue from (a fresh one unless --resume)."""
    saved = store.checkpoint(options.key)  # a dry run reads it too: --dry-run --resume previews
    if options.resume:
        if saved is None:
            raise UsageError("no interrupted backfill with this window and these filters to resume; "
                             "run it without --resume (give the same --since, --until and filters to resume one)")
        return saved
    if saved is not None and not saved.get("done"):
        log.warning("an interrupted backfill of this window exists; starting it over (--resume continues it)",
                    extra={"event": "backfill_restart"})
    return fresh_checkpoint()


def save_checkpoint(store: Store, options: BackfillOptions, cursor: dict[str, Any], counts: Counts, *,
                    done: bool) -> None:
    if options.dry_run:
        return
    store.save_checkpoint(options.key, {
        "source": options.source, "since": format_time(options.window.since),
        "until": format_time(options.window.until), "timezone": options.window.timezone, "cursor": cursor,
        "counts": {str(k): n for k, n in counts.items()}, "done": done, "account": options.account,
    })
