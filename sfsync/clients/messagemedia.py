"""Typed client for the parts of MessageMedia's API sfsync uses; it owns its error classification.

401/403 -> AuthError (never retried: the current spec answers bad credentials with 403, some SDKs
and older docs with 401); 429, 5xx, connection errors, timeouts and malformed JSON
-> transient, retried by the shared policy (Retry-After honoured); other 4xx -> permanent.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, deque
from typing import Any

import requests

from sfsync.clients.http import make_session, why_unreachable
from sfsync.clients.retry import RetryPolicy, parse_retry_after
from sfsync.errors import AuthError, RemoteError
from sfsync.logs import register_secret
from sfsync.settings.accounts import MMAccount
from sfsync.settings.config import Settings

log = logging.getLogger(__name__)

CONFIRM_LIMIT = 100  # ids per confirm call, as the API allows
REFUSED_STATUSES = (400, 422)  # a confirmation refused for what it names: split to find which ids
NAMED_ITEM = re.compile(r"delivery_report_ids\[(\d+)\]")  # "delivery_report_ids[3]: must be a valid uuid"
WEBHOOK_EVENTS = ("ENROUTE_DR", "SUBMITTED_DR", "DELIVERED_DR", "EXPIRED_DR", "REJECTED_DR", "FAILED_DR")


class MessageMediaClient:
    """The API as one account sees it: ``account`` (default: the first account of the settings)
    gives the key pair, and the ``Account`` header sent on every call when it is a sub-account."""

    def __init__(self, settings: Settings, *, session: requests.Session | None = None,
                 policy: RetryPolicy | None = None, account: MMAccount | None = None):
        self.account = account or settings.poll_accounts()[0]
        self.base_url = settings.mm_base_url.rstrip("/")
        self.session = session or make_session(settings.ca_bundle or None, timeout=(10.0, settings.http_timeout))
        self.session.auth = (self.account.api_key, self.account.api_secret.value)
        register_secret(self.account.api_secret.value)
        self.session.headers["Accept"] = "application/json"
        if self.account.header:
            self.session.headers["Account"] = self.account.header
        self.policy = policy or RetryPolicy(settings.retry_attempts, settings.retry_max_seconds)
        self.calls: Counter[str] = Counter()

    @property
    def calls_total(self) -> int:
        return sum(self.calls.values())

    # -- plumbing ------------------------------------------------------------------------------------
    def _call(self, name: str, method: str, path: str, *, expect_json: bool = True, allow_404: bool = False,
              **kwargs: Any) -> Any:
        def once() -> Any:
            self.calls[name] += 1
            response = self.session.request(method, self.base_url + path, **kwargs)
            if allow_404 and response.status_code == 404:
                return None
            self._raise_for(response, name)
            if not expect_json:
                return response.text
            try:
                return response.json()
            except (ValueError, RecursionError) as exc:
                # A truncated or non-JSON 2xx answer: the request may be retried safely.
                raise RemoteError(f"MessageMedia {name}: answer is not valid JSON", transient=True,
                                  status=response.status_code) from exc

        try:
            return self.policy.call(f"messagemedia.{name}", once)
        except requests.RequestException as exc:
            # Still unreachable after every retry: a service error (exit 8), not a crash.
            raise RemoteError(f"MessageMedia {name}: no usable answer after every retry ({why_unreachable(exc)})",
                              transient=True) from exc

    def _raise_for(self, response: requests.Response, name: str) -> None:
        status = response.status_code
        if status < 400:
            return
        detail = _error_message(response)
        if status in (401, 403):
            whose = f" for {self.account.label}" if self.account.name else ""
            raise AuthError(
                f"MessageMedia refused the credentials{whose} (HTTP {status}: {detail}). "
                f"Check {self.account.variables}."
            )
        transient = status == 429 or status >= 500
        raise RemoteError(
            f"MessageMedia {name}: HTTP {status} {detail}", transient=transient, status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    # -- delivery reports ----------------------------------------------------------------------------
    def fetch_reports(self) -> list[Any]:
        """The oldest (at most 100) unconfirmed delivery reports, as raw JSON values."""
        body = self._call("fetch", "GET", "/v1/delivery_reports")
        reports = body.get("delivery_reports") if isinstance(body, dict) else None
        if not isinstance(reports, list):
            raise RemoteError("MessageMedia fetch: the answer has no delivery_reports list", transient=True)
        return reports

    def confirm(self, report_ids: list[str]) -> list[str]:
        """Confirm reports so they are not served again; returns the ids MessageMedia refused.

        A confirmation refused for what it names (400: the spec types every id as a uuid, and one id
        it will not take refuses the whole request) is split to isolate the ids it refuses; the rest
        are confirmed. The split follows the item numbers the refusal names when it names any (a
        hint, checked by the calls themselves), else halves; either way at most ``split_budget``
        calls per 100 ids: ids still undecided then are returned as refused (they stay staged and
        unconfirmed, and come back in the next run)."""
        ids = list(dict.fromkeys(report_ids))
        refused: list[str] = []
        for start in range(0, len(ids), CONFIRM_LIMIT):
            refused += self._confirm_chunk(ids[start : start + CONFIRM_LIMIT])
        return refused

    def _confirm_once(self, ids: list[str]) -> RemoteError | None:
        """One confirm call: None when accepted, the refusal when MessageMedia refused what it names."""
        try:
            self._call("confirm", "POST", "/v1/delivery_reports/confirmed", expect_json=False,
                       json={"delivery_report_ids": ids})
        except RemoteError as exc:
            if exc.transient or exc.status not in REFUSED_STATUSES:
                raise
            return exc
        return None

    def _confirm_chunk(self, chunk: list[str]) -> list[str]:
        first = self._confirm_once(chunk)
        if first is None:
            return []
        if len(chunk) == 1:
            return list(chunk)
        named = {int(n) for n in NAMED_ITEM.findall(str(first))} & set(range(len(chunk)))
        if named and len(named) < len(chunk):  # the rest first, then the named ones, each checked
            parts = [[c for n, c in enumerate(chunk) if n not in named], [chunk[n] for n in sorted(named)]]
        else:
            parts = _halves(chunk)
        calls_left = split_budget(len(chunk)) - 1
        refused: list[str] = []
        queue = deque(parts)
        while queue:
            part = queue.popleft()
            if calls_left <= 0:
                refused += part  # undecided: not confirmed this run, kept staged
                continue
            calls_left -= 1
            if self._confirm_once(part) is None:
                continue
            if len(part) == 1:
                refused += part
            else:
                queue.extend(_halves(part))
        log.warning("MessageMedia refused to confirm %d of %d report id(s)%s (%s): %s; they stay staged (applied or "
                    "dead-lettered as usual) and at the head of its queue, not confirmed again this run",
                    len(refused), len(chunk), f" of {self.account.label}" if self.account.name else "",
                    _shown_ids(refused), first, extra={"event": "confirm_refused", "account": self.account.name})
        return refused

    # -- messages and reporting (backfill) -------------------------------------------------------------
    def message(self, message_id: str) -> dict[str, Any] | None:
        """A sent message with its current status; None when unknown or older than 45 days."""
        from urllib.parse import quote

        body = self._call("message", "GET", f"/v1/messages/{quote(message_id, safe='')}", allow_404=True)
        return body if isinstance(body, dict) else None

    def reporting_page(self, query: dict[str, Any]) -> dict[str, Any]:
        body = self._call("reporting", "POST", "/v2-preview/reporting/messages/detail", json=query)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise RemoteError("MessageMedia reporting: the answer has no messages list", transient=True)
        return body

    # -- webhooks (push mode) ----------------------------------------------------------------------------
    def create_webhook(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Create a webhook. A create is not idempotent: when its answer is lost, the retry meets 409
        (a webhook with this URL already exists). That webhook is the one this call created (callers
        look for an existing one first), so it is returned as created."""
        try:
            body = self._call("webhooks", "POST", "/v1/webhooks/messages", json=payload)
        except RemoteError as exc:
            same = [h for h in self.list_webhooks() if h.get("url") == payload.get("url")] if exc.status == 409 else []
            if not same:
                raise
            log.info("the webhook to %s was created before its answer was lost; it is kept", payload.get("url"),
                     extra={"event": "webhook_created_answer_lost"})
            return same[0]
        return body if isinstance(body, dict) else {}

    def list_webhooks(self) -> list[dict[str, Any]]:
        """Every webhook of the account. The API pages them as ``{"page", "pageSize", "pageData"}``; the
        page size is asked for as ``page_size`` (the spec) and ``pageSize`` (an SDK)."""
        found: dict[str, dict[str, Any]] = {}
        for page in range(100):  # bounded: an account has a handful
            body = self._call("webhooks", "GET", "/v1/webhooks/messages",
                              params={"page": page, "page_size": 100, "pageSize": 100})
            if isinstance(body, list):
                items: Any = body
            elif isinstance(body, dict):
                items = body.get("pageData", body.get("webhooks", body.get("data", [])))
            else:
                items = []
            hooks = [h for h in items if isinstance(h, dict)] if isinstance(items, list) else []
            fresh = [h for h in hooks if str(h.get("id")) not in found]
            found.update((str(h.get("id")), h) for h in fresh)
            size = body.get("pageSize", 100) if isinstance(body, dict) else 100
            if not fresh or not isinstance(size, int) or len(hooks) < size:
                break
        return list(found.values())

    def delete_webhook(self, webhook_id: str) -> None:
        from urllib.parse import quote

        self._call("webhooks", "DELETE", f"/v1/webhooks/messages/{quote(webhook_id, safe='')}", expect_json=False)

    # -- signature keys (signed callbacks) -------------------------------------------------------------
    def create_signature_key(self, *, digest: str, cipher: str = "RSA") -> dict[str, Any]:
        """``POST /v1/iam/signature_keys``: a new key pair, not enabled. Its answer is the only one
        that carries the public key (``public_key``); list and get never return it."""
        body = self._call("signature_keys", "POST", "/v1/iam/signature_keys",
                          json={"digest": digest, "cipher": cipher})
        return body if isinstance(body, dict) else {}

    def enable_signature_key(self, key_id: str) -> dict[str, Any]:
        """``PATCH /v1/iam/signature_keys/enabled``: one key is enabled at a time, so this disables
        the one enabled before."""
        body = self._call("signature_keys", "PATCH", "/v1/iam/signature_keys/enabled", json={"key_id": key_id})
        return body if isinstance(body, dict) else {}


def split_budget(size: int) -> int:
    """Confirm calls allowed for a batch of ``size`` ids once it is refused: enough to bisect out
    two refused ids (each costs two calls per halving), never one call per id."""
    return 1 + 4 * max(1, math.ceil(math.log2(max(size, 2))))


def _halves(ids: list[str]) -> list[list[str]]:
    middle = len(ids) // 2
    return [ids[:middle], ids[middle:]]


def _shown_ids(ids: list[str], limit: int = 5) -> str:
    shown = [repr(i) if len(i) <= 40 else repr(i[:37] + "...") for i in ids[:limit]]
    return ", ".join(shown) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return response.text[:200]
    if isinstance(body, dict):
        message = str(body.get("message", ""))
        details = body.get("details")
        if isinstance(details, list) and details:
            message += " (" + "; ".join(str(d) for d in details[:3]) + ")"
        return message[:300]
    return str(body)[:200]
