"""Typed client over simple-salesforce for what sfsync needs; it owns its error classification.

Token: our own small OAuth client (simple-salesforce's login helpers hard-code salesforce.com
hosts): client credentials, JWT bearer (RS256), or a given token. REST: simple-salesforce with
our session (CA bundle, timeouts). Every answer's ``Sforce-Limit-Info`` is read to keep within the
configured share of the daily API allocation.

The token request and the JWT audience rules live in ``clients.sf_login``; what sfsync asks of
Task (the look-ups and writes, packed into Composite requests) in ``clients.sf_tasks``, a part this
client holds and serves as its ``Connection``; reading the answers in ``clients.sf_answers``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession

from sfsync.clients.http import make_session, why_unreachable
from sfsync.clients.retry import RetryPolicy, parse_retry_after
from sfsync.clients.sf_answers import (
    LOCK_ERRORS,
    Usage,
    WriteResult,
    aligned_results,
    checked_page,
    is_daily_limit,
    is_lock_error,
    restful,
)
from sfsync.clients.sf_login import (
    AUTH_ERRORS,
    PRODUCTION_AUDIENCE,
    SANDBOX_AUDIENCE,
    LoginToken,
    is_sandbox_host,
    jwt_audience,
    token_request,
)
from sfsync.clients.sf_tasks import COLLECTION_LIMIT, COMPOSITE_LIMIT, IN_LIST_LIMIT, TaskCalls
from sfsync.domain.ids import task_id
from sfsync.errors import AuthError, BudgetExhausted, ConfigError, RemoteError
from sfsync.logs import register_secret
from sfsync.settings.config import Settings

# Re-exported: callers import the login and answer names from here.
__all__ = [
    "AUTH_ERRORS", "COLLECTION_LIMIT", "COMPOSITE_LIMIT", "IN_LIST_LIMIT", "PRODUCTION_AUDIENCE", "SANDBOX_AUDIENCE",
    "VIEW_SETUP",
    "SalesforceClient", "Usage", "WriteResult", "aligned_results", "is_daily_limit", "is_lock_error",
    "is_sandbox_host", "jwt_audience", "valid_task_id",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_QUERY_PAGES = 5_000  # pages of one query (at least 200 records each: a million records)
QUERY_MAX_SECONDS = 900.0  # one query's pages, all together
CONFIG_ERRORS = {
    "MALFORMED_QUERY", "INVALID_FIELD", "INVALID_TYPE", "JSON_PARSER_ERROR", "INVALID_FIELD_FOR_INSERT_UPDATE",
}
# REQUEST_LIMIT_EXCEEDED names the limit it hit: only the daily allocation is a budget stop; the
# concurrency limits (ConcurrentRequests, ConcurrentPerOrgLongTxn) clear in seconds.
VIEW_SETUP = "View Setup and Configuration"  # the permission GET /limits needs (sfsync runs never call it)
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


def valid_task_id(value: str) -> bool:
    """A 15- or 18-character Task Id (key prefix 00T) in any form Salesforce accepts (``sfsync.domain.ids``)."""
    return task_id(value) is not None


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
        self.tasks = TaskCalls(settings, self)  # the Task look-ups and writes, packed into Composite requests
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
        headers = getattr(self._local, "last_headers", {}) or {}
        return self.classify(int(getattr(exc, "status", 0) or 0), exc.content, name, headers)

    def classify(self, status: int, content: Any, name: str, headers: Any) -> Exception:
        """An error answer (its status and JSON body, a list of errors) as the exception sfsync acts on;
        the same for a plain call's answer and a Composite subrequest's."""
        errors: list[Any] = content if isinstance(content, list) else []
        first = errors[0] if errors and isinstance(errors[0], dict) else {}
        code = str(first.get("errorCode", ""))
        message = str(first.get("message", "")) or str(content)[:200]
        headers = headers if hasattr(headers, "get") else {}
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
        page = self._call(name, lambda sf: checked_page(sf.query(soql), name))
        yield from self.follow_pages(page, name, started)

    def follow_pages(self, page: dict[str, Any], name: str, started: float) -> Iterator[dict[str, Any]]:
        """The records of a first page and of every page after it (plain queryMore calls), bounded
        as ``query_all`` says; the first page may come from a plain query or a Composite subrequest."""
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
            page = self._call("query_more", lambda sf, url=next_url: checked_page(  # type: ignore[misc]
                _query_more(url)(sf), "query_more"))

    def find_tasks(self, task_ids: Iterable[str], message_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Tasks whose Id is in ``task_ids`` or whose message-id field is in ``message_ids``, with
        the fields precedence needs. Batched: at most 100 literals per query, all escaped; several
        queries go together in Composite requests (``find_tasks_many``)."""
        return self.tasks.find_many([(task_ids, message_ids)])[0]

    def find_tasks_many(self, groups: Sequence[tuple[Iterable[str], Iterable[str]]]) -> list[list[dict[str, Any]]]:
        """``find_tasks`` for each group of (Task Ids, message ids), answers in order, up to five
        queries to a Composite request (``sfsync.clients.sf_tasks.TaskCalls.find_many``)."""
        return self.tasks.find_many(groups)

    # -- writes -------------------------------------------------------------------------------------------
    def update_tasks(self, records: list[dict[str, Any]]) -> list[WriteResult]:
        """sObject Collections PATCH of at most 200 records, allOrNone false, results matched by id
        (``aligned_results``: an answer that cannot be matched is a transient failure, retried).
        Records failing with UNABLE_TO_LOCK_ROW are retried alone, with back-off."""
        answer = self.tasks.update_many([records])[0]
        if isinstance(answer, BudgetExhausted):
            raise answer
        return answer

    def update_tasks_many(self, chunks: list[list[dict[str, Any]]]) -> list[list[WriteResult] | BudgetExhausted]:
        """``update_tasks`` for each chunk of at most 200 records, answers in order, up to five
        chunks to a Composite request; a chunk the API budget stopped gets its ``BudgetExhausted``
        in its place (``sfsync.clients.sf_tasks.TaskCalls.update_many``)."""
        return self.tasks.update_many(chunks)

    # -- metadata -----------------------------------------------------------------------------------------
    def describe_task(self) -> dict[str, Any]:
        answer = self._call("describe", lambda sf: restful(sf, "sobjects/Task/describe"))
        return answer if isinstance(answer, dict) else {}

    def limits(self) -> dict[str, Any]:
        answer = self._call("limits", lambda sf: restful(sf, "limits/"))
        return answer if isinstance(answer, dict) else {}



def _query_more(url: str) -> Callable[[Salesforce], Any]:
    return lambda sf: sf.query_more(url, identifier_is_url=True)
