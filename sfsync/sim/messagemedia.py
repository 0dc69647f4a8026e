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
reports of the account acted for. State lives in memory under ``self.lock``. A message is
derived from its reports (its status is the status of its latest report by ``submitted_date``)
or added directly. Everything under ``/_sim/`` is
the unauthenticated admin API; the Python methods and the admin routes share one code pa

This module is the simulator's front: construction and route table, settings, reset, stats, the
error shape and the admin routes. Its areas live beside it: ``mm_model`` (constants, times, records,
shared state), ``mm_reports`` (the report queue, poll and confirm), ``mm_push`` (pushes, webhooks,
signature keys), ``mm_messages`` (messages and reporting) and ``mm_auth`` (credentials).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from sfsync.sim.base import FaultConfig, Handler, HttpError, Request, Response
from sfsync.sim.mm_auth import AuthMixin
from sfsync.sim.mm_messages import STATUS_CODES, MessagesMixin
from sfsync.sim.mm_model import (
    DATE_FORMS,
    DEFAULT_ACCOUNT,
    EXCHANGE_LOG_MAX,
    MAX_IDS,
    METADATA_SHAPES,
    Exchange,
    SimKey,
    format_date_form,
    format_timestamp,
    now_timestamp,
    parse_timestamp,
)
from sfsync.sim.mm_push import PUSH_DEFAULTS, check_push_setting
from sfsync.sim.mm_reports import ReportsMixin
from sfsync.sim.push import Pusher, load_private_key

# Re-exported: tests, tools and the seeding code import these from here.
__all__ = [
    "DATE_FORMS", "DEFAULT_ACCOUNT", "EXCHANGE_LOG_MAX", "MAX_IDS", "METADATA_SHAPES", "PUSH_DEFAULTS",
    "STATUS_CODES", "Exchange", "MessageMediaSim", "SimKey", "format_date_form", "format_timestamp",
    "now_timestamp", "parse_timestamp",
]


class MessageMediaSim(ReportsMixin, MessagesMixin, AuthMixin):
    """The MessageMedia API on loopback. Run it with ``SimServer(MessageMediaSim(), ca)``."""

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
        self.clock = clock  # when a confirmation takes effect (confirm_delay_s): a test may advance it
        self.api_key = api_key
        self.api_secret = api_secret
        self.account_id = account_id  # the key's own account, used when no Account header is sent
        # The constructor's keys: the default one (a parent of ``sub_accounts``) and any others.
        self._initial_keys = (SimKey(api_key, api_secret, account_id, frozenset(sub_accounts)), *keys)
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
        self.reporting_metadata_shape = "object"
        self.reporting_naive_timestamps = False
        self.report_date_form = "iso_ms"
        self.auth_failure_status = 403
        self.confirm_delay_s = 0.0  # a confirmation takes effect this long after its 202
        self.lose_confirms = 0  # the next this many confirmations are answered 202 and never take effect
        # The confirm body's schema types each id ``format: uuid``: a request naming anything else is
        # refused whole (400). Off: any string is taken (a lenient deployment, for tests of opaque ids).
        self.confirm_uuid_only = True
        self.confirm_error_details = True  # a 400 names the offending items (off: a bare message)
        self.record_exchanges = False
        self.push_url: str | None = None
        self.push_headers: dict[str, str] = {}
        self.push_template: str | None = None
        self.push_max_attempts = 6
        self.push_retry_delay_s = 0.05
        self.push_retry_max_delay_s = 2.0
        self.push_timeout_s = 5.0
        self.push_concurrency = 4
        self.push_ca_bundle: str | None = None
        self.push_date_offset_s = 0.0
        self.sign_with_private_key_pem: str | None = None
        self.sign_key_id = "sim-key"
        self.sign_digest = "SHA512"
        self._sign_key: Any = None
        self.pusher = Pusher(self._push_config, self.stopping)
        self.configure(**self._initial_settings)
        self._clear()

        api: list[tuple[str, str, Handler]] = [
            ("GET", "/v1/delivery_reports", self._poll),
            ("POST", "/v1/delivery_reports/confirmed", self._confirm_route),
            ("GET", "/v1/messages/{message_id}", self._message_route),
            ("POST", "/v2-preview/reporting/messages/detail", self._reporting_route),
            ("POST", "/v1/webhooks/messages", self._create_webhook_route),
            ("GET", "/v1/webhooks/messages", self._list_webhooks_route),
            ("DELETE", "/v1/webhooks/messages/{webhook_id}", self._delete_webhook_route),
            # "enabled" before "{key_id}": the first route that matches serves.
            ("PATCH", "/v1/iam/signature_keys/enabled", self._enable_key_route),
            ("GET", "/v1/iam/signature_keys/enabled", self._enabled_key_route),
            ("DELETE", "/v1/iam/signature_keys/enabled", self._disable_key_route),
            ("POST", "/v1/iam/signature_keys", self._create_key_route),
            ("GET", "/v1/iam/signature_keys", self._list_keys_route),
            ("GET", "/v1/iam/signature_keys/{key_id}", self._get_key_route),
            ("DELETE", "/v1/iam/signature_keys/{key_id}", self._delete_key_route),
        ]
        for method, pattern, handler in api:
            self.route(method, pattern, self._authenticated(handler), name=f"{method} {pattern}")
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

    def add_key(self, api_key: str, api_secret: str, account: str, sub_accounts: tuple[str, ...] = ()) -> SimKey:
        """Another API key pair: of ``account`` (a separate account, or a parent of ``sub_accounts``).
        Kept until ``reset``."""
        key = SimKey(api_key, api_secret, account, frozenset(sub_accounts))
        with self.lock:
            self._keys[api_key] = key
        return key

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
            for key, value in settings.items():
                setattr(self, key, copy.deepcopy(value))
            if "sign_with_private_key_pem" in settings:
                pem = self.sign_with_private_key_pem
                self._sign_key = load_private_key(pem) if pem else None
            shown = {key: getattr(self, key) for key in self._initial_settings}
            if shown["sign_with_private_key_pem"]:
                shown["sign_with_private_key_pem"] = "set"
            return shown

    def reset(self) -> None:
        """Back to as constructed: no reports or messages, counters cleared, the constructor's
        fault configuration and settings restored (a seeded fault sequence starts over)."""
        self.pusher.stop()  # outside the lock: a push in flight may take its timeout to end
        with self.lock:
            super().reset()
            self._clear()
            self.pusher = Pusher(self._push_config, self.stopping)
            self.faults.configure(**vars(copy.deepcopy(self._initial_faults)))
            self.configure(**self._initial_settings)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            self._settle()
            calls = dict(self.calls)
            unconfirmed = sum(len(q) for q in self._queues.values())
            return {
                "calls": calls,
                "calls_total": sum(calls.values()),
                "unconfirmed": unconfirmed,
                "confirmed": len(self._reports) - unconfirmed,
                "confirm_counts": dict(self._confirm_counts),
                "confirm_unknown": self._confirm_unknown,
                "messages": len(self._messages),
                "webhooks": len(self._webhooks),
                "served_after_confirm": sum(1 for q in self._queues.values() for r in q.values()
                                            if r.confirmed_at is not None),
                "pushes": self.pusher.snapshot(),
                "faults": self.faults.snapshot(),
            }

    # -- the API -----------------------------------------------------------------------------
    def decorate(self, request: Request, response: Response) -> None:
        if not self.record_exchanges:
            return
        route, _ = self.match(request)
        with self.lock:
            self._exchanges.append(Exchange(
                request.method, request.path, copy.deepcopy(request.query), route.name if route else "unrouted",
                request.headers.get("Content-Type") or "", request._body or b"", response.status,
                response.headers.get("Content-Type", ""), response.body,
            ))

    def exchanges(self) -> list[Exchange]:
        """The API calls seen while ``record_exchanges`` was on (the latest few thousand)."""
        with self.lock:
            return list(self._exchanges)

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
