"""The MessageMedia simulator's messages: messages added directly or derived from their reports,
``GET /v1/messages/{id}`` and the v2-preview reporting API (messages by send time, filtered and paged)."""

from __future__ import annotations

import bisect
import copy
import datetime as dt
import zoneinfo
from typing import Any

from sfsync.sim.base import HttpError, Request, Response
from sfsync.sim.mm_model import (
    MAX_IDS,
    MessageMediaState,
    SendOrder,
    SimKey,
    StoredMessage,
    format_date_form,
    format_timestamp,
    parse_timestamp,
)

# The 30 published delivery status codes (source-lists/), for the reporting API's descriptions.
STATUS_CODES: dict[str, str] = {
    "101": "Message being processed by the gateway.",
    "102": "Message is being rerouted to a different provider after failing via the first provider.",
    "151": "Message held for screening.",
    "200": "Message submitted to downstream provider for delivery.",
    "210": "Message accepted by downstream provider.",
    "211": "Message is enroute for delivery by provider.",
    "212": "Message submitted. Delivery pending.",
    "213": "Message scheduled for delivery by downstream provider.",
    "220": "Message delivered.",
    "221": "Message delivered to the handset.",
    "301": "Usage threshold reached. Message discarded.",
    "302": "Destination address blocked. Message discarded.",
    "303": "Source address blocked. Message discarded.",
    "304": "Message dropped. Contact support.",
    "305": "Message discarded due to duplicate detection.",
    "320": "Message validity period has expired (prior to submission).",
    "330": "Gateway failure.",
    "331": "Message discarded.",
    "332": "No available route to destination.",
    "333": "Source address unsupported for this destination.",
    "400": "Message failed; undeliverable.",
    "401": "Message validity period has expired (before delivery).",
    "402": "Message rejected by downstream provider.",
    "403": "Message skipped by downstream provider.",
    "405": "Message cancelled or deleted by provider.",
    "410": "Invalid source address.",
    "411": "Invalid destination address.",
    "412": "Destination address blocked.",
    "413": "SMS service unavailable on destination.",
    "414": "Destination unreachable.",
}

# Message fields that are the simulator's bookkeeping, not part of GET /v1/messages/{id}.
_PRIVATE_MESSAGE_FIELDS = frozenset({"account", "account_id", "timestamp", "status_code"})


class MessagesPart:
    """Messages (added directly, or derived from the reports ``apply_report`` is given), a message's
    status and the reporting API."""

    def __init__(self, state: MessageMediaState):
        self.state = state

    def add_messages(self, messages: list[dict[str, Any]]) -> list[str]:
        """Add messages directly (``message_id`` required; ``status``, ``content``,
        ``destination_number``, ``metadata``, ``timestamp`` (send time), ``account`` optional).
        A message that also has reports takes its status from its latest report."""
        for raw in messages:
            if not isinstance(raw, dict) or not raw.get("message_id"):
                raise ValueError("every message needs a message_id")
        with self.state.lock:
            self.state.send_order = None
            for raw in messages:
                fields = dict(raw)
                account = fields.get("account") or fields.get("account_id") or self.state.account_id
                sent = parse_timestamp(fields.get("timestamp"))
                msg = self.state.messages.get(raw["message_id"])
                if msg is None:
                    msg = StoredMessage(raw["message_id"], account, sent or dt.datetime.now(dt.UTC))
                    self.state.messages[msg.message_id] = msg
                msg.fields.update(fields)
                if sent is not None:
                    msg.sent_at, msg.sent_fixed = sent, True
            return [m["message_id"] for m in messages]

    def apply_report(self, wire: dict[str, Any], account: str) -> None:
        """Derive the message of a new report: add it when unknown, and take the report's status when
        it is the latest by ``submitted_date`` (called under the lock)."""
        self.state.send_order = None
        at = parse_timestamp(wire.get("submitted_date"), spec_form=True) or dt.datetime.now(dt.UTC)
        msg = self.state.messages.get(wire["message_id"])
        if msg is None:
            msg = StoredMessage(wire["message_id"], account, at)
            self.state.messages[msg.message_id] = msg
        for key, source in (("content", "original_text"), ("destination_number", "source_number"),
                            ("metadata", "metadata"), ("callback_url", "callback_url")):
            # Addresses are inverted on reports: the report's source is the message's destination.
            if source in wire:
                msg.fields.setdefault(key, wire[source])
        if not msg.sent_fixed:
            msg.sent_at = min(msg.sent_at, at)
        if msg.latest_at is None or at >= msg.latest_at:
            msg.latest, msg.latest_at = wire, at
        if str(wire.get("status")).lower() == "delivered" and (msg.delivered_at is None or at > msg.delivered_at):
            msg.delivered_at = at

    def message_route(self, request: Request) -> Response:
        message_id = request.params["message_id"]
        with self.state.lock:
            msg = self.state.messages.get(message_id)
            if msg is None or msg.account != self.state.account_of(request):
                raise HttpError(404, "Message not found", details=[f"no message with id {message_id}"])
            body: dict[str, Any] = {
                "message_id": msg.message_id, "content": "", "destination_number": "", "format": "SMS",
                "delivery_report": True, "metadata": {},
            }
            body.update({k: v for k, v in msg.fields.items() if k not in _PRIVATE_MESSAGE_FIELDS})
            body["status"] = self._status_of(msg)
            return Response.json(200, copy.deepcopy(body))

    @staticmethod
    def _status_of(msg: StoredMessage) -> str:
        if msg.latest is not None:
            return str(msg.latest.get("status"))
        return str(msg.fields.get("status", "delivered"))

    def reporting_route(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "Request validation failed", details=["a JSON object body is required"])
        problems = _detail_problems(body)
        if problems:
            raise HttpError(400, "Request validation failed", details=problems)
        zone_name = body.get("timezone") or "UTC"
        try:
            zone = zoneinfo.ZoneInfo(str(zone_name))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise HttpError(400, "Request validation failed", details=[f"timezone: unknown {zone_name!r}"]) from exc
        start, end = (self._window_bound(body, key, zone) for key in ("start_date", "end_date"))
        if end < start:
            raise HttpError(400, "Request validation failed", details=["end_date must not be before start_date"])
        page = _int_field(body, "page", 0, 0, None)
        page_size = _int_field(body, "page_size", 50, 1, MAX_IDS)
        direction = str(body.get("direction") or "outbound").lower()
        statuses = body.get("status")
        meta_key = body.get("metadata_key")
        meta_values = body.get("metadata_values")
        if body.get("metadata_value") is not None:
            meta_values = [*(meta_values or []), body["metadata_value"]]
        if meta_values is not None and not meta_key:
            raise HttpError(400, "Request validation failed", details=["metadata_value needs metadata_key"])
        accounts = body.get("accounts") or [self.state.account_of(request)]
        if not isinstance(accounts, list):
            raise HttpError(400, "Request validation failed", details=["accounts: a list of account ids"])
        key = request.principal
        refused = [a for a in accounts if a != self.state.account_of(request)
                   and not (isinstance(key, SimKey) and key.may_act_for(a))]
        if refused:
            raise HttpError(403, f"Not authorised to act on behalf of account {str(refused[0])[:100]}")

        with self.state.lock:
            order = self._ordered_by_send_time()
            lo, hi = bisect.bisect_left(order.times, start), bisect.bisect_left(order.times, end)
            if direction == "inbound":  # the simulator only knows outbound messages
                chosen: list[StoredMessage] = []
            elif statuses is None and not meta_key and order.accounts <= set(accounts):
                chosen = order.messages[lo:hi]  # no filter to apply: a slice (a million messages stay fast)
            else:
                chosen = [
                    msg for msg in order.messages[lo:hi]
                    if msg.account in accounts
                    and (statuses is None or self._status_of(msg).upper() in statuses)
                    and (not meta_key or _metadata_matches(msg.fields.get("metadata"), meta_key, meta_values))
                ]
            window = chosen[page * page_size : (page + 1) * page_size]
            records = [self._reporting_record(msg, zone) for msg in window]
        return Response.json(200, {
            "messages": records,
            "pagination": {"page": page, "page_size": page_size, "has_next": (page + 1) * page_size < len(chosen)},
        })

    def _ordered_by_send_time(self) -> SendOrder:
        """Messages sorted by send time, built once after each change (call with the lock held)."""
        if self.state.send_order is None:
            ordered = sorted(self.state.messages.values(), key=lambda m: (m.sent_at, m.message_id))
            self.state.send_order = SendOrder(ordered, [m.sent_at for m in ordered], {m.account for m in ordered})
        return self.state.send_order

    @staticmethod
    def _window_bound(body: dict[str, Any], key: str, zone: dt.tzinfo) -> dt.datetime:
        if body.get(key) is None:
            raise HttpError(400, "Request validation failed", details=[f"{key}: is required"])
        moment = parse_timestamp(body[key], zone)
        if moment is None:
            raise HttpError(400, "Request validation failed", details=[f"{key}: not an ISO-8601 date-time"])
        return moment

    def _reporting_record(self, msg: StoredMessage, zone: dt.tzinfo) -> dict[str, Any]:
        raw_code = msg.latest.get("error_code") if msg.latest is not None else msg.fields.get("status_code")
        code = str(raw_code).strip() if raw_code is not None else None
        metadata = copy.deepcopy(msg.fields.get("metadata") or {})
        shape = self.state.settings.reporting_metadata_shape
        return {
            "message_id": msg.message_id,
            "account_id": msg.account,
            "direction": "OUTBOUND",
            "status": self._status_of(msg).upper(),
            "status_code": int(code) if code and code.isdigit() else None,
            "status_description": STATUS_CODES.get(code) if code else None,
            "timestamp": self._reporting_time(msg.sent_at, zone),
            "delivered_timestamp": self._reporting_time(msg.delivered_at, zone),
            "last_status_update": self._reporting_time(msg.latest_at or msg.sent_at, zone),
            "destination_address": msg.fields.get("destination_number"),
            "source_address": msg.fields.get("source_number"),
            "content": msg.fields.get("content"),
            "metadata": (
                [{"key": k, "value": v} for k, v in metadata.items()] if shape == "list"
                else [{k: v} for k, v in metadata.items()] if shape == "single"
                else metadata
            ),
        }

    def _reporting_time(self, moment: dt.datetime | None, zone: dt.tzinfo) -> str | None:
        if moment is None:
            return None
        settings = self.state.settings
        local = moment.astimezone(zone)
        if settings.reporting_naive_timestamps:
            return local.replace(tzinfo=None).isoformat(timespec="seconds")
        if settings.report_date_form != "iso_ms":
            return format_date_form(moment, settings.report_date_form, zone)
        if not local.utcoffset():
            return format_timestamp(local)
        return local.isoformat(timespec="milliseconds")


# The reporting detail request's schema (the spec's ``detailrequest``): what each field must be.
DETAIL_STRINGS = ("start_date", "end_date", "timezone", "source", "destination", "metadata_key", "metadata_value",
                  "opt_out", "mms_media")
DETAIL_STRING_LISTS = ("sources", "destinations", "metadata_values", "accounts")
DETAIL_ENUM_LISTS: dict[str, tuple[str, ...]] = {
    "status": ("UNDEFINED", "QUEUED", "PROCESSING", "PROCESSED", "FAILED", "SCHEDULED", "CANCELLED", "DELIVERED",
               "EXPIRED", "ENROUTE", "HELD", "SUBMITTED", "REJECTED", "READ"),  # MessageStatus
    "message_format": ("MMS", "SMS", "TTS", "RCS", "CHANNEL"),  # format
    "channels": ("SMS", "MMS", "TTS", "RCS", "WHATSAPP", "CHANNEL"),
}
DETAIL_DIRECTIONS = ("inbound", "outbound", "all")  # MessageDirection


def _detail_problems(body: dict[str, Any]) -> list[str]:
    """Where a reporting detail request breaks the spec's schema (each a 400 detail). Required fields
    and the values the schema cannot say (a readable date, a known time zone) are checked after."""
    problems: list[str] = []
    for key in DETAIL_STRINGS:
        if body.get(key) is not None and not isinstance(body[key], str):
            problems.append(f"{key}: a string")
    for key in DETAIL_STRING_LISTS:
        value = body.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            problems.append(f"{key}: a list of strings")
    for key, allowed in DETAIL_ENUM_LISTS.items():
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{key}: a list of {', '.join(allowed)}")
        elif unknown := [v for v in value if v not in allowed]:
            problems.append(f"{key}: {', '.join(unknown)[:200]} not one of {', '.join(allowed)}")
    direction = body.get("direction")
    if direction is not None and (not isinstance(direction, str) or direction.lower() not in DETAIL_DIRECTIONS):
        problems.append(f"direction: one of {', '.join(DETAIL_DIRECTIONS)}")
    return problems


def _int_field(body: dict[str, Any], key: str, default: int, low: int, high: int | None) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise HttpError(400, "Request validation failed", details=[f"{key}: an integer {bound}, got {value!r}"])
    return value


def _metadata_matches(metadata: Any, key: str, values: list[Any] | None) -> bool:
    if not isinstance(metadata, dict) or key not in metadata:
        return False
    return values is None or metadata[key] in values

