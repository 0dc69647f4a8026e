"""The Salesforce simulator's Task store and its one write rule: the in-memory Tasks with their
history and indexes, what the integration user may see, and the validation (``_check``) and apply
(``_apply``) steps that every write, whichever API it comes through, passes."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sfsync.sim import soql
from sfsync.sim.base import SimApp
from sfsync.sim.bulk import USER_ID
from sfsync.sim.sf_schema import (
    DEFAULT_TASK_FIELDS,
    SOBJECT,
    TASK_PREFIX,
    FieldDef,
    FieldIndex,
    HistoryEntry,
    RecordError,
    ValidationRule,
)


@dataclass
class SimSettings:
    """The simulator's tunable behaviour; ``configure`` and ``POST /_sim/faults`` change it."""

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
    collection_shuffled_calls: int = 0  # the next N sObject Collections answers list their results reversed
    collection_false_success_calls: int = 0  # the next N mark a refused record success: true (errors kept)
    repeat_next_records_url: bool = False  # a queryMore page names itself as its nextRecordsUrl, for ever
    composite_subrequest_failures: int = 0  # the next N Composite subrequests fail alone with a 500


SETTING_CHECKS: dict[str, Callable[[Any], bool]] = {
    "lock_row_rate": lambda v: 0 <= v <= 1, "token_ttl_s": lambda v: v > 0, "daily_limit": lambda v: v >= 0,
    "query_page_size": lambda v: v >= 1, "bulk_processing_s": lambda v: v >= 0, "api_usage": lambda v: v >= 0,
    "concurrent_limit_calls": lambda v: v >= 0, "token_unknown_errors": lambda v: v >= 0,
    "token_proxy_errors": lambda v: v >= 0, "collection_shuffled_calls": lambda v: v >= 0,
    "collection_false_success_calls": lambda v: v >= 0, "composite_subrequest_failures": lambda v: v >= 0,
}
BOOL_SETTINGS = {"view_setup", "view_all_data", "repeat_next_records_url"}


@dataclass
class QueryCursor:
    """A query's result set, paged out by ``queryMore``."""

    ids: list[str]
    fields: list[str]


class TaskRecords(SimApp):
    """The Tasks, their schema and the write rule. State lives under ``self.lock``."""

    settings: SimSettings
    _schema: dict[str, FieldDef]
    _schema_ci: dict[str, FieldDef]
    _task_numbers: Iterator[int]
    _last_stamp: tuple[int, str]

    def _clear_data(self) -> None:
        self._tasks: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()
        self._history: dict[str, HistoryEntry | list[HistoryEntry]] = {}
        self._field_sets: dict[tuple[str, ...], tuple[str, ...]] = {}  # one shared tuple per set of fields
        self._rules: list[ValidationRule] = []
        self._cursors: OrderedDict[str, QueryCursor] = OrderedDict()
        self._index: dict[str, FieldIndex] = {}
        self._shared: set[str] = set()  # related records (WhoId/WhatId) the integration user can see
        self._reports: dict[str, dict[str, Any]] = {}  # Report Id -> its row


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

    def _project(self, task_id: str, fields: list[str], version: str) -> dict[str, Any]:
        task = self._tasks[task_id]
        record: dict[str, Any] = {"attributes": {"type": SOBJECT,
                                                 "url": f"/services/data/v{version}/sobjects/{SOBJECT}/{task_id}"}}
        for name in fields:
            record[name] = task.get(name)
        return record

    def _visible(self, task: Mapping[str, Any]) -> bool:
        """A Task the integration user sees: View All Data, its own, or its Who/What shared with it.
        Call with the lock held."""
        if self.settings.view_all_data or task.get("OwnerId", USER_ID) == USER_ID:
            return True
        return task.get("WhoId") in self._shared or task.get("WhatId") in self._shared

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
        self._index = {d.name: FieldIndex(d) for d in self._schema.values() if d.indexed}
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
