"""SOQL's evaluator: field categories and comparable values, and the ``Plan`` a bound query becomes
(select, count, aggregate over rows), with the predicates and sort keys it runs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sfsync.sim.soql_parser import OrderItem


# -- evaluation ----------------------------------------------------------------------------------
class FieldSpec(Protocol):
    """What the binder needs to know of a field (the simulator's FieldDef satisfies it)."""

    name: str
    type: str
    filterable: bool


CATEGORIES = {
    "id": "id", "reference": "id", "string": "string", "textarea": "string", "picklist": "string",
    "multipicklist": "string", "email": "string", "phone": "string", "url": "string", "combobox": "string",
    "datetime": "datetime", "date": "date", "boolean": "boolean", "double": "number", "int": "number",
    "currency": "number", "percent": "number", "long": "number",
}
Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]



def category(type_name: str) -> str:
    return CATEGORIES.get(type_name.lower(), "string")


def sort_value(cat: str, value: Any) -> Any:
    """A comparable form: text compares case-insensitively, as SOQL does."""
    if cat == "string" and isinstance(value, str):
        return value.casefold()
    if cat == "number" and value is not None:
        return float(value)
    return value


@dataclass
class Plan:
    """A bound query: ready to run over rows (mappings from canonical field name to value)."""

    sobject: str
    kind: str  # records, aggregate, count
    fields: list[str]  # canonical names to project (records)
    predicate: Predicate
    lookups: list[tuple[str, list[Any]]] | None  # an index plan: rows matching any (field, values)
    order: list[tuple[Callable[[Row], Any], bool]]
    limit: int | None
    offset: int
    aggregate_items: list[tuple[str, str | None, str]] = field(default_factory=list)  # (key, field, kind)
    group_by: list[str] = field(default_factory=list)  # labels: a field name or e.g. DAY_ONLY(CreatedDate)
    group_values: dict[str, Callable[[Row], Any]] = field(default_factory=dict)  # label -> value of a row
    output: list[tuple[str, str]] = field(default_factory=list)  # (result key, label or aggregate key), in order

    def select(self, rows: Iterable[Row]) -> list[Row]:
        """Filter, sort and slice: the rows a records query answers."""
        if not self.order and self.limit is not None:
            wanted = self.offset + self.limit
            out: list[Row] = []
            for row in rows:
                if len(out) >= wanted:
                    break
                if self.predicate(row):
                    out.append(row)
            return out[self.offset :]
        matched = [row for row in rows if self.predicate(row)]
        return self._sort_slice(matched)

    def _sort_slice(self, matched: list[Any]) -> list[Any]:
        for key, desc in reversed(self.order):
            matched.sort(key=key, reverse=desc)
        end = None if self.limit is None else self.offset + self.limit
        return matched[self.offset : end]

    def count(self, rows: Iterable[Row]) -> int:
        return sum(1 for row in rows if self.predicate(row))

    def aggregate(self, rows: Iterable[Row]) -> list[dict[str, Any]]:
        """Group and count; each result is shaped like Salesforce's AggregateResult."""
        groups: dict[tuple[Any, ...], tuple[dict[str, Any], list[int]]] = {}
        counted = [f for _, f, _ in self.aggregate_items]
        for row in rows:
            if not self.predicate(row):
                continue
            values = {name: self._group_value(name, row) for name in self.group_by}
            key = tuple(sort_value("string", value) for value in values.values())
            if key not in groups:
                groups[key] = (values, [0] * len(counted))
            tally = groups[key][1]
            for i, name in enumerate(counted):
                if name is None or row.get(name) is not None:
                    tally[i] += 1
        if not groups and not self.group_by:
            groups[()] = ({}, [0] * len(counted))
        results = []
        for values, tally in groups.values():
            record: dict[str, Any] = {"attributes": {"type": "AggregateResult"}, **values}
            for (out_key, _, _), n in zip(self.aggregate_items, tally, strict=True):
                record[out_key] = n
            results.append(record)
        results = self._sort_slice(results)
        # Grouped (and maybe ordered) by but not selected: left out; date functions under their alias or exprN.
        return [{"attributes": record["attributes"], **{out: record[src] for out, src in self.output}}
                for record in results]

    def _group_value(self, label: str, row: Row) -> Any:
        extract = self.group_values.get(label)
        return row.get(label) if extract is None else extract(row)



def always_true(row: Row) -> bool:
    return True


def compare_predicate(name: str, cat: str, op: str, key: Any) -> Predicate:
    if key is None:
        if op == "=":
            return lambda row: row.get(name) is None
        if op == "!=":
            return lambda row: row.get(name) is not None
        return lambda row: False
    if op == "=":
        return lambda row: (v := row.get(name)) is not None and sort_value(cat, v) == key
    if op == "!=":  # unlike SQL, SOQL's != also matches nulls
        return lambda row: (v := row.get(name)) is None or sort_value(cat, v) != key
    compare: dict[str, Callable[[Any], bool]] = {
        "<": lambda v: v < key, "<=": lambda v: v <= key, ">": lambda v: v > key, ">=": lambda v: v >= key,
    }
    test = compare[op]
    return lambda row: (v := row.get(name)) is not None and test(sort_value(cat, v))


def range_predicate(name: str, cat: str, op: str, bounds: tuple[str, str]) -> Predicate:
    start, end = bounds
    tests: dict[str, Callable[[Any], bool]] = {
        "=": lambda v: start <= v < end, "<": lambda v: v < start, "<=": lambda v: v < end,
        ">": lambda v: v >= end, ">=": lambda v: v >= start,
    }
    if op == "!=":
        return lambda row: (v := row.get(name)) is None or not start <= v < end
    test = tests[op]
    return lambda row: (v := row.get(name)) is not None and test(v)


def sort_key_for(name: str, cat: str, item: OrderItem) -> Callable[[Row], Any]:
    # Tuples keep nulls apart from values; the rank puts them first or last whichever way we sort.
    null_rank = (2 if item.nulls_last else 0) if not item.desc else (0 if item.nulls_last else 2)

    def key(row: Row) -> Any:
        value = row.get(name)
        return (null_rank,) if value is None else (1, sort_value(cat, value))

    return key


