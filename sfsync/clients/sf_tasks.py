"""Task look-ups and writes, packed into Composite requests: the part of the Salesforce client that
knows what sfsync asks of Task. It builds the SOQL (at most 100 escaped literals per ``IN`` list),
packs up to five queries or five sObject Collections writes into one Composite request (one API call),
and handles each subrequest's answer as its own call's: further pages, a transient failure sent again
alone, rows still locked written again with back-off.

It speaks through a ``Connection`` (``sfsync.clients.salesforce.SalesforceClient``), which owns the
token, the budget, the retries and the error classification.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

from simple_salesforce import Salesforce
from simple_salesforce.format import format_soql

from sfsync.clients.retry import RetryPolicy, is_transient
from sfsync.clients.sf_answers import (
    WriteResult,
    aligned_results,
    checked_page,
    collection_body,
    composite_answers,
    record_results,
    restful,
)
from sfsync.domain.ids import canonical_id
from sfsync.errors import BudgetExhausted, RemoteError
from sfsync.settings.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

IN_LIST_LIMIT = 100  # values per SOQL IN list: keeps the URI under 16,384 bytes with 36-char ids
COLLECTION_LIMIT = 200  # records per sObject Collections call
# Query or sObject Collections subrequests per Composite request ("Send Multiple Requests Using
# Composite": 25 subrequests, at most 5 of them queries or Collections; the whole request is ONE call
# toward the API limits; Collections subrequests since API 43.0).
COMPOSITE_LIMIT = 5
COMPOSITE_COLLECTIONS_SINCE = (43, 0)


class Connection(Protocol):
    """What the Task calls need of the client: one call with its retries and budget, the error
    classification, a whole query and the pages after a first one, and the retry policy."""

    policy: RetryPolicy

    def call(self, name: str, fn: Callable[[Salesforce], T]) -> T: ...

    def classify(self, status: int, content: Any, name: str, headers: Any) -> Exception: ...

    def query_all(self, soql: str, name: str = "query") -> Iterator[dict[str, Any]]: ...

    def follow_pages(self, page: dict[str, Any], name: str, started: float) -> Iterator[dict[str, Any]]: ...


def composite_allowed(api_version: str) -> bool:
    """Composite requests carry sObject Collections subrequests from API 43.0 on; before, plain calls."""
    major, _, minor = api_version.partition(".")
    try:
        return (int(major), int(minor or 0)) >= COMPOSITE_COLLECTIONS_SINCE
    except ValueError:
        return False


class TaskCalls:
    def __init__(self, settings: Settings, connection: Connection):
        self.settings = settings
        self.connection = connection

    # -- look-ups -----------------------------------------------------------------------------------------
    def find_many(self, groups: Sequence[tuple[Iterable[str], Iterable[str]]]) -> list[list[dict[str, Any]]]:
        """The Tasks of each group of (Task Ids, message ids), answers in order. Their queries go up
        to five to a Composite request (one API call); a single query goes as a plain call. Each
        subrequest's answer is handled as its own call's: its further pages followed by plain
        queryMore calls (bounded as ``query_all``), a subrequest failing transiently queried again
        alone (a plain call, retried by the policy), a permanent failure raised as the plain call's."""
        queries = [(i, soql) for i, (ids, mids) in enumerate(groups) for soql in self._task_queries(ids, mids)]
        found: list[dict[str, dict[str, Any]]] = [{} for _ in groups]
        packed = len(queries) > 1 and composite_allowed(self.settings.sf_api_version)
        for start in range(0, len(queries), COMPOSITE_LIMIT if packed else 1):
            batch = queries[start : start + COMPOSITE_LIMIT] if packed else queries[start : start + 1]
            if len(batch) == 1:
                self._keep_tasks(self.connection.query_all(batch[0][1]), found[batch[0][0]])
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
        for soql, answer in zip(soqls, self._composite(subs), strict=True):
            page = self._settled(answer, "query", lambda body: checked_page(body, "query"))
            if page is None:  # again alone: a plain call, through the retry policy
                answers.append(list(self.connection.query_all(soql)))
            else:
                answers.append(list(self.connection.follow_pages(page, "query", started)))
        return answers

    def _composite(self, subrequests: list[dict[str, Any]]) -> list[tuple[int, Any, dict[str, Any]]]:
        """One Composite request, allOrNone false (a subrequest's failure touches no other): each
        subrequest's (status, body, headers), in the order sent. One API call, budget checked
        before it, retried as a whole only when the request itself fails or its answer is garbled."""
        if len(subrequests) > COMPOSITE_LIMIT:
            raise ValueError(f"at most {COMPOSITE_LIMIT} query or Collections subrequests per Composite request")
        payload = {"allOrNone": False, "compositeRequest": subrequests}
        return self.connection.call("composite_batch", lambda sf: composite_answers(
            subrequests, restful(sf, "composite", method="POST", json=payload)))

    # -- writes -------------------------------------------------------------------------------------------
    def update_many(self, chunks: list[list[dict[str, Any]]]) -> list[list[WriteResult] | BudgetExhausted]:
        """Each chunk of at most 200 records written by sObject Collections PATCH (allOrNone false),
        answers in order, results matched by id (``aligned_results``: an answer that cannot be
        matched is a transient failure, retried). Chunks go up to five to a Composite request (one
        API call), a single chunk as a plain sObject Collections call. Each subrequest's answer is
        handled as its own call's: per-record errors; records still locked (UNABLE_TO_LOCK_ROW)
        written again (all chunks' together, with back-off); a subrequest failing transiently or
        answering what cannot be matched sent again alone (a plain call, retried by the policy); a
        permanent failure raised as the plain call's. A chunk the API budget stopped gets its
        ``BudgetExhausted`` in its place (what it had written is not reported)."""
        if any(len(chunk) > COLLECTION_LIMIT for chunk in chunks):
            raise ValueError(f"at most {COLLECTION_LIMIT} records per call")
        results: list[dict[str, WriteResult]] = [{} for _ in chunks]
        stops: dict[int, BudgetExhausted] = {}
        pending = {i: chunk for i, chunk in enumerate(chunks) if chunk}
        step = COMPOSITE_LIMIT if composite_allowed(self.settings.sf_api_version) else 1

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
        self.connection.policy.repeat("salesforce.row_lock", attempt, lambda locked: not locked)
        return [stops[i] if i in stops else [results[i][str(r["id"])] for r in chunk] for i, chunk in enumerate(chunks)]

    def _collection_call(self, sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One plain sObject Collections PATCH, its results aligned to ``sent``."""
        payload = collection_body(sent)
        return self.connection.call("composite", lambda sf: aligned_results(
            sent, restful(sf, "composite/sobjects", method="PATCH", json=payload)))

    def _write_batch(self, lists: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]] | BudgetExhausted]:
        """Each list's aligned results: one plain call for one list, else one Composite request."""
        if len(lists) == 1:
            return [self._collection_call(lists[0])]
        version = self.settings.sf_api_version
        subs = [{"method": "PATCH", "url": f"/services/data/v{version}/composite/sobjects",
                 "referenceId": f"write{n}", "body": collection_body(sent)} for n, sent in enumerate(lists)]
        out: list[list[dict[str, Any]] | BudgetExhausted] = []
        for sent, answer in zip(lists, self._composite(subs), strict=True):
            results = self._settled(answer, "composite", functools.partial(aligned_results, sent))
            if results is not None:
                out.append(results)
                continue
            try:
                out.append(self._collection_call(sent))  # again alone: a plain call, through the retry policy
            except BudgetExhausted as exc:
                out.append(exc)
        return out

    def _settled(self, answer: tuple[int, Any, dict[str, Any]], name: str, read: Callable[[Any], T]) -> T | None:
        """One Composite subrequest's answer as its own call's would be taken: ``read`` of a 2xx body;
        a permanent failure raised as the plain call raises it; None when it failed transiently or its
        body could not be read (the caller sends it again alone)."""
        status, body, headers = answer
        failure: Exception
        if 200 <= status < 300:
            try:
                return read(body)
            except RemoteError as exc:
                failure = exc
        else:
            failure = self.connection.classify(status, body, name, headers)
        if not is_transient(failure):
            raise failure
        log.info("Salesforce %s failed inside a Composite request (%s); sending it again alone", name, failure,
                 extra={"event": "composite_retry"})
        return None
