"""Typed client over simple-salesforce for what sfsync needs; it owns its error classification.

Token: our own small OAuth client (simple-salesforce's login helpers hard-code salesforce.com
hosts): client credentials, JWT bearer (RS256), or a given token. REST: simple-salesforce with
our session (CA bundle, timeouts). Every answer's ``Sforce-Limit-Info`` is read to keep within the
configured share of the daily API allocation.

The token request and the JWT audience rules live in ``clients.sf_login``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession
from simple_salesforce.format import format_soql

from sfsync.clients.http import make_session, why_unreachable
from sfsync.clients.retry import RetryPolicy, parse_retry_after
from sfsync.clients.sf_login import (
    AUTH_ERRORS,
    PRODUCTION_AUDIENCE,
    SANDBOX_AUDIENCE,
    LoginToken,
    is_sandbox_host,
    jwt_audience,
    token_request,
)
from sfsync.domain.ids import canonical_id, task_id
from sfsync.errors import AuthError, BudgetExhausted, ConfigError, RemoteError
from sfsync.logs import register_secret
from sfsync.settings.config import Settings

# Re-exported: callers import the login names from here.
__all__ = [
    "AUTH_ERRORS", "COLLECTION_LIMIT", "IN_LIST_LIMIT", "PRODUCTION_AUDIENCE", "SANDBOX_AUDIENCE", "VIEW_SETUP",
    "SalesforceClient", "Usage", "WriteResult", "aligned_results", "is_daily_limit", "is_lock_error",
    "is_sandbox_host", "jwt_audience", "valid_task_id",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

IN_LIST_LIMIT = 100  # values per SOQL IN list: keeps the URI under 16,384 bytes with 36-char ids
COLLECTION_LIMIT = 200  # records per sObject Collections call
MAX_QUERY_PAGES = 5_000  # pages of one query (at least 200 records each: a million records)
QUERY_MAX_SECONDS = 900.0  # one query's pages, all together
LOCK_ERRORS = {"UNABLE_TO_LOCK_ROW"}
CONFIG_ERRORS = {
    "MALFORMED_QUERY", "INVALID_FIELD", "INVALID_TYPE", "JSON_PARSER_ERROR", "INVALID_FIELD_FOR_INSERT_UPDATE",
}
# REQUEST_LIMIT_EXCEEDED names the limit it hit: only the daily allocation is a budget stop; the
# concurrency limits (ConcurrentRequests, ConcurrentPerOrgLongTxn) clear in seconds.
DAILY_LIMIT_MARK = "TotalRequests"
VIEW_SETUP = "View Setup and Configuration"  # the permission GET /limits needs (sfsync runs never call it)
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


def is_lock_error(code: str, message: str) -> bool:
    """A record Salesforce could not lock: ``UNABLE_TO_LOCK_ROW``, or a trigger or flow failing on a
    lock (``CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY`` wrapping one). Transient: retry that record."""
    return code in LOCK_ERRORS or (code == "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY" and "lock" in message.lower())


def is_daily_limit(code: str, message: str) -> bool:
    """``REQUEST_LIMIT_EXCEEDED`` for the daily allocation ("TotalRequests Limit exceeded."), as
    opposed to a concurrency limit, which is transient."""
    return code == "REQUEST_LIMIT_EXCEEDED" and DAILY_LIMIT_MARK.lower() in message.lower()


def valid_task_id(value: str) -> bool:
    """A 15- or 18-character Task Id (key prefix 00T) in any form Salesforce accepts (``sfsync.domain.ids``)."""
    return task_id(value) is not None


@dataclass
class Usage:
    used: int = 0
    max: int = 0

    @property
    def ratio(self) -> float:
        return self.used / self.max if self.max else 0.0


@dataclass(frozen=True)
class WriteResult:
    """One record's outcome, from sObject Collections or a Bulk API job's results."""

    task_id: str
    ok: bool
    error_code: str | None = None
    message: str | None = None
    transient: bool = False  # still locked after retries: do not confirm, try next run


class SalesforceClient:
    def __init__(self, settings: Settings, *, session: requests.Session | None = None,
                 policy: RetryPolicy | None = None, sleep: Callable[[float], Any] = time.sleep):
        self.settings = settings
        self.session = session or make_session(settings.ca_bundle or None, timeout=(10.0, settings.http_timeout))
        self.session.hooks["response"].append(self._observe)
        self.policy = policy or RetryPolicy(settings.retry_attempts, settings.retry_max_seconds, sleep=sleep)
        self.budget_ratio = settings.api_budget_pct / 100.0
        self.usage = Usage()
        self.calls: Counter[str] = Counter()
        self._local = threading.local()
        self._token: LoginToken | None = None
        self._sf: Salesforce | None = None
        self._login_lock = threading.Lock()
        for secret in (settings.sf_client_secret.value, settings.sf_access_token.value):
            register_secret(secret)

    @property
    def calls_total(self) -> int:
        return sum(self.calls.values())

    # -- authentication -------------------------------------------------------------------------------
    @property
    def sf(self) -> Salesforce:
        if self._sf is None:
            self.login()
        assert self._sf is not None
        return self._sf

    def login(self, expired: Salesforce | None = None) -> None:
        """Get a token; with ``expired`` (the session a call found expired), only if no other
        thread has replaced that session meanwhile (concurrent calls share one new token)."""
        with self._login_lock:
            if expired is not None and self._sf is not None and self._sf is not expired:
                return
            try:
                token = self._fetch_token()
            except RemoteError as exc:
                # Already retried to the limit: a call around this login must not retry it all again.
                raise RemoteError(str(exc), transient=False, status=exc.status, code=exc.code) from exc
            register_secret(token.access_token)
            self._token = token
            self._sf = Salesforce(instance_url=token.instance_url, session_id=token.access_token,
                                  session=self.session, version=self.settings.sf_api_version)

    def _fetch_token(self) -> LoginToken:
        s = self.settings
        if s.sf_auth_mode == "token":
            return LoginToken(s.sf_instance_url, s.sf_access_token.value)
        return self._retried("token", token_request(s, self.session, self.calls))

    @property
    def user_id(self) -> str:
        """The integration user's Id, from the token's identity URL (empty for a given token)."""
        identity = self._token.identity if self._token else ""
        return identity.rstrip("/").rsplit("/", 1)[-1] if "/id/" in identity else ""

    # -- every call goes through here --------------------------------------------------------------------
    def _observe(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._local.last_headers = response.headers
        found = _USAGE.search(response.headers.get("Sforce-Limit-Info", ""))
        if found:
            self.usage = Usage(int(found.group(1)), int(found.group(2)))

    def check_budget(self) -> None:
        if self.usage.max and self.usage.ratio >= self.budget_ratio:
            raise BudgetExhausted(
                f"Salesforce API usage {self.usage.used}/{self.usage.max} reached "
                f"SFSYNC_API_BUDGET_PCT={self.settings.api_budget_pct:g}%; stopping cleanly, the next run resumes"
            )

    def _call(self, name: str, fn: Callable[[Salesforce], T]) -> T:
        def attempt() -> T:
            try:
                return fn(self.sf)
            except SalesforceExpiredSession:
                raise
            except SalesforceError as exc:
                raise self._translate(exc, name) from exc
            except (ValueError, RecursionError) as exc:  # a 2xx answer that is not JSON
                raise RemoteError(f"Salesforce {name}: answer is not valid JSON", transient=True) from exc

        def once() -> T:
            self.check_budget()
            self.calls[name] += 1
            session = self.sf
            try:
                return attempt()
            except SalesforceExpiredSession:
                # One new token, one retry; a second 401 is an authentication problem.
                log.info("Salesforce session expired; getting a new token", extra={"event": "token_refresh"})
                self.login(expired=session)
                self.calls[name] += 1
                try:
                    return attempt()  # its other failures are classified (and retried) like any other
                except SalesforceExpiredSession as exc:
                    raise AuthError("Salesforce rejected a fresh token (INVALID_SESSION_ID twice)") from exc

        return self._retried(name, once)

    def _retried(self, name: str, once: Callable[[], T]) -> T:
        try:
            return self.policy.call(f"salesforce.{name}", once)
        except requests.RequestException as exc:
            # Still unreachable after every retry: a service error (exit 8), not a crash.
            raise RemoteError(f"Salesforce {name}: no usable answer after every retry ({why_unreachable(exc)})",
                              transient=True) from exc

    def call(self, name: str, fn: Callable[[Salesforce], T]) -> T:
        """Run ``fn`` with the same retries, budget check, token refresh and error classification
        as every call of this client (for APIs it has no method for, e.g. Bulk API 2.0 in
        ``sfsync.clients.bulk``). ``fn`` raises simple-salesforce's exceptions for error answers."""
        return self._call(name, fn)

    def _translate(self, exc: SalesforceError, name: str) -> Exception:
        status = int(getattr(exc, "status", 0) or 0)
        errors: list[Any] = exc.content if isinstance(exc.content, list) else []
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        code = str(first.get("errorCode", ""))
        message = str(first.get("message", "")) or str(exc.content)[:200]
        headers = getattr(self._local, "last_headers", {}) or {}
        if is_daily_limit(code, message):
            return BudgetExhausted(f"Salesforce daily API limit exceeded ({message}); the next run resumes")
        if code == "REQUEST_LIMIT_EXCEEDED":  # a concurrency limit: clears in seconds, retried with back-off
            return RemoteError(f"Salesforce {name}: too many concurrent requests ({message})", transient=True,
                               status=status, code=code, retry_after=parse_retry_after(headers.get("Retry-After")))
        if status == 403 and name == "limits":
            return ConfigError(f"Salesforce refused GET /limits ({code}: {message}): the integration user lacks the "
                               f"\"{VIEW_SETUP}\" permission")
        if status == 403:
            return ConfigError(f"Salesforce refused {name} ({code}: {message}). Give the integration user access "
                               "to Task and the SMS fields (config/salesforce permission set).")
        if code in CONFIG_ERRORS:
            return ConfigError(f"Salesforce rejected the {name} ({code}: {message}). Check the SFSYNC_FIELD_* "
                               "variables against the Task fields in your org (sfsync doctor).")
        transient = status == 429 or status >= 500 or code in LOCK_ERRORS
        return RemoteError(f"Salesforce {name}: HTTP {status} {code} {message}".strip(), transient=transient,
                           status=status, code=code or None, retry_after=parse_retry_after(headers.get("Retry-After")))

    # -- look-ups -----------------------------------------------------------------------------------------
    def query_all(self, soql: str, name: str = "query") -> Iterator[dict[str, Any]]:
        """All records of a query, page by page (each page is one API call, retried on its own).

        Bounded: a nextRecordsUrl served twice, a page that is not the last but holds no record,
        more records than the query's totalSize, more than ``MAX_QUERY_PAGES`` pages or
        ``QUERY_MAX_SECONDS`` is a runaway answer (``RemoteError``, exit 8), never a budget drain;
        a signal or the run's --max-seconds ends it between pages (``StopRequested``)."""
        started = time.monotonic()
        page = self._call(name, lambda sf: _checked_page(sf.query(soql), name))
        total = page.get("totalSize")
        seen: set[str] = set()
        records = 0
        while True:
            batch = page.get("records", [])
            records += len(batch)
            yield from batch
            next_url = page.get("nextRecordsUrl")
            if page.get("done", True) or not next_url:
                return
            why = ("its nextRecordsUrl repeats" if next_url in seen else
                   "a page before the last holds no record" if not batch else
                   f"more records than its totalSize ({total})" if isinstance(total, int) and records > total else
                   f"more than {MAX_QUERY_PAGES} pages" if len(seen) + 1 >= MAX_QUERY_PAGES else
                   f"still paging after {QUERY_MAX_SECONDS:g}s" if time.monotonic() - started > QUERY_MAX_SECONDS
                   else "")
            if why:
                raise RemoteError(f"Salesforce {name}: a runaway answer ({why}, after {len(seen) + 1} page(s) and "
                                  f"{records} record(s); next {next_url[:120]!r}): stopped; the next run tries again",
                                  transient=False)
            seen.add(next_url)
            self.policy.check_stop(f"Salesforce {name}")
            page = self._call("query_more", lambda sf, url=next_url: _checked_page(  # type: ignore[misc]
                _query_more(url)(sf), "query_more"))

    def find_tasks(self, task_ids: Iterable[str], message_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Tasks whose Id is in ``task_ids`` or whose message-id field is in ``message_ids``, with
        the fields precedence needs. Batched: at most 100 literals per query, all escaped."""
        fields = ", ".join(self.settings.task_fields())
        msg_field = self.settings.field_message_id
        canonical = [c for c in (canonical_id(v) for v in task_ids) if c]  # Ids in SOQL: canonical, never raw
        values = [("Id", v) for v in dict.fromkeys(canonical)] + [(msg_field, v) for v in dict.fromkeys(message_ids)]
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(values), IN_LIST_LIMIT):
            chunk = values[start : start + IN_LIST_LIMIT]
            ids = [v for f, v in chunk if f == "Id"]
            mids = [v for f, v in chunk if f != "Id"]
            clauses = []
            if ids:
                clauses.append(format_soql("Id IN {}", ids))
            if mids:
                clauses.append(format_soql(f"{msg_field} IN {{}}", mids))
            soql = f"SELECT {fields} FROM Task WHERE {' OR '.join(clauses)}"
            for record in self.query_all(soql):
                record.pop("attributes", None)
                record_id = canonical_id(record.get("Id"))
                if record_id is None or not isinstance(record.get(msg_field), str | None):
                    raise RemoteError(f"Salesforce query: a Task without an Id, or whose {msg_field} is not text",
                                      transient=False)
                record["Id"] = record_id
                found[record_id] = record
        return list(found.values())

    # -- writes -------------------------------------------------------------------------------------------
    def update_tasks(self, records: list[dict[str, Any]]) -> list[WriteResult]:
        """sObject Collections PATCH of at most 200 records, allOrNone false, results matched by id
        (``aligned_results``: an answer that cannot be matched is a transient failure, retried).
        Records failing with UNABLE_TO_LOCK_ROW are retried alone, with back-off."""
        if len(records) > COLLECTION_LIMIT:
            raise ValueError(f"at most {COLLECTION_LIMIT} records per call")
        results: dict[str, WriteResult] = {}
        pending = records

        def attempt() -> list[dict[str, Any]]:
            nonlocal pending
            payload = {"allOrNone": False,
                       "records": [{"attributes": {"type": "Task"}, **r} for r in pending]}
            sent = list(pending)
            answer = self._call("composite", lambda sf: aligned_results(
                sent, _restful(sf, "composite/sobjects", method="PATCH", json=payload)))
            locked = []
            for record, result in zip(pending, answer, strict=True):
                task_id = str(record["id"])
                if isinstance(result, dict) and result.get("success"):
                    results[task_id] = WriteResult(task_id, True)
                    continue
                errors = result.get("errors") if isinstance(result, dict) else None
                first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
                code = str(first.get("statusCode", "UNKNOWN"))
                message = str(first.get("message", ""))
                if is_lock_error(code, message):
                    locked.append(record)
                    results[task_id] = WriteResult(task_id, False, code, message, transient=True)
                else:
                    results[task_id] = WriteResult(task_id, False, code, message)
            pending = locked
            return locked

        # Rows Salesforce kept locked: written again alone, with back-off (a strategy of the retry module).
        self.policy.repeat("salesforce.row_lock", attempt, lambda locked: not locked)
        return [results[str(r["id"])] for r in records]

    # -- metadata -----------------------------------------------------------------------------------------
    def describe_task(self) -> dict[str, Any]:
        answer = self._call("describe", lambda sf: _restful(sf, "sobjects/Task/describe"))
        return answer if isinstance(answer, dict) else {}

    def limits(self) -> dict[str, Any]:
        answer = self._call("limits", lambda sf: _restful(sf, "limits/"))
        return answer if isinstance(answer, dict) else {}


def _restful(sf: Salesforce, path: str, **kwargs: Any) -> Any:
    try:
        return sf.restful(path, **kwargs)
    except TypeError as exc:  # simple-salesforce takes len() of the answer: a bare JSON number or null breaks it
        raise RemoteError(f"Salesforce {path}: an answer of an unexpected shape", transient=True) from exc


def _checked_page(answer: Any, name: str) -> dict[str, Any]:
    """A query page as the callers rely on it: a records list of objects, a text nextRecordsUrl
    when there is more. Anything else is a garbled answer, tried again."""
    records = answer.get("records", []) if isinstance(answer, dict) else None
    if not isinstance(records, list):
        raise RemoteError(f"Salesforce {name}: the answer has no records list", transient=True)
    if not all(isinstance(r, dict) for r in records):
        raise RemoteError(f"Salesforce {name}: the answer holds a record that is not an object", transient=True)
    if not isinstance(answer.get("nextRecordsUrl"), str | None):
        raise RemoteError(f"Salesforce {name}: the answer's nextRecordsUrl is not a path", transient=True)
    return answer


def _query_more(url: str) -> Callable[[Salesforce], Any]:
    return lambda sf: sf.query_more(url, identifier_is_url=True)


def aligned_results(records: list[dict[str, Any]], answer: Any) -> list[dict[str, Any]]:
    """An sObject Collections answer's results in the order of ``records`` (each with its ``id``).

    Results are matched by the ``id`` each carries (Salesforce names it on success; on failure it
    may be absent or null). A result without an id can only be matched by position: that is
    accepted when the count matches and every result that does carry an id sits at its record's
    position. Anything else (a count that differs, an id not sent or named twice, success without
    an id, ``success: true`` with errors, a success that is not a boolean) is an answer that cannot
    be trusted: a transient ``RemoteError``, so nothing is recorded from it and the writes are held
    and tried again (a write applied meanwhile is found already there)."""

    def garbled(why: str) -> RemoteError:
        return RemoteError(f"Salesforce composite: the answer cannot be matched to the records sent ({why}); "
                           "nothing recorded from it, the writes are tried again", transient=True)

    if not isinstance(answer, list) or len(answer) != len(records):
        raise garbled("not one result per record")
    wanted = [canonical_id(str(r.get("id", ""))) for r in records]
    position: dict[str, int] = {}
    for i, rid in enumerate(wanted):
        if rid is not None and rid not in position:
            position[rid] = i
    aligned: list[dict[str, Any] | None] = [None] * len(records)
    idless: list[int] = []
    in_place = True
    for i, result in enumerate(answer):
        if not isinstance(result, dict) or not isinstance(result.get("success"), bool):
            raise garbled(f"result {i} has no success flag")
        errors = result.get("errors")
        if result["success"] and errors not in (None, []):
            raise garbled(f"result {i} is a success with errors")
        raw_id = result.get("id")
        if raw_id in (None, ""):
            if result["success"]:
                raise garbled(f"result {i} is a success without an id")
            idless.append(i)
            continue
        rid = canonical_id(raw_id)
        at = position.get(rid) if rid is not None else None
        if at is None:
            raise garbled(f"result {i} names an id not sent ({str(raw_id)[:40]!r})")
        if wanted.count(rid) > 1:  # the same record sent twice: only its position tells them apart
            if wanted[i] != rid:
                raise garbled(f"result {i} names a record sent twice, out of its place")
            at = i
        if aligned[at] is not None:
            raise garbled(f"result {i} names an id twice ({rid})")
        in_place = in_place and at == i
        aligned[at] = result
    if idless:
        if not in_place:
            raise garbled("results without an id among results out of place")
        for i in idless:
            aligned[i] = answer[i]
    if any(r is None for r in aligned):  # cannot happen once the ids are unique and known; never guessed
        raise garbled("a record without a result")
    return [r for r in aligned if r is not None]
