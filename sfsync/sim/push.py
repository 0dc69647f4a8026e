"""The MessageMedia simulator's push side: webhook templates, signed callbacks, and a pusher that
POSTs each delivery report to its targets from background threads, retrying non-2xx answers and
connection errors with exponential back-off up to a bounded number of attempts.

Signing is written here from the reference, independently of ``sfsync.push.auth``, so that the
tests check the receiver against a second reading of the protocol rather than against itself.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sfsync.clients.http import make_session

# Delivery report status -> the webhook event that pushes it.
DR_EVENTS: dict[str, str] = {
    "enroute": "ENROUTE_DR", "submitted": "SUBMITTED_DR", "delivered": "DELIVERED_DR",
    "expired": "EXPIRED_DR", "rejected": "REJECTED_DR", "failed": "FAILED_DR", "undeliverable": "FAILED_DR",
}
EVENTS = frozenset({*DR_EVENTS.values(), "RECEIVED_SMS", "OPT_OUT_SMS", "RECEIVED_MMS"})
SIGN_DIGESTS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "SHA1": hashes.SHA1, "SHA224": hashes.SHA224, "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384, "SHA512": hashes.SHA512,
}
def _ref(p: str = "") -> str:
    """A reference: $name, $!name (quiet), ${name}, and $metadata.get('key'); group names prefixed."""
    return (rf"\$(?P<{p}quiet>!)?(?P<{p}brace>\{{)?(?P<{p}name>[A-Za-z]\w*)(?({p}brace)\}})"
            rf"(?:\.get\((?P<{p}q>['\"])(?P<{p}key>.*?)(?P={p}q)\))?")


_VAR = re.compile(_ref())
# MessageMedia's escaping form (Velocity's EscapeTool): $esc.json(REF), or $!esc.json(REF) to
# render nothing when REF has no value.
_ESC = re.compile(r"\$(?P<i_outer>!)?esc\.json\(\s*" + _ref("i_") + r"\s*\)")
_ANY = re.compile(f"(?P<esc>{_ESC.pattern})|{_VAR.pattern}")


def template_values(report: dict[str, Any], attempt: int = 1) -> dict[str, Any]:
    vendor = report.get("vendor_account_id")
    return {
        "drId": report.get("delivery_report_id"), "reportId": report.get("delivery_report_id"),
        "messageId": report.get("message_id"), "mtId": report.get("message_id"),
        "status": report.get("status"), "statusCode": report.get("error_code"),
        "submittedTimestamp": report.get("submitted_date"), "receivedTimestamp": report.get("date_received"),
        "sourceAddress": report.get("source_number"),
        "accountId": vendor.get("account_id") if isinstance(vendor, dict) else None,
        "vendorId": vendor.get("vendor_id") if isinstance(vendor, dict) else None,
        "type": "SMS", "mtContent": report.get("original_text"), "messageContent": report.get("original_text"),
        "retryCount": attempt - 1, "billingUnits": report.get("billing_units"),
        "metadata": report.get("metadata") or {},
    }


def _java_text(value: Any) -> str:
    """A value as Java's toString() prints it: a map is ``{k=v, k2=v2}``, never JSON."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_java_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lookup(values: dict[str, Any], name: str, key: str | None) -> tuple[bool, Any]:
    """(known reference, its value) for ``$name`` or ``$name.get('key')``."""
    if name not in values:
        return False, None
    value = values[name]
    if key is None:
        return True, value
    if name != "metadata":
        return False, None
    return True, value.get(key) if isinstance(value, dict) else None


def render_template(template: str, report: dict[str, Any], attempt: int = 1) -> str:
    """A tiny Velocity, as strict as MessageMedia's: values are inserted as they are, with no JSON
    escaping (a quote or backslash in a value breaks a JSON template), unless the template asks
    for it with ``$esc.json(REF)``. A reference with no value stays as written (``$!`` renders
    nothing); a bare ``$metadata`` renders a Java map (``{k=v}``), not JSON."""
    values = template_values(report, attempt)

    def escaped(match: re.Match[str]) -> str:
        known, value = _lookup(values, match.group("i_name"), match.group("i_key"))
        if not known or value is None:
            return "" if match.group("i_outer") else match.group(0)
        return json.dumps(_java_text(value))[1:-1]

    def raw(match: re.Match[str]) -> str:
        known, value = _lookup(values, match.group("name"), match.group("key"))
        if not known:
            return match.group(0)
        if value is None:
            return "" if match.group("quiet") else match.group(0)
        return _java_text(value)

    # One pass over both forms, so that a value inserted is never rendered again.
    return _ANY.sub(lambda m: escaped(m) if m.group("esc") else raw(m), template)


def load_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("sign_with_private_key_pem must be an RSA private key")
    return key


def digest_key(name: str) -> str:
    key = name.replace("-", "").upper()
    if key not in SIGN_DIGESTS:
        raise ValueError(f"sign_digest must be one of {sorted(SIGN_DIGESTS)}, not {name!r}")
    return key


def sign_headers(key: rsa.RSAPrivateKey, method: str, url: str, body: bytes, *, digest: str = "SHA512",
                 key_id: str = "sim-key", now: float | None = None) -> dict[str, str]:
    """MessageMedia's signed-callback headers for one request."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    date = formatdate(time.time() if now is None else now, usegmt=True)
    data = f"{method} {target} HTTP/1.1".encode() + date.encode() + body
    signature = key.sign(data, padding.PKCS1v15(), SIGN_DIGESTS[digest_key(digest)]())
    return {
        "Date": date,
        "X-MessageMedia-Signature": base64.b64encode(signature).decode(),
        "X-MessageMedia-Digest-Type": digest_key(digest),
        "X-MessageMedia-Cipher-Type": "RSA",
        "X-MessageMedia-Key-Id": key_id,
    }


@dataclass
class Delivery:
    """One report to push to one target."""

    report: dict[str, Any]
    url: str
    kind: str  # "webhook", "push_url" or "callback_url"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    template: str | None = None  # None: the report itself as JSON (callback_url pushes)
    max_attempts: int = 6
    attempt: int = 0


@dataclass
class PushConfig:
    ca_bundle: str | None = None
    retry_delay_s: float = 0.05
    retry_max_delay_s: float = 2.0
    timeout_s: float = 5.0
    concurrency: int = 4
    sign_key: rsa.RSAPrivateKey | None = None
    sign_digest: str = "SHA512"
    sign_key_id: str = "sim-key"
    date_offset_s: float = 0.0  # shifts the Date header (to test a receiver's skew bound)


class Pusher:
    """Background threads that deliver pushes; started on the first one, stopped by ``stop()`` or
    as soon as ``stopping`` (the simulator server's stop event) is set."""

    def __init__(self, config: Callable[[], PushConfig], stopping: threading.Event):
        self._config = config
        self._stopping = stopping
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Delivery]] = []
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._inflight = 0
        self.log: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()

    def submit(self, delivery: Delivery) -> None:
        with self._cv:
            if self._closed:
                return
            heapq.heappush(self._heap, (time.monotonic(), next(self._seq), delivery))
            self.counts["queued"] += 1
            self._start_threads()
            self._cv.notify()

    def _start_threads(self) -> None:
        if self._threads:
            return
        for n in range(max(1, self._config().concurrency)):
            thread = threading.Thread(target=self._work, name=f"sim-pusher-{n}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _done(self) -> bool:
        return self._closed or self._stopping.is_set()

    def _next(self) -> Delivery | None:
        with self._cv:
            while not self._done():
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    self._inflight += 1
                    return heapq.heappop(self._heap)[2]
                wait = min(self._heap[0][0] - now, 0.1) if self._heap else 0.1
                self._cv.wait(wait)
            return None

    def _work(self) -> None:
        bundle = self._config().ca_bundle
        session = make_session(bundle, pool_size=2)
        try:
            while (delivery := self._next()) is not None:
                config = self._config()  # configure() may change it between pushes
                if config.ca_bundle != bundle:
                    session.close()
                    bundle = config.ca_bundle
                    session = make_session(bundle, pool_size=2)
                try:
                    ok = self._attempt(session, delivery, config)
                except Exception as exc:  # a bug in a push must not kill the pusher
                    ok = False
                    self._record(delivery, f"error: {exc}")
                with self._cv:
                    self._inflight -= 1
                    if ok:
                        self.counts["delivered"] += 1
                    elif delivery.attempt < delivery.max_attempts and not self._done():
                        delay = min(config.retry_delay_s * 2 ** (delivery.attempt - 1), config.retry_max_delay_s)
                        heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), delivery))
                    else:
                        self.counts["gave_up"] += 1
                    self._cv.notify_all()
        finally:
            session.close()

    def _attempt(self, session: requests.Session, delivery: Delivery, config: PushConfig) -> bool:
        delivery.attempt += 1
        if delivery.template is None:
            text = json.dumps(delivery.report)
        else:
            text = render_template(delivery.template, delivery.report, delivery.attempt)
        body = text.encode()
        headers = {"Content-Type": "application/json", **delivery.headers}
        if config.sign_key is not None:
            headers.update(sign_headers(config.sign_key, delivery.method, delivery.url, body,
                                        digest=config.sign_digest, key_id=config.sign_key_id,
                                        now=time.time() + config.date_offset_s))
        try:
            answer = session.request(delivery.method, delivery.url, data=body, headers=headers,
                                     timeout=(2.0, config.timeout_s))
        except requests.RequestException as exc:
            self._record(delivery, type(exc).__name__)
            return False
        self._record(delivery, answer.status_code)
        answer.close()
        return 200 <= answer.status_code < 300

    def _record(self, delivery: Delivery, outcome: int | str) -> None:
        with self._cv:
            self.counts["attempts"] += 1
            self.log.append({
                "delivery_report_id": delivery.report.get("delivery_report_id"), "url": delivery.url,
                "kind": delivery.kind, "attempt": delivery.attempt, "status": outcome, "at": time.time(),
            })

    def log_entries(self) -> list[dict[str, Any]]:
        """Copies of the log: every attempt, in order."""
        with self._cv:
            return [dict(entry) for entry in self.log]

    def workers(self) -> list[threading.Thread]:
        """The delivery threads started so far (none before the first push)."""
        with self._cv:
            return list(self._threads)

    def idle(self) -> bool:
        with self._cv:
            return not self._heap and self._inflight == 0

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every push was delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._heap or self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))
            return True

    def snapshot(self) -> dict[str, Any]:
        with self._cv:
            return {**{k: self.counts.get(k, 0) for k in ("queued", "attempts", "delivered", "gave_up")},
                    "pending": len(self._heap) + self._inflight}

    def stop(self) -> None:
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._cv.notify_all()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)
