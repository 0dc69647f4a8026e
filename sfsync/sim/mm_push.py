"""The MessageMedia simulator's push side (``PushPart``): a new report's pushes to the account's
webhooks, to ``push_url`` and to its ``callback_url`` (delivered by the ``Pusher`` of
``sfsync.sim.push``), the Webhooks and Signature Keys APIs that configure them, and the checks of
the push settings."""

from __future__ import annotations

import base64
import copy
import threading
import uuid
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sfsync.sim.base import HttpError, Request, Response
from sfsync.sim.mm_model import (
    SIGNATURE_DIGESTS,
    SIGNATURE_KEY_BITS,
    WEBHOOK_ENCODINGS,
    WEBHOOK_METHODS,
    WEBHOOK_READ_TIMEOUT_MS,
    WEBHOOK_RETRY_DELAY_S,
    MessageMediaState,
    SignatureKey,
    now_timestamp,
)
from sfsync.sim.push import DR_EVENTS, EVENTS, Delivery, PushConfig, Pusher, digest_key, load_private_key

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


class PushPart:
    """Pushes, webhooks and signature keys. Its ``pusher`` (``sfsync.sim.push``) delivers; ``stop`` and
    ``restart`` end it and put a fresh one in its place."""

    def __init__(self, state: MessageMediaState, stopping: threading.Event):
        self.state = state
        self.stopping = stopping  # the server's stop event: the pusher's threads end when it is set
        self.sign_key: rsa.RSAPrivateKey | None = None  # loaded from the sign_with_private_key_pem setting
        self.pusher = Pusher(self.config, stopping)

    def config(self) -> PushConfig:
        """The pusher's settings as they are now (it asks before every push)."""
        settings = self.state.settings
        sign_key, digest, key_id = self.sign_key, settings.sign_digest, settings.sign_key_id
        with self.state.lock:
            enabled = [k for k in self.state.signature_keys.values() if k.enabled]
        if sign_key is None and enabled:  # the account's enabled signature key signs every push
            sign_key, digest, key_id = enabled[0].private_key, enabled[0].digest, enabled[0].key_id
        return PushConfig(
            ca_bundle=settings.push_ca_bundle, retry_delay_s=float(settings.push_retry_delay_s),
            retry_max_delay_s=float(settings.push_retry_max_delay_s), timeout_s=float(settings.push_timeout_s),
            concurrency=int(settings.push_concurrency), sign_key=sign_key, sign_digest=digest,
            sign_key_id=key_id, date_offset_s=float(settings.push_date_offset_s),
        )

    def use_private_key(self, pem: str | None) -> None:
        """Sign every push with this key (the sign_with_private_key_pem setting); None: not with it."""
        self.sign_key = load_private_key(pem) if pem else None

    def stop(self) -> None:
        """Stop the pusher: pushes queued are dropped, one in flight may take its timeout to end."""
        self.pusher.stop()

    def restart(self) -> None:
        """A fresh pusher, with no pushes and no log (after ``stop``)."""
        self.pusher = Pusher(self.config, self.stopping)

    # -- push --------------------------------------------------------------------------------
    def push_report(self, wire: dict[str, Any], account: str) -> None:
        """Queue the pushes of one new report (called under the lock; the HTTP is the pusher's)."""
        settings = self.state.settings
        report = copy.deepcopy(wire)
        event = DR_EVENTS.get(str(report.get("status", "")).lower())
        for hook in self.state.webhooks.values():
            if hook["_account"] == account and event in hook["events"] and hook["method"] != "GET":
                retries = hook.get("retries")
                self.pusher.submit(Delivery(
                    report, hook["url"], "webhook", hook["method"], dict(hook.get("headers") or {}),
                    hook.get("template") or None,
                    max_attempts=(retries if isinstance(retries, int) else settings.push_max_attempts - 1) + 1,
                ))
        if settings.push_url:
            self.pusher.submit(Delivery(report, settings.push_url, "push_url", "POST", dict(settings.push_headers),
                                        settings.push_template, max_attempts=settings.push_max_attempts))
        callback = report.get("callback_url")
        if isinstance(callback, str) and callback.startswith(("http://", "https://")):
            self.pusher.submit(Delivery(report, callback, "callback_url", "POST", {}, None,
                                        max_attempts=settings.push_max_attempts))

    def counts(self) -> dict[str, Any]:
        """The pusher's counters: queued, attempts, delivered, gave_up, pending."""
        return self.pusher.snapshot()

    def push_log(self) -> list[dict[str, Any]]:
        """Every push attempt, in order: report id, url, kind, attempt, status (HTTP status or error)."""
        return self.pusher.log_entries()

    def wait_for_pushes(self, timeout: float = 10.0) -> bool:
        """Wait until every queued push was delivered or given up."""
        return self.pusher.wait_idle(timeout)

    def webhooks(self, account: str | None = None) -> list[dict[str, Any]]:
        with self.state.lock:
            return [_public_hook(h) for h in self.state.webhooks.values()
                    if account is None or h["_account"] == account]

    def create_webhook_route(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "Request validation failed", details=["a JSON object body is required"])
        problems = _webhook_problems(body)
        if problems:
            raise HttpError(400, "Request validation failed", details=problems)
        account = self.state.account_of(request)
        hook: dict[str, Any] = {
            "id": str(uuid.uuid4()), "url": body["url"], "method": body["method"].upper(),
            "encoding": body["encoding"].upper(), "headers": dict(body.get("headers") or {}),
            "events": list(dict.fromkeys(body["events"])), "template": body.get("template") or "",
        }
        hook["read_timeout"] = WEBHOOK_READ_TIMEOUT_MS[2]
        hook.update({k: body[k] for k in ("read_timeout", "retries", "retry_delay") if body.get(k) is not None})
        with self.state.lock:
            if any(h["_account"] == account and h["url"] == hook["url"] for h in self.state.webhooks.values()):
                raise HttpError(409, "A webhook with this url already exists", details=[hook["url"]])
            self.state.webhooks[hook["id"]] = {**hook, "_account": account}
        return Response.json(201, hook)

    def list_webhooks_route(self, request: Request) -> Response:
        try:
            page = int(request.arg("page") or 0)
            size = int(request.arg("page_size") or request.arg("pageSize") or 10)  # the spec's, an SDK's
        except ValueError as exc:
            raise HttpError(400, "Request validation failed", details=["page and pageSize are integers"]) from exc
        if page < 0 or not 1 <= size <= 100:
            raise HttpError(400, "Request validation failed", details=["page >= 0, page_size 1 to 100"])
        hooks = self.webhooks(self.state.account_of(request))
        return Response.json(200, {"page": page, "pageSize": size, "pageData": hooks[page * size : (page + 1) * size]})

    def delete_webhook_route(self, request: Request) -> Response:
        webhook_id = request.params["webhook_id"]
        with self.state.lock:
            hook = self.state.webhooks.get(webhook_id)
            if hook is None or hook["_account"] != self.state.account_of(request):
                raise HttpError(404, "Webhook not found", details=[f"no webhook with id {webhook_id}"])
            del self.state.webhooks[webhook_id]
        return Response(204)

    # -- signature keys ----------------------------------------------------------------------
    def create_key_route(self, request: Request) -> Response:
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
        key = SignatureKey(str(uuid.uuid4()), self.state.account_of(request), str(digest), private, now_timestamp())
        der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        with self.state.lock:
            self.state.signature_keys[key.key_id] = key
        return Response.json(201, {**key.public(), "public_key": base64.b64encode(der).decode()})

    def signature_keys(self) -> list[dict[str, Any]]:
        """Every signature key of every account, in creation order (as list and get show them)."""
        with self.state.lock:
            return [{**k.public(), "account": k.account} for k in self.state.signature_keys.values()]

    def _key_of(self, request: Request, key_id: Any) -> SignatureKey:
        key = self.state.signature_keys.get(key_id) if isinstance(key_id, str) else None
        if key is None or key.account != self.state.account_of(request):
            raise HttpError(404, "Entity not found")
        return key

    def list_keys_route(self, request: Request) -> Response:
        try:
            page, size = int(request.arg("page") or ""), int(request.arg("page_size") or "")
        except ValueError as exc:
            raise HttpError(400, "Bad Request", details=["page and page_size are required integers"]) from exc
        if page < 0 or size < 1:
            raise HttpError(400, "Bad Request", details=["page property value is invalid"])
        with self.state.lock:
            keys = [k.public() for k in self.state.signature_keys.values()
                    if k.account == self.state.account_of(request)]
        return Response.json(200, keys[page * size : (page + 1) * size])

    def get_key_route(self, request: Request) -> Response:
        with self.state.lock:
            return Response.json(200, self._key_of(request, request.params["key_id"]).public())

    def delete_key_route(self, request: Request) -> Response:
        with self.state.lock:
            key = self._key_of(request, request.params["key_id"])
            del self.state.signature_keys[key.key_id]
        return Response(200)

    def enable_key_route(self, request: Request) -> Response:
        body = request.json()
        key_id = body.get("key_id") if isinstance(body, dict) else None
        if not key_id:
            raise HttpError(400, "Bad Request", details=["/key_id: Key id cannot be null"])
        with self.state.lock:
            key = self._key_of(request, key_id)
            for other in self.state.signature_keys.values():  # one enabled key at a time
                if other.account == key.account:
                    other.enabled = False
            key.enabled = True
            return Response.json(200, key.public())

    def enabled_key_route(self, request: Request) -> Response:
        with self.state.lock:
            for key in self.state.signature_keys.values():
                if key.enabled and key.account == self.state.account_of(request):
                    return Response.json(200, key.public())
        raise HttpError(404, "Currently no key is enabled")

    def disable_key_route(self, request: Request) -> Response:
        with self.state.lock:
            for key in self.state.signature_keys.values():
                if key.account == self.state.account_of(request):
                    key.enabled = False
        return Response(204)


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
    elif not all(isinstance(e, str) for e in events):  # the spec's schema: an array of strings
        problems.append("events: a list of event names (strings)")
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


def check_push_setting(key: str, value: Any) -> None:
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
