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
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError, SalesforceExpiredSession
from simple_salesforce.format import format_soql

from sfsync.clients.http import make_session, why_unreachable
from sfsync.clients.retry import RetryPolicy, is_transient, parse_retry_after
from sfsync.clients.sf_answers import (
    LOCK_ERRORS,
    Usage,
    WriteResult,
    aligned_results,
    checked_page,
    collection_body,
    composite_answers,
    is_daily_limit,
    is_lock_error,
    record_results,
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
from sfsync.domain.ids import canonical_id, task_id
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

IN_LIST_LIMIT = 100  # values per SOQL IN list: keeps the URI under 16,384 bytes with 36-char ids
COLLECTION_LIMIT = 200  # records per sObject Collections call
# Query or sObject Collections subrequests per Composite request ("Send Multiple Requests Using
# Composite": 25 subrequests, at most 5 of them queries or Collections; the whole request is ONE call
# toward the API limits; Collections subrequests since API 43.0).
COMPOSITE_LIMIT = 5
COMPOSITE_COLLECTIONS_SINCE = (43, 0)
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
        return self._classify(int(getattr(exc, "status", 0) or 0), exc.content, name, headers)

    def _classify(self, status: int, content: Any, name: str, headers: Any) -> Exception:
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
        yield from self._pages(page, name, started)

    def _pages(self, page: dict[str, Any], name: str, started: float) -> Iterator[dict[str, Any]]:
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
        return self.find_tasks_many([(task_ids, message_ids)])[0]

    def find_tasks_many(self, groups: Sequence[tuple[Iterable[str], Iterable[str]]]) -> list[list[dict[str, Any]]]:
        """``find_tasks`` for each group of (Task Ids, message ids), answers in order. Their queries
        go up to five to a Composite request (one API call); a single query goes as a plain call.
        Each subrequest's answer is handled as its own call's: its further pages followed by plain
        queryMore calls (bounded as ``query_all``), a subrequest failing transiently queried again
        alone (a plain call, retried by the policy), a permanent failure raised as the plain call's."""
        queries = [(i, soql) for i, (ids, mids) in enumerate(groups) for soql in self._task_queries(ids, mids)]
        found: list[dict[str, dict[str, Any]]] = [{} for _ in groups]
        packed = len(queries) > 1 and self._composite_allowed()
        for start in range(0, len(queries), COMPOSITE_LIMIT if packed else 1):
            batch = queries[start : start + COMPOSITE_LIMIT] if packed else queries[start : start + 1]
            if len(batch) == 1:
                self._keep_tasks(self.query_all(batch[0][1]), found[batch[0][0]])
                continue
            for (i, _), records in zip(batch, self._composite_queries([q for _, q in batch]), strict=True):
                self._keep_tasks(records, found[i])
        return [list(rows.values()) for rows in found]

    def _task_queries(self, task_ids: Iterable[str], message_ids: Iterable[str]) -> list[str]:
        fields = ", ".join(self.settings.task_fields())
        msg_field = self.settings.field_message_id
        canonical = [c for c in (canonical_id(v) for v in task_ids) if c]  # Ids in SOQL: canonical, never raw
        values = [("Id", v) for v in dict.fromkeys(canonical)] + [(msg_field, v) for v in dict.fromkeys(message_ids)]
        queries = []
        for start in range(0, len(values), IN_LIST_LIMIT):
            chunk = values[start : start + IN_LIST_LIMIT]
            ids = [v for f, v in chunk if f == "Id"]
            mids = [v for f, v in chunk if f != "Id"]
            clauses = []
            if ids:
                clauses.append(format_soql("Id IN {}", ids))
            if mids:
                clauses.append(format_soql(f"{msg_field} IN {{}}", mids))
            queries.append(f"SELECT {fields} FROM Task WHERE {' OR '.join(clauses)}")
        return queries

    def _keep_tasks(self, records: Iterable[dict[str, Any]], found: dict[str, dict[str, Any]]) -> None:
        msg_field = self.settings.field_message_id
        for record in records:
            record.pop("attributes", None)
            record_id = canonical_id(record.get("Id"))
            if record_id is None or not isinstance(record.get(msg_field), str | None):
                raise RemoteError(f"Salesforce query: a Task without an Id, or whose {msg_field} is not text",
                                  transient=False)
            record["Id"] = record_id
            found[record_id] = record

    def _composite_queries(self, soqls: list[str]) -> list[list[dict[str, Any]]]:
        """Up to five queries in one Composite request; each one's records, all pages."""
        started = time.monotonic()
        version = self.settings.sf_api_version
        subs = [{"method": "GET", "url": f"/services/data/v{version}/query/?{urlencode({'q': soql})}",
                 "referenceId": f"query{n}"} for n, soql in enumerate(soqls)]
        answers: list[list[dict[str, Any]]] = []
        for soql, (status, body, headers) in zip(soqls, self._composite(subs), strict=True):
            failure: Exception
            if 200 <= status < 300:
                try:
                    page = checked_page(body, "query")
                except RemoteError as exc:
                    failure = exc
                else:
                    answers.append(list(self._pages(page, "query", started)))
                    continue
            else:
                failure = self._classify(status, body, "query", headers)
            if not is_transient(failure):
                raise failure
            log.info("Salesforce query failed inside a Composite request (%s); querying it again alone", failure,
                     extra={"event": "composite_retry"})
            answers.append(list(self.query_all(soql)))  # alone: a plain call, through the retry policy
        return answers

    # -- Composite ------------------------------------------------------------------------------------------
    def _composite_allowed(self) -> bool:
        """Composite requests carry sObject Collections subrequests from API 43.0 on; before, plain calls."""
        major, _, minor = self.settings.sf_api_version.partition(".")
        try:
            return (int(major), int(minor or 0)) >= COMPOSITE_COLLECTIONS_SINCE
        except ValueError:
            return False

    def _composite(self, subrequests: list[dict[str, Any]]) -> list[tuple[int, Any, dict[str, Any]]]:
        """One Composite request, allOrNone false (a subrequest's failure touches no other): each
        subrequest's (status, body, headers), in the order sent. One API call, budget checked
        before it, retried as a whole only when the request itself fails or its answer is garbled."""
        if len(subrequests) > COMPOSITE_LIMIT:
            raise ValueError(f"at most {COMPOSITE_LIMIT} query or Collections subrequests per Composite request")
        payload = {"allOrNone": False, "compositeRequest": subrequests}
        return self._call("composite_batch", lambda sf: composite_answers(
            subrequests, _restful(sf, "composite", method="POST", json=payload)))

    # -- writes -------------------------------------------------------------------------------------------
    def update_tasks(self, records: list[dict[str, Any]]) -> list[WriteResult]:
        """sObject Collections PATCH of at most 200 records, allOrNone false, results matched by id
        (``aligned_results``: an answer that cannot be matched is a transient failure, retried).
        Records failing with UNABLE_TO_LOCK_ROW are retried alone, with back-off."""
        answer = self.update_tasks_many([records])[0]
        if isinstance(answer, BudgetExhausted):
            raise answer
        return answer

    def update_tasks_many(self, chunks: list[list[dict[str, Any]]]) -> list[list[WriteResult] | BudgetExhausted]:
        """``update_tasks`` for each chunk of at most 200 records, answers in order. Chunks go up to
        five to a Composite request (one API call), a single chunk as a plain sObject Collections
        call. Each subrequest's answer is handled as its own call's: per-record errors; records
        still locked written again (all chunks' together, with back-off); a subrequest failing
        transiently or answering what cannot be matched sent again alone (a plain call, retried by
        the policy); a permanent failure raised as the plain call's. A chunk the API budget stopped
        gets its ``BudgetExhausted`` in its place (what it had written is not reported)."""
        if any(len(chunk) > COLLECTION_LIMIT for chunk in chunks):
            raise ValueError(f"at most {COLLECTION_LIMIT} records per call")
        results: list[dict[str, WriteResult]] = [{} for _ in chunks]
        stops: dict[int, BudgetExhausted] = {}
        pending = {i: chunk for i, chunk in enumerate(chunks) if chunk}
        step = COMPOSITE_LIMIT if self._composite_allowed() else 1

        def attempt() -> dict[int, list[dict[str, Any]]]:
            nonlocal pending
            locked: dict[int, list[dict[str, Any]]] = {}
            keys = list(pending)
            for start in range(0, len(keys), step):
                batch = keys[start : start + step]
                try:
                    answers = self._write_batch([pending[i] for i in batch])
                except BudgetExhausted as exc:
                    answers = [exc] * len(batch)
                for i, answer in zip(batch, answers, strict=True):
                    if isinstance(answer, BudgetExhausted):
                        stops[i] = answer
                    else:
                        locked[i] = record_results(pending[i], answer, results[i])
            pending = {i: rows for i, rows in locked.items() if rows}
            return pending

        # Rows Salesforce kept locked: written again alone, with back-off (a strategy of the retry module).
        self.policy.repeat("salesforce.row_lock", attempt, lambda locked: not locked)
        return [stops[i] if i in stops else [results[i][str(r["id"])] for r in chunk] for i, chunk in enumerate(chunks)]

    def _collection_call(self, sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One plain sObject Collections PATCH, its results aligned to ``sent``."""
        payload = collection_body(sent)
        return self._call("composite", lambda sf: aligned_results(
            sent, _restful(sf, "composite/sobjects", method="PATCH", json=payload)))

    def _write_batch(self, lists: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]] | BudgetExhausted]:
        """Each list's aligned results: one plain call for one list, else one Composite request."""
        if len(lists) == 1:
            return [self._collection_call(lists[0])]
        version = self.settings.sf_api_version
        subs = [{"method": "PATCH", "url": f"/services/data/v{version}/composite/sobjects",
                 "referenceId": f"write{n}", "body": collection_body(sent)} for n, sent in enumerate(lists)]
        out: list[list[dict[str, Any]] | BudgetExhausted] = []
        for sent, (status, body, headers) in zip(lists, self._composite(subs), strict=True):
            failure: Exception
            if 200 <= status < 300:
                try:
                    out.append(aligned_results(sent, body))
                    continue
                except RemoteError as exc:
                    failure = exc
            else:
                failure = self._classify(status, body, "composite", headers)
            if not is_transient(failure):
                raise failure
            log.info("Salesforce write failed inside a Composite request (%s); sending it again alone", failure,
                     extra={"event": "composite_retry"})
            try:
                out.append(self._collection_call(sent))  # alone: a plain call, through the retry policy
            except BudgetExhausted as exc:
                out.append(exc)
        return out

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


def _query_more(url: str) -> Callable[[Salesforce], Any]:
    return lambda sf: sf.query_more(url, identifier_is_url=True)
