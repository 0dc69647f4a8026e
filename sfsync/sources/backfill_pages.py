"""A backfill's page readers: the reports of a past window, a page at a time.

Two sources, turned into the same delivery-report dicts the worker parses:

* MessageMedia's reporting API (outbound messages sent in the window; carries ``status_code``);
* ``--from-salesforce``: Tasks created in the window whose status is empty or not final, each
  message looked up with ``GET /v1/messages/{id}`` (a status, never a code).

Each page carries the cursor just after it: the checkpoint moves there once its reports are durable.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from simple_salesforce.format import format_soql

from sfsync.clients.messagemedia import MessageMediaClient
from sfsync.clients.salesforce import SalesforceClient
from sfsync.domain.codes import CodeMap, normalise_code
from sfsync.domain.reports import format_time, parse_time, read_metadata
from sfsync.errors import RemoteError
from sfsync.settings.config import Settings
from sfsync.sources.backfill_window import BackfillOptions

PAGE_SIZE = 100  # reporting API maximum
TASK_PAGE = 200  # Tasks per page for --from-salesforce (one SOQL call, 200 message look-ups)
LOOKUP_THREADS = 4  # concurrent GET /v1/messages/{id} (the client's connection pool holds 4)
MAX_REPORT_ID = 100


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
        previous: str | None = None
        while True:
            body = self.mm.reporting_page(self.query(page))
            records = body["messages"]
            served = json.dumps(records, sort_keys=True, default=str)
            if records and served == previous:
                raise RemoteError(f"MessageMedia reporting: a runaway answer (page {page} repeats page {page - 1} "
                                  "and still says has_next): stopped; run again with --resume", transient=False)
            previous = served
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
    the cursor is the last Task Id), each message looked up at MessageMedia: with several accounts
    (SFSYNC_MM_ACCOUNTS), at each in turn until one knows it (a Task does not say which account sent
    its message; a message no account knows costs one look-up per account)."""

    def __init__(self, sf: SalesforceClient, mm: MessageMediaClient | Sequence[MessageMediaClient],
                 settings: Settings, code_map: CodeMap, options: BackfillOptions):
        self.sf = sf
        self.clients = [mm] if isinstance(mm, MessageMediaClient) else list(mm)
        self.settings = settings
        self.code_map = code_map
        self.options = options

    def message(self, message_id: str) -> dict[str, Any] | None:
        """The message from the first account that knows it; None when none does."""
        for client in self.clients:
            found = client.message(message_id)
            if found is not None:
                return found
        return None

    def where(self, after: str) -> str:
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
                if after and str(rows[-1]["Id"]) <= after:  # keyset paging that does not move on
                    raise RemoteError(f"Salesforce query: a runaway answer (Tasks after {after} end at "
                                      f"{rows[-1]['Id']}): stopped; run again with --resume", transient=False)
                after = str(rows[-1]["Id"])
                ids = list(dict.fromkeys(str(r[msg_field]) for r in rows))
                messages = list(pool.map(self.message, ids))
                found = [m for m in messages if m is not None]
                done += len(rows)
                number += 1
                yield Page(number, [report_from_message(m) for m in found], {"after": after}, len(rows),
                           min(done / total, 1.0), not_found=len(messages) - len(found))
                if len(rows) < TASK_PAGE:
                    return


def _soql_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

