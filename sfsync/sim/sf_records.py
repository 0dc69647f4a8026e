"""The Salesforce simulator's Task store and its one write rule: the in-memory Tasks with their
history and indexes, the deployed reports, the tunable settings, what the integration user may see,
and the validation (``check``) and apply (``apply``) steps that every write, whichever API it comes
through, passes. ``TaskRecords`` is a plain object the simulator's parts share; it knows nothing of HTTP."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sfsync.sim import soql
from sfsync.sim.bulk import USER_ID
from sfsync.sim.faults import Faults
from sfsync.sim.sf_schema import (
    DEFAULT_TASK_FIELDS,
    SOBJECT,
    TASK_PREFIX,
    FieldDef,
    FieldIndex,
    HistoryEntry,
    RecordError,
    ValidationRule,
    constrain,
    convert,
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


def checked_setting(key: str, value: Any) -> Any:
    """``value`` if ``configure`` accepts it for ``key``; else ValueError naming what is wrong."""
    check = SETTING_CHECKS.get(key)
    if check is None and key not in BOOL_SETTINGS:
        raise ValueError(f"unknown setting {key!r}")
    if key in BOOL_SETTINGS:
        if not isinstance(value, bool):
            raise ValueError(f"bad value for {key}: {value!r} (true or false)")
        return value
    if check is None or isinstance(value, bool) or not isinstance(value, int | float) or not check(value):
        raise ValueError(f"bad value for {key}: {value!r}")
    return value


class TaskRecords:
    """The Tasks, their schema, the settings and the write rule. State lives under ``lock`` (the
    simulator's own), which callers may hold across several calls; ``faults`` draws the row locks."""

    def __init__(self, lock: threading.RLock, faults: Faults, settings: SimSettings):
        self.lock = lock
        self.faults = faults
        self._initial_settings = settings
        self.settings = dataclasses.replace(settings)
        self._last_stamp: tuple[int, str] = (-1, "")
        self._task_numbers = itertools.count(10_000_000_000, 104_729)  # never reused, even across reset()
        self._clear_data()
        self.set_schema(DEFAULT_TASK_FIELDS)

    def reset(self) -> None:
        """No Tasks, rules, shares or reports; the default schema and the settings given at construction."""
        with self.lock:
            self._clear_data()
            self.set_schema(DEFAULT_TASK_FIELDS)
            self.settings = dataclasses.replace(self._initial_settings)

    def _clear_data(self) -> None:
        self._tasks: dict[str, dict[str, Any]] = {}
        self._deleted: set[str] = set()
        self._history: dict[str, HistoryEntry | list[HistoryEntry]] = {}
        self._field_sets: dict[tuple[str, ...], tuple[str, ...]] = {}  # one shared tuple per set of fields
        self._rules: list[ValidationRule] = []
        self._index: dict[str, FieldIndex] = {}
        self._shared: set[str] = set()  # related records (WhoId/WhatId) the integration user can see
        self._reports: dict[str, dict[str, Any]] = {}  # Report Id -> its row

    def set_setting(self, key: str, value: Any) -> None:
        """One of ``SimSettings`` (not ``api_usage``, which is counted elsewhere), checked."""
        value = checked_setting(key, value)
        with self.lock:
            if key in BOOL_SETTINGS:
                setattr(self.settings, key, value)
                return
            kind = type(getattr(self.settings, key))
            setattr(self.settings, key, kind(value))

    # -- the Python API (the simulator's own delegates here) -------------------------------------
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

    def add_validation_rule(self, field: str, forbidden_value: Any, message: str) -> int:
        """A validation rule; returns how many there are now."""
        with self.lock:
            spec = self._schema_ci.get(field.lower())
            if spec is None:
                raise ValueError(f"unknown Task field {field!r}")
            self._rules.append(ValidationRule(spec.name, forbidden_value, message))
            return len(self._rules)

    def share_related(self, record_ids: Iterable[str]) -> None:
        with self.lock:
            self._shared.update(c for r in record_ids if (c := soql.canonical_id(r)))

    def add_report(self, developer_name: str, name: str, folder: str) -> str:
        with self.lock:
            report_id = soql.make_id("00O", len(self._reports) + 1)
            self._reports[report_id] = {"Id": report_id, "Name": name, "DeveloperName": developer_name,
                                        "FolderName": folder, "Format": "Summary"}
        return report_id

    def reports(self) -> list[dict[str, Any]]:
        """The deployed reports' rows (never changed once added)."""
        with self.lock:
            return list(self._reports.values())

    # -- schema ----------------------------------------------------------------------------------
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

    @property
    def fields(self) -> Mapping[str, FieldDef]:
        """The Task fields by name, in schema order. Read with the lock held."""
        return self._schema

    def field(self, name: str) -> FieldDef | None:
        """The field of that name, whatever its case. Call with the lock held."""
        return self._schema_ci.get(name.lower())

    # -- reads -----------------------------------------------------------------------------------
    def project(self, task_id: str, fields: list[str], version: str) -> dict[str, Any]:
        """One Task as a REST record with these fields. Call with the lock held."""
        task = self._tasks[task_id]
        record: dict[str, Any] = {"attributes": {"type": SOBJECT,
                                                 "url": f"/services/data/v{version}/sobjects/{SOBJECT}/{task_id}"}}
        for name in fields:
            record[name] = task.get(name)
        return record

    def indexed_fields(self) -> list[str]:
        """The fields a query may look up by value instead of scanning: Id and the indexed ones."""
        return ["Id", *self._index.keys()]

    def candidate_rows(self, plan: soql.Plan, include_deleted: bool) -> Iterable[Mapping[str, Any]]:
        """The Tasks a plan must look at: an index lookup when the plan allows one, else all; only
        those the integration user sees. Call (and iterate) with the lock held."""
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
                task[spec.name] = convert(spec, value, from_csv=False)
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
    def check(self, raw_id: Any, values: Mapping[str, Any], *, from_csv: bool) -> tuple[str, dict[str, Any]]:
        """Validate one update as Salesforce would; returns the Task Id and the typed changes.
        Call with ``self.lock`` held."""
        task_id = self.resolve_id(raw_id)
        task = self._tasks[task_id]
        if not self._visible(task):
            raise RecordError("INSUFFICIENT_ACCESS_OR_READONLY", "insufficient access rights on object id",
                              task_id=task_id)
        try:
            changes: dict[str, Any] = {}
            for name, value in values.items():
                spec = self._updateable(name)
                converted = convert(spec, value, from_csv=from_csv)
                constrain(spec, converted)
                changes[spec.name] = converted
            if self.faults.chance(self.settings.lock_row_rate):
                raise RecordError("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record or 1 "
                                  f"records: {task_id}")
            self._run_rules(task, changes)
        except RecordError as err:
            err.task_id = task_id
            raise
        return task_id, changes

    def resolve_id(self, raw_id: Any) -> str:
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

    def _run_rules(self, task: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
        # Rules see the record as it would be saved, not just the fields sent.
        for rule in self._rules:
            value = changes[rule.field] if rule.field in changes else task.get(rule.field)
            if value == rule.forbidden_value:
                raise RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message, [rule.field])

    def apply(self, task_id: str, changes: dict[str, Any], via: str) -> None:
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
