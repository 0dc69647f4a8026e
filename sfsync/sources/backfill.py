"""`sfsync backfill`: fill SMS Status and SMS Status Code for a past window, by hand.

Used after an outage, at go-live, or when the fields were wiped. Two sources, read a page at a
time and turned into the same delivery-report dicts the worker parses:

* MessageMedia's reporting API (outbound messages sent in the window; carries ``status_code``);
* ``--from-salesforce``: Tasks created in the window whose status is empty or not final, each
  message looked up with ``GET /v1/messages/{id}`` (a status, never a code).

Each page goes through the worker's own ``Pipeline.plan`` (parse, resolve, collapse, match,
decide): one precedence rule, so a backfill never regresses a final status the worker wrote.
Decided changes wait in a ``ChangeBuffer`` (one per Task, spooled to a temporary file) and are
written by sObject Collections, or by Bulk API 2.0 when more than ``--bulk-threshold`` Tasks
change. A checkpoint in the store after every page names the first page whose changes are not
yet all written: ``--resume`` continues from there, and nothing decided is ever skipped.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import json
import logging
import sys
import tempfile
import threading
import time
import zoneinfo
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from sfsync import timeargs
from sfsync.clients.bulk import NULL, BulkClient
from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.retry import RetryCounter, StopAwareSleep
from sfsync.clients.salesforce import COLLECTION_LIMIT, SalesforceClient, WriteResult
from sfsync.config import Settings
from sfsync.domain.codes import CodeMap, normalise_code
from sfsync.domain.outcome import (
    CountKey,
    Counts,
    ReportOutcome,
    ReportResult,
    ResultSink,
    Tally,
    counts_from,
    discard,
)
from sfsync.domain.precedence import Status, wins
from sfsync.domain.reports import format_time, parse_report, parse_time, read_metadata
from sfsync.engine import RunSummary, StopRules, build_clients, recorded_run
from sfsync.errors import (
    RemoteError,
    UsageError,
)
from sfsync.pipeline import TASK_DELETED, BatchResult, Change, Pipeline, change_row, resolve_all, result_row
from sfsync.reconcile import WAIT_SECONDS, BulkReconciler
from sfsync.store import LedgerEntry, Store, now_utc, open_store

log = logging.getLogger("sfsync.sources.backfill")

SOURCE = "backfill"  # the pipeline's source name: dead letters say where a report came from
PAGE_SIZE = 100  # reporting API maximum
TASK_PAGE = 200  # Tasks per page for --from-salesforce (one SOQL call, 200 message look-ups)
LOOKUP_THREADS = 4  # concurrent GET /v1/messages/{id} (the client's connection pool holds 4)
BULK_JOB_ROWS = 10_000  # changes per Bulk API job: bounds the buffer, and the rework after a crash
LOG_EVERY_PAGES = 10
MAX_REPORT_ID = 100
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

    @property
    def source(self) -> str:
        return "salesforce" if self.from_salesforce else "reporting"

    @property
    def key(self) -> str:
        """The checkpoint's name: the same window and filters resume the same run."""
        filters = ",".join(self.statuses)
        if self.metadata_key:
            filters += f";{self.metadata_key}=" + "|".join(self.metadata_values)
        return f"backfill:{self.source}:{format_time(self.window.since)}:{format_time(self.window.until)}:{filters}"


# -- turning source records into delivery reports ----------------------------------------------
def backfill_report_id(message_id: Any, status: str, code: str | None) -> str:
    """Deterministic: the same message in the same status is the same report on every rerun."""
    text = f"backfill:{message_id}:{status}:{code or ''}"
    if len(text) <= MAX_REPORT_ID:
        return text
    return "backfill:" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _utc_text(value: Any, zone: dt.tzinfo) -> Any:
    """A reporting time as UTC text (a zone-less one read in ``zone``); garbage passes through,
    and the pipeline takes it as no time (with a warning) rather than guessing."""
    try:
        moment = parse_time(value, zone)
    except ValueError:
        return value
    return format_time(moment) if moment else None


def _metadata(value: Any) -> Any:
    try:
        return read_metadata(value)  # both shapes: an object, or a list of {key, value}
    except ValueError:
        return value


def report_from_record(record: Any, zone: dt.tzinfo) -> Any:
    """A reporting API record -> the delivery report the pipeline parses (anything not an
    object is passed on as it is, to become a dead letter)."""
    if not isinstance(record, Mapping):
        return record
    status = str(record.get("status") or "").strip().lower()
    code = normalise_code(record.get("status_code"))
    when = next((record[k] for k in ("last_status_update", "delivered_timestamp", "timestamp") if record.get(k)),
                None)
    at = _utc_text(when, zone)
    raw: dict[str, Any] = {
        "delivery_report_id": backfill_report_id(record.get("message_id"), status, code),
        "message_id": record.get("message_id"), "status": status,
        "submitted_date": at, "date_received": at, "metadata": _metadata(record.get("metadata")),
    }
    if code is not None:
        raw["error_code"] = code
    return raw


def report_from_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /v1/messages/{id}`` -> a delivery report: a status, no code, no time (so where the
    Task's status is timed, precedence falls back to arrival order, as for any untimed report)."""
    status = str(message.get("status") or "").strip().lower()
    return {"delivery_report_id": backfill_report_id(message.get("message_id"), status, None),
            "message_id": message.get("message_id"), "status": status, "metadata": _metadata(message.get("metadata"))}


# -- sources ------------------------------------------------------------------------------------
@dataclass
class Page:
    number: int  # pages read this run, from 1
    raws: list[Any]  # delivery reports for the pipeline
    resume_at: dict[str, Any]  # the source's cursor just after this page
    records: int  # source records on the page
    fraction: float | None  # how far through the window, when known
    not_found: int = 0  # messages MessageMedia no longer knows (--from-salesforce)


class ReportingSource:
    """Pages of ``POST /v2-preview/reporting/messages/detail`` while ``has_next``."""

    def __init__(self, mm: MessageMediaClient, options: BackfillOptions):
        self.mm = mm
        self.options = options

    def query(self, page: int) -> dict[str, Any]:
        w, o = self.options.window, self.options
        body: dict[str, Any] = {"start_date": w.local(w.since), "end_date": w.local(w.until), "timezone": w.timezone,
                                "direction": "outbound", "page": page, "page_size": PAGE_SIZE}
        if o.statuses:
            body["status"] = list(o.statuses)
        if o.metadata_key:
            body["metadata_key"] = o.metadata_key
            if len(o.metadata_values) == 1:
                body["metadata_value"] = o.metadata_values[0]
            elif o.metadata_values:
                body["metadata_values"] = list(o.metadata_values)
        return body

    def pages(self, cursor: Mapping[str, Any]) -> Iterator[Page]:
        window = self.options.window
        page = int(cursor.get("page", 0))
        number = 0
        while True:
            body = self.mm.reporting_page(self.query(page))
            records = body["messages"]
            pagination = body.get("pagination")
            has_next = isinstance(pagination, dict) and bool(pagination.get("has_next"))
            number += 1
            yield Page(number, [report_from_record(r, window.zone) for r in records], {"page": page + 1},
                       len(records), window.fraction(self._sent_at(records)))
            # An empty page ends the window even if has_next says otherwise: never loop forever.
            if not records or not has_next:
                return
            page += 1

    def _sent_at(self, records: list[Any]) -> dt.datetime | None:
        """The last record's send time: records come in send order, so this is the progress."""
        for record in reversed(records):
            if isinstance(record, Mapping):
                try:
                    return parse_time(record.get("timestamp"), self.options.window.zone)
                except ValueError:
                    return None
        return None


class SalesforceSource:
    """Tasks created in the window whose status is empty or not final, by Id (keyset paging, so
    the cursor is the last Task Id), each message looked up at MessageMedia."""

    def __init__(self, sf: SalesforceClient, mm: MessageMediaClient, settings: Settings, code_map: CodeMap,
                 options: BackfillOptions):
        self.sf = sf
        self.mm = mm
        self.settings = settings
        self.code_map = code_map
        self.options = options

    def where(self, after: str) -> str:
        from simple_salesforce.format import format_soql

        s, w = self.settings, self.options.window
        finals = sorted(self.code_map.final_labels)
        clause = format_soql(
            f"{s.field_message_id} != null AND ({s.field_status} = null OR {s.field_status} NOT IN {{}}) "
            f"AND CreatedDate >= {_soql_time(w.since)} AND CreatedDate < {_soql_time(w.until)}", finals)
        if after:
            clause += format_soql(" AND Id > {}", after)
        return clause

    def remaining(self, after: str) -> int:
        soql = f"SELECT COUNT() FROM Task WHERE {self.where(after)}"
        answer = self.sf.call("query", lambda sf: sf.query(soql))
        return int(answer.get("totalSize", 0)) if isinstance(answer, Mapping) else 0

    def pages(self, cursor: Mapping[str, Any]) -> Iterator[Page]:
        after = str(cursor.get("after", ""))
        total = max(self.remaining(after), 1)
        done = number = 0
        msg_field = self.settings.field_message_id
        with ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="sfsync-lookup") as pool:
            while True:
                soql = f"SELECT Id, {msg_field} FROM Task WHERE {self.where(after)} ORDER BY Id LIMIT {TASK_PAGE}"
                rows = list(self.sf.query_all(soql))
                if not rows:
                    return
                after = str(rows[-1]["Id"])
                ids = list(dict.fromkeys(str(r[msg_field]) for r in rows))
                messages = list(pool.map(self.mm.message, ids))
                found = [m for m in messages if m is not None]
                done += len(rows)
                number += 1
                yield Page(number, [report_from_message(m) for m in found], {"after": after}, len(rows),
                           min(done / total, 1.0), not_found=len(messages) - len(found))
                if len(rows) < TASK_PAGE:
                    return


def _soql_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- decided, not yet written ---------------------------------------------------------------------
class ChangeBuffer:
    """Changes decided but not yet written: one per Task, the winner by the precedence rule (a
    later page can carry another message for the same Task). Each change is spooled to a
    temporary file as one JSON line; memory holds only an index of Task -> (status, offset)."""

    def __init__(self, code_map: CodeMap, spool: bool = True):
        self.code_map = code_map
        self._file: IO[bytes] | None = tempfile.TemporaryFile() if spool else None  # noqa: SIM115 (closed by close())
        self._live: dict[str, tuple[Status, int, str]] = {}  # Task -> its change's status, offset, report id

    def __len__(self) -> int:
        return len(self._live)

    def add(self, change: Change) -> ReportResult | None:
        """Keep ``change`` unless a buffered one for its Task wins. When one of the two lost, returns
        the loser's row (the loser's Task, its report and message; the winner named as the reason)."""
        key = change.task_id[:15]  # a 15- and an 18-character Id name the same Task
        held = self._live.get(key)
        why = "another report for the same Task in this window wins"
        if held is not None and not wins(held[0], change.outcome.status):
            return change_row(ReportOutcome.SKIPPED_STALE, change, f"{why} ({held[2]})")
        offset = -1
        if self._file is not None:
            self._file.seek(0, 2)
            offset = self._file.tell()
            old = [change.current.label, change.current.code] if change.current else None
            line = {"t": change.task_id, "f": change.fields, "r": dict(change.outcome.report.raw), "o": old}
            self._file.write(json.dumps(line, default=str).encode() + b"\n")
        self._live[key] = (change.outcome.status, offset, change.outcome.report.report_id)
        if held is None:
            return None
        return ReportResult(ReportOutcome.SKIPPED_STALE, held[2], None, change.task_id, new_status=held[0].label,
                            new_code=held[0].code, error=f"{why} ({change.outcome.report.report_id})")

    def labels(self) -> Counter[str]:
        return Counter(status.label for status, _, _ in self._live.values())

    def changes(self) -> Iterator[Change]:
        """The live changes, in the order they were decided (rebuilt from the spool)."""
        if self._file is None:
            return
        live = {offset for _, offset, _ in self._live.values()}
        self._file.seek(0)
        offset = 0
        for line in self._file:
            if offset in live:
                item = json.loads(line)
                [outcome] = resolve_all([parse_report(item["r"])], self.code_map)
                old = item.get("o")
                current = Status(old[0], old[1], self.code_map.is_final(old[0])) if old else None
                yield Change(item["t"], outcome, item["f"], current)
            offset += len(line)

    def clear(self) -> None:
        self._live.clear()
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _chunks(changes: Iterator[Change], size: int) -> Iterator[list[Change]]:
    chunk: list[Change] = []
    for change in changes:
        chunk.append(change)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- progress ---------------------------------------------------------------------------------------
class Progress:
    """A tqdm bar on a terminal, elsewhere a log line every few pages: pages and records read (the
    reporting API gives no total), and the share of the window's time span covered by send time,
    labelled as such."""

    def __init__(self, window: Window, stream: Any = None, every: int = LOG_EVERY_PAGES):
        def when(moment: dt.datetime) -> str:
            return window.local(moment)[:16].replace("T", " ")

        title = f"backfill {when(window.since)}..{when(window.until)} {window.timezone}"
        self.stream = stream or sys.stderr
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


# -- the run ----------------------------------------------------------------------------------------
@dataclass
class BackfillSummary(RunSummary):
    window: str = ""
    window_counts: Counts = field(default_factory=Counts)  # the whole window, resumed runs included
    by_label: Counter[str] = field(default_factory=Counter)  # dry run: changes per SMS Status

    def as_dict(self) -> dict[str, Any]:
        data = super().as_dict()
        for key in ("confirmed", "waiting", "waiting_retried"):  # nothing is confirmed or kept waiting
            data.pop(key, None)
        extra: tuple[CountKey, ...] = (Tally.PAGES, Tally.CHANGED, Tally.REFUSED, ReportOutcome.NO_TASK,
                                       ReportOutcome.TASK_DELETED, Tally.NOT_FOUND, Tally.BULK_JOBS, Tally.BULK_ROWS)
        return {"window": self.window, **{k.value: self.counts[k] for k in extra}, **data}


class Backfill:
    def __init__(self, settings: Settings, options: BackfillOptions, *, mm: MessageMediaClient | None = None,
                 sf: SalesforceClient | None = None, store: Store | None = None, retries: RetryCounter | None = None,
                 stop: threading.Event | None = None, sleep: Callable[[float], Any] = time.sleep,
                 on_page: Callable[[int], None] | None = None, progress_stream: Any = None,
                 bulk_wait_s: float = WAIT_SECONDS, results: ResultSink = discard):
        self.settings = settings
        self.options = options
        self.stop = stop or threading.Event()
        if mm is None or sf is None:
            built_mm, built_sf, retries = build_clients(settings, sleep=sleep, stop=self.stop)
            mm, sf = mm or built_mm, sf or built_sf
        self.mm, self.sf = mm, sf
        self.retries = retries or RetryCounter()
        self.store = store or open_store(settings.store_target)
        self.on_page = on_page or (lambda page: None)
        self.progress_stream = progress_stream
        # A Task deleted since its message was sent is counted and reported, not a dead letter.
        self.pipeline = Pipeline(settings, self.store, sf, dry_run=options.dry_run, results=results,
                                 deleted_not_dead=True)
        self.bulk = BulkClient(sf, sleep=StopAwareSleep(self.stop))  # a signal ends a wait for a job at once
        self.bulk_wait_s = bulk_wait_s

    def run(self) -> BackfillSummary:
        if self.options.dry_run:  # writes nothing, so it need not keep the worker out
            return self._run_recorded()
        with self.store.run_lock(self.settings.lock_path):
            return self._run_recorded()

    def _run_recorded(self) -> BackfillSummary:
        summary = BackfillSummary(window=str(self.options.window))
        kind = "backfill-dry-run" if self.options.dry_run else "backfill"
        with recorded_run(self.store, kind, summary, self.mm, self.sf, self.retries, command="backfill") as started:
            summary.exit_reason = self._run(summary, StopRules(self.stop, started, self.sf.check_budget))
        return summary

    # -- pages ----------------------------------------------------------------------------------
    def _start(self) -> dict[str, Any]:
        """The checkpoint to continue from (a fresh one unless --resume)."""
        saved = self.store.checkpoint(self.options.key)  # a dry run reads it too: --dry-run --resume previews
        if self.options.resume:
            if saved is None:
                raise UsageError("no interrupted backfill with this window and these filters to resume; "
                                 "run it without --resume (give the same --since, --until and filters to resume one)")
            return saved
        if saved is not None and not saved.get("done"):
            log.warning("an interrupted backfill of this window exists; starting it over (--resume continues it)",
                        extra={"event": "backfill_restart"})
        return {"cursor": {}, "pages": 0, "counts": {}, "done": False}

    def _source(self) -> ReportingSource | SalesforceSource:
        if self.options.from_salesforce:
            return SalesforceSource(self.sf, self.mm, self.settings, self.pipeline.code_map, self.options)
        return ReportingSource(self.mm, self.options)

    def _run(self, summary: BackfillSummary, rules: StopRules) -> str:
        o = self.options
        start = self._start()
        if start.get("done"):
            log.info("this window was backfilled completely already; nothing to resume (rerun without --resume "
                     "to check it again)", extra={"event": "backfill_done"})
            return "already_complete"
        if o.window.since < now_utc() - dt.timedelta(days=RETENTION_DAYS):
            log.warning("the window starts more than %d days ago: MessageMedia keeps messages %d days, older ones "
                        "are not found", RETENTION_DAYS, RETENTION_DAYS, extra={"event": "retention"})
        log.info("backfill from %s: %s%s", o.source, o.window, ", resuming" if o.resume else "",
                 extra={"event": "backfill_start"})
        if not o.dry_run:  # an interrupted backfill's Bulk API job may still land: settle it first
            BulkReconciler(self.pipeline, self.bulk, wait_seconds=self.bulk_wait_s,
                           sleep=StopAwareSleep(self.stop)).settle(summary.counts)
        base = counts_from(start.get("counts", {}))  # the window before this run
        resume_at: dict[str, Any] = dict(start["cursor"])  # first page whose changes are not all written
        summary.window_counts = base.copy()  # the window up to resume_at
        buffer = ChangeBuffer(self.pipeline.code_map)  # a dry run spools too: its plan is written whole
        progress = Progress(o.window, self.progress_stream)
        pages = self._source().pages(resume_at)
        last: Page | None = None
        reason = ""
        try:
            with _redirect_logs(progress):
                while not reason:
                    reason = rules.reason() or self._page_limit(summary) or rules.reason(budget=True)
                    page = None if reason else next(pages, None)
                    if page is None:
                        reason = reason or "complete"
                        break
                    last = page
                    self._take(page, buffer, summary)
                    if len(buffer) >= max(o.bulk_threshold + 1, o.bulk_job_rows):
                        self._flush(buffer, summary)
                    if not len(buffer):  # everything decided so far is written: the resume point moves
                        resume_at, summary.window_counts = page.resume_at, base + summary.counts
                    self._checkpoint(resume_at, summary.window_counts, done=False)
                    progress.update(page.fraction, base + summary.counts)
                    self.on_page(page.number)
                # Stopped or complete: write what was decided, so --resume starts clean.
                self._flush(buffer, summary)
                if reason == "complete":
                    progress.update(1.0, base + summary.counts, final=True)
        finally:
            progress.close()
            buffer.close()
        if last is not None:
            resume_at, summary.window_counts = last.resume_at, base + summary.counts
        self._checkpoint(resume_at, summary.window_counts, done=reason == "complete")
        if reason != "complete":
            log.info("stopped (%s): run the same command with --resume to continue", reason,
                     extra={"event": "backfill_stopped"})
        if o.dry_run:
            read = f"{summary.counts[Tally.PAGES]} page(s), {summary.counts[Tally.FETCHED]} record(s) read"
            summary.covered = (f"the whole window {o.window}: {read}" if reason == "complete" else
                               f"the window {o.window} up to where it stopped ({reason}): {read}")
        return "dry_run" if o.dry_run and reason == "complete" else reason

    def _page_limit(self, summary: BackfillSummary) -> str:
        if self.options.max_pages is not None and summary.counts[Tally.PAGES] >= self.options.max_pages:
            return "max_pages"
        return ""

    def _take(self, page: Page, buffer: ChangeBuffer, summary: BackfillSummary) -> None:
        """Plan one page exactly as `sfsync run` plans a batch; record what needs no write."""
        summary.counts[Tally.FETCHED] += page.records
        summary.counts[Tally.PAGES] += 1
        summary.counts[Tally.NOT_FOUND] += page.not_found
        plan = self.pipeline.plan(page.raws, SOURCE)
        counts = plan.result.counts.copy()
        counts.pop(Tally.RECEIVED, None)
        summary.counts.update(counts)
        summary.counts[ReportOutcome.NO_TASK] += len(plan.unmatched)  # backfill never waits: a missing Task is counted
        if self.options.dry_run:
            self.pipeline.emit_planned(replace(plan, changes=[]), wait=False)  # the changes: once flushed
        else:
            result = BatchResult(counts=summary.counts)
            self.pipeline.dead_letter_invalid(plan.bad, SOURCE, result)
            self.pipeline.record_written([], plan.unchanged, SOURCE, result)  # remembers the event times
            self.pipeline.emit(plan.rows)
        field_name = self.settings.field_message_id
        self.pipeline.emit(result_row(ReportOutcome.NO_TASK, o, error=f"no Task with {field_name} = {o.message_id}: "
                                      "deleted since the message was sent, or never created") for o in plan.unmatched)
        for change in plan.changes:
            lost = buffer.add(change)
            if lost is not None:  # another change for this Task, decided earlier, lost or won
                summary.counts[ReportOutcome.SKIPPED_STALE] += 1
                self.pipeline.results(lost)
                continue
            summary.counts[Tally.CHANGED] += 1

    def _checkpoint(self, cursor: dict[str, Any], counts: Counts, *, done: bool) -> None:
        if self.options.dry_run:
            return
        o = self.options
        self.store.save_checkpoint(o.key, {
            "source": o.source, "since": format_time(o.window.since), "until": format_time(o.window.until),
            "timezone": o.window.timezone, "cursor": cursor, "counts": dict(counts), "done": done,
        })

    # -- writes ---------------------------------------------------------------------------------
    def _flush(self, buffer: ChangeBuffer, summary: BackfillSummary) -> None:
        if not len(buffer):
            return
        if self.options.dry_run:
            summary.by_label += buffer.labels()
            summary.counts[ReportOutcome.WOULD_WRITE] += len(buffer)
            self.pipeline.emit(change_row(ReportOutcome.WOULD_WRITE, c) for c in buffer.changes())
        elif len(buffer) > self.options.bulk_threshold:
            self._write_bulk(buffer, summary)
        else:
            self._write_collections(buffer.changes(), summary)
        buffer.clear()

    def _write_collections(self, changes: Iterator[Change], summary: BackfillSummary) -> None:
        result = BatchResult(counts=summary.counts)
        held = 0
        for chunk in _chunks(changes, COLLECTION_LIMIT):
            for _, answer in self.pipeline.write_changes(chunk, SOURCE, result):
                held += answer.transient
                summary.counts[Tally.REFUSED] += _refused(answer)  # kept as one dead letter
        self._held(held, summary)

    def _write_bulk(self, buffer: ChangeBuffer, summary: BackfillSummary) -> None:
        columns = [c for c in ("Id", self.settings.field_status, self.settings.field_code,
                               self.settings.field_updated) if c]
        writes: list[LedgerEntry] = []  # recorded with the job: what it writes on each Task
        with tempfile.TemporaryDirectory(prefix="sfsync-bulk-") as folder:
            path = Path(folder) / "tasks.csv"
            with path.open("w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out, lineterminator="\n")
                writer.writerow(columns)
                for change in buffer.changes():
                    values = self.pipeline.fit(change.fields)
                    writer.writerow([change.task_id, *(_cell(values, c) for c in columns[1:])])
                    s, f = change.outcome.status, self.settings  # the values as sent (cut if configured so)
                    writes.append(LedgerEntry(change.outcome.message_id, change.task_id,
                                              str(values.get(f.field_status, s.label)),
                                              values.get(f.field_code, s.code), s.final, s.event_time,
                                              s.received_time, change.outcome.report.report_id))
            job = self.bulk.update(path, on_created=lambda job_id: self.store.add_bulk_job(job_id, writes))
        summary.counts[Tally.BULK_JOBS] += 1
        summary.counts[Tally.BULK_ROWS] += len(buffer)
        results = {r.task_id[:15]: r for r in self.bulk.results(job.id)}  # at most one job's rows
        log.info("Bulk API job %s %s: %d processed, %d failed", job.id, job.state, job.processed, job.failed,
                 extra={"event": "bulk_job", "job_id": job.id})
        result = BatchResult(counts=summary.counts)
        retry: list[Change] = []
        held = 0
        for chunk in _chunks(buffer.changes(), 500):
            written: list[tuple[Change, WriteResult]] = []
            for change in chunk:
                row = results.get(change.task_id[:15])
                if row is None:
                    held += 1  # unprocessed (job failed or aborted part-way)
                    self.pipeline.results(change_row(ReportOutcome.HELD, change, f"Bulk API job {job.id} left it "
                                                     "unprocessed: --resume writes it again"))
                elif row.transient:
                    retry.append(change)
                else:
                    summary.counts[Tally.REFUSED] += _refused(row)
                    written.append((change, row))
            self.pipeline.record_written(written, [], SOURCE, result)
        self.store.forget_bulk_job(job.id)  # read back and recorded: nothing of it is left to land
        if retry:  # row locks: again, one by one with back-off, through the Collections path
            self._write_collections(iter(retry), summary)
        self._held(held, summary)

    @staticmethod
    def _held(held: int, summary: BackfillSummary) -> None:
        if held:
            summary.counts[ReportOutcome.HELD] += held
            # The checkpoint stays before these pages: --resume decides and writes them again.
            raise RemoteError(f"{held} Task update(s) could not be made (Salesforce kept the rows locked or left "
                              "them unprocessed); nothing is lost: run again with --resume", transient=False)


def _refused(answer: WriteResult) -> bool:
    """Refused for good (a dead letter); a Task deleted since its message was sent is counted apart."""
    return not answer.ok and not answer.transient and answer.error_code != TASK_DELETED


def _cell(values: Mapping[str, Any], column: str) -> str:
    if column not in values:
        return ""  # an empty cell leaves the field as it is
    value = values[column]
    return NULL if value is None else str(value)


def _redirect_logs(progress: Progress) -> contextlib.AbstractContextManager[Any]:
    """Log lines above the bar rather than through it."""
    if progress.bar is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()
