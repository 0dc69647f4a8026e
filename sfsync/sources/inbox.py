"""The inbox source: pushed reports staged by the receiver, and everything staged, drained.

Two halves. Staging (push): a pushed body is read, each report validated, and the whole body
committed to the store's inbox in one transaction; only then does the receiver answer 2xx. A crash
before the answer makes MessageMedia push again, and the report id makes the second copy a no-op.
Draining: the engine claims staged reports (pushed or polled) thousands at a time; each batch's
rows are marked done in the transaction that records their outcomes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from sfsync.domain.outcome import Counts, Tally
from sfsync.domain.reports import InvalidReport, parse_report
from sfsync.pipeline import BatchResult, OnCommit
from sfsync.replicas import Claims, Solo
from sfsync.sources.batch import Batch
from sfsync.sources.poll import confirmable_id
from sfsync.store import StagedReport, Store

log = logging.getLogger("sfsync.sources.inbox")

SOURCE = "push"
# Staged reports claimed per pipeline batch: the reports of one message spread over a backlog still
# collapse into one write (10,000 raw reports stay well under 100 MB).
DRAIN_BATCH = 10_000
# A delivery report is two levels deep ({"delivery_reports": [{"metadata": {...}}]}); Python's json
# recurses per level, so depth is bounded before parsing.
MAX_JSON_DEPTH = 16
JSON_TYPES = ("application/json",)
# A template variable MessageMedia left unrendered (no value for it): "$statusCode", "$metadata.get('k')".
_UNRENDERED = re.compile(r"^\$!?\{?[A-Za-z]\w*(?:\.\w+)*(?:\(.*\))?\}?$")


class BadPush(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# -- staging: pushed bodies -----------------------------------------------------------------------------
def reports_in(payload: Any) -> list[Any]:
    """The reports of a push: one report object, or ``{"delivery_reports": [...]}``."""
    if isinstance(payload, dict) and "delivery_reports" in payload:
        items = payload["delivery_reports"]
        if not isinstance(items, list):
            raise BadPush("delivery_reports must be a list")
        if not items:
            raise BadPush("delivery_reports is empty")
        return items
    if isinstance(payload, dict):
        return [payload]
    raise BadPush(f"the body must be a report object or {{\"delivery_reports\": [...]}}, not {type(payload).__name__}")


def _unrendered(value: Any) -> bool:
    return isinstance(value, str) and bool(_UNRENDERED.match(value.strip()))


def normalise_pushed(raw: Any) -> Any:
    """A pushed report as the pipeline reads polled ones. Webhook templates leave a variable with
    no value as its literal name (``"$statusCode"``): such a field is dropped, so it reads as
    absent rather than as a code. ``metadata`` rendered as a JSON string becomes the object."""
    if not isinstance(raw, dict):
        return raw
    clean = {k: v for k, v in raw.items() if not _unrendered(v)}
    metadata = clean.get("metadata")
    if isinstance(metadata, str):
        text = metadata.strip()
        if not text:
            clean.pop("metadata")
        elif text.startswith("{"):
            with contextlib.suppress(ValueError):
                clean["metadata"] = json.loads(text)
    metadata = clean.get("metadata")
    if isinstance(metadata, dict):
        clean["metadata"] = {k: v for k, v in metadata.items() if not _unrendered(v)}
    vendor = clean.get("vendor_account_id")  # the account: {"vendor_id": "$vendorId", "account_id": ...}
    if isinstance(vendor, dict):
        clean["vendor_account_id"] = {k: v for k, v in vendor.items() if not _unrendered(v)}
        if not clean["vendor_account_id"]:
            clean.pop("vendor_account_id")
    return clean


def json_depth(body: bytes, limit: int) -> int:
    """How deep the arrays and objects of a JSON text nest, as far as ``limit``: at most ``limit``
    when it is within it, more when it is not (a linear scan that never recurses; strings are
    skipped, escapes included)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return limit  # cannot nest deeper (the usual push has three or four): skip the scan
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def parse_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of a pushed body; ``BadPush`` for anything that is not bounded, valid JSON."""
    if json_depth(body, max_depth) > max_depth:
        raise BadPush(f"the body is nested deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise BadPush(f"the body is not JSON ({exc})") from None


def json_content_type(value: str | None) -> bool:
    """A pushed body's Content-Type: JSON (``application/json``, ``application/*+json``), or none
    sent (per-message callbacks are JSON and not documented to name it)."""
    if value is None or not value.strip():
        return True
    media = value.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def validated(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Each report of a pushed body with its inbox key (its id); ``BadPush`` names the first that
    does not parse (the whole body is refused: MessageMedia's retry of a fixed body is the cure)."""
    items = reports_in(parse_json_body(body))
    valid: list[tuple[str, dict[str, Any]]] = []
    for index, item in enumerate(items):
        try:
            raw = normalise_pushed(item)
            report = parse_report(raw)
        except InvalidReport as exc:
            where = f"report {index}" + (f" ({exc.report_id})" if exc.report_id else "")
            raise BadPush(f"{where}: {exc.reason}") from None
        except Exception as exc:
            # The body made the parser fail where it should have said why: still the body's
            # fault for the sender (400, never stored), and logged as the parser's gap it is.
            log.warning("a pushed report the parser could not read (%s: %s)", type(exc).__name__, exc,
                        exc_info=True, extra={"event": "push_parser_gap"})
            raise BadPush(f"report {index}: unreadable ({type(exc).__name__})") from None
        if not report.report_id.strip() or not report.message_id.strip():
            # The inbox is keyed by report id: a blank one would make distinct reports "duplicates".
            raise BadPush(f"report {index}: blank delivery_report_id or message_id")
        valid.append((report.report_id, raw))
    return valid


def stage_push(store: Store, reports: list[tuple[str, dict[str, Any]]]) -> int:
    """Commit a push's reports to the inbox in one transaction; how many were new (the others are
    duplicates of reports staged before). The receiver answers 2xx only after this returns."""
    return len(store.stage(SOURCE, reports))


# -- draining: what is staged ---------------------------------------------------------------------------
def drained_keys(rows: list[StagedReport], result: BatchResult) -> list[str]:
    """The inbox keys a batch's outcomes made durable (a report without a usable id never parses:
    it is a dead letter already); the others were held, to be drained again."""
    durable = set(result.confirm)
    return [r.key for r in rows if (rid := confirmable_id(r.raw)) is None or rid in durable]


class InboxSource:
    """Staged reports (polled and pushed), thousands at a time, in the order they were staged."""

    def __init__(self, store: Store, counts: Counts, *, at_most: int | None = None,
                 count_fetched: bool = False, batch: int = DRAIN_BATCH, claims: Claims | None = None,
                 claimed: list[StagedReport] | None = None):
        self.store = store
        # Who claims: this process alone (SQLite), or a replica's claims on PostgreSQL (sfsync.replicas).
        self.claims: Claims = claims or Solo(store)
        self.counts = counts
        self.at_most = at_most  # reports to take in all (--max-reports with --inbox)
        self.count_fetched = count_fetched  # --inbox: what is claimed is what the run fetched
        self.batch = batch
        self.claimed = claimed or []  # the first batch, claimed already (by the look-ahead, sfsync.overlap)

    def batches(self) -> Iterator[Batch]:
        after = taken = 0
        while True:
            limit = self.batch if self.at_most is None else min(self.batch, self.at_most - taken)
            if limit <= 0:
                return
            if self.claimed:  # handed over by the look-ahead (one process alone: sfsync.overlap)
                rows, self.claimed = self.claimed, []
                after = rows[-1].seq
            else:
                rows, after = self.claims.claim_staged(limit, after)
            if not after:
                return
            if not rows:
                continue  # all of them belong to messages another replica holds
            taken += len(rows)
            if self.count_fetched:
                self.counts[Tally.FETCHED] += len(rows)
            for source in dict.fromkeys(r.source for r in rows):
                group = [r for r in rows if r.source == source]
                yield Batch([r.raw for r in group], source, on_commit=self._mark_drained(group))

    def _mark_drained(self, rows: list[StagedReport]) -> OnCommit:
        def commit(result: BatchResult) -> None:
            self.counts[Tally.DRAINED] += len(self.claims.done(drained_keys(rows, result)))  # those still claimed here

        return commit

    def pending(self) -> bool:
        return bool(self.store.inbox_pending(1))
