"""A MessageMedia Messages API simulator: delivery reports (poll and confirm), message status,
the v2-preview reporting API, and push (account webhooks, a configured ``push_url``, per-report
``callback_url``), with the behaviour described in ``/work/shared/reference/messagemedia.md``.

Confirmations are accepted at once (202) but, like the real service's, may take effect later:
with ``confirm_delay_s`` set, a confirmed report is still served by the poll until that many
seconds have passed.

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
the unauthenticated admin API; the Python methods and the admin routes share one code path.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import collections
import copy
import datetime as dt
import hashlib
import hmac
import itertools
import re
import time
import uuid
import zoneinfo
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfsync.sim.base import FaultConfig, Handler, HttpError, Request, Response, SimApp
from sfsync.sim.push import DR_EVENTS, EVENTS, Delivery, PushConfig, Pusher, digest_key, load_private_key

MAX_IDS = 100  # the most reports one poll returns and one confirmation accepts
AUTH_MESSAGE = "Invalid authentication credentials"
DEFAULT_ACCOUNT = "SimAccount"
# Reporting records' metadata: {"k": "v"}; [{"key": "k", "value": "v"}]; [{"k": "v"}] (the spec's example).
METADATA_SHAPES = ("object", "list", "single")
# Delivery report dates as served: 2017-05-20T06:30:37.642Z (the spec's JSON examples),
# 2024-04-16T23:41:04+00:00 (live payloads), 11/3/2016 11:49:02 AM (the spec's DeliveryReport schema).
DATE_FORMS = ("iso_ms", "iso_offset", "spec")
HMAC_MAX_SKEW_S = 900.0
WEBHOOK_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
WEBHOOK_ENCODINGS = ("JSON", "FORM_ENCODED", "XML")
WEBHOOK_READ_TIMEOUT_MS = (1, 60_000, 20_000)  # min, max, default (milliseconds)
WEBHOOK_RETRY_DELAY_S = (5, 60)
SIGNATURE_DIGESTS = ("SHA224", "SHA256", "SHA512")
SIGNATURE_KEY_BITS = 2048
EXCHANGE_LOG_MAX = 5000
# Push settings for configure(), with their defaults.
PUSH_DEFAULTS: dict[str, Any] = {
    "push_url": None,  # also push every report here (besides webhooks)
    "push_headers": {},  # static headers for push_url pushes (a shared secret)
    "push_template": None,  # None: push_url receives each report as JSON, as callback_url does
    "push_max_attempts": 6,  # for push_url and callback_url; a webhook uses its own "retries"
    "push_retry_delay_s": 0.05,  # first back-off; doubles per attempt (kept short for tests)
    "push_retry_max_delay_s": 2.0,
    "push_timeout_s": 5.0,
    "push_concurrency": 4,
    "push_ca_bundle": None,  # PEM to trust for https receivers
    "push_date_offset_s": 0.0,  # shift the signed Date (tests of a receiver's skew bound)
    "sign_with_private_key_pem": None,  # sign every push as MessageMedia's signed callbacks do
    "sign_key_id": "sim-key",
    "sign_digest": "SHA512",
}

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

_HMAC_DIGESTS = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256}
_HMAC_PARAM = re.compile(r'(\w+)="([^"]*)"')
# Message fields that are the simulator's bookkeeping, not part of GET /v1/messages/{id}.
_PRIVATE_MESSAGE_FIELDS = frozenset({"account", "account_id", "timestamp", "status_code"})


def format_timestamp(moment: dt.datetime) -> str:
    """UTC with milliseconds and Z, as MessageMedia writes them: 2017-05-20T06:30:37.642Z."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def now_timestamp() -> str:
    return format_timestamp(dt.datetime.now(dt.UTC))


def format_date_form(moment: dt.datetime, form: str, zone: dt.tzinfo = dt.UTC) -> str:
    """A time in one of ``DATE_FORMS``, in ``zone`` (the spec form carries no zone)."""
    local = moment.astimezone(zone)
    if form == "iso_offset":
        return local.isoformat(timespec="seconds")
    if form == "spec":
        half = "AM" if local.hour < 12 else "PM"
        return f"{local.month}/{local.day}/{local.year} {local.hour % 12 or 12}:{local:%M:%S} {half}"
    return format_timestamp(local) if not local.utcoffset() else local.isoformat(timespec="milliseconds")


def _in_date_form(value: Any, form: str) -> Any:
    moment = parse_timestamp(value, spec_form=True)
    if moment is None:
        return value
    try:
        return format_date_form(moment, form)
    except (OverflowError, ValueError):  # e.g. year 9999 west of UTC: served as given
        return value


def parse_timestamp(value: Any, zone: dt.tzinfo = dt.UTC, *, spec_form: bool = False) -> dt.datetime | None:
    """Lenient ISO-8601 (with ``spec_form``, also a report's M/D/YYYY h:mm:ss AM); a value without
    zone is read in ``zone``. None when unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        if not spec_form:
            return None
        try:
            moment = dt.datetime.strptime(value.strip(), "%m/%d/%Y %I:%M:%S %p")
        except ValueError:
            return None
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class SimKey:
    """An API key pair, the account it belongs to, and the sub-accounts it may act for."""

    api_key: str
    api_secret: str
    account: str
    sub_accounts: frozenset[str] = frozenset()

    def may_act_for(self, account: str) -> bool:
        return account == self.account or account in self.sub_accounts


@dataclass
class _Report:
    wire: dict[str, Any]  # exactly what the poll serves; never mutated after insertion
    account: str
    confirmed_at: float | None = None
    leaves_queue_at: float | None = None  # when the confirmation takes effect (confirm_delay_s)


@dataclass(frozen=True)
class Exchange:
    """One API call as the simulator saw it (``record_exchanges``): for contract tests."""

    method: str
    path: str
    query: dict[str, list[str]]
    route: str  # the route's pattern, e.g. "GET /v1/messages/{message_id}"
    request_content_type: str
    request_body: bytes
    status: int
    response_content_type: str
    response_body: bytes


@dataclass
class _SignatureKey:
    key_id: str
    account: str
    digest: str
    private_key: rsa.RSAPrivateKey
    created: str
    enabled: bool = False

    def public(self) -> dict[str, Any]:
        """What list, get and enable answer: never the public key."""
        return {"key_id": self.key_id, "cipher": "RSA", "digest": self.digest, "created": self.created,
                "enabled": self.enabled}


@dataclass(frozen=True)
class _SendOrder:
    messages: list[_Message]
    times: list[dt.datetime]
    accounts: set[str]


@dataclass
class _Message:
    message_id: str
    account: str
    sent_at: dt.datetime
    fields: dict[str, Any] = field(default_factory=dict)  # content, destination_number, metadata, ...
    sent_fixed: bool = False  # True when added directly with its own send time
    latest: dict[str, Any] | None = None  # the latest report by submitted_date
    latest_at: dt.datetime | None = None
    delivered_at: dt.datetime | None = None


class MessageMediaSim(SimApp):
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
    ):
        super().__init__(faults)
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
            "record_exchanges": False,
            **copy.deepcopy(PUSH_DEFAULTS),
        }
        self.reporting_metadata_shape = "object"
        self.reporting_naive_timestamps = False
        self.report_date_form = "iso_ms"
        self.auth_failure_status = 403
        self.confirm_delay_s = 0.0  # a confirmation takes effect this long after its 202
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

    # -- state -------------------------------------------------------------------------------
    def _clear(self) -> None:
        self._reports: dict[str, _Report] = {}  # every report, in insertion order
        self._queues: dict[str, OrderedDict[str, _Report]] = {}  # unconfirmed, per account
        self._messages: dict[str, _Message] = {}
        self._send_order: _SendOrder | None = None  # reporting's index, rebuilt after messages change
        self._confirm_log: list[tuple[str, float]] = []
        self._confirm_counts: Counter[str] = Counter()
        self._confirm_unknown = 0
        self._webhooks: dict[str, dict[str, Any]] = {}  # id -> webhook as created, with its account
        self._signature_keys: dict[str, _SignatureKey] = {}
        self._exchanges: collections.deque[Exchange] = collections.deque(maxlen=EXCHANGE_LOG_MAX)
        self._keys: dict[str, SimKey] = {k.api_key: k for k in self._initial_keys}
        self._confirm_calls: list[dict[str, Any]] = []

    def add_key(self, api_key: str, api_secret: str, account: str, sub_accounts: tuple[str, ...] = ()) -> SimKey:
        """Another API key pair: of ``account`` (a separate account, or a parent of ``sub_accounts``).
        Kept until ``reset``."""
        key = SimKey(api_key, api_secret, account, frozenset(sub_accounts))
        with self.lock:
            self._keys[api_key] = key
        return key

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change behaviour at run time: reporting_metadata_shape, reporting_naive_timestamps,
        report_date_form, auth_failure_status, confirm_delay_s, record_exchanges, and the push settings of
        ``PUSH_DEFAULTS``. Returns the current settings (a signing key shown only as set)."""
        with self.lock:
            for key, value in settings.items():
                if key in PUSH_DEFAULTS:
                    _check_push_setting(key, value)
                if key == "reporting_metadata_shape" and value not in METADATA_SHAPES:
                    raise ValueError(f"reporting_metadata_shape must be one of {METADATA_SHAPES}, not {value!r}")
                if key == "report_date_form" and value not in DATE_FORMS:
                    raise ValueError(f"report_date_form must be one of {DATE_FORMS}, not {value!r}")
                if key == "auth_failure_status" and value not in (401, 403):
                    raise ValueError(f"auth_failure_status must be 401 or 403, not {value!r}")
                if key in ("reporting_naive_timestamps", "record_exchanges") and not isinstance(value, bool):
                    raise ValueError(f"{key} must be a boolean")
                if key == "confirm_delay_s" and (
                    not isinstance(value, int | float) or isinstance(value, bool) or value < 0
                ):
                    raise ValueError("confirm_delay_s must be a non-negative number of seconds")
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

    def _push_config(self) -> PushConfig:
        sign_key, digest, key_id = self._sign_key, self.sign_digest, self.sign_key_id
        with self.lock:
            enabled = [k for k in self._signature_keys.values() if k.enabled]
        if sign_key is None and enabled:  # the account's enabled signature key signs every push
            sign_key, digest, key_id = enabled[0].private_key, enabled[0].digest, enabled[0].key_id
        return PushConfig(
            ca_bundle=self.push_ca_bundle, retry_delay_s=float(self.push_retry_delay_s),
            retry_max_delay_s=float(self.push_retry_max_delay_s), timeout_s=float(self.push_timeout_s),
            concurrency=int(self.push_concurrency), sign_key=sign_key, sign_digest=digest,
            sign_key_id=key_id, date_offset_s=float(self.push_date_offset_s),
        )

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
                stored = _Report(wire, account)
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
                stored = _Report(raw, account)
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
            msg = _Message(wire["message_id"], account, at)
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

    def add_messages(self, messages: list[dict[str, Any]]) -> list[str]:
        """Add messages directly (``message_id`` required; ``status``, ``content``,
        ``destination_number``, ``metadata``, ``timestamp`` (send time), ``account`` optional).
        A message that also has reports takes its status from its latest report."""
        for raw in messages:
            if not isinstance(raw, dict) or not raw.get("message_id"):
                raise ValueError("every message needs a message_id")
        with self.lock:
            self._send_order = None
            for raw in messages:
                fields = dict(raw)
                account = fields.get("account") or fields.get("account_id") or self.account_id
                sent = parse_timestamp(fields.get("timestamp"))
                msg = self._messages.get(raw["message_id"])
                if msg is None:
                    msg = _Message(raw["message_id"], account, sent or dt.datetime.now(dt.UTC))
                    self._messages[msg.message_id] = msg
                msg.fields.update(fields)
                if sent is not None:
                    msg.sent_at, msg.sent_fixed = sent, True
            return [m["message_id"] for m in messages]

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
        """Every confirmation of a known report, in order: (report id, time.time())."""
        with self.lock:
            return list(self._confirm_log)

    # -- push --------------------------------------------------------------------------------
    def _push(self, wire: dict[str, Any], account: str) -> None:
        """Queue the pushes of one new report (called under the lock; the HTTP is the pusher's)."""
        report = copy.deepcopy(wire)
        event = DR_EVENTS.get(str(report.get("status", "")).lower())
        for hook in self._webhooks.values():
            if hook["_account"] == account and event in hook["events"] and hook["method"] != "GET":
                retries = hook.get("retries")
                self.pusher.submit(Delivery(
                    report, hook["url"], "webhook", hook["method"], dict(hook.get("headers") or {}),
                    hook.get("template") or None,
                    max_attempts=(retries if isinstance(retries, int) else self.push_max_attempts - 1) + 1,
                ))
        if self.push_url:
            self.pusher.submit(Delivery(report, self.push_url, "push_url", "POST", dict(self.push_headers),
                                        self.push_template, max_attempts=self.push_max_attempts))
        callback = report.get("callback_url")
        if isinstance(callback, str) and callback.startswith(("http://", "https://")):
            self.pusher.submit(Delivery(report, callback, "callback_url", "POST", {}, None,
                                        max_attempts=self.push_max_attempts))

    def push_log(self) -> list[dict[str, Any]]:
        """Every push attempt, in order: report id, url, kind, attempt, status (HTTP status or error)."""
        with self.pusher._cv:
            return [dict(entry) for entry in self.pusher.log]

    def wait_for_pushes(self, timeout: float = 10.0) -> bool:
        """Wait until every queued push was delivered or given up."""
        return self.pusher.wait_idle(timeout)

    def webhooks(self, account: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [_public_hook(h) for h in self._webhooks.values()
                    if account is None or h["_account"] == account]

    def _create_webhook_route(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "Request validation failed", details=["a JSON object body is required"])
        problems = _webhook_problems(body)
        if problems:
            raise HttpError(400, "Request validation failed", details=problems)
        account = self._account(request)
        hook: dict[str, Any] = {
            "id": str(uuid.uuid4()), "url": body["url"], "method": body["method"].upper(),
            "encoding": body["encoding"].upper(), "headers": dict(body.get("headers") or {}),
            "events": list(dict.fromkeys(body["events"])), "template": body.get("template") or "",
        }
        hook["read_timeout"] = WEBHOOK_READ_TIMEOUT_MS[2]
        hook.update({k: body[k] for k in ("read_timeout", "retries", "retry_delay") if body.get(k) is not None})
        with self.lock:
            if any(h["_account"] == account and h["url"] == hook["url"] for h in self._webhooks.values()):
                raise HttpError(409, "A webhook with this url already exists", details=[hook["url"]])
            self._webhooks[hook["id"]] = {**hook, "_account": account}
        return Response.json(201, hook)

    def _list_webhooks_route(self, request: Request) -> Response:
        try:
            page = int(request.arg("page") or 0)
            size = int(request.arg("page_size") or request.arg("pageSize") or 10)  # the spec's, an SDK's
        except ValueError as exc:
            raise HttpError(400, "Request validation failed", details=["page and pageSize are integers"]) from exc
        if page < 0 or not 1 <= size <= 100:
            raise HttpError(400, "Request validation failed", details=["page >= 0, page_size 1 to 100"])
        hooks = self.webhooks(self._account(request))
        return Response.json(200, {"page": page, "pageSize": size, "pageData": hooks[page * size : (page + 1) * size]})

    def _delete_webhook_route(self, request: Request) -> Response:
        webhook_id = request.params["webhook_id"]
        with self.lock:
            hook = self._webhooks.get(webhook_id)
            if hook is None or hook["_account"] != self._account(request):
                raise HttpError(404, "Webhook not found", details=[f"no webhook with id {webhook_id}"])
            del self._webhooks[webhook_id]
        return Response(204)

    # -- signature keys ----------------------------------------------------------------------
    def _create_key_route(self, request: Request) -> Response:
        body = request.json()
        problems = []
        digest = body.get("digest") if isinstance(body, dict) else None
        cipher = body.get("cipher") if isinstance(body, dict) else None
        if digest not in SIGNATURE_DIGESTS:
            problems.append(f"/digest: [{digest}] is invalid")
        if cipher != "RSA":
            problems.append(f"/cipher: [{cipher}] is invalid")
        if problems:
            raise HttpError(400, "Bad Request", details=problems)
        private = rsa.generate_private_key(public_exponent=65537, key_size=SIGNATURE_KEY_BITS)
        key = _SignatureKey(str(uuid.uuid4()), self._account(request), str(digest), private, now_timestamp())
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        with self.lock:
            self._signature_keys[key.key_id] = key
        return Response.json(201, {**key.public(), "public_key": base64.b64encode(der).decode()})

    def signature_keys(self) -> list[dict[str, Any]]:
        """Every signature key of every account, in creation order (as list and get show them)."""
        with self.lock:
            return [{**k.public(), "account": k.account} for k in self._signature_keys.values()]

    def _key_of(self, request: Request, key_id: Any) -> _SignatureKey:
        key = self._signature_keys.get(key_id) if isinstance(key_id, str) else None
        if key is None or key.account != self._account(request):
            raise HttpError(404, "Entity not found")
        return key

    def _list_keys_route(self, request: Request) -> Response:
        try:
            page, size = int(request.arg("page") or ""), int(request.arg("page_size") or "")
        except ValueError as exc:
            raise HttpError(400, "Bad Request", details=["page and page_size are required integers"]) from exc
        if page < 0 or size < 1:
            raise HttpError(400, "Bad Request", details=["page property value is invalid"])
        with self.lock:
            keys = [k.public() for k in self._signature_keys.values() if k.account == self._account(request)]
        return Response.json(200, keys[page * size : (page + 1) * size])

    def _get_key_route(self, request: Request) -> Response:
        with self.lock:
            return Response.json(200, self._key_of(request, request.params["key_id"]).public())

    def _delete_key_route(self, request: Request) -> Response:
        with self.lock:
            key = self._key_of(request, request.params["key_id"])
            del self._signature_keys[key.key_id]
        return Response(200)

    def _enable_key_route(self, request: Request) -> Response:
        body = request.json()
        key_id = body.get("key_id") if isinstance(body, dict) else None
        if not key_id:
            raise HttpError(400, "Bad Request", details=["/key_id: Key id cannot be null"])
        with self.lock:
            key = self._key_of(request, key_id)
            for other in self._signature_keys.values():  # one enabled key at a time
                if other.account == key.account:
                    other.enabled = False
            key.enabled = True
            return Response.json(200, key.public())

    def _enabled_key_route(self, request: Request) -> Response:
        with self.lock:
            for key in self._signature_keys.values():
                if key.enabled and key.account == self._account(request):
                    return Response.json(200, key.public())
        raise HttpError(404, "Currently no key is enabled")

    def _disable_key_route(self, request: Request) -> Response:
        with self.lock:
            for key in self._signature_keys.values():
                if key.account == self._account(request):
                    key.enabled = False
        return Response(204)

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

    def confirm(self, ids: list[str], account: str | None = None) -> int:
        """Confirm reports of ``account``; returns how many were known. Unknown ids (and ids of
        another account) are ignored, as the real service does: it answers 202 regardless."""
        account = account or self.account_id
        now = time.time()
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
        now = time.time()
        for queue in self._queues.values():
            done = [rid for rid, r in queue.items() if r.leaves_queue_at is not None and r.leaves_queue_at <= now]
            for rid in done:
                del queue[rid]

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

    def _authenticated(self, handler: Handler) -> Handler:
        def guarded(request: Request) -> Response:
            key = self._credentials(request)
            if key is None:
                raise HttpError(self.auth_failure_status, AUTH_MESSAGE)
            header = request.headers.get("Account")
            acting = (header or "").strip() or key.account
            if not key.may_act_for(acting):
                raise HttpError(403, f"Not authorised to act on behalf of account {acting[:100]}")
            request.principal, request.account = key, acting
            return handler(request)

        return guarded

    def _credentials(self, request: Request) -> SimKey | None:
        """The key pair that authenticates the call (Basic or HMAC), or None."""
        scheme, _, value = (request.headers.get("Authorization") or "").strip().partition(" ")
        with self.lock:
            keys = list(self._keys.values())
        if scheme.lower() == "basic":
            try:
                key, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            found = [k for k in keys if _same(key, k.api_key) and _same(secret, k.api_secret)]
            return found[0] if sep and found else None
        if scheme.lower() == "hmac":
            return next((k for k in keys if self._hmac_ok(request, value, k)), None)
        return None

    def _hmac_ok(self, request: Request, value: str, key: SimKey) -> bool:
        """HMAC auth as the SDKs (hmac-sha1, x-Content-MD5) and the newer docs (hmac-sha256,
        Content-MD5) describe it: both readings are accepted."""
        params = dict(_HMAC_PARAM.findall(value))
        digest = _HMAC_DIGESTS.get(params.get("algorithm", "").lower())
        names = params.get("headers", "").split()
        if digest is None or not _same(params.get("username", ""), key.api_key):
            return False
        if "date" not in (n.lower() for n in names):
            return False
        try:
            sent = parsedate_to_datetime(request.headers.get("Date") or "")
        except (TypeError, ValueError):
            return False
        if abs(time.time() - sent.timestamp()) > HMAC_MAX_SKEW_S:
            return False
        body = request.body()
        if body:
            md5_names = [n for n in names if n.lower() in ("x-content-md5", "content-md5")]
            body_md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
            if not md5_names or (request.headers.get(md5_names[0]) or "").lower() != body_md5:
                return False
        lines = []
        for name in names:
            if name.lower() == "request-line":
                lines.append(f"{request.method} {request.target} HTTP/1.1")
                continue
            header = request.headers.get(name)
            if header is None:
                return False
            lines.append(f"{name}: {header}")
        expected = hmac.new(key.api_secret.encode(), "\n".join(lines).encode(), digest).digest()
        return _same(params.get("signature", ""), base64.b64encode(expected).decode())

    def _account(self, request: Request) -> str:
        """The account the call acts for (checked by ``_authenticated``)."""
        return request.account or self.account_id

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
                served[key] = _in_date_form(served[key], self.report_date_form)
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
        account = self._account(request)
        with self.lock:
            before = Counter(self._confirm_counts)
            self.confirm(ids, account)
            confirmed = [i for i in dict.fromkeys(ids) if self._confirm_counts[i] > before[i]]
            self._confirm_calls.append({"header": request.headers.get("Account"), "account": account,
                                        "ids": list(ids), "confirmed": confirmed})
        return Response.text(202, "Accepted")

    def _message_route(self, request: Request) -> Response:
        message_id = request.params["message_id"]
        with self.lock:
            msg = self._messages.get(message_id)
            if msg is None or msg.account != self._account(request):
                raise HttpError(404, "Message not found", details=[f"no message with id {message_id}"])
            body: dict[str, Any] = {
                "message_id": msg.message_id, "content": "", "destination_number": "", "format": "SMS",
                "delivery_report": True, "metadata": {},
            }
            body.update({k: v for k, v in msg.fields.items() if k not in _PRIVATE_MESSAGE_FIELDS})
            body["status"] = self._status_of(msg)
            return Response.json(200, copy.deepcopy(body))

    @staticmethod
    def _status_of(msg: _Message) -> str:
        if msg.latest is not None:
            return str(msg.latest.get("status"))
        return str(msg.fields.get("status", "delivered"))

    def _reporting_route(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "Request validation failed", details=["a JSON object body is required"])
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
        if direction not in ("outbound", "inbound"):
            raise HttpError(400, "Request validation failed", details=["direction: must be outbound or inbound"])
        statuses = body.get("status")
        if statuses is not None and (
            not isinstance(statuses, list) or not all(isinstance(s, str) and s == s.upper() for s in statuses)
        ):
            raise HttpError(400, "Request validation failed", details=["status: a list of UPPERCASE statuses"])
        meta_key = body.get("metadata_key")
        meta_values = body.get("metadata_values")
        if body.get("metadata_value") is not None:
            meta_values = [*(meta_values or []), body["metadata_value"]]
        if meta_values is not None and not meta_key:
            raise HttpError(400, "Request validation failed", details=["metadata_value needs metadata_key"])
        accounts = body.get("accounts") or [self._account(request)]
        if not isinstance(accounts, list):
            raise HttpError(400, "Request validation failed", details=["accounts: a list of account ids"])
        key = request.principal
        refused = [a for a in accounts if a != self._account(request)
                   and not (isinstance(key, SimKey) and key.may_act_for(a))]
        if refused:
            raise HttpError(403, f"Not authorised to act on behalf of account {str(refused[0])[:100]}")

        with self.lock:
            order = self._ordered_by_send_time()
            lo, hi = bisect.bisect_left(order.times, start), bisect.bisect_left(order.times, end)
            if direction != "outbound":  # the simulator only knows outbound messages
                chosen: list[_Message] = []
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

    def _ordered_by_send_time(self) -> _SendOrder:
        """Messages sorted by send time, built once after each change (call with the lock held)."""
        if self._send_order is None:
            ordered = sorted(self._messages.values(), key=lambda m: (m.sent_at, m.message_id))
            self._send_order = _SendOrder(ordered, [m.sent_at for m in ordered], {m.account for m in ordered})
        return self._send_order

    @staticmethod
    def _window_bound(body: dict[str, Any], key: str, zone: dt.tzinfo) -> dt.datetime:
        if body.get(key) is None:
            raise HttpError(400, "Request validation failed", details=[f"{key}: is required"])
        moment = parse_timestamp(body[key], zone)
        if moment is None:
            raise HttpError(400, "Request validation failed", details=[f"{key}: not an ISO-8601 date-time"])
        return moment

    def _reporting_record(self, msg: _Message, zone: dt.tzinfo) -> dict[str, Any]:
        raw_code = msg.latest.get("error_code") if msg.latest is not None else msg.fields.get("status_code")
        code = str(raw_code).strip() if raw_code is not None else None
        metadata = copy.deepcopy(msg.fields.get("metadata") or {})
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
                [{"key": k, "value": v} for k, v in metadata.items()] if self.reporting_metadata_shape == "list"
                else [{k: v} for k, v in metadata.items()] if self.reporting_metadata_shape == "single"
                else metadata
            ),
        }

    def _reporting_time(self, moment: dt.datetime | None, zone: dt.tzinfo) -> str | None:
        if moment is None:
            return None
        local = moment.astimezone(zone)
        if self.reporting_naive_timestamps:
            return local.replace(tzinfo=None).isoformat(timespec="seconds")
        if self.report_date_form != "iso_ms":
            return format_date_form(moment, self.report_date_form, zone)
        if not local.utcoffset():
            return format_timestamp(local)
        return local.isoformat(timespec="milliseconds")

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


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


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


def _public_hook(hook: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in hook.items() if not k.startswith("_")})


def _webhook_problems(body: dict[str, Any]) -> list[str]:
    """What MessageMedia's Webhooks API would refuse (400) in a create request."""
    problems: list[str] = []
    url = body.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append("url: a valid http(s) URL is required")
    method = body.get("method")
    if not isinstance(method, str) or method.upper() not in WEBHOOK_METHODS:
        problems.append(f"method: one of {', '.join(WEBHOOK_METHODS)} is required")
    encoding = body.get("encoding")
    if not isinstance(encoding, str) or encoding.upper() not in WEBHOOK_ENCODINGS:
        problems.append(f"encoding: one of {', '.join(WEBHOOK_ENCODINGS)} is required")
    events = body.get("events")
    if not isinstance(events, list) or not events:
        problems.append("events: at least one event is required")
    elif unknown := [e for e in events if e not in EVENTS]:
        problems.append(f"events: unknown {unknown}")
    headers = body.get("headers")
    if headers is not None:
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in headers.items()):
            problems.append("headers: an object of string values")
        elif any(k.lower() == "content-type" for k in headers):
            problems.append("headers: must not include Content-Type (set by encoding)")
    if body.get("template") is not None and not isinstance(body.get("template"), str):
        problems.append("template: a string")
    bounds = {"read_timeout": WEBHOOK_READ_TIMEOUT_MS[:2], "retries": (0, None), "retry_delay": WEBHOOK_RETRY_DELAY_S}
    for key, (low, high) in bounds.items():
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            problems.append(f"{key}: an integer {low} to {high}" if high is not None else f"{key}: an integer >= {low}")
    return problems


def _check_push_setting(key: str, value: Any) -> None:
    def number(minimum: float) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and value >= minimum

    if key in ("push_url",) and value is not None and (
        not isinstance(value, str) or not value.startswith(("http://", "https://"))
    ):
        raise ValueError(f"{key} must be an http(s) URL or null")
    if key == "push_headers" and (not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )):
        raise ValueError("push_headers must be an object of string values")
    if key in ("push_template", "push_ca_bundle", "sign_with_private_key_pem") and value is not None \
            and not isinstance(value, str):
        raise ValueError(f"{key} must be a string or null")
    if key == "sign_with_private_key_pem" and value:
        try:
            load_private_key(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"sign_with_private_key_pem: {exc}") from exc
    if key == "sign_digest":
        digest_key(str(value))
    if key == "sign_key_id" and not isinstance(value, str):
        raise ValueError("sign_key_id must be a string")
    if key in ("push_max_attempts", "push_concurrency") and (not isinstance(value, int) or not number(1)):
        raise ValueError(f"{key} must be an integer of at least 1")
    if key in ("push_retry_delay_s", "push_retry_max_delay_s", "push_timeout_s") and not number(0):
        raise ValueError(f"{key} must be a non-negative number")
    if key == "push_date_offset_s" and not number(float("-inf")):
        raise ValueError("push_date_offset_s must be a number")
