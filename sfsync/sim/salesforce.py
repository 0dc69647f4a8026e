"""A Salesforce REST simulator: OAuth token grants, SOQL query with server-side cursors, sObject
Collections update, single-record get and update, describe, limits and Bulk API 2.0 ingest, over HTTPS
on loopback, answering as the real service does (errors, limits, paging, per-record results).

Every write, whichever API it comes through, passes one validation rule (``_check``) and one apply
step (``_apply``) that records per-Task history, so tests can prove what was written, when and how.

This module is the simulator's front: its construction, Python API, HTTP plumbing, route table and
admin routes. The areas live beside it: ``sf_schema`` (fields and record errors), ``sf_records`` (the
store and the write rule), ``sf_auth`` (OAuth), ``sf_query`` (SOQL) and ``sf_writes`` (record writes,
describe, limits, Bulk).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import itertools
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sfsync.sim import soql
from sfsync.sim.base import FaultConfig, HttpError, Request, Response, Route
from sfsync.sim.bulk import BulkIngest
from sfsync.sim.sf_auth import LOGIN_AUDIENCES, OAuthMixin, load_public_key
from sfsync.sim.sf_composite import CompositeMixin
from sfsync.sim.sf_query import QueryMixin
from sfsync.sim.sf_records import BOOL_SETTINGS, SETTING_CHECKS, SimSettings
from sfsync.sim.sf_schema import DEFAULT_TASK_FIELDS, FieldDef, RecordError, ValidationRule
from sfsync.sim.sf_writes import WritesMixin

# Re-exported: tests and tools import the schema types from here.
__all__ = ["DEFAULT_TASK_FIELDS", "FieldDef", "RecordError", "SalesforceSim", "SimSettings"]

MAX_TARGET_BYTES = 16_384  # request line limit (URI plus query string)
# Salesforce names the limit a REQUEST_LIMIT_EXCEEDED hit: the daily one, or a concurrency one.
DAILY_LIMIT_MESSAGE = "TotalRequests Limit exceeded."
CONCURRENCY_LIMIT_MESSAGES = ("ConcurrentPerOrgLongTxn Limit exceeded.",
                              "ConcurrentRequests (Concurrent API Requests) Limit exceeded.")
API = r"/services/data/v(?P<version>\d+\.\d+)"


# -- the simulator -------------------------------------------------------------------------------
class SalesforceSim(CompositeMixin, QueryMixin, WritesMixin, OAuthMixin):
    """Salesforce's REST API for one object, Task. State lives in memory under ``self.lock``; the
    Python methods below are what tests and the harness use, and what the ``/_sim/`` routes call.
    The store and write rule (``sf_records``), OAuth (``sf_auth``), query (``sf_query``) and writes
    (``sf_writes``) are mixins, each in its own module."""

    def __init__(
        self,
        client_id: str = "sim-client-id",
        client_secret: str = "sim-client-secret",  # noqa: S107 (the simulator's own test credentials)
        *,
        username: str = "integration@sim.example",
        password: str = "sim-password",  # noqa: S107
        jwt_public_key_pem: bytes | None = None,
        token_ttl_s: float = 7200,
        daily_limit: int = 100_000,
        query_page_size: int = 2000,
        lock_row_rate: float = 0.0,
        faults: FaultConfig | None = None,
        bulk_processing_s: float = 0.2,
        view_setup: bool = False,
        view_all_data: bool = False,
        jwt_audiences: Iterable[str] = (),
        monotonic: Callable[[], float] = time.monotonic,
    ):
        super().__init__(faults)
        self.monotonic = monotonic  # token expiry (token_ttl_s) reads this clock: a test may move it on
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.password = password
        self._jwt_key = load_public_key(jwt_public_key_pem)
        self._initial_settings = SimSettings(lock_row_rate, token_ttl_s, daily_limit, query_page_size,
                                             bulk_processing_s, view_setup, view_all_data)
        self.jwt_audiences = {a.rstrip("/") for a in (*LOGIN_AUDIENCES, *jwt_audiences)}  # + Experience Cloud sites
        self._initial_faults = copy.deepcopy(self.faults.config)
        self.settings = dataclasses.replace(self._initial_settings)
        self.api_calls: Counter[str] = Counter()
        self.call_log: collections.deque[tuple[str, float]] = collections.deque(maxlen=10_000)  # (kind, when)
        # Composite subrequests: tallied by kind, never counted as calls (the Composite request is the call).
        self.subrequests: Counter[str] = Counter()
        self.sub_log: collections.deque[tuple[str, float]] = collections.deque(maxlen=10_000)  # (kind, when)
        self.api_usage = 0
        self._tokens: dict[str, float] = {}
        self._last_stamp: tuple[int, str] = (-1, "")
        self._task_numbers = itertools.count(10_000_000_000, 104_729)  # never reused, even across reset()
        self._cursor_numbers = itertools.count(30_000_000_000, 7_907)
        self._clear_data()
        self.set_schema(DEFAULT_TASK_FIELDS)
        self.bulk = BulkIngest(self._bulk_columns, self._bulk_write, lambda: self.settings.bulk_processing_s,
                               self.stopping)
        self._too_long = Route("GET", re.compile(r"(?!)"), "uri_too_long", self._uri_too_long)
        self._register_routes()

    # -- Python API (the admin routes call these) ----------------------------------------------
    def add_tasks(self, records: list[dict[str, Any]]) -> list[str]:
        """Store Tasks as given (system fields allowed); returns their 18-character Ids."""
        now = soql.now_text()
        with self.lock:
            prepared = [self._prepare_seed(record, now) for record in records]
            fresh = {task["Id"] for task in prepared}
            if len(fresh) != len(prepared) or fresh & self._tasks.keys():
                raise ValueError("duplicate Task Id")
            for task in prepared:
                self._tasks[task["Id"]] = task
                self._index_add(task)
        return [task["Id"] for task in prepared]

    def add_report(self, developer_name: str, name: str, folder: str = "SMS Delivery") -> str:
        """A deployed report (as from config/salesforce); returns its Id (key prefix 00O)."""
        with self.lock:
            report_id = soql.make_id("00O", len(self._reports) + 1)
            self._reports[report_id] = {"Id": report_id, "Name": name, "DeveloperName": developer_name,
                                        "FolderName": folder, "Format": "Summary"}
        return report_id

    def task(self, task_id: str) -> dict[str, Any] | None:
        """A copy of a live Task with every schema field (None when unset), or None."""
        key = soql.canonical_id(task_id)
        with self.lock:
            task = self._tasks.get(key or "")
            return self._public(task) if task is not None and key not in self._deleted else None

    def tasks(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self._public(t) for i, t in self._tasks.items() if i not in self._deleted]

    def _public(self, task: Mapping[str, Any]) -> dict[str, Any]:
        return {**dict.fromkeys(self._schema), **task}

    def delete_task(self, task_id: str) -> None:
        """Send a Task to the recycle bin: writes then fail with ENTITY_IS_DELETED."""
        key = soql.canonical_id(task_id)
        with self.lock:
            if key not in self._tasks or key in self._deleted:
                raise KeyError(task_id)
            self._deleted.add(key)

    def history(self, task_id: str) -> list[dict[str, Any]]:
        key = soql.canonical_id(task_id) or ""
        with self.lock:
            past = self._history.get(key)
            entries = [] if past is None else past if isinstance(past, list) else [past]
            return [{"time": t, "via": via, "fields": dict(zip(names, values, strict=True))}
                    for t, via, names, values in entries]

    def add_validation_rule(self, field: str, forbidden_value: Any, message: str = "Validation rule failed") -> None:
        """A validation rule: a save leaving ``field`` equal to ``forbidden_value`` is refused."""
        with self.lock:
            spec = self._schema_ci.get(field.lower())
            if spec is None:
                raise ValueError(f"unknown Task field {field!r}")
            self._rules.append(ValidationRule(spec.name, forbidden_value, message))

    def share_related(self, *record_ids: str) -> None:
        """Let the integration user see these related records (an Account, a Contact...): their
        Tasks become visible, as Salesforce's "Controlled by Parent" activity sharing does."""
        with self.lock:
            self._shared.update(c for r in record_ids if (c := soql.canonical_id(r)))

    def expire_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()

    def configure(self, **settings: Any) -> dict[str, Any]:
        with self.lock:
            for key, value in settings.items():
                check = SETTING_CHECKS.get(key)
                if check is None and key not in BOOL_SETTINGS:
                    raise ValueError(f"unknown setting {key!r}")
                if key in BOOL_SETTINGS:
                    if not isinstance(value, bool):
                        raise ValueError(f"bad value for {key}: {value!r} (true or false)")
                    setattr(self.settings, key, value)
                    continue
                if check is None or isinstance(value, bool) or not isinstance(value, int | float) or not check(value):
                    raise ValueError(f"bad value for {key}: {value!r}")
                if key == "api_usage":
                    self.api_usage = int(value)
                else:
                    kind = type(getattr(self.settings, key))
                    setattr(self.settings, key, kind(value))
            return {**dataclasses.asdict(self.settings), "api_usage": self.api_usage}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"api_calls": dict(self.api_calls), "api_calls_total": sum(self.api_calls.values()),
                    "api_usage": self.api_usage, "daily_limit": self.settings.daily_limit,
                    "subrequests": dict(self.subrequests)}

    def reset(self) -> None:
        """Back to the state after construction; issued tokens stay valid."""
        with self.lock:
            super().reset()
            self._clear_data()
            self.set_schema(DEFAULT_TASK_FIELDS)
            self.settings = dataclasses.replace(self._initial_settings)
            self.api_calls.clear()
            self.call_log.clear()
            self.subrequests.clear()
            self.sub_log.clear()
            self.api_usage = 0
            self.bulk.reset()
            self.faults.configure(**vars(copy.deepcopy(self._initial_faults)))

    # -- HTTP plumbing -------------------------------------------------------------------------
    def match(self, request: Request) -> tuple[Route | None, bool]:
        if len(request.target.encode()) > MAX_TARGET_BYTES:
            return self._too_long, True
        return super().match(request)

    def _uri_too_long(self, request: Request) -> Response:
        return Response.text(414, "URI Too Long")

    def error(self, status: int, message: str, code: str | None = None, details: Any = None) -> Response:
        item: dict[str, Any] = {"message": message, "errorCode": code or _STATUS_CODES.get(status, "UNKNOWN_EXCEPTION")}
        if isinstance(details, list):
            item["fields"] = details
        return Response.json(status, [item])

    def decorate(self, request: Request, response: Response) -> None:
        if request.path.startswith("/services/data/"):
            with self.lock:
                response.headers["Sforce-Limit-Info"] = f"api-usage={self.api_usage}/{self.settings.daily_limit}"

    def _rest(self, method: str, suffix: str, kind: str, handler: Callable[[Request], Response]) -> None:
        """Register a REST route that authenticates, then counts against the daily allocation."""

        def guarded(request: Request) -> Response:
            self._authenticate(request)
            self._count(kind)
            return handler(request)

        self.route(method, API + suffix, guarded, name=kind)

    def _count(self, kind: str) -> None:
        with self.lock:
            if self.api_usage >= self.settings.daily_limit:
                raise HttpError(403, DAILY_LIMIT_MESSAGE, "REQUEST_LIMIT_EXCEEDED")
            if self.settings.concurrent_limit_calls > 0:
                self.settings.concurrent_limit_calls -= 1
                message = CONCURRENCY_LIMIT_MESSAGES[self.settings.concurrent_limit_calls % 2]
                raise HttpError(403, message, "REQUEST_LIMIT_EXCEEDED")
            self.api_usage += 1
            self.api_calls[kind] += 1
            self.call_log.append((kind, time.time()))

    def _register_routes(self) -> None:
        self.route("POST", "/services/oauth2/token", self._oauth_token, name="token")
        self._rest("GET", r"/query/?", "query", lambda r: self._query(r, include_deleted=False))
        self._rest("GET", r"/queryAll/?", "query", lambda r: self._query(r, include_deleted=True))
        self._rest("GET", r"/query(?:All)?/{locator}/?", "query_more", self._query_more)
        self._rest("PATCH", r"/composite/sobjects/?", "composite", self._composite_update)  # sObject Collections
        self._rest("POST", r"/composite/?", "composite_batch", self._composite)  # the Composite resource: one call
        self._rest("GET", r"/sobjects/Task/describe/?", "describe", self._describe)
        self._rest("GET", r"/sobjects/Task/{record_id}/?", "sobject", self._sobject_get)
        self._rest("PATCH", r"/sobjects/Task/{record_id}/?", "sobject", self._sobject_update)
        self._rest("GET", r"/limits/?", "limits", self._limits)
        self._register_bulk_routes()
        self._register_admin_routes()

    def _register_bulk_routes(self) -> None:
        ingest = r"/jobs/ingest"
        self._rest("POST", ingest + "/?", "bulk", self._bulk_create)
        self._rest("GET", ingest + "/?", "bulk", lambda r: Response.json(200, self.bulk.all_jobs()))
        self._rest("PUT", ingest + "/{job_id}/batches/?", "bulk", self._bulk_upload)
        self._rest("GET", ingest + "/{job_id}/?", "bulk", lambda r: Response.json(200, self.bulk.info(self._job_id(r))))
        self._rest("PATCH", ingest + "/{job_id}/?", "bulk",
                   lambda r: Response.json(200, self.bulk.set_state(self._job_id(r), r.json())))
        self._rest("DELETE", ingest + "/{job_id}/?", "bulk", self._bulk_delete)
        self._rest("GET", ingest + "/{job_id}/{kind}/?", "bulk", self._bulk_results)

    def _register_admin_routes(self) -> None:
        self.route("POST", "/_sim/tasks", self._admin_add_tasks)
        self.route("GET", "/_sim/tasks", lambda r: Response.json(200, {"records": self.tasks()}))
        self.route("GET", "/_sim/tasks/{task_id}", self._admin_get_task)
        self.route("DELETE", "/_sim/tasks/{task_id}", self._admin_delete_task)
        self.route("POST", "/_sim/schema", self._admin_set_schema)
        self.route("GET", "/_sim/schema", lambda r: Response.json(200, {"fields": self.schema()}))
        self.route("POST", "/_sim/validation_rules", self._admin_add_rule)
        self.route("GET", "/_sim/stats", lambda r: Response.json(200, self.stats()))
        self.route("POST", "/_sim/faults", self._admin_faults)
        self.route("POST", "/_sim/reset", self._admin_reset)

    # -- admin routes --------------------------------------------------------------------------
    def _admin_add_tasks(self, request: Request) -> Response:
        body = request.json()
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise HttpError(400, "send {\"records\": [{...}, ...]}", "INVALID_INPUT")
        try:
            return Response.json(200, {"ids": self.add_tasks(records)})
        except ValueError as exc:
            raise HttpError(400, str(exc), "INVALID_INPUT") from None

    def _admin_get_task(self, request: Request) -> Response:
        task = self.task(request.params["task_id"])
        if task is None:
            raise HttpError(404, "no such Task", "NOT_FOUND")
        return Response.json(200, {**task, "history": self.history(task["Id"])})

    def _admin_delete_task(self, request: Request) -> Response:
        try:
            self.delete_task(request.params["task_id"])
        except KeyError:
            raise HttpError(404, "no such Task", "NOT_FOUND") from None
        return Response(204)

    def _admin_set_schema(self, request: Request) -> Response:
        body = request.json()
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, list) or not all(isinstance(f, dict) for f in fields):
            raise HttpError(400, "send {\"fields\": [{...}, ...]}", "INVALID_INPUT")
        try:
            self.set_schema(fields)
        except (ValueError, TypeError) as exc:
            raise HttpError(400, str(exc), "INVALID_INPUT") from None
        return Response.json(200, {"fields": self.schema()})

    def _admin_add_rule(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("field"), str):
            raise HttpError(400, "send {\"field\", \"forbidden_value\", \"message\"}", "INVALID_INPUT")
        try:
            self.add_validation_rule(body["field"], body.get("forbidden_value"),
                                     str(body.get("message") or "Validation rule failed"))
        except ValueError as exc:
            raise HttpError(400, str(exc), "INVALID_INPUT") from None
        return Response.json(200, {"rules": len(self._rules)})

    def _admin_faults(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "send a JSON object of settings", "INVALID_INPUT")
        fault_keys = {f.name for f in dataclasses.fields(FaultConfig)}
        unknown = set(body) - fault_keys - SETTING_CHECKS.keys() - BOOL_SETTINGS - {"expire_tokens"}
        if unknown:
            raise HttpError(400, f"unknown settings {sorted(unknown)}", "INVALID_INPUT")
        try:
            settings = self.configure(**{k: v for k, v in body.items() if k in SETTING_CHECKS or k in BOOL_SETTINGS})
        except ValueError as exc:
            raise HttpError(400, str(exc), "INVALID_INPUT") from None
        self.faults.configure(**{k: v for k, v in body.items() if k in fault_keys})
        if body.get("expire_tokens") is True:
            self.expire_tokens()
        return Response.json(200, {"faults": self.faults.snapshot(), "settings": settings})

    def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return Response.json(200, {"reset": True})


_STATUS_CODES = {400: "INVALID_INPUT", 401: "INVALID_SESSION_ID", 403: "INSUFFICIENT_ACCESS", 404: "NOT_FOUND",
                 405: "METHOD_NOT_ALLOWED", 414: "URI_TOO_LONG", 415: "UNSUPPORTED_MEDIA_TYPE",
                 500: "UNKNOWN_EXCEPTION", 503: "SERVER_UNAVAILABLE"}
