"""The Salesforce simulator's Composite resource (``POST /services/data/vXX.X/composite``).

As the REST API Developer Guide documents it ("Send Multiple Requests Using Composite", "Composite
Request Body", "Composite Subrequest Result"): at most 25 subrequests, at most 5 of them query
operations (query, queryAll, queryMore via a nextRecordsUrl) or sObject Collections (those only in API
43.0 and later); each subrequest names a unique referenceId of letters, digits and underscores; the
answer is HTTP 200 with ``{"compositeResponse": [{"body", "httpHeaders", "httpStatusCode",
"referenceId"}]}``, one per subrequest, each with its own status; the whole request counts as ONE call
against the daily allocation (``stats()["api_calls"]["composite_batch"]``), its subrequests are
tallied apart (``stats()["subrequests"]``) and never counted as calls.

Each subrequest runs through the very handler of its own route (query, queryMore, sObject
Collections, one Task's get or update), so every fault of those (row locks, garbled Collections
answers, a repeating nextRecordsUrl, the page size) hits a subrequest as it hits the plain call. The
``composite_subrequest_failures`` setting makes the next N subrequests fail alone with a 500 inside an
otherwise 200 answer.

Stricter than Salesforce where the simulator is not sure, never looser:

* ``allOrNone: true`` is refused with a 400 (``sfsync`` never sends it; rolling back the subrequests
  before the failing one and marking the others as not processed is not simulated);
* references between subrequests (``@{ref.field}``) are refused (``sfsync`` never sends them);
* only the resources above are accepted as subrequests; anything else is a 400 for the whole request;
* a subrequest's API version may not be later than the Composite request's.

The error codes and messages of the 400 refusals are the simulator's own words in Salesforce's error
shape (a list of ``{"message", "errorCode"}``); Salesforce's exact texts were not verified.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from email.message import Message
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sfsync.sim.base import HttpError, Request, Response
from sfsync.sim.sf_query import QueryApi
from sfsync.sim.sf_records import TaskRecords
from sfsync.sim.sf_usage import ApiUsage
from sfsync.sim.sf_writes import RecordApi
from sfsync.sim.wire import BodyReader

MAX_SUBREQUESTS = 25
MAX_QUERY_OR_COLLECTIONS = 5
COLLECTIONS_SINCE = (43, 0)
REFERENCE_ID = re.compile(r"[A-Za-z0-9_]+")
INHERITED_HEADERS = {"accept", "authorization", "content-type"}  # the guide: never set on a subrequest
_VERSIONED = re.compile(r"/services/data/v(?P<version>\d+\.\d+)(?P<rest>/.*)")

Handler = Callable[[Request], Response]
ErrorResponse = Callable[[int, str, str | None, Any], Response]  # (status, message, code, details) -> answer
# (method, path under /services/data/vXX.X, kind as tallied, counts toward the 5 queries/collections)
_SUBREQUESTS: tuple[tuple[str, re.Pattern[str], str, bool], ...] = (
    ("GET", re.compile(r"/query/?"), "query", True),
    ("GET", re.compile(r"/queryAll/?"), "query_all", True),
    ("GET", re.compile(r"/query(?:All)?/(?P<locator>[^/]+)/?"), "query_more", True),
    ("PATCH", re.compile(r"/composite/sobjects/?"), "composite", True),
    ("GET", re.compile(r"/sobjects/Task/(?P<record_id>[^/]+)/?"), "sobject", False),
    ("PATCH", re.compile(r"/sobjects/Task/(?P<record_id>[^/]+)/?"), "sobject", False),
)


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def composite_content(methods: list[str]) -> str:
    """What a Composite request carries, from its subrequests' methods: "lookups" (queries and record
    reads only), "writes" (record writes only) or "mixed"; a call's content for the tally."""
    reads = {method == "GET" for method in methods}
    return "mixed" if len(reads) > 1 else "lookups" if reads == {True} else "writes"


def _bad(message: str, code: str = "INVALID_API_INPUT") -> HttpError:
    return HttpError(400, message, code)


class CompositeApi:
    """``POST /composite`` (``composite`` is its route handler): each subrequest runs through the
    public handler of its own route on ``queries`` or ``record_api``; a failed one is answered in
    ``error``'s shape, the simulator's own."""

    def __init__(self, records: TaskRecords, usage: ApiUsage, queries: QueryApi, record_api: RecordApi,
                 error: ErrorResponse):
        self._records = records  # the lock, and the composite_subrequest_failures setting
        self._usage = usage
        self._queries = queries
        self._record_api = record_api
        self._error = error

    def _handler_for(self, kind: str, method: str) -> Handler:
        if kind == "query":
            return self._queries.query
        if kind == "query_all":
            return self._queries.query_all
        if kind == "query_more":
            return self._queries.query_more
        if kind == "composite":
            return self._record_api.collections_update
        return self._record_api.sobject_get if method == "GET" else self._record_api.sobject_update

    def composite(self, request: Request) -> Response:
        top_version = request.params["version"]
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("compositeRequest"), list):
            raise HttpError(400, "The request body must be an object with a compositeRequest list",
                            "JSON_PARSER_ERROR")
        unknown = set(body) - {"allOrNone", "collateSubrequests", "compositeRequest"}
        if unknown:
            raise HttpError(400, f"Unrecognized field(s) in the composite request: {sorted(unknown)}",
                            "JSON_PARSER_ERROR")
        for flag in ("allOrNone", "collateSubrequests"):
            if flag in body and not isinstance(body[flag], bool):
                raise HttpError(400, f"{flag} must be true or false", "JSON_PARSER_ERROR")
        if body.get("allOrNone") is True:
            raise _bad("the simulator does not implement allOrNone: true on the Composite resource "
                       "(sfsync never sends it); send false or leave it out")
        subs = body["compositeRequest"]
        if not subs:
            raise _bad("compositeRequest must hold at least one subrequest")
        if len(subs) > MAX_SUBREQUESTS:
            raise _bad(f"a Composite request holds at most {MAX_SUBREQUESTS} subrequests, not {len(subs)}",
                       "LIMIT_EXCEEDED")
        prepared = [self._subrequest(sub, top_version) for sub in subs]
        references = [p[0].params["_reference"] for p in prepared]
        if len(set(references)) != len(references):
            raise _bad("each subrequest's referenceId must be unique in the Composite request")
        heavy = sum(1 for _, _, counted in prepared if counted)
        if heavy > MAX_QUERY_OR_COLLECTIONS:
            raise _bad(f"a Composite request holds at most {MAX_QUERY_OR_COLLECTIONS} query or sObject "
                       f"Collections subrequests, not {heavy}", "LIMIT_EXCEEDED")
        self._usage.count_composite(composite_content([sub.method for sub, _, _ in prepared]))
        answers = [self._run_subrequest(sub, kind) for sub, kind, _ in prepared]
        return Response.json(200, {"compositeResponse": answers})

    def _subrequest(self, sub: Any, top_version: str) -> tuple[Request, str, bool]:
        """One subrequest checked and made into a request for its route's handler (not run yet)."""
        if not isinstance(sub, dict):
            raise HttpError(400, "each subrequest must be a JSON object", "JSON_PARSER_ERROR")
        unknown = set(sub) - {"method", "url", "referenceId", "body", "httpHeaders"}
        if unknown:
            raise HttpError(400, f"Unrecognized field(s) in a subrequest: {sorted(unknown)}", "JSON_PARSER_ERROR")
        method, url, reference = sub.get("method"), sub.get("url"), sub.get("referenceId")
        if not isinstance(reference, str) or not REFERENCE_ID.fullmatch(reference):
            raise _bad(f"invalid referenceId {reference!r}: letters, digits and underscores only")
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            raise _bad(f"subrequest {reference}: method {method!r} is not one of GET, POST, PUT, PATCH, DELETE "
                       "(case-sensitive)")
        if not isinstance(url, str):
            raise _bad(f"subrequest {reference}: url is required")
        if "@{" in url or "@{" in json.dumps(sub.get("body")):
            raise _bad(f"subrequest {reference}: references between subrequests are not simulated")
        if len(url.encode()) > 16_384:
            raise _bad(f"subrequest {reference}: url too long")
        parts = urlsplit(url)
        found = _VERSIONED.fullmatch(parts.path)
        if parts.scheme or parts.netloc or found is None:
            raise _bad(f"subrequest {reference}: url must be a path under /services/data/vXX.X/")
        version = found.group("version")
        if _version(version) > _version(top_version):
            raise _bad(f"subrequest {reference}: API version {version} is later than the Composite request's "
                       f"({top_version})")
        for want, pattern, kind, counted in _SUBREQUESTS:
            matched = pattern.fullmatch(found.group("rest"))
            if matched is None or want != method:
                continue
            if kind == "composite" and min(_version(version), _version(top_version)) < COLLECTIONS_SINCE:
                raise _bad(f"subrequest {reference}: sObject Collections in a Composite request need API "
                           "version 43.0 or later")
            headers = Message()
            extra = sub.get("httpHeaders") or {}
            if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
                raise _bad(f"subrequest {reference}: httpHeaders must map names to text")
            for name, value in extra.items():
                if name.lower() in INHERITED_HEADERS:
                    raise _bad(f"subrequest {reference}: the {name} header is inherited from the Composite "
                               "request and may not be set on a subrequest")
                headers[name] = value
            payload = json.dumps(sub["body"]).encode() if "body" in sub else b""
            request = Request(method=method, target=url, path=parts.path,
                              query=parse_qs(parts.query, keep_blank_values=True), headers=headers,
                              reader=BodyReader(None, None, False), _body=payload)
            request.params = {**matched.groupdict(), "version": version, "_reference": reference}
            return request, kind, counted
        raise _bad(f"subrequest {reference}: {method} {parts.path} is not a resource the simulator's Composite "
                   "accepts (query, queryAll, queryMore, sObject Collections update, one Task's get or update)")

    def _run_subrequest(self, request: Request, kind: str) -> dict[str, Any]:
        reference = request.params.pop("_reference")
        with self._records.lock:
            self._usage.count_subrequest(kind)
            settings = self._records.settings
            failing = settings.composite_subrequest_failures > 0
            if failing:
                settings.composite_subrequest_failures -= 1
        if failing:
            response = self._error(500, "simulated failure of this subrequest", "UNKNOWN_EXCEPTION", None)
        else:
            try:
                response = self._handler_for(kind, request.method)(request)
            except HttpError as exc:
                response = self._error(exc.status, exc.message, exc.code, exc.details)
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")}
        body = json.loads(response.body) if response.body else None
        return {"body": body, "httpHeaders": headers, "httpStatusCode": response.status, "referenceId": reference}
