"""The MessageMedia simulator's delivery-report queue (``ReportsPart``): reports added, the poll
(``GET /v1/delivery_reports``) and the confirmation (``POST .../confirmed``), which may take effect
some time after its 202."""

from __future__ import annotations

import copy
import itertools
import re
import uuid
from collections import Counter, OrderedDict
from typing import Any

from sfsync.sim.base import HttpError, Request, Response
from sfsync.sim.mm_messages import MessagesPart
from sfsync.sim.mm_model import MAX_IDS, MessageMediaState, StoredReport, in_date_form, now_timestamp
from sfsync.sim.mm_push import PushPart

UUID_FORM = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class ReportsPart:
    """The per-account report queues, the poll and the confirmation. A report added also derives its
    message (``MessagesPart.apply_report``) and is pushed (``PushPart.push_report``)."""

    def __init__(self, state: MessageMediaState, messages: MessagesPart, push: PushPart):
        self.state = state
        self.messages = messages
        self.push = push

    def add_reports(self, reports: list[dict[str, Any]], account: str | None = None) -> list[str]:
        """Queue delivery reports (in list order) for ``account`` (default: the key's own).
        Each needs ``message_id``; other fields get realistic defaults. Returns the report ids."""
        account = account or self.state.account_id
        now = now_timestamp()
        prepared = [_prepare_report(raw, account, now) for raw in reports]
        with self.state.lock:
            ids = [r["delivery_report_id"] for r in prepared]
            clash = [i for i in ids if i in self.state.reports] or [i for i, n in Counter(ids).items() if n > 1]
            if clash:
                raise ValueError(f"duplicate delivery_report_id {clash[0]!r}")
            queue = self.state.queues.setdefault(account, OrderedDict())
            for wire in prepared:
                stored = StoredReport(wire, account)
                self.state.reports[wire["delivery_report_id"]] = stored
                queue[wire["delivery_report_id"]] = stored
                self.messages.apply_report(wire, account)
                self.push.push_report(wire, account)
            return ids

    def add_raw_reports(self, reports: list[Any], account: str | None = None) -> list[str]:
        """Queue reports verbatim, however malformed (for tests of bad input): no defaults, no
        validation. Each is stored under its own delivery_report_id when it has a string one
        (so it can be confirmed), else under an internal key (it is then served forever, as a
        broken real report would be)."""
        account = account or self.state.account_id
        with self.state.lock:
            queue = self.state.queues.setdefault(account, OrderedDict())
            keys = []
            for raw in reports:
                rid = raw.get("delivery_report_id") if isinstance(raw, dict) else None
                key = rid if isinstance(rid, str) and rid and rid not in self.state.reports else f"raw-{uuid.uuid4()}"
                stored = StoredReport(raw, account)
                self.state.reports[key] = stored
                queue[key] = stored
                keys.append(key)
            return keys

    def reports(self, state: str = "unconfirmed") -> list[dict[str, Any]]:
        """Copies of the reports in insertion order: ``unconfirmed``, ``confirmed`` or ``all``."""
        if state not in ("unconfirmed", "confirmed", "all"):
            raise ValueError(f"state must be unconfirmed, confirmed or all, not {state!r}")
        with self.state.lock:
            return [
                copy.deepcopy(r.wire) for r in self.state.reports.values()
                if state == "all" or (r.confirmed_at is None) == (state == "unconfirmed")
            ]

    def confirm_calls(self) -> list[dict[str, Any]]:
        """Every confirm call that was authenticated, in order: the ``Account`` header as sent (None
        when absent), the account acted for, the ids sent and the ids it confirmed."""
        with self.state.lock:
            return copy.deepcopy(self.state.confirm_calls)

    def confirm_log(self) -> list[tuple[str, float]]:
        """Every confirmation of a known report, in order: (report id, the state's ``clock()``: time.time())."""
        with self.state.lock:
            return list(self.state.confirm_log)

    def confirm(self, ids: list[str], account: str | None = None) -> int:
        """Confirm reports of ``account``; returns how many were known. Unknown ids (and ids of
        another account) are ignored, as the real service does: it answers 202 regardless."""
        account = account or self.state.account_id
        now = self.state.clock()
        settings = self.state.settings
        known = 0
        with self.state.lock:
            queue = self.state.queues.get(account, OrderedDict())
            for report_id in ids:
                stored = self.state.reports.get(report_id)
                if stored is None or stored.account != account:
                    self.state.confirm_unknown += 1
                    continue
                known += 1
                self.state.confirm_log.append((report_id, now))
                self.state.confirm_counts[report_id] += 1
                if stored.confirmed_at is None:
                    stored.confirmed_at = now
                    stored.leaves_queue_at = now + float(settings.confirm_delay_s)
                    if not settings.confirm_delay_s:
                        queue.pop(report_id, None)
        return known

    def settle(self) -> None:
        """Take out of the queues the reports whose confirmation has taken effect (lock held)."""
        now = self.state.clock()
        for queue in self.state.queues.values():
            done = [rid for rid, r in queue.items() if r.leaves_queue_at is not None and r.leaves_queue_at <= now]
            for rid in done:
                del queue[rid]

    def poll_route(self, request: Request) -> Response:
        with self.state.lock:
            self.settle()
            queue = self.state.queues.get(self.state.account_of(request), OrderedDict())
            batch = [self._dated(stored.wire) for stored in itertools.islice(queue.values(), MAX_IDS)]
            return Response.json(200, {"delivery_reports": batch})

    def _dated(self, wire: Any) -> Any:
        """A report as served, its dates in ``report_date_form`` (what cannot be read or converted
        is served as it was given)."""
        form = self.state.settings.report_date_form
        if form == "iso_ms" or not isinstance(wire, dict):
            return wire
        served = dict(wire)
        for key in ("submitted_date", "date_received"):
            if key in served:
                served[key] = in_date_form(served[key], form)
        return served

    def confirm_route(self, request: Request) -> Response:
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
        settings = self.state.settings
        if settings.confirm_uuid_only:  # the spec: items {type: string, format: uuid}; one bad item refuses all
            bad = [n for n, i in enumerate(ids) if not UUID_FORM.fullmatch(i)]
            if bad:
                details = [f"delivery_report_ids[{n}]: must be a valid uuid" for n in bad]
                raise HttpError(400, "Request validation failed", details=details if settings.confirm_error_details
                                else None)
        account = self.state.account_of(request)
        with self.state.lock:
            before = Counter(self.state.confirm_counts)
            if settings.lose_confirms:  # "will be marked as confirmed" (the spec's 202), and then is not
                settings.lose_confirms -= 1
            else:
                self.confirm(ids, account)
            confirmed = [i for i in dict.fromkeys(ids) if self.state.confirm_counts[i] > before[i]]
            self.state.confirm_calls.append({"header": request.headers.get("Account"), "account": account,
                                             "ids": list(ids), "confirmed": confirmed})
        return Response.text(202, "Accepted")


def _prepare_report(raw: dict[str, Any], account: str, now: str) -> dict[str, Any]:
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
