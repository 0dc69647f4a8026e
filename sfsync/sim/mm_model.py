"""The MessageMedia simulator's data model: its constants, times in MessageMedia's wire forms, the
records it keeps (keys, reports, messages, signature keys, recorded exchanges), its run-time settings
(``Settings``) and the state every part of the simulator shares (``MessageMediaState``)."""

from __future__ import annotations

import collections
import datetime as dt
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from sfsync.sim.base import Request

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


def in_date_form(value: Any, form: str) -> Any:
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
    text = value.strip()
    if text[-1:] == "z":  # ISO 8601's UTC designator, in the lower case the spec's own examples use
        text = text[:-1] + "Z"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        if not spec_form:
            return None
        try:
            moment = dt.datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p")
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
class StoredReport:
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
class SignatureKey:
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
class SendOrder:
    messages: list[StoredMessage]
    times: list[dt.datetime]
    accounts: set[str]


@dataclass
class StoredMessage:
    message_id: str
    account: str
    sent_at: dt.datetime
    fields: dict[str, Any] = field(default_factory=dict)  # content, destination_number, metadata, ...
    sent_fixed: bool = False  # True when added directly with its own send time
    latest: dict[str, Any] | None = None  # the latest report by submitted_date
    latest_at: dt.datetime | None = None
    delivered_at: dt.datetime | None = None


@dataclass
class Settings:
    """What ``MessageMediaSim.configure`` changes at run time (checked there; the parts read them)."""

    reporting_metadata_shape: str
    reporting_naive_timestamps: bool
    report_date_form: str
    auth_failure_status: int
    confirm_delay_s: float  # a confirmation takes effect this long after its 202
    lose_confirms: int  # the next this many confirmations are answered 202 and never take effect
    # The confirm body's schema types each id ``format: uuid``: a request naming anything else is
    # refused whole (400). Off: any string is taken (a lenient deployment, for tests of opaque ids).
    confirm_uuid_only: bool
    confirm_error_details: bool  # a 400 names the offending items (off: a bare message)
    record_exchanges: bool
    push_url: str | None
    push_headers: dict[str, str]
    push_template: str | None
    push_max_attempts: int
    push_retry_delay_s: float
    push_retry_max_delay_s: float
    push_timeout_s: float
    push_concurrency: int
    push_ca_bundle: str | None
    push_date_offset_s: float
    sign_with_private_key_pem: str | None
    sign_key_id: str
    sign_digest: str


class MessageMediaState:
    """The simulator's in-memory state, guarded by ``lock``, and the settings its parts read. Each part
    (``mm_auth``, ``mm_reports``, ``mm_messages``, ``mm_push``) is given this one object."""

    def __init__(self, lock: threading.RLock, settings: Settings, account_id: str, keys: tuple[SimKey, ...],
                 clock: Callable[[], float]):
        self.lock = lock
        self.settings = settings
        self.account_id = account_id  # the default key's own account, used when no Account header is sent
        # Seconds since the epoch: when confirmations take effect (a test may replace it to advance time).
        self.clock = clock
        self.initial_keys = keys  # the constructor's keys, restored by ``clear``
        self.clear()

    def clear(self) -> None:
        """Forget every report, message, webhook, signature key, key added and log (lock held)."""
        self.reports: dict[str, StoredReport] = {}  # every report, in insertion order
        self.queues: dict[str, OrderedDict[str, StoredReport]] = {}  # unconfirmed, per account
        self.messages: dict[str, StoredMessage] = {}
        self.send_order: SendOrder | None = None  # reporting's index, rebuilt after messages change
        self.confirm_log: list[tuple[str, float]] = []
        self.confirm_counts: Counter[str] = Counter()
        self.confirm_unknown = 0
        self.webhooks: dict[str, dict[str, Any]] = {}  # id -> webhook as created, with its account
        self.signature_keys: dict[str, SignatureKey] = {}
        self.exchanges: collections.deque[Exchange] = collections.deque(maxlen=EXCHANGE_LOG_MAX)
        self.keys: dict[str, SimKey] = {k.api_key: k for k in self.initial_keys}
        self.confirm_calls: list[dict[str, Any]] = []

    def account_of(self, request: Request) -> str:
        """The account an authenticated call acts for (checked by ``AuthPart.guard``)."""
        return request.account or self.account_id
