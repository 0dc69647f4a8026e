"""A Salesforce REST simulator: OAuth token grants, SOQL query with server-side cursors, sObject
Collections update, single-record get and update, the Composite resource, describe, limits and Bulk API
2.0 ingest, over HTTPS on loopback, answering as the real service does (errors, limits, paging,
per-record results).

Every write, whichever API it comes through, passes one validation rule (``TaskRecords.check``) and one
apply step (``TaskRecords.apply``) that records per-Task history, so tests can prove what was written,
when and how.

This module is the simulator's front: it builds the parts, registers their route handlers, and keeps
the Python API, the HTTP plumbing and the admin routes. The parts live beside it, each a plain object
given the collaborators it needs: ``sf_records`` (``TaskRecords``: the store, settings and write rule;
field values in ``sf_schema``), ``sf_usage`` (``ApiUsage``: calls counted and limits), ``sf_auth``
(``OAuth``), ``sf_query`` (``QueryApi``: SOQL), ``sf_writes`` (``RecordApi``: record writes and reads,
describe, limits, Bulk) and ``sf_composite`` (``CompositeApi``).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from sfsync.sim.base import FaultConfig, HttpError, Request, Response, Route, SimApp
from sfsync.sim.bulk import BulkIngest
from sfsync.sim.sf_auth import OAuth
from sfsync.sim.sf_composite import CompositeApi
from sfsync.sim.sf_query import QueryApi
from sfsync.sim.sf_records import BOOL_SETTINGS, SETTING_CHECKS, SimSettings, TaskRecords, checked_setting
from sfsync.sim.sf_schema import DEFAULT_TASK_FIELDS, FieldDef, RecordError
from sfsync.sim.sf_usage import ApiUsage
from sfsync.sim.sf_writes import RecordApi

# Re-exported: tests and tools import the schema types from here.
__all__ = ["DEFAULT_TASK_FIELDS", "FieldDef", "RecordError", "SalesforceSim", "SimSettings"]

MAX_TARGET_BYTES = 16_384  # request line limit (URI plus query string)
API = r"/services/data/v(?P<version>\d+\.\d+)"


# -- the simulator -------------------------------------------------------------------------------
class SalesforceSim(SimApp):
    """Salesforce's REST API for one object, Task. State lives in memory under ``self.lock``; the
    Python methods below are what tests and the harness use, and what the ``/_sim/`` routes call.
    Each area is a part built here and held as an attribute: ``records`` (``TaskRecords``), ``usage``
    (``ApiUsage``), ``oauth`` (``OAuth``), ``queries`` (``QueryApi``), ``record_api`` (``RecordApi``)
    and ``composite`` (``CompositeApi``)."""

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
        self._initial_faults = copy.deepcopy(self.faults.config)
        self.records = TaskRecords(self.lock, self.faults,
                                   SimSettings(lock_row_rate, token_ttl_s, daily_limit, query_page_size,
                                               bulk_processing_s, view_setup, view_all_data))
        self.usage = ApiUsage(self.records)
        self.oauth = OAuth(self.records, self.usage, client_id=client_id, client_secret=client_secret,
                           username=username, password=password, jwt_public_key_pem=jwt_public_key_pem,
                           jwt_audiences=jwt_audiences, clock=monotonic, base_url=lambda: self.base_url)
        self.queries = QueryApi(self.records)
        self.record_api = RecordApi(self.records, self.usage, self.stopping)
        self.composite = CompositeApi(self.records, self.usage, self.queries, self.record_api, self.error)
        self._too_long = Route("GET", re.compile(r"(?!)"), "uri_too_long", self._uri_too_long)
        self._register_routes()

    # -- the parts' state, as attributes of the simulator -----------------------------------------
    @property
    def settings(self) -> SimSettings:
        return self.records.settings

    @property
    def bulk(self) -> BulkIngest:
        return self.record_api.bulk

    @property
    def monotonic(self) -> Callable[[], float]:
        """The clock token expiry (token_ttl_s) reads: a test may move it on by setting this."""
        return self.oauth.clock

    @monotonic.setter
    def monotonic(self, clock: Callable[[], float]) -> None:
        self.oauth.clock = clock

    @property
    def client_id(self) -> str:
        return self.oauth.client_id

    @property
    def client_secret(self) -> str:
        return self.oauth.client_secret

    @property
    def username(self) -> str:
        return self.oauth.username

    @property
    def password(self) -> str:
        return self.oauth.password

    @property
    def jwt_audiences(self) -> set[str]:
        return self.oauth.jwt_audiences

    @property
    def api_usage(self) -> int:
        return self.usage.used

    @property
    def api_calls(self) -> Counter[str]:
        return self.usage.calls

    @property
    def call_log(self) -> collections.deque[tuple[str, float]]:
        return self.usage.call_log

    @property
    def subrequests(self) -> Counter[str]:
        """Composite subrequests by kind: tallied apart, never counted as calls."""
        return self.usage.subrequests

    @property
    def sub_log(self) -> collections.deque[tuple[str, float]]:
        return self.usage.sub_log

    # -- Python API (the admin routes call these) ----------------------------------------------
    def add_tasks(self, records: list[dict[str, Any]]) -> list[str]:
        """Store Tasks as given (system fields allowed); returns their 18-character Ids."""
        return self.records.add_tasks(records)

    def add_report(self, developer_name: str, name: str, folder: str = "SMS Delivery") -> str:
        """A deployed report (as from config/salesforce); returns its Id (key prefix 00O)."""
        return self.records.add_report(developer_name, name, folder)

    def task(self, task_id: str) -> dict[str, Any] | None:
        """A copy of a live Task with every schema field (None when unset), or None."""
        return self.records.task(task_id)

    def tasks(self) -> list[dict[str, Any]]:
        return self.records.tasks()

    def delete_task(self, task_id: str) -> None:
        """Send a Task to the recycle bin: writes then fail with ENTITY_IS_DELETED."""
        self.records.delete_task(task_id)

    def history(self, task_id: str) -> list[dict[str, Any]]:
        return self.records.history(task_id)

    def add_validation_rule(self, field: str, forbidden_value: Any, message: str = "Validation rule failed") -> None:
        """A validation rule: a save leaving ``field`` equal to ``forbidden_value`` is refused."""
        self.records.add_validation_rule(field, forbidden_value, message)

    def share_related(self, *record_ids: str) -> None:
        """Let the integration user see these related records (an Account, a Contact...): their
        Tasks become visible, as Salesforce's "Controlled by Parent" activity sharing does."""
        self.records.share_related(record_ids)

    def set_schema(self, fields: list[dict[str, Any]]) -> None:
        self.records.set_schema(fields)

    def schema(self) -> list[dict[str, Any]]:
        return self.records.schema()

    def expire_tokens(self) -> None:
        self.oauth.expire_tokens()

    def configure(self, **settings: Any) -> dict[str, Any]:
        with self.lock:
            for key, value in settings.items():
                if key == "api_usage":
                    self.usage.set_used(int(checked_setting(key, value)))
                else:
                    self.records.set_setting(key, value)
            return {**dataclasses.asdict(self.settings), "api_usage": self.usage.used}

    def stats(self) -> dict[str, Any]:
        return self.usage.stats()

    def reset(self) -> None:
        """Back to the state after construction; issued tokens stay valid."""
        with self.lock:
            super().reset()
            self.records.reset()
            self.queries.reset()
            self.usage.reset()
            self.record_api.reset()
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
            response.headers["Sforce-Limit-Info"] = self.usage.limit_info()

    def _rest(self, method: str, suffix: str, kind: str, handler: Callable[[Request], Response]) -> None:
        """Register a REST route that authenticates, then counts against the daily allocation."""

        def guarded(request: Request) -> Response:
            self.oauth.authenticate(request)
            self.usage.count(kind)
            return handler(request)

        self.route(method, API + suffix, guarded, name=kind)

    def _register_routes(self) -> None:
        queries, api = self.queries, self.record_api
        self.route("POST", "/services/oauth2/token", self.oauth.token, name="token")
        self._rest("GET", r"/query/?", "query", queries.query)
        self._rest("GET", r"/queryAll/?", "query", queries.query_all)
        self._rest("GET", r"/query(?:All)?/{locator}/?", "query_more", queries.query_more)
        self._rest("PATCH", r"/composite/sobjects/?", "composite", api.collections_update)  # sObject Collections
        self._rest("POST", r"/composite/?", "composite_batch", self.composite.composite)  # Composite: one call
        self._rest("GET", r"/sobjects/Task/describe/?", "describe", api.describe)
        self._rest("GET", r"/sobjects/Task/{record_id}/?", "sobject", api.sobject_get)
        self._rest("PATCH", r"/sobjects/Task/{record_id}/?", "sobject", api.sobject_update)
        self._rest("GET", r"/limits/?", "limits", api.limits)
        self._register_bulk_routes()
        self._register_admin_routes()

    def _register_bulk_routes(self) -> None:
        ingest, api = r"/jobs/ingest", self.record_api
        self._rest("POST", ingest + "/?", "bulk", api.bulk_create)
        self._rest("GET", ingest + "/?", "bulk", api.bulk_jobs)
        self._rest("PUT", ingest + "/{job_id}/batches/?", "bulk", api.bulk_upload)
        self._rest("GET", ingest + "/{job_id}/?", "bulk", api.bulk_info)
        self._rest("PATCH", ingest + "/{job_id}/?", "bulk", api.bulk_set_state)
        self._rest("DELETE", ingest + "/{job_id}/?", "bulk", api.bulk_delete)
        self._rest("GET", ingest + "/{job_id}/{kind}/?", "bulk", api.bulk_results)

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
            rules = self.records.add_validation_rule(body["field"], body.get("forbidden_value"),
                                                     str(body.get("message") or "Validation rule failed"))
        except ValueError as exc:
            raise HttpError(400, str(exc), "INVALID_INPUT") from None
        return Response.json(200, {"rules": rules})

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
