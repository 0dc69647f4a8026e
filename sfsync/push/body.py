"""A pushed body, read and checked: bounded JSON, each report validated, then staged.

The receiver (``sfsync.push.receiver``) answers 2xx only once ``stage_push`` has committed the body's
reports to the store's inbox in one transaction. A crash before the answer makes MessageMedia push
again, and the report id makes the second copy a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from typing import Any

from sfsync.domain.reports import InvalidReport, parse_report
from sfsync.store import Store

log = logging.getLogger("sfsync.sources.inbox")  # the name its log lines always had

SOURCE = "push"
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
