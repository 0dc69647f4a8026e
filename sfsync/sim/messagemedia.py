"""A MessageMedia Messages API simulator: delivery reports (poll and confirm), message status,
the v2-preview reporting API, and push (account webhooks, a configured ``push_url``, per-report
``callback_url``), with the behaviour described in ``/work/shared/reference/messagemedia.md``.

Confirmations are accepted at once (202) but, like the real service's, may take effect later:
with ``confirm_delay_s`` set, a confirmed report is still served by the poll until that many
seconds have passed; with ``lose_confirms`` set, that many confirmations are answered 202 and never
take effect (the report is served until it is confirmed again).

Signature keys (``/v1/iam/signature_keys``): a create answer is the only one carrying the public
key; one key is enabled at a time, and while one is, every push is signed with it.

Push: every report added is also POSTed, from background threads (``sfsync.sim.push``), to each
webhook of its account whose events include it (rendered from the webhook's template), to
``push_url`` when configured, and to its ``callback_url`` when it has one; non-2xx answers and
connection errors are retried with back-off, a bounded number of times. Pushed reports stay in
the poll queue too.

Accounts: every API key belongs to one account and may act for that account's sub-accounts
(``sub_accounts``; more keys with ``add_key``). The ``Account`` header selects the account a call
acts for; one naming an account the key may not act for is refused with 403 (the spec documents
403 ``{"message": ...}`` for refused credentials; the exact wording of this refusal is not
documented). Reports are queued per account: a check sees, and a confirm confirms, only the
reports of the account acted for. State lives in memory under the simulator's ``lock``. A message
is derived from its reports (its status is the status of its latest report by ``submitted_date``)
or added directly. Everything under ``/_sim/`` is the unauthenticated admin API; the Python methods
and the admin routes share one code path.

This module is the simulator's front: ``MessageMediaSim``, the HTTP app, builds its parts and holds
them; it keeps the route table, settings, reset, stats, the error shape and the admin routes, and
hands everything else to a part. The parts live beside it, each given what it works with:
``mm_model`` (constants, times, records, settings and the ``MessageMediaState`` they all share),
``mm_auth`` (``AuthPart``: credentials), ``mm_reports`` (``ReportsPart``: the report queue, poll and
confirm), ``mm_messages`` (``MessagesPart``: messages and reporting) and ``mm_push`` (``PushPart``:
pushes, webhooks, signature keys).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from sfsync.sim.base import FaultConfig, Handler, HttpError, Request, Response, SimApp
from sfsync.sim.mm_auth import AuthPart
from sfsync.sim.mm_messages import STATUS_CODES, MessagesPart
from sfsync.sim.mm_model import (
    DATE_FORMS,
    DEFAULT_ACCOUNT,
    EXCHANGE_LOG_MAX,
    MAX_IDS,
    METADATA_SHAPES,
    Exchange,
    MessageMediaState,
    Settings,
    SimKey,
    format_date_form,
    format_timestamp,
    now_timestamp,
    parse_timestamp,
)
from sfsync.sim.mm_push import PUSH_DEFAULTS, PushPart, check_push_setting
from sfsync.sim.mm_reports import ReportsPart
from sfsync.sim.push import Pusher

# Re-exported: tests, tools and the seeding code import these from here.
__all__ = [
    "DATE_FORMS", "DEFAULT_ACCOUNT", "EXCHANGE_LOG_MAX", "MAX_IDS", "METADATA_SHAPES", "PUSH_DEFAULTS",
    "STATUS_CODES", "Exchange", "MessageMediaSim", "SimKey", "format_date_form", "format_timestamp",
    "now_timestamp", "parse_timestamp",
]


class MessageMediaSim(SimApp):
    """The MessageMedia API on loopback. Run it with ``SimServer(MessageMediaSim(), ca)``.

    It holds one ``MessageMediaState`` and the parts that work on it (auth, reports, messages, push);
    its Python methods hand each call to the part that does it."""

    def __init__(
        self,
        api_key: str = "sim-api-key",
        api_secret: str = "sim-api-secret",  # noqa: S107 - the simulator's well-known default
        *,
        faults: FaultConfig | None = None,
        reporting_metadata_shape: str = "object",
        reporting_naive_timestamps: bool = False,
        report_date_form: str = "iso_ms",
        auth_failure_status: int = 403,
        account_id: str = DEFAULT_ACCOUNT,
        sub_accounts: tuple[str, ...] = (),
        keys: tuple[SimKey, ...] = (),
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(faults)
        self.api_key = api_key
        self.api_secret = api_secret
        self._initial_faults = copy.deepcopy(self.faults.config)
        self._initial_settings = {
            "reporting_metadata_shape": reporting_metadata_shape,
            "reporting_naive_timestamps": reporting_naive_timestamps,
            "report_date_form": report_date_form,
            "auth_failure_status": auth_failure_status,
            "confirm_delay_s": 0.0,
            "lose_confirms": 0,
            "confirm_uuid_only": True,
            "confirm_error_details": True,
            "record_exchanges": False,
            **copy.deepcopy(PUSH_DEFAULTS),
        }
        # The constructor's keys: the default one (a parent of ``sub_accounts``) and any others.
        initial_keys = (SimKey(api_key, api_secret, account_id, frozenset(sub_accounts)), *keys)
        self._state = MessageMediaState(self.lock, Settings(**copy.deepcopy(self._initial_settings)), account_id,
                                        initial_keys, clock)
        self._auth = AuthPart(self._state)
        self._push = PushPart(self._state, self.stopping)
        self._messages = MessagesPart(self._state)
        self._reports = ReportsPart(self._state, self._messages, self._push)
        self.configure(**self._initial_settings)  # checks the constructor's settings

        api: list[tuple[str, str, Handler]] = [
            ("GET", "/v1/delivery_reports", self._reports.poll_route),
            ("POST", "/v1/delivery_reports/confirmed", self._reports.confirm_route),
            ("GET", "/v1/messages/{message_id}", self._messages.message_route),
            ("POST", "/v2-preview/reporting/messages/detail", self._messages.reporting_route),
            ("POST", "/v1/webhooks/messages", self._push.create_webhook_route),
            ("GET", "/v1/webhooks/messages", self._push.list_webhooks_route),
            ("DELETE", "/v1/webhooks/messages/{webhook_id}", self._push.delete_webhook_route),
            # "enabled" before "{key_id}": the first route that matches serves.
            ("PATCH", "/v1/iam/signature_keys/enabled", self._push.enable_key_route),
            ("GET", "/v1/iam/signature_keys/enabled", self._push.enabled_key_route),
            ("DELETE", "/v1/iam/signature_keys/enabled", self._push.disable_key_route),
            ("POST", "/v1/iam/signature_keys", self._push.create_key_route),
            ("GET", "/v1/iam/signature_keys", self._push.list_keys_route),
            ("GET", "/v1/iam/signature_keys/{key_id}", self._push.get_key_route),
            ("DELETE", "/v1/iam/signature_keys/{key_id}", self._push.delete_key_route),
        ]
        for method, pattern, handler in api:
            self.route(method, pattern, self._auth.guard(handler), name=f"{method} {pattern}")
        admin: list[tuple[str, str, Handler]] = [
            ("POST", "/_sim/reports", self._admin_add_reports),
            ("GET", "/_sim/reports", self._admin_reports),
            ("POST", "/_sim/messages", self._admin_add_messages),
            ("GET", "/_sim/stats", lambda r: Response.json(200, self.stats())),
            ("GET", "/_sim/confirm_log", self._admin_confirm_log),
            ("GET", "/_sim/faults", lambda r: Response.json(200, self.faults.snapshot())),
            ("POST", "/_sim/faults", self._admin_faults),
            ("POST", "/_sim/config", self._admin_config),
            ("POST", "/_sim/reset", self._admin_reset),
            ("GET", "/_sim/push_log", lambda r: Response.json(200, {"pushes": self.push_log()})),
            ("GET", "/_sim/webhooks", lambda r: Response.json(200, {"webhooks": self.webhooks()})),
        ]
        for method, pattern, handler in admin:
            self.route(method, pattern, handler)

    # -- what the parts hold -----------------------------------------------------------------
    @property
    def account_id(self) -> str:
        """The default key's own account, used when no Account header is sent."""
        return self._state.account_id

    @property
    def clock(self) -> Callable[[], float]:
        """When a confirmation takes effect (``confirm_delay_s``): a test may replace it to advance time."""
        return self._state.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self._state.clock = clock

    @property
    def pusher(self) -> Pusher:
        """The push part's pusher (a fresh one after ``reset``)."""
        return self._push.pusher

    def add_key(self, api_key: str, api_secret: str, account: str, sub_accounts: tuple[str, ...] = ()) -> SimKey:
        """Another API key pair: of ``account`` (a separate account, or a parent of ``sub_accounts``).
        Kept until ``reset``."""
        key = SimKey(api_key, api_secret, account, frozenset(sub_accounts))
        self._auth.add_key(key)
        return key

    def add_reports(self, reports: list[dict[str, Any]], account: str | None = None) -> list[str]:
        """Queue delivery reports (in list order) for ``account`` (default: the key's own).
        Each needs ``message_id``; other fields get realistic defaults. Returns the report ids."""
        return self._reports.add_reports(reports, account)

    def add_raw_reports(self, reports: list[Any], account: str | None = None) -> list[str]:
        """Queue reports verbatim, however malformed (see ``ReportsPart.add_raw_reports``)."""
        return self._reports.add_raw_reports(reports, account)

    def reports(self, state: str = "unconfirmed") -> list[dict[str, Any]]:
        """Copies of the reports in insertion order: ``unconfirmed``, ``confirmed`` or ``all``."""
        return self._reports.reports(state)

    def confirm(self, ids: list[str], account: str | None = None) -> int:
        """Confirm reports of ``account``; returns how many were known (others are ignored)."""
        return self._reports.confirm(ids, account)

    def confirm_calls(self) -> list[dict[str, Any]]:
        """Every confirm call that was authenticated, in order (see ``ReportsPart.confirm_calls``)."""
        return self._reports.confirm_calls()

    def confirm_log(self) -> list[tuple[str, float]]:
        """Every confirmation of a known report, in order: (report id, ``clock()``)."""
        return self._reports.confirm_log()

    def add_messages(self, messages: list[dict[str, Any]]) -> list[str]:
        """Add messages directly (see ``MessagesPart.add_messages``); returns their ids."""
        return self._messages.add_messages(messages)

    def push_log(self) -> list[dict[str, Any]]:
        """Every push attempt, in order: report id, url, kind, attempt, status (HTTP status or error)."""
        return self._push.push_log()

    def wait_for_pushes(self, timeout: float = 10.0) -> bool:
        """Wait until every queued push was delivered or given up."""
        return self._push.wait_for_pushes(timeout)

    def webhooks(self, account: str | None = None) -> list[dict[str, Any]]:
        """The webhooks created (of ``account``, or of every account), as the API shows them."""
        return self._push.webhooks(account)

    def signature_keys(self) -> list[dict[str, Any]]:
        """Every signature key of every account, in creation order (as list and get show them)."""
        return self._push.signature_keys()

    # -- settings, reset, stats --------------------------------------------------------------
    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change behaviour at run time: reporting_metadata_shape, reporting_naive_timestamps,
        report_date_form, auth_failure_status, confirm_delay_s, lose_confirms, confirm_uuid_only,
        confirm_error_details, record_exchanges, and the
        push settings of ``PUSH_DEFAULTS``. Returns the current settings (a signing key shown only as set)."""
        with self.lock:
            for key, value in settings.items():
                if key in PUSH_DEFAULTS:
                    check_push_setting(key, value)
                if key == "reporting_metadata_shape" and value not in METADATA_SHAPES:
                    raise ValueError(f"reporting_metadata_shape must be one of {METADATA_SHAPES}, not {value!r}")
                if key == "report_date_form" and value not in DATE_FORMS:
                    raise ValueError(f"report_date_form must be one of {DATE_FORMS}, not {value!r}")
                if key == "auth_failure_status" and value not in (401, 403):
                    raise ValueError(f"auth_failure_status must be 401 or 403, not {value!r}")
                if key in ("reporting_naive_timestamps", "record_exchanges", "confirm_uuid_only",
                           "confirm_error_details") and not isinstance(value, bool):
                    raise ValueError(f"{key} must be a boolean")
                if key == "confirm_delay_s" and (
                    not isinstance(value, int | float) or isinstance(value, bool) or value < 0
                ):
                    raise ValueError("confirm_delay_s must be a non-negative number of seconds")
                if key == "lose_confirms" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                    raise ValueError("lose_confirms must be a non-negative whole number")
                if key not in self._initial_settings:
                    raise ValueError(f"unknown setting {key!r}")
            current = self._state.settings
            for key, value in settings.items():
                setattr(current, key, copy.deepcopy(value))
            if "sign_with_private_key_pem" in settings:
                self._push.use_private_key(current.sign_with_private_key_pem)
            shown = {key: getattr(current, key) for key in self._initial_settings}
            if shown["sign_with_private_key_pem"]:
                shown["sign_with_private_key_pem"] = "set"
            return shown

    def reset(self) -> None:
        """Back to as constructed: no reports or messages, counters cleared, the constructor's
        fault configuration and settings restored (a seeded fault sequence starts over)."""
        self._push.stop()  # outside the lock: a push in flight may take its timeout to end
        with self.lock:
            super().reset()
            self._state.clear()
            self._push.restart()
            self.faults.configure(**vars(copy.deepcopy(self._initial_faults)))
            self.configure(**self._initial_settings)

    def stats(self) -> dict[str, Any]:
        state = self._state
        with self.lock:
            self._reports.settle()
            calls = dict(self.calls)
            unconfirmed = sum(len(q) for q in state.queues.values())
            return {
                "calls": calls,
                "calls_total": sum(calls.values()),
                "unconfirmed": unconfirmed,
                "confirmed": len(state.reports) - unconfirmed,
                "confirm_counts": dict(state.confirm_counts),
                "confirm_unknown": state.confirm_unknown,
                "messages": len(state.messages),
                "webhooks": len(state.webhooks),
                "served_after_confirm": sum(1 for q in state.queues.values() for r in q.values()
                                            if r.confirmed_at is not None),
                "pushes": self._push.counts(),
                "faults": self.faults.snapshot(),
            }

    # -- the API -----------------------------------------------------------------------------
    def decorate(self, request: Request, response: Response) -> None:
        if not self._state.settings.record_exchanges:
            return
        route, _ = self.match(request)
        with self.lock:
            self._state.exchanges.append(Exchange(
                request.method, request.path, copy.deepcopy(request.query), route.name if route else "unrouted",
                request.headers.get("Content-Type") or "", request._body or b"", response.status,
                response.headers.get("Content-Type", ""), response.body,
            ))

    def exchanges(self) -> list[Exchange]:
        """The API calls seen while ``record_exchanges`` was on (the latest few thousand)."""
        with self.lock:
            return list(self._state.exchanges)

    def error(self, status: int, message: str, code: str | None = None, details: Any = None) -> Response:
        payload: dict[str, Any] = {"message": message}
        if details is None and status == 400:
            details = [message]  # MessageMedia's validation errors always list their details
        if details is not None:
            payload["details"] = list(details) if isinstance(details, list | tuple) else [str(details)]
        return Response.json(status, payload)

    # -- admin -------------------------------------------------------------------------------
    def _admin_add_reports(self, request: Request) -> Response:
        body = request.json()
        reports = body.get("delivery_reports") if isinstance(body, dict) else body
        if not isinstance(reports, list):
            raise HttpError(400, "expected {\"delivery_reports\": [...], \"account\": optional}")
        try:
            ids = self.add_reports(reports, body.get("account") if isinstance(body, dict) else None)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc
        return Response.json(200, {"ids": ids})

    def _admin_reports(self, request: Request) -> Response:
        try:
            return Response.json(200, {"delivery_reports": self.reports(request.arg("state") or "unconfirmed")})
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc

    def _admin_add_messages(self, request: Request) -> Response:
        body = request.json()
        messages = body.get("messages") if isinstance(body, dict) else body
        if not isinstance(messages, list):
            raise HttpError(400, "expected {\"messages\": [...]}")
        try:
            return Response.json(200, {"ids": self.add_messages(messages)})
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc

    def _admin_confirm_log(self, request: Request) -> Response:
        return Response.json(200, {"confirmations": [list(entry) for entry in self.confirm_log()]})

    def _admin_faults(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "expected an object of FaultConfig settings")
        self.faults.configure(**body)
        return Response.json(200, self.faults.snapshot())

    def _admin_config(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "expected an object of settings")
        try:
            return Response.json(200, self.configure(**body))
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc

    def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return Response.json(200, {"reset": True})
