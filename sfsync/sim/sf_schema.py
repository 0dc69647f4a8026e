"""The Salesforce simulator's Task schema: field definitions in describe's terms, the default Task
fields, the per-field value index, validation rules, the per-record error every write path reports,
and how a sent value becomes a field's stored value (type conversion and field constraints)."""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sfsync.sim import soql

SOBJECT = "Task"
TASK_PREFIX = "00T"
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


class FieldIndex:
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



# -- values --------------------------------------------------------------------------------------
def convert(spec: FieldDef, value: Any, *, from_csv: bool) -> Any:
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


def constrain(spec: FieldDef, value: Any) -> None:
    """Refuse a converted value the field does not allow (null, too long, off a restricted picklist)."""
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
