"""The MessageMedia simulator's delivery-report queue: reports added (and the messages they derive),
the poll (``GET /v1/delivery_reports``) and the confirmation (``POST .../confirmed``), which may take
effect some time after its 202."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import re
import uuid
from collections import Counter, OrderedDict
from typing import Any

from sfsync.sim.base import HttpError, Request, Response
from sfsync.sim.mm_model import MAX_IDS, StoredMessage, StoredReport, in_date_form, now_timestamp, parse_timestamp
from sfsync.sim.mm_push import PushMixin

UUID_FORM = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class ReportsMixin(PushMixin):
    """The per-account report queues, composed into ``MessageMediaSim``; a report added is pushed too."""

    def add_reports(self, reports: list[dict[str, Any]], account: str | None = None) -> list[str]:
        """Queue delivery reports (in list order) for ``account`` (default: the key's own).
        Each needs ``message_id``; other fields get realistic defaults. Returns the report ids."""
        account = account or self.account_id
        now = now_timestamp()
        prepared = [self._prepare_report(raw, account, now) for raw in reports]
        with self.lock:
            ids = [r["delivery_report_id"] for r in prepared]
            clash = [i for i in ids if i in self._reports] or [i for i, n in Counter(ids).items() if n > 1]
            if clash:
                raise ValueError(f"duplicate delivery_report_id {clash[0]!r}")
            queue = self._queues.setdefault(account, OrderedDict())
            for wire in prepared:
                stored = StoredReport(wire, account)
                self._reports[wire["delivery_report_id"]] = stored
                queue[wire["delivery_report_id"]] = stored
                self._apply_to_message(wire, account)
                self._push(wire, account)
            return ids

    def add_raw_reports(self, reports: list[Any], account: str | None = None) -> list[str]:
        """Queue reports verbatim, however malformed (for tests of bad input): no defaults, no
        validation. Each is stored under its own delivery_report_id when it has a string one
        (so it can be confirmed), else under an internal key (it is then served forever, as a
        broken real report would be)."""
        account = account or self.account_id
        with self.lock:
            queue = self._queues.setdefault(account, OrderedDict())
            keys = []
            for raw in reports:
                rid = raw.get("delivery_report_id") if isinstance(raw, dict) else None
                key = rid if isinstance(rid, str) and rid and rid not in self._reports else f"raw-{uuid.uuid4()}"
                stored = StoredReport(raw, account)
                self._reports[key] = stored
                queue[key] = stored
                keys.append(key)
            return keys

    def _prepare_report(self, raw: dict[str, Any], account: str, now: str) -> dict[str, Any]:
        if not isinstance(raw, dict) or not raw.get("message_id"):
            raise ValueError("every delivery report needs a message_id")
        wire: dict[str, Any] = {
            "delivery_report_id": raw.get("delivery_report_id") or str(uuid.uuid4()),
            "message_id": raw["message_id"],
            "status": "delivered",
            "date_received": now,
            "submitted_date": now,
            "source_number": "+61491570156",
            "original_text": "Message from sfsync simulator",
            "metadata": {},
            "vendor_account_id": {"vendor_id": "MessageMedia", "account_id": account},
            "delay": 0,
            "billing_units": 1,
        }
        # What is given is kept verbatim; error_code (like callback_url) appears only when given.
        wire.update({k: v for k, v in raw.items() if v is not None})
        vendor = wire.get("vendor_account_id")
        if isinstance(vendor, dict):  # a report names the account it is queued for, whatever was given
            wire["vendor_account_id"] = {**vendor, "account_id": account}
        return wire

    def _apply_to_message(self, wire: dict[str, Any], account: str) -> None:
        self._send_order = None
        at = parse_timestamp(wire.get("submitted_date"), spec_form=True) or dt.datetime.now(dt.UTC)
        msg = self._messages.get(wire["message_id"])
        if msg is None:
            msg = StoredMessage(wire["message_id"], account, at)
            self._messages[msg.message_id] = msg
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

    def reports(self, state: str = "unconfirmed") -> list[dict[str, Any]]:
        """Copies of the reports in insertion order: ``unconfirmed``, ``confirmed`` or ``all``."""
        if state not in ("unconfirmed", "confirmed", "all"):
            raise ValueError(f"state must be unconfirmed, confirmed or all, not {state!r}")
        with self.lock:
            return [
                copy.deepcopy(r.wire) for r in self._reports.values()
                if state == "all" or (r.confirmed_at is None) == (state == "unconfirmed")
            ]

    def confirm_calls(self) -> list[dict[str, Any]]:
        """Every confirm call that was authenticated, in order: the ``Account`` header as sent (None
        when absent), the account acted for, the ids sent and the ids it confirmed."""
        with self.lock:
            return copy.deepcopy(self._confirm_calls)

    def confirm_log(self) -> list[tuple[str, float]]:
        """Every confirmation of a known report, in order: (report id, ``self.clock()``: time.time())."""
        with self.lock:
            return list(self._confirm_log)

    def confirm(self, ids: list[str], account: str | None = None) -> int:
        """Confirm reports of ``account``; returns how many were known. Unknown ids (and ids of
        another account) are ignored, as the real service does: it answers 202 regardless."""
        account = account or self.account_id
        now = self.clock()
        known = 0
        with self.lock:
            queue = self._queues.get(account, OrderedDict())
            for report_id in ids:
                stored = self._reports.get(report_id)
                if stored is None or stored.account != account:
                    self._confirm_unknown += 1
                    continue
                known += 1
                self._confirm_log.append((report_id, now))
                self._confirm_counts[report_id] += 1
                if stored.confirmed_at is None:
                    stored.confirmed_at = now
                    stored.leaves_queue_at = now + float(self.confirm_delay_s)
                    if not self.confirm_delay_s:
                        queue.pop(report_id, None)
        return known

    def _settle(self) -> None:
        """Take out of the queues the reports whose confirmation has taken effect (lock held)."""
        now = self.clock()
        for queue in self._queues.values():
            done = [rid for rid, r in queue.items() if r.leaves_queue_at is not None and r.leaves_queue_at <= now]
            for rid in done:
                del queue[rid]

    def _poll(self, request: Request) -> Response:
        with self.lock:
            self._settle()
            queue = self._queues.get(self._account(request), OrderedDict())
            batch = [self._dated(stored.wire) for stored in itertools.islice(queue.values(), MAX_IDS)]
            return Response.json(200, {"delivery_reports": batch})

    def _dated(self, wire: Any) -> Any:
        """A report as served, its dates in ``report_date_form`` (what cannot be read or converted
        is served as it was given)."""
        if self.report_date_form == "iso_ms" or not isinstance(wire, dict):
            return wire
        served = dict(wire)
        for key in ("submitted_date", "date_received"):
            if key in served:
                served[key] = in_date_form(served[key], self.report_date_form)
        return served

    def _confirm_route(self, request: Request) -> Response:
        body = request.json()
        ids = body.get("delivery_report_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise HttpError(400, "Request validation failed",
                            details=["delivery_report_ids: a list of delivery report ids is required"])
        if not ids:
            raise HttpError(400, "Request validation failed",
                            details=["delivery_report_ids: must contain at least 1 item"])
        if len(ids) > MAX_IDS:
            raise HttpError(400, "Request validation failed",
                            details=[f"delivery_report_ids: must contain at most {MAX_IDS} items, got {len(ids)}"])
        if self.confirm_uuid_only:  # the spec: items {type: string, format: uuid}; one bad item refuses all
            bad = [n for n, i in enumerate(ids) if not UUID_FORM.fullmatch(i)]
            if bad:
                details = [f"delivery_report_ids[{n}]: must be a valid uuid" for n in bad]
                raise HttpError(400, "Request validation failed", details=details if self.confirm_error_details
                                else None)
        account = self._account(request)
        with self.lock:
            before = Counter(self._confirm_counts)
            if self.lose_confirms:  # "will be marked as confirmed" (the spec's 202), and then is not
                self.lose_confirms -= 1
            else:
                self.confirm(ids, account)
            confirmed = [i for i in dict.fromkeys(ids) if self._confirm_counts[i] > before[i]]
            self._confirm_calls.append({"header": request.headers.get("Account"), "account": account,
                                        "ids": list(ids), "confirmed": confirmed})
        return Response.text(202, "Accepted")
