"""A Salesforce REST simulator: OAuth token grants, SOQL query with server-side cursors, sObject
Collections update, single-record get and update, describe, limits and Bulk API 2.0 ingest, over HTTPS
on loopback, answering as the real service does (errors, limits, paging, per-record results).

Every write, whichever API it comes through, passes one validation rule (``_check``) and one apply
step (``_apply``) that records per-Task history, so tests can prove what was written, when and how.
"""

from __future__ import annotations

import base64
import collections
import copy
import dataclasses
import datetime as dt
import hashlib
import hmac
import itertools
import json
import re
import secrets
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sfsync.sim import soql
from sfsync.sim.base import FaultConfig, HttpError, Request, Response, SimApp, _Route
from sfsync.sim.bulk import RESULT_KINDS, USER_ID, BulkIngest

SOBJECT = "Task"
TASK_PREFIX = "00T"
ORG_ID = soql.make_id("00D", 1)
MAX_TARGET_BYTES = 16_384  # request line limit (URI plus query string)
MAX_COLLECTION = 200
MAX_OPEN_CURSORS = 20
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LOGIN_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")
# Salesforce names the limit a REQUEST_LIMIT_EXCEEDED hit: the daily one, or a concurrency one.
DAILY_LIMIT_MESSAGE = "TotalRequests Limit exceeded."
CONCURRENCY_LIMIT_MESSAGES = ("ConcurrentPerOrgLongTxn Limit exceeded.",
                              "ConcurrentRequests (Concurrent API Requests) Limit exceeded.")
PROXY_PAGE = "<html><head><title>403 Forbidden</title></head><body><h1>Forbidden</h1>Request blocked.</body></html>"
USER_PERMISSIONS = "UserPermissionAccess"  # the running user's effective permissions, one row
REPORT = "Report"  # deployed reports (queryable by DeveloperName, e.g. for a link to one)
_REPORT_FIELDS = {"Id": "id", "Name": "string", "DeveloperName": "string", "FolderName": "string",
                  "Format": "picklist"}
API = r"/services/data/v(?P<version>\d+\.\d+)"
ROLLED_BACK = ("ALL_OR_NONE_OPERATION_ROLLED_BACK",
               "Record rolled back because not all records were valid and the request was using AllOrNone header")
SYSTEM_FIELDS = ("Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted")

DEFAULT_TASK_FIELDS: list[dict[str, Any]] = [
    {"name": "Id", "label": "Activity ID", "type": "id", "length": 18, "updateable": False, "nillable": False,
     "idLookup": True},
    {"name": "Subject", "label": "Subject", "type": "string", "length": 255},
    {"name": "OwnerId", "label": "Assigned To ID", "type": "reference", "length": 18, "nillable": False},
    {"name": "WhoId", "label": "Name ID", "type": "reference", "length": 18},
    {"name": "WhatId", "label": "Related To ID", "type": "reference", "length": 18},
    {"name": "Status", "label": "Status", "type": "picklist", "length": 255, "nillable": False,
     "restrictedPicklist": True,
     "picklistValues": ["Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"]},
    {"name": "Description", "label": "Description", "type": "textarea", "length": 32000, "filterable": False},
    {"name": "CreatedDate", "label": "Created Date", "type": "datetime", "updateable": False, "nillable": False},
    {"name": "LastModifiedDate", "label": "Last Modified Date", "type": "datetime", "updateable": False,
     "nillable": False},
    {"name": "SMS_Status__c", "label": "SMS Status", "type": "string", "length": 40},
    {"name": "SMS_Status_Code__c", "label": "SMS Status Code", "type": "string", "length": 10},
    {"name": "SMS_Message_Id__c", "label": "SMS Message Id", "type": "string", "length": 255, "externalId": True,
     "idLookup": True},
    {"name": "SMS_Status_Updated__c", "label": "SMS Status Updated", "type": "datetime"},
]


# -- schema --------------------------------------------------------------------------------------
@dataclass
class FieldDef:
    """One Task field, configured in describe's own terms (``externalId``, ``picklistValues``...)."""

    name: str
    type: str = "string"
    label: str = ""
    length: int = 0
    updateable: bool = True
    filterable: bool = True
    external_id: bool = False
    id_lookup: bool = False
    nillable: bool = True
    picklist_values: list[str] = field(default_factory=list)
    restricted_picklist: bool = False
    category: str = field(init=False, repr=False, compare=False)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> FieldDef:
        name = spec.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"field needs a valid name, not {name!r}")
        kind = str(spec.get("type", "string")).lower()
        if kind not in soql.CATEGORIES:
            raise ValueError(f"field {name}: unknown type {kind!r}")
        text = soql.category(kind) == "string"
        picklist = [v["value"] if isinstance(v, Mapping) else str(v) for v in spec.get("picklistValues") or []]
        return cls(
            name=name, type=kind, label=str(spec.get("label") or name),
            length=int(spec.get("length", 18 if kind == "id" else 255 if text else 0)),
            updateable=bool(spec.get("updateable", kind != "id" and name not in SYSTEM_FIELDS)),
            filterable=bool(spec.get("filterable", kind != "textarea" or int(spec.get("length", 255)) <= 255)),
            external_id=bool(spec.get("externalId", False)), id_lookup=bool(spec.get("idLookup", False)),
            nillable=bool(spec.get("nillable", True)), picklist_values=picklist,
            restricted_picklist=bool(spec.get("restrictedPicklist", False)),
        )

    def __post_init__(self) -> None:
        self.category = soql.category(self.type)  # looked up on every write: computed once

    @property
    def indexed(self) -> bool:
        return self.name != "Id" and (self.external_id or self.id_lookup)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "label": self.label, "type": self.type, "length": self.length,
            "updateable": self.updateable, "createable": self.updateable, "filterable": self.filterable,
            "sortable": self.filterable, "groupable": self.filterable, "externalId": self.external_id,
            "idLookup": self.id_lookup or self.name == "Id", "nillable": self.nillable,
            "custom": self.name.endswith("__c"), "restrictedPicklist": self.restricted_picklist,
            "picklistValues": [{"value": v, "label": v, "active": True, "defaultValue": False}
                               for v in self.picklist_values],
        }


HistoryEntry = tuple[float, str, tuple[str, ...], tuple[Any, ...]]  # time, via, field names, values


class _FieldIndex:
    """Task Ids by one field's value, so ``X = '..'`` and ``X IN (..)`` need no scan. A value held by
    one Task keeps its Id bare (external ids are mostly unique): a set per value costs 200 bytes."""

    def __init__(self, spec: FieldDef):
        self.spec = spec
        self.entries: dict[Any, str | set[str]] = {}

    def key(self, value: Any) -> Any:
        return value.casefold() if isinstance(value, str) and self.spec.category == "string" else value

    def add(self, value: Any, task_id: str) -> None:
        if value is None:
            return
        key = self.key(value)
        held = self.entries.get(key)
        if held is None:
            self.entries[key] = task_id
        elif isinstance(held, set):
            held.add(task_id)
        elif held != task_id:
            self.entries[key] = {held, task_id}

    def remove(self, value: Any, task_id: str) -> None:
        if value is None:
            return
        key = self.key(value)
        held = self.entries.get(key)
        if held == task_id:
            del self.entries[key]
        elif isinstance(held, set):
            held.discard(task_id)
            if not held:
                del self.entries[key]

    def get(self, value: Any) -> Iterable[str]:
        held = self.entries.get(self.key(value))
        return () if held is None else (held,) if isinstance(held, str) else held


class RecordError(Exception):
    """One record's failure, in the errors-list shape; ``id`` is set when the Task exists."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None, task_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or []
        self.task_id = task_id

    def as_result(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}

    def as_bulk(self) -> str:
        return f"{self.code}:{self.message}:{','.join(self.fields)} --"


@dataclass
class ValidationRule:
    field: str
    forbidden_value: Any
    message: str


@dataclass
class SimSettings:
    lock_row_rate: float = 0.0
    token_ttl_s: float = 7200.0
    daily_limit: int = 100_000
    query_page_size: int = 2000
    bulk_processing_s: float = 0.2
    view_setup: bool = False  # "View Setup and Configuration": GET /limits needs it (the shipped set lacks it)
    view_all_data: bool = False  # sees every Task; without it, only its own or those whose Who/What it sees
    concurrent_limit_calls: int = 0  # the next N REST calls answer REQUEST_LIMIT_EXCEEDED (concurrency)
    token_unknown_errors: int = 0  # the next N token requests answer unknown_error "retry your request"
    token_proxy_errors: int = 0  # the next N token requests get a proxy's 403 HTML page


_SETTING_CHECKS: dict[str, Callable[[Any], bool]] = {
    "lock_row_rate": lambda v: 0 <= v <= 1, "token_ttl_s": lambda v: v > 0, "daily_limit": lambda v: v >= 0,
    "query_page_size": lambda v: v >= 1, "bulk_processing_s": lambda v: v >= 0, "api_usage": lambda v: v >= 0,
    "concurrent_limit_calls": lambda v: v >= 0, "token_unknown_errors": lambda v: v >= 0,
    "token_proxy_errors": lambda v: v >= 0,
}
_BOOL_SETTINGS = {"view_setup", "view_all_data"}


@dataclass
class _Cursor:
    ids: list[str]
    fields: list[str]


class _OAuthError(Exception):
    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error = error
        self.description = description


def _load_public_key(pem: bytes | None) -> rsa.RSAPublicKey | None:
    """The connected app's key: a PEM public key or the certificate uploaded to the app."""
    if pem is None:
        return None
    if b"CERTIFICATE" in pem:
        key: Any = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("JWT bearer needs an RSA public key")
    return key


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- the simulator -------------------------------------------------------------------------------
class SalesforceSim(SimApp):
    """Salesforce's REST API for one object, Task. State lives in memory under ``self.lock``; the
    Python methods below are what tests and the harness use, and what the ``/_sim/`` routes call."""

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
    ):
        super().__init__(faults)
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.password = password
        self._jwt_key = _load_public_key(jwt_public_key_pem)
        self._initial_settings = SimSettings(lock_row_rate, token_ttl_s, daily_limit, query_page_size,
                                             bulk_processing_s, view_setup, view_all_data)
        self.jwt_audiences = {a.rstrip("/") for a in (*LOGIN_AUDIENCES, *jwt_audiences)}  # + Experience Cloud sites
        self._initial_faults = copy.deepcopy(self.faults.config)
        self.settings = dataclasses.replace(self._initial_settings)
        self.api_calls: Counter[str] = Counter()
        self.call_log: collections.deque[tuple[str, float]] = collections.deque(maxlen=10_000)  # (kind, when)
        self.api_usage = 0
        self._tokens: dict[str, float] = {}
        self._last_stamp: tuple[int, str] = (-1, "")
        self._task_numbers = itertools.count(10_000_000_000, 104_729)  # never reused, even across reset()
        self._cursor_numbers = itertools.count(30_000_000_000, 7_907)
        self._clear_data()
        self.set_schema(DEFAULT_TASK_FIELDS)
        self.bulk = BulkIngest(self._bulk_columns, self._bulk_write, lambda: self.settings.bulk_processing_s,
                               self.stopping)
        self._too_long = _Route("GET", re.compile(r"(?!)"), "uri_too_long", self._uri_too_long)
        self._register_routes()

    def _clear_data(self) -> None:
        self._tasks: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()
        self._history: dict[str, HistoryEntry | list[HistoryEntry]] = {}
        self._field_sets: dict[tuple[str, ...], tuple[str, ...]] = {}  # one shared tuple per set of fields
        self._rules: list[ValidationRule] = []
        self._cursors: OrderedDict[str, _Cursor] = OrderedDict()
        self._index: dict[str, _FieldIndex] = {}
        self._shared: set[str] = set()  # related records (WhoId/WhatId) the integration user can see
        self._reports: dict[str, dict[str, Any]] = {}  # Report Id -> its row

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

    def set_schema(self, fields: list[dict[str, Any]]) -> None:
        defs = [FieldDef.from_dict(spec) for spec in fields]
        if not any(d.name == "Id" for d in defs):
            defs.insert(0, FieldDef.from_dict(DEFAULT_TASK_FIELDS[0]))
        if len({d.name.lower() for d in defs}) != len(defs):
            raise ValueError("duplicate field name in schema")
        with self.lock:
            self._schema = {d.name: d for d in defs}
            self._schema_ci = {d.name.lower(): d for d in defs}
            self._rebuild_index()

    def schema(self) -> list[dict[str, Any]]:
        with self.lock:
            return [d.describe() for d in self._schema.values()]

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

    def _visible(self, task: Mapping[str, Any]) -> bool:
        """A Task the integration user sees: View All Data, its own, or its Who/What shared with it.
        Call with the lock held."""
        if self.settings.view_all_data or task.get("OwnerId", USER_ID) == USER_ID:
            return True
        return task.get("WhoId") in self._shared or task.get("WhatId") in self._shared

    def expire_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()

    def configure(self, **settings: Any) -> dict[str, Any]:
        with self.lock:
            for key, value in settings.items():
                check = _SETTING_CHECKS.get(key)
                if check is None and key not in _BOOL_SETTINGS:
                    raise ValueError(f"unknown setting {key!r}")
                if key in _BOOL_SETTINGS:
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
                    "api_usage": self.api_usage, "daily_limit": self.settings.daily_limit}

    def reset(self) -> None:
        """Back to the state after construction; issued tokens stay valid."""
        with self.lock:
            super().reset()
            self._clear_data()
            self.set_schema(DEFAULT_TASK_FIELDS)
            self.settings = dataclasses.replace(self._initial_settings)
            self.api_calls.clear()
            self.call_log.clear()
            self.api_usage = 0
            self.bulk.reset()
            self.faults.configure(**vars(copy.deepcopy(self._initial_faults)))

    # -- storage helpers -----------------------------------------------------------------------
    def _prepare_seed(self, record: Mapping[str, Any], now: str) -> dict[str, Any]:
        task: dict[str, Any] = {}
        for key, value in record.items():
            if key == "attributes":
                continue
            spec = self._schema_ci.get(str(key).lower())
            if spec is None:
                raise ValueError(f"unknown Task field {key!r}")
            try:
                task[spec.name] = self._convert(spec, value, from_csv=False)
            except RecordError as err:
                raise ValueError(err.message) from None
        raw_id = task.get("Id")
        if raw_id is None:
            task["Id"] = self._new_task_id()
        elif not raw_id.startswith(TASK_PREFIX):
            raise ValueError(f"a Task Id starts with {TASK_PREFIX}: {raw_id}")
        for name in ("CreatedDate", "LastModifiedDate"):
            task.setdefault(name, now)
        if "OwnerId" in self._schema:
            task.setdefault("OwnerId", USER_ID)  # a Task always has an owner: by default the integration user
        status = self._schema.get("Status")
        if status is not None and status.picklist_values and task.get("Status") is None:
            task["Status"] = status.picklist_values[0]
        return task

    def _new_task_id(self) -> str:
        while (task_id := soql.make_id(TASK_PREFIX, next(self._task_numbers))) in self._tasks:
            pass
        return task_id

    def _index_add(self, task: Mapping[str, Any]) -> None:
        for name, index in self._index.items():
            index.add(task.get(name), task["Id"])

    def _rebuild_index(self) -> None:
        self._index = {d.name: _FieldIndex(d) for d in self._schema.values() if d.indexed}
        for task in self._tasks.values():
            self._index_add(task)

    def _reindex(self, task: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
        for name in self._index.keys() & changes.keys():
            self._index[name].remove(task.get(name), task["Id"])
            self._index[name].add(changes[name], task["Id"])

    # -- the one write rule ----------------------------------------------------------------------
    def _check(self, raw_id: Any, values: Mapping[str, Any], *, from_csv: bool) -> tuple[str, dict[str, Any]]:
        """Validate one update as Salesforce would; returns the Task Id and the typed changes.
        Call with ``self.lock`` held."""
        task_id = self._resolve_id(raw_id)
        task = self._tasks[task_id]
        if not self._visible(task):
            raise RecordError("INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id",
                              task_id=task_id)
        try:
            changes: dict[str, Any] = {}
            for name, value in values.items():
                spec = self._updateable(name)
                converted = self._convert(spec, value, from_csv=from_csv)
                self._constrain(spec, converted)
                changes[spec.name] = converted
            if self.faults.chance(self.settings.lock_row_rate):
                raise RecordError("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 "
                                  f"records: {task_id}")
            self._run_rules(task, changes)
        except RecordError as err:
            err.task_id = task_id
            raise
        return task_id, changes

    def _resolve_id(self, raw_id: Any) -> str:
        if raw_id is None or raw_id == "":
            raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", ["Id"])
        task_id = raw_id if raw_id in self._tasks else soql.canonical_id(raw_id)
        if task_id is None:
            raise RecordError("MALFORMED_ID", f"malformed id {raw_id}", ["Id"])
        if not task_id.startswith(TASK_PREFIX):
            raise RecordError("MALFORMED_ID", f"Task ID: id value of incorrect type: {raw_id}", ["Id"])
        if task_id not in self._tasks:
            raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id")
        if task_id in self._deleted:
            raise RecordError("ENTITY_IS_DELETED", "entity is deleted")
        return task_id

    def _updateable(self, name: str) -> FieldDef:
        spec = self._schema_ci.get(str(name).lower())
        if spec is None:
            raise RecordError("INVALID_FIELD", f"No such column '{name}' on sobject of type {SOBJECT}", [str(name)])
        if not spec.updateable:
            raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE", f"Unable to create/update fields: {spec.name}. "
                              "Please check the security settings of this field and verify that it is read/write "
                              "for your profile or permission set.", [spec.name])
        return spec

    def _convert(self, spec: FieldDef, value: Any, *, from_csv: bool) -> Any:
        """A JSON (or CSV text) value in the field's stored form."""
        if value is None:
            return None
        cat = spec.category
        try:
            if cat == "string" and (isinstance(value, str) or (isinstance(value, int | float)
                                                                and not isinstance(value, bool))):
                text = str(value)
                if not text:
                    return None  # Salesforce stores an empty text as null
                return sys.intern(text) if len(text) <= 40 else text  # statuses repeat a million times
            if cat == "id":
                canonical = soql.canonical_id(value)
                if canonical is None:
                    raise RecordError("MALFORMED_ID", f"{spec.label}: id value of incorrect type: {value}",
                                      [spec.name])
                return canonical
            if cat == "datetime":
                parsed = value if isinstance(value, dt.datetime) else soql.parse_datetime(value)
                return soql.format_datetime(parsed)
            if cat == "date":
                return (value if isinstance(value, dt.date) else dt.date.fromisoformat(value)).isoformat()
            if cat == "boolean":
                if isinstance(value, bool):
                    return value
                if from_csv and value.lower() in ("true", "false"):
                    return value.lower() == "true"
            if cat == "number" and not isinstance(value, bool):
                if isinstance(value, int | float):
                    return value
                if from_csv:
                    return float(value) if "." in value else int(value)
        except (ValueError, TypeError, AttributeError):
            pass
        raise RecordError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{spec.label}: value not of required type: {value}",
                          [spec.name])

    def _constrain(self, spec: FieldDef, value: Any) -> None:
        restricted = spec.type == "picklist" and spec.restricted_picklist
        if value is None:
            if spec.nillable:
                return
            if restricted:
                raise RecordError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", f"{spec.label}: bad value for "
                                  "restricted picklist field: null", [spec.name])
            raise RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{spec.name}]", [spec.name])
        if spec.category == "string" and spec.length and len(value) > spec.length:
            raise RecordError("STRING_TOO_LONG", f"{spec.label}: data value too large: {value[:80]} (max length="
                              f"{spec.length})", [spec.name])
        if restricted and value not in spec.picklist_values:
            raise RecordError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", f"{spec.label}: bad value for restricted "
                              f"picklist field: {value}", [spec.name])

    def _run_rules(self, task: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
        # Rules see the record as it would be saved, not just the fields sent.
        for rule in self._rules:
            value = changes[rule.field] if rule.field in changes else task.get(rule.field)
            if value == rule.forbidden_value:
                raise RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message, [rule.field])

    def _apply(self, task_id: str, changes: dict[str, Any], via: str) -> None:
        """Save checked changes, with LastModifiedDate and a history entry. Call with the lock held."""
        now = time.time()
        task = self._tasks[task_id]
        self._reindex(task, changes)
        task.update(changes)
        task["LastModifiedDate"] = self._stamp(now)
        names = tuple(changes)
        entry = (now, via, self._field_sets.setdefault(names, names), tuple(changes.values()))
        past = self._history.get(task_id)  # one write is stored bare, more as a list: bulk writes a million
        if past is None:
            self._history[task_id] = entry
        elif isinstance(past, list):
            past.append(entry)
        else:
            self._history[task_id] = [past, entry]

    def _stamp(self, now: float) -> str:
        # Bulk writes thousands of rows a millisecond: format each millisecond once.
        millis = int(now * 1000)
        if self._last_stamp[0] != millis:
            self._last_stamp = (millis, soql.format_datetime(dt.datetime.fromtimestamp(millis / 1000, dt.UTC)))
        return self._last_stamp[1]

    # -- HTTP plumbing -------------------------------------------------------------------------
    def match(self, request: Request) -> tuple[_Route | None, bool]:
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

    def _authenticate(self, request: Request) -> None:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        token = token.strip()
        with self.lock:
            expiry = self._tokens.get(token) if scheme.lower() in ("bearer", "oauth") else None
            if expiry is not None and expiry <= time.monotonic():
                del self._tokens[token]
                expiry = None
        if expiry is None:
            raise HttpError(401, "Session expired or invalid", "INVALID_SESSION_ID")

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
        self._rest("PATCH", r"/composite/sobjects/?", "composite", self._composite_update)
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

    # -- OAuth ---------------------------------------------------------------------------------
    def _oauth_token(self, request: Request) -> Response:
        with self.lock:
            self.api_calls["token"] += 1
            unknown, proxy = self.settings.token_unknown_errors > 0, self.settings.token_proxy_errors > 0
            if unknown:
                self.settings.token_unknown_errors -= 1
            elif proxy:
                self.settings.token_proxy_errors -= 1
        if unknown:
            return Response.json(400, {"error": "unknown_error", "error_description": "retry your request"})
        if proxy:
            return Response.text(403, PROXY_PAGE, "text/html; charset=utf-8")
        form = {k: v[0] for k, v in parse_qs(request.body().decode("utf-8", "replace"), keep_blank_values=True).items()}
        grant = form.get("grant_type")
        try:
            if grant == "client_credentials":
                self._check_client(*self._client_credentials(request, form))
            elif grant == "password":
                self._check_client(form.get("client_id"), form.get("client_secret"))
                if form.get("username") != self.username or form.get("password") != self.password:
                    raise _OAuthError("invalid_grant", "authentication failure")
            elif grant == JWT_GRANT:
                self._check_assertion(form.get("assertion") or "")
            else:
                raise _OAuthError("unsupported_grant_type", "grant type not supported")
        except _OAuthError as exc:
            return Response.json(400, {"error": exc.error, "error_description": exc.description})
        return Response.json(200, self._issue_token())

    def _client_credentials(self, request: Request, form: Mapping[str, str]) -> tuple[str | None, str | None]:
        scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return form.get("client_id"), form.get("client_secret")
        try:
            client_id, _, secret = base64.b64decode(encoded.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise _OAuthError("invalid_client", "invalid client credentials") from None
        return client_id, secret

    def _check_client(self, client_id: str | None, secret: str | None) -> None:
        if client_id != self.client_id:
            raise _OAuthError("invalid_client_id", "client identifier invalid")
        if not hmac.compare_digest((secret or "").encode(), self.client_secret.encode()):
            raise _OAuthError("invalid_grant", "authentication failure")

    def _check_assertion(self, assertion: str) -> None:
        """Verify an RS256 JWT bearer assertion: signature, then iss, sub, aud and exp."""
        parts = assertion.split(".")
        if len(parts) != 3 or self._jwt_key is None:
            raise _OAuthError("invalid_grant", "invalid assertion")
        try:
            header = json.loads(_b64url(parts[0]))
            claims = json.loads(_b64url(parts[1]))
            if header.get("alg") != "RS256" or not isinstance(claims, dict):
                raise ValueError("not an RS256 JWT")
            self._jwt_key.verify(_b64url(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(),
                                 hashes.SHA256())
        except (ValueError, InvalidSignature, AttributeError):
            raise _OAuthError("invalid_grant", "invalid assertion") from None
        if claims.get("iss") != self.client_id:
            raise _OAuthError("invalid_client_id", "client identifier invalid")
        if claims.get("sub") != self.username:
            raise _OAuthError("invalid_grant", "user hasn't approved this consumer")
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        # login/test.salesforce.com or a configured Experience Cloud site; never the My Domain URL.
        if not any(isinstance(a, str) and a.rstrip("/") in self.jwt_audiences for a in audiences):
            raise _OAuthError("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= time.time():
            raise _OAuthError("invalid_grant", "expired authorization code")

    def _issue_token(self) -> dict[str, Any]:
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        issued_at = str(int(time.time() * 1000))
        identity = f"{self.base_url}/id/{ORG_ID}/{USER_ID}"
        signature = hmac.new(self.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
        with self.lock:
            self._tokens[token] = time.monotonic() + self.settings.token_ttl_s
        return {"access_token": token, "instance_url": self.base_url, "id": identity, "token_type": "Bearer",
                "issued_at": issued_at, "signature": base64.b64encode(signature).decode(), "scope": "api"}

    # -- query ---------------------------------------------------------------------------------
    def _query(self, request: Request, *, include_deleted: bool) -> Response:
        text = request.arg("q")
        if text is None or not text.strip():
            raise HttpError(400, "A query string has to be specified", "MALFORMED_QUERY")
        version = request.params["version"]
        if self._sobject_of(text).lower() == USER_PERMISSIONS.lower():
            return self._user_permissions(text, version)
        if self._sobject_of(text).lower() == REPORT.lower():
            return self._report_query(text, version)
        with self.lock:
            try:
                plan = soql.compile_query(text, self._schema, sobject=SOBJECT,
                                          indexed=["Id", *self._index.keys()])
            except soql.SoqlError as exc:
                raise HttpError(400, exc.message, exc.code) from None
            rows = self._candidate_rows(plan, include_deleted)
            if plan.kind == "count":
                return Response.json(200, {"totalSize": plan.count(rows), "done": True, "records": []})
            if plan.kind == "aggregate":
                records = plan.aggregate(rows)
                return Response.json(200, {"totalSize": len(records), "done": True, "records": records})
            cursor = _Cursor([row["Id"] for row in plan.select(rows)], plan.fields)
            return Response.json(200, self._page(cursor, None, 0, version, self._page_size(request)))

    @staticmethod
    def _sobject_of(text: str) -> str:
        try:
            return soql.parse(text).sobject
        except soql.SoqlError as exc:
            raise HttpError(400, exc.message, exc.code) from None

    def _user_permissions(self, text: str, version: str) -> Response:
        """``SELECT Permissions... FROM UserPermissionAccess``: the running user's effective permissions."""
        with self.lock:
            row = {"Id": soql.make_id("0Up", 1), "PermissionsApiEnabled": True,
                   "PermissionsViewSetup": self.settings.view_setup,
                   "PermissionsViewAllData": self.settings.view_all_data, "PermissionsModifyAllData": False}
        specs = {name: FieldDef(name, "id" if name == "Id" else "boolean") for name in row}
        try:
            plan = soql.compile_query(text, specs, sobject=USER_PERMISSIONS, indexed=[])
        except soql.SoqlError as exc:
            raise HttpError(400, exc.message, exc.code) from None
        url = f"/services/data/v{version}/sobjects/{USER_PERMISSIONS}/{row['Id']}"
        records = [{"attributes": {"type": USER_PERMISSIONS, "url": url}, **{f: r[f] for f in plan.fields}}
                   for r in plan.select([row])] if plan.kind == "records" else []
        return Response.json(200, {"totalSize": len(records), "done": True, "records": records})

    def _report_query(self, text: str, version: str) -> Response:
        """``SELECT ... FROM Report``: the deployed reports, records queries only."""
        specs = {name: FieldDef(name, kind) for name, kind in _REPORT_FIELDS.items()}
        try:
            plan = soql.compile_query(text, specs, sobject=REPORT, indexed=[])
        except soql.SoqlError as exc:
            raise HttpError(400, exc.message, exc.code) from None
        if plan.kind != "records":
            raise HttpError(400, "the simulator answers only records queries on Report", "MALFORMED_QUERY")
        with self.lock:
            rows = plan.select(list(self._reports.values()))
        records = [{"attributes": {"type": REPORT, "url": f"/services/data/v{version}/sobjects/{REPORT}/{r['Id']}"},
                    **{f: r[f] for f in plan.fields}} for r in rows]
        return Response.json(200, {"totalSize": len(records), "done": True, "records": records})

    def _candidate_rows(self, plan: soql.Plan, include_deleted: bool) -> Iterable[Mapping[str, Any]]:
        """The Tasks a plan must look at: an index lookup when the plan allows one, else all."""
        if plan.lookups is None:
            rows: Iterable[dict[str, Any]] = self._tasks.values()
        else:
            ids: set[str] = set()
            for name, values in plan.lookups:
                if name == "Id":
                    ids.update(c for v in values if (c := soql.canonical_id(v)) in self._tasks)
                    continue
                for value in values:
                    ids.update(self._index[name].get(value))
            # Generated Ids sort in creation order, the order a scan yields.
            rows = [self._tasks[i] for i in sorted(ids)]
        if not self.settings.view_all_data:  # rows the user cannot see are left out, silently
            rows = (row for row in rows if self._visible(row))
        if include_deleted or not self._deleted:
            return rows
        return (row for row in rows if row["Id"] not in self._deleted)

    def _page_size(self, request: Request) -> int:
        size = self.settings.query_page_size
        found = re.search(r"batchSize=(\d+)", request.headers.get("Sforce-Query-Options") or "")
        if found:  # a client may ask for smaller pages, 200 to 2000
            size = min(size, max(200, min(2000, int(found.group(1)))))
        return size

    def _page(self, cursor: _Cursor, locator: str | None, start: int, version: str, size: int) -> dict[str, Any]:
        chunk = cursor.ids[start : start + size]
        end = start + len(chunk)
        page: dict[str, Any] = {"totalSize": len(cursor.ids), "done": end >= len(cursor.ids),
                                "records": [self._project(i, cursor.fields, version) for i in chunk]}
        if not page["done"]:
            if locator is None:
                locator = soql.make_id("01g", next(self._cursor_numbers))
                self._cursors[locator] = cursor
                while len(self._cursors) > MAX_OPEN_CURSORS:
                    self._cursors.popitem(last=False)
            page["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{end}"
        return page

    def _project(self, task_id: str, fields: list[str], version: str) -> dict[str, Any]:
        task = self._tasks[task_id]
        record: dict[str, Any] = {"attributes": {"type": SOBJECT,
                                                 "url": f"/services/data/v{version}/sobjects/{SOBJECT}/{task_id}"}}
        for name in fields:
            record[name] = task.get(name)
        return record

    def _query_more(self, request: Request) -> Response:
        found = re.fullmatch(r"(01g[0-9A-Za-z]{15})-(\d+)", request.params["locator"])
        with self.lock:
            cursor = self._cursors.get(found.group(1)) if found else None
            if found is None or cursor is None or int(found.group(2)) > len(cursor.ids):
                raise HttpError(400, "invalid query locator", "INVALID_QUERY_LOCATOR")
            self._cursors.move_to_end(found.group(1))
            page = self._page(cursor, found.group(1), int(found.group(2)), request.params["version"],
                              self._page_size(request))
        return Response.json(200, page)

    # -- writes --------------------------------------------------------------------------------
    def _composite_update(self, request: Request) -> Response:
        body = request.json()
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise HttpError(400, "The request body must be an object with a records list", "JSON_PARSER_ERROR")
        if len(records) > MAX_COLLECTION:
            raise HttpError(400, f"record limit reached. cannot submit more than {MAX_COLLECTION} records into this "
                            "call", "EXCEEDED_ID_LIMIT")
        all_or_none = body.get("allOrNone") is True
        with self.lock:
            outcomes = [self._check_item(record) for record in records]
            failed = any(isinstance(o, RecordError) for o in outcomes)
            results = [self._collection_result(o, rolled_back=all_or_none and failed) for o in outcomes]
            if not (all_or_none and failed):
                for outcome in outcomes:
                    if not isinstance(outcome, RecordError):
                        self._apply(*outcome, "composite")
        return Response.json(200, results)

    def _check_item(self, record: Any) -> tuple[str, dict[str, Any]] | RecordError:
        try:
            if not isinstance(record, dict):
                raise RecordError("JSON_PARSER_ERROR", "each record must be a JSON object")
            attributes = record.get("attributes")
            kind = attributes.get("type") if isinstance(attributes, dict) else None
            if not isinstance(kind, str) or kind.lower() != SOBJECT.lower():
                raise RecordError("INVALID_TYPE", f"sObject type '{kind}' is not supported here: send "
                                  "attributes.type Task")
            raw_id = record.get("id", record.get("Id"))
            values = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
            return self._check(raw_id, values, from_csv=False)
        except RecordError as err:
            return err

    def _collection_result(self, outcome: tuple[str, dict[str, Any]] | RecordError, *,
                           rolled_back: bool) -> dict[str, Any]:
        if isinstance(outcome, RecordError):
            result: dict[str, Any] = {"success": False, "errors": [outcome.as_result()]}
            if outcome.task_id:
                result = {"id": outcome.task_id, **result}
            return result
        if rolled_back:
            error = RecordError(*ROLLED_BACK)
            return {"id": outcome[0], "success": False, "errors": [error.as_result()]}
        return {"id": outcome[0], "success": True, "errors": []}

    def _sobject_update(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "The request body must be a JSON object", "JSON_PARSER_ERROR")
        values = {k: v for k, v in body.items() if k != "attributes"}
        with self.lock:
            try:
                task_id, changes = self._check(request.params["record_id"], values, from_csv=False)
            except RecordError as err:
                raise self._record_http_error(err) from None
            self._apply(task_id, changes, "sobject")
        return Response(204)

    def _record_http_error(self, err: RecordError) -> HttpError:
        if err.code in ("MALFORMED_ID", "INVALID_CROSS_REFERENCE_KEY", "MISSING_ARGUMENT"):
            return HttpError(404, "The requested resource does not exist", "NOT_FOUND")
        status = 404 if err.code == "ENTITY_IS_DELETED" else 400
        return HttpError(status, err.message, err.code, err.fields)

    def _sobject_get(self, request: Request) -> Response:
        with self.lock:
            try:
                task_id = self._resolve_id(request.params["record_id"])
            except RecordError as err:
                raise self._record_http_error(err) from None
            wanted = request.arg("fields")
            names = list(self._schema)
            if wanted:
                specs = [self._schema_ci.get(n.strip().lower()) for n in wanted.split(",")]
                if any(s is None for s in specs):
                    raise HttpError(400, f"No such column in '{wanted}' on entity '{SOBJECT}'", "INVALID_FIELD")
                names = [s.name for s in specs if s is not None]
            return Response.json(200, self._project(task_id, names, request.params["version"]))

    def _describe(self, request: Request) -> Response:
        return Response.json(200, {"name": SOBJECT, "label": SOBJECT, "keyPrefix": TASK_PREFIX, "updateable": True,
                                   "queryable": True, "fields": self.schema()})

    def _limits(self, request: Request) -> Response:
        if not self.settings.view_setup:
            raise HttpError(403, "Insufficient Privileges: the limits resource requires the View Setup and "
                            "Configuration permission", "INSUFFICIENT_ACCESS")
        with self.lock:
            limit, used = self.settings.daily_limit, self.api_usage
        return Response.json(200, {"DailyApiRequests": {"Max": limit, "Remaining": max(0, limit - used)},
                                   "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000}})

    # -- bulk ----------------------------------------------------------------------------------
    def _job_id(self, request: Request) -> str:
        return request.params["job_id"]

    def _bulk_create(self, request: Request) -> Response:
        return Response.json(200, self.bulk.create(request.json(), request.params["version"]))

    def _bulk_upload(self, request: Request) -> Response:
        self.bulk.upload(self._job_id(request), request.reader.lines(), request.headers.get("Content-Type") or "")
        return Response(201)

    def _bulk_delete(self, request: Request) -> Response:
        self.bulk.delete(self._job_id(request))
        return Response(204)

    def _bulk_results(self, request: Request) -> Response:
        # Salesforce matches this segment whatever its case: its docs say unprocessedrecords (as
        # jsforce sends it), simple-salesforce sends unprocessedRecords.
        kind = {k.lower(): k for k in RESULT_KINDS}.get(request.params["kind"].lower(), "")
        if not kind:
            raise HttpError(404, "The requested resource does not exist", "NOT_FOUND")
        return Response.text(200, self.bulk.results(self._job_id(request), kind), "text/csv; charset=UTF-8")

    def _bulk_columns(self, header: list[str]) -> list[str]:
        with self.lock:
            names = []
            for column in header:
                spec = self._schema_ci.get(column.lower())
                if spec is None:
                    raise ValueError(f"Field name not found : {column}")
                names.append(spec.name)
        if len(set(names)) != len(names):
            raise ValueError("Duplicate field name in the header")
        if "Id" not in names:
            raise ValueError("Id column is required for update")
        return names

    def _bulk_write(self, raw_id: str, values: dict[str, str | None]) -> tuple[str, str | None]:
        with self.lock:
            try:
                task_id, changes = self._check(raw_id, values, from_csv=True)
            except RecordError as err:
                return err.task_id or "", err.as_bulk()
            self._apply(task_id, changes, "bulk")
        return task_id, None

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
        unknown = set(body) - fault_keys - _SETTING_CHECKS.keys() - _BOOL_SETTINGS - {"expire_tokens"}
        if unknown:
            raise HttpError(400, f"unknown settings {sorted(unknown)}", "INVALID_INPUT")
        try:
            settings = self.configure(**{k: v for k, v in body.items() if k in _SETTING_CHECKS or k in _BOOL_SETTINGS})
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
