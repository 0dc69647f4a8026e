"""SOQL's binder: resolves a parsed query's names and literal types against the object's fields as
Salesforce checks them, compiles its conditions to predicates, finds index look-ups, and yields a
``Plan``."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from typing import Any

from sfsync.sim.soql_parser import (
    BoolOp,
    Compare,
    Count,
    DateFn,
    Expr,
    FieldRef,
    GroupItem,
    Literal,
    Not,
    OrderItem,
    Query,
)
from sfsync.sim.soql_plan import (
    FieldSpec,
    Plan,
    Predicate,
    Row,
    always_true,
    category,
    compare_predicate,
    range_predicate,
    sort_key_for,
    sort_value,
)
from sfsync.sim.soql_tokens import where_in_text
from sfsync.sim.soql_values import DATE_FUNCTIONS, SoqlError, canonical_id, format_datetime

_LITERAL_FOR = {
    "id": ("string",), "string": ("string",), "datetime": ("datetime", "range"), "date": ("date", "range"),
    "boolean": ("boolean",), "number": ("number",),
}
_TYPE_WORD = {"id": "id", "string": "string", "datetime": "dateTime", "date": "date", "boolean": "boolean",
              "number": "number"}



class Binder:
    """Resolves names against the fields, checks literal types, and compiles to a Plan."""

    def __init__(self, query: Query, fields: Mapping[str, FieldSpec], sobject: str, indexed: set[str],
                 now: dt.datetime | None):
        self.query = query
        self.fields = {name.lower(): spec for name, spec in fields.items()}
        self.sobject = sobject
        self.indexed = indexed
        self.now = now or dt.datetime.now(dt.UTC)

    def error(self, code: str, pos: int, detail: str) -> SoqlError:
        return SoqlError(code, where_in_text(self.query.text, pos) + detail)

    def resolve(self, ref: FieldRef, use: str = "select") -> FieldSpec:
        name = ref.name
        parts = name.split(".")
        if len(parts) == 2 and parts[0].lower() == self.sobject.lower():
            name = parts[1]
        elif len(parts) > 1:
            raise self.error("INVALID_FIELD", ref.pos, f"Didn't understand relationship '{parts[0]}' in field path. "
                             "If you are attempting to use a custom relationship, be sure to append the '__r' "
                             "after the custom relationship name. Please reference your WSDL or the describe "
                             "call for the appropriate names.")
        spec = self.fields.get(name.lower())
        if spec is None:
            raise self.error("INVALID_FIELD", ref.pos, f"No such column '{name}' on entity '{self.sobject}'. "
                             "If you are attempting to use a custom field, be sure to append the '__c' after "
                             "the custom field name. Please reference your WSDL or the describe call for the "
                             "appropriate names.")
        if use != "select" and not spec.filterable:
            verb = {"where": "filtered", "order": "sorted", "group": "grouped"}[use]
            raise self.error("INVALID_FIELD", ref.pos, f"field '{spec.name}' can not be {verb} in a query call")
        return spec

    def bind(self) -> Plan:
        q = self.query
        if q.sobject.lower() != self.sobject.lower():
            raise self.error("INVALID_TYPE", q.sobject_pos, f"sObject type '{q.sobject}' is not supported. "
                             "If you are attempting to use a custom object, be sure to append the '__c' after "
                             "the entity name. Please reference your WSDL or the describe call for the "
                             "appropriate names.")
        if q.offset is not None and q.offset > 2000:
            raise SoqlError("NUMBER_OUTSIDE_VALID_RANGE", "Maximum SOQL offset allowed is 2000")
        predicate = self.compile(q.where) if q.where is not None else always_true
        lookups = _lookups(q.where, self.indexed) if q.where is not None else None
        counts = [item for item in q.select if isinstance(item, Count)]
        plan = Plan(self.sobject, "records", [], predicate, lookups, [], q.limit, q.offset or 0)
        if not (counts or q.group_by):
            for item in q.select:
                if isinstance(item, DateFn):
                    raise self.error("MALFORMED_QUERY", item.pos, f"{item.name} is only allowed in an aggregate "
                                     "query (with GROUP BY)")
        if counts or q.group_by:
            self.bind_aggregate(plan, counts)
        else:
            plan.fields = self.select_fields()
            plan.order = [self.order_key(item) for item in q.order_by]
        return plan

    def select_fields(self) -> list[str]:
        names: list[str] = []
        for item in self.query.select:
            assert isinstance(item, FieldRef)
            name = self.resolve(item).name
            if name in names:
                raise self.error("MALFORMED_QUERY", item.pos, f"duplicate field selected: {name}")
            names.append(name)
        return names

    def bind_aggregate(self, plan: Plan, counts: list[Count]) -> None:
        q = self.query
        for ref in q.group_by:
            label = self.group_label(ref, plan)
            if label in plan.group_by:
                raise self.error("MALFORMED_QUERY", ref.pos, f"duplicate field in GROUP BY: {label}")
            plan.group_by.append(label)
        if any(c.field is None for c in counts):
            if len(q.select) > 1 or q.group_by:
                raise self.error("MALFORMED_QUERY", counts[0].pos, "COUNT() must be the only element in the "
                                 "SELECT list.")
            plan.kind = "count"
            return
        plan.kind = "aggregate"
        unnamed = 0
        for item in q.select:
            if isinstance(item, FieldRef):
                name = self.resolve(item).name
                if name not in plan.group_by:
                    raise self.error("MALFORMED_QUERY", item.pos, f"Field must be grouped or aggregated: {name}")
                plan.fields.append(name)
                plan.output.append((name, name))
                continue
            if item.alias:
                out_key = item.alias
            else:
                out_key = f"expr{unnamed}"
                unnamed += 1
            if isinstance(item, DateFn):
                label = self.group_label(item, None)
                if label not in plan.group_by:
                    raise self.error("MALFORMED_QUERY", item.pos, f"Field must be grouped or aggregated: {label}")
                plan.output.append((out_key, label))
                continue
            assert item.field is not None
            counted = self.resolve(item.field).name
            plan.aggregate_items.append((out_key, counted, "count"))
            plan.output.append((out_key, out_key))
        plan.order = [self.aggregate_order_key(item, plan) for item in q.order_by]

    def group_label(self, ref: GroupItem, plan: Plan | None) -> str:
        """The label of a GROUP BY item; a date function's extractor is registered on ``plan``."""
        if isinstance(ref, FieldRef):
            return self.resolve(ref, "group").name
        spec = self.resolve(ref.field, "group")
        kinds, extract = DATE_FUNCTIONS[ref.name]
        if category(spec.type) not in kinds:
            raise self.error("INVALID_FIELD", ref.field.pos, f"{ref.name}() needs a "
                             f"{' or '.join(_TYPE_WORD[k] for k in kinds)} field, not {spec.name}")
        label = f"{ref.name}({spec.name})"
        if plan is not None:
            name = spec.name
            plan.group_values[label] = lambda row: None if (v := row.get(name)) is None else extract(str(v))
        return label

    def order_key(self, item: OrderItem) -> tuple[Callable[[Row], Any], bool]:
        if isinstance(item.target, Count):
            raise self.error("MALFORMED_QUERY", item.target.pos, "Ordered field must be grouped or aggregated")
        spec = self.resolve(item.target, "order")
        return sort_key_for(spec.name, category(spec.type), item), item.desc

    def aggregate_order_key(self, item: OrderItem, plan: Plan) -> tuple[Callable[[Row], Any], bool]:
        if isinstance(item.target, FieldRef):
            name = self.resolve(item.target, "order").name
            if name not in plan.group_by:
                raise self.error("MALFORMED_QUERY", item.target.pos, f"Ordered field must be grouped or "
                                 f"aggregated: {name}")
            return sort_key_for(name, "string", item), item.desc
        counted = self.resolve(item.target.field).name if item.target.field else None
        for out_key, counted_name, _ in plan.aggregate_items:
            if counted_name == counted:
                return sort_key_for(out_key, "number", item), item.desc
        raise self.error("MALFORMED_QUERY", item.target.pos, "Ordered aggregate must also be selected")

    # -- conditions
    def compile(self, expr: Expr) -> Predicate:
        if isinstance(expr, BoolOp):
            parts = [self.compile(item) for item in expr.items]
            if expr.op == "AND":
                return lambda row: all(p(row) for p in parts)
            return lambda row: any(p(row) for p in parts)
        if isinstance(expr, Not):
            inner = self.compile(expr.item)
            return lambda row: not inner(row)
        return self.compile_compare(expr)

    def compile_compare(self, cmp: Compare) -> Predicate:
        spec = self.resolve(cmp.field, "where")
        name, cat = spec.name, category(spec.type)
        if cmp.op in ("IN", "NOT IN"):
            assert isinstance(cmp.value, tuple)
            # A null in the list matches null fields: sort_value(None) is None.
            keys = {self.literal_key(spec, lit, in_list=True) for lit in cmp.value}
            if cmp.op == "IN":
                return lambda row: sort_value(cat, row.get(name)) in keys
            return lambda row: sort_value(cat, row.get(name)) not in keys
        assert isinstance(cmp.value, Literal)
        lit = cmp.value
        if cmp.op == "LIKE":
            return self.compile_like(spec, lit)
        if lit.kind == "range":
            self.literal_key(spec, lit)
            return range_predicate(name, cat, cmp.op, self.range_bounds(cat, lit))
        return compare_predicate(name, cat, cmp.op, self.literal_key(spec, lit))

    def compile_like(self, spec: FieldSpec, lit: Literal) -> Predicate:
        if category(spec.type) != "string" or lit.kind != "string":
            raise self.error("INVALID_QUERY_FILTER_OPERATOR", lit.pos, f"invalid operator on field '{spec.name}'")
        pattern = re.compile(lit.value.like, re.IGNORECASE | re.DOTALL)
        name = spec.name
        return lambda row: (v := row.get(name)) is not None and pattern.fullmatch(str(v)) is not None

    def literal_key(self, spec: FieldSpec, lit: Literal, in_list: bool = False) -> Any:
        """Check a literal suits the field, and give its comparable form."""
        cat = category(spec.type)
        if lit.kind == "null":
            return None
        if lit.kind not in _LITERAL_FOR[cat] or (in_list and lit.kind == "range"):
            quoted = "and should be enclosed in quotes" if cat in ("string", "id") else \
                "and should not be enclosed in quotes"
            raise self.error("INVALID_QUERY_FILTER_OPERATOR", lit.pos, f"value of filter criterion for field "
                             f"'{spec.name}' must be of type {_TYPE_WORD[cat]} {quoted}")
        if lit.kind == "string":
            text = lit.value.value
            if cat == "id":
                canonical = canonical_id(text)
                if canonical is None:
                    raise self.error("INVALID_QUERY_FILTER_OPERATOR", lit.pos, f"invalid ID field: {text}")
                return canonical
            return text.casefold() or None  # Salesforce stores no empty text: '' means null
        return sort_value(cat, lit.value)

    def range_bounds(self, cat: str, lit: Literal) -> tuple[str, str]:
        """A date literal as [start, end) in the field's stored text form (UTC days)."""
        lo, hi = lit.value
        today = dt.datetime.combine(self.now.astimezone(dt.UTC).date(), dt.time(), dt.UTC)
        start, end = today + dt.timedelta(days=lo), today + dt.timedelta(days=hi)
        if cat == "date":
            return start.date().isoformat(), end.date().isoformat()
        return format_datetime(start), format_datetime(end)



def _lookups(expr: Expr, indexed: set[str]) -> list[tuple[str, list[Any]]] | None:
    """Index lookups whose union holds every row ``expr`` can match, or None when a scan is needed."""
    if isinstance(expr, Compare):
        name = expr.field.name.split(".")[-1]
        spec_name = next((n for n in indexed if n.lower() == name.lower()), None)
        if spec_name is None or expr.op not in ("=", "IN"):
            return None
        values = expr.value if isinstance(expr.value, tuple) else (expr.value,)
        # A null (or '', which means null) matches rows no index holds.
        if any(v.kind not in ("string", "number") or (v.kind == "string" and not v.value.value) for v in values):
            return None
        return [(spec_name, [v.value.value if v.kind == "string" else v.value for v in values])]
    if isinstance(expr, BoolOp):
        plans = [_lookups(item, indexed) for item in expr.items]
        if expr.op == "AND":
            usable = [p for p in plans if p is not None]
            return min(usable, key=lambda p: sum(len(v) for _, v in p)) if usable else None
        if any(p is None for p in plans):
            return None
        return [lookup for p in plans if p is not None for lookup in p]
    return None

