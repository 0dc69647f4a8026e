"""Reading Salesforce's answers: query pages, sObject Collections results, Composite subrequest
results, and the API usage header. Pure functions over the JSON Salesforce sends; an answer that
cannot be trusted is a transient ``RemoteError`` (nothing is recorded from it, the call is tried again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simple_salesforce import Salesforce

from sfsync.domain.ids import canonical_id
from sfsync.errors import RemoteError

LOCK_ERRORS = {"UNABLE_TO_LOCK_ROW"}
DAILY_LIMIT_MARK = "TotalRequests"


def is_lock_error(code: str, message: str) -> bool:
    """A record Salesforce could not lock: ``UNABLE_TO_LOCK_ROW``, or a trigger or flow failing on a
    lock (``CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY`` wrapping one). Transient: retry that record."""
    return code in LOCK_ERRORS or (code == "CANNOT_INSERT_UPDATE_ACTIVATE_ENTITY" and "lock" in message.lower())


def is_daily_limit(code: str, message: str) -> bool:
    """``REQUEST_LIMIT_EXCEEDED`` for the daily allocation ("TotalRequests Limit exceeded."), as
    opposed to a concurrency limit, which is transient."""
    return code == "REQUEST_LIMIT_EXCEEDED" and DAILY_LIMIT_MARK.lower() in message.lower()


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


def checked_page(answer: Any, name: str) -> dict[str, Any]:
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


def collection_body(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"allOrNone": False, "records": [{"attributes": {"type": "Task"}, **r} for r in records]}


def record_results(sent: list[dict[str, Any]], answer: list[dict[str, Any]],
                    results: dict[str, WriteResult]) -> list[dict[str, Any]]:
    """Each record's outcome into ``results`` (by its id); returns the records still locked."""
    locked = []
    for record, result in zip(sent, answer, strict=True):
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
    return locked


def composite_answers(subrequests: list[dict[str, Any]], answer: Any) -> list[tuple[int, Any, dict[str, Any]]]:
    """A Composite answer's subrequest results in the order sent, matched by referenceId; one that
    cannot be matched (a result missing, unknown or twice, no status) is a transient failure."""

    def garbled(why: str) -> RemoteError:
        return RemoteError(f"Salesforce composite_batch: the answer cannot be matched to the subrequests sent ({why})",
                           transient=True)

    results = answer.get("compositeResponse") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != len(subrequests):
        raise garbled("not one result per subrequest")
    by_reference: dict[str, tuple[int, Any, dict[str, Any]]] = {}
    for result in results:
        if not isinstance(result, dict) or not isinstance(result.get("httpStatusCode"), int):
            raise garbled("a result without an httpStatusCode")
        reference = result.get("referenceId")
        if not isinstance(reference, str) or reference in by_reference:
            raise garbled(f"a referenceId missing or twice ({str(reference)[:40]!r})")
        headers = result.get("httpHeaders")
        by_reference[reference] = (result["httpStatusCode"], result.get("body"),
                                   headers if isinstance(headers, dict) else {})
    try:
        return [by_reference[str(sub["referenceId"])] for sub in subrequests]
    except KeyError as exc:
        raise garbled(f"no result for {exc}") from None


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


def restful(sf: Salesforce, path: str, **kwargs: Any) -> Any:
    """simple-salesforce's ``restful`` call, with an answer it cannot take (a bare JSON number or
    null: it takes ``len()`` of the answer) as a garbled answer, tried again."""
    try:
        return sf.restful(path, **kwargs)
    except TypeError as exc:
        raise RemoteError(f"Salesforce {path}: an answer of an unexpected shape", transient=True) from exc
