"""SOQL for the Salesforce simulator: a tokenizer, a recursive-descent parser, a binder that checks
names and types against the object's fields, and an evaluator.

Also the value rules that SOQL and the write path share: Salesforce Ids (15 characters, or 18 with
the case-safe checksum) and Salesforce's date-time format. Date-times are stored normalised to
``YYYY-MM-DDThh:mm:ss.sss+0000`` so comparing the strings compares the instants.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class SoqlError(Exception):
    """A query Salesforce would refuse: ``code`` is its errorCode (MALFORMED_QUERY and the like)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- Ids -----------------------------------------------------------------------------------------
_CHECKSUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ID_SHAPE = re.compile(r"[0-9A-Za-z]{15}(?:[0-9A-Za-z]{3})?")


_CASE_BITS = str.maketrans({chr(c): "1" if chr(c).isupper() else "0" for c in range(128) if chr(c).isalnum()})


def id_suffix(id15: str) -> str:
    """The three checksum characters that make a 15-character Id case-insensitively unique: per
    five-character chunk, a bit for each uppercase letter (first character lowest)."""
    bits = id15.translate(_CASE_BITS)
    return "".join(_CHECKSUM[int(bits[i : i + 5][::-1], 2)] for i in (0, 5, 10))


def canonical_id(raw: object) -> str | None:
    """The 18-character form of a 15- or 18-character Id, or None when it is malformed.

    An 18-character Id's suffix decides the case of its letters, as Salesforce reads it."""
    if not isinstance(raw, str) or not _ID_SHAPE.fullmatch(raw):
        return None
    if len(raw) == 15:
        return raw + id_suffix(raw)
    if id_suffix(raw[:15]) == raw[15:]:
        return raw  # already canonical: the common case, kept fast
    suffix = raw[15:].upper()
    chars = list(raw[:15])
    for chunk, letter in enumerate(suffix):
        bits = _CHECKSUM.find(letter)
        if bits < 0:
            return None
        for i in range(5):
            pos = chunk * 5 + i
            upper = bool(bits >> i & 1)
            if chars[pos].isalpha():
                chars[pos] = chars[pos].upper() if upper else chars[pos].lower()
            elif upper:
                return None
    return "".join(chars) + suffix


def make_id(prefix: str, number: int) -> str:
    """A well-formed 18-character Id with a key prefix such as ``00T``; mixed case on purpose."""
    body = ""
    while True:
        number, digit = divmod(number, 62)
        body = _BASE62[digit] + body
        if number == 0:
            break
    id15 = f"{prefix}Sm0{body.rjust(9, '0')}"
    return id15 + id_suffix(id15)


# -- date-times ----------------------------------------------------------------------------------
def parse_datetime(text: str) -> dt.datetime:
    """An ISO-8601 date-time (``Z``, ``+hh:mm`` or ``+hhmm``; none means UTC) as an aware datetime."""
    value = dt.datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def format_datetime(value: dt.datetime) -> str:
    """Salesforce's own form: ``2026-11-01T00:00:00.000+0000``."""
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def now_text() -> str:
    return format_datetime(dt.datetime.now(dt.UTC))


# -- tokens --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StringValue:
    value: str  # escapes decoded
    like: str  # the same literal as a regular expression for LIKE


@dataclass(frozen=True)
class Token:
    kind: str  # ident, string, number, datetime, date, op, punct, eof
    text: str
    pos: int
    value: Any = None


_SPACE = re.compile(r"\s+")
_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})(?![\w.:])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?![\w.:])")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?![\w.])")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_OPS = ("<=", ">=", "!=", "<>", "=", "<", ">")
_PUNCT = "(),:"
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while True:
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
        if pos >= len(text):
            tokens.append(Token("eof", "<EOF>", pos))
            return tokens
        token = _next_token(text, pos)
        tokens.append(token)
        pos += len(token.text)


def _next_token(text: str, pos: int) -> Token:
    ch = text[pos]
    if ch == "'":
        value, end = _read_string(text, pos)
        return Token("string", text[pos:end], pos, value)
    for kind, pattern in (("datetime", _DATETIME), ("date", _DATE), ("number", _NUMBER)):
        found = pattern.match(text, pos)
        if found:
            return Token(kind, found.group(), pos, _literal_value(kind, found.group(), text, pos))
    found = _IDENT.match(text, pos)
    if found:
        return Token("ident", found.group(), pos)
    for op in _OPS:
        if text.startswith(op, pos):
            return Token("op", op, pos)
    if ch in _PUNCT:
        return Token("punct", ch, pos)
    raise malformed(text, pos, f"unexpected token: '{ch}'")


def _literal_value(kind: str, raw: str, text: str, pos: int) -> Any:
    try:
        if kind == "datetime":
            return format_datetime(parse_datetime(raw))
        if kind == "date":
            return dt.date.fromisoformat(raw).isoformat()
    except ValueError as exc:
        raise malformed(text, pos, f"invalid {kind} literal: {raw}") from exc
    return float(raw) if "." in raw else int(raw)


def _read_string(text: str, start: int) -> tuple[StringValue, int]:
    """Decode a quoted literal: backslash escapes only (SOQL has no doubled-quote escape)."""
    value: list[str] = []
    like: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "'":
            return StringValue("".join(value), "".join(like)), i + 1
        if ch != "\\":
            value.append(ch)
            like.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
            i += 1
            continue
        decoded, width = _escape(text, i)
        value.append(decoded)
        like.append(re.escape(decoded))
        i += width
    raise malformed(text, start, "unterminated string literal")


def _escape(text: str, i: int) -> tuple[str, int]:
    nxt = text[i + 1 : i + 2]
    if nxt and nxt.lower() in _ESCAPES:
        return _ESCAPES[nxt.lower()], 2
    if nxt in ("%", "_"):  # a literal wildcard character in LIKE
        return nxt, 2
    if nxt in ("u", "U") and re.fullmatch(r"[0-9A-Fa-f]{4}", text[i + 2 : i + 6]):
        return chr(int(text[i + 2 : i + 6], 16)), 6
    raise malformed(text, i, f"Illegal character sequence '\\{nxt}' in string literal.")


def malformed(text: str, pos: int, detail: str) -> SoqlError:
    return SoqlError("MALFORMED_QUERY", _where(text, pos) + detail)


def _where(text: str, pos: int) -> str:
    """Salesforce's error prefix: the line, a caret under the fault, and its row and column."""
    row = text.count("\n", 0, pos) + 1
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    col = pos - line_start
    lo = max(0, col - 60)
    return f"\n{line[lo : col + 60]}\n{' ' * (col - lo)}^\nERROR at Row:{row}:Column:{col + 1}\n"


# -- syntax tree ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldRef:
    name: str
    pos: int


@dataclass(frozen=True)
class Count:
    field: FieldRef | None  # None for COUNT()
    alias: str | None
    pos: int


@dataclass(frozen=True)
class Literal:
    kind: str  # string, number, boolean, null, datetime, date, range
    value: Any
    pos: int
    text: str


@dataclass(frozen=True)
class Compare:
    field: FieldRef
    op: str  # = != < <= > >= LIKE IN NOT IN
    value: Literal | tuple[Literal, ...]


@dataclass(frozen=True)
class BoolOp:
    op: str  # AND, OR
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    item: Expr


@dataclass(frozen=True)
class DateFn:
    """A date function such as ``DAY_ONLY(CreatedDate)``: in SELECT (aliased or not) and GROUP BY."""

    name: str  # upper case
    field: FieldRef
    alias: str | None
    pos: int


Expr = Compare | BoolOp | Not
SelectItem = FieldRef | Count | DateFn
GroupItem = FieldRef | DateFn


@dataclass(frozen=True)
class OrderItem:
    target: FieldRef | Count
    desc: bool
    nulls_last: bool


@dataclass
class Query:
    text: str
    select: list[SelectItem]
    sobject: str
    sobject_pos: int
    where: Expr | None = None
    group_by: list[GroupItem] = field(default_factory=list)
    order_by: list[OrderItem] = field(default_factory=list)
    limit: int | None = None
    offset: int | None = None


_DATE_LITERALS = {"TODAY": 0, "YESTERDAY": -1, "TOMORROW": 1}
_N_DAYS = ("LAST_N_DAYS", "NEXT_N_DAYS")
_RESERVED = {
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "GROUP", "BY", "ORDER", "LIMIT", "OFFSET", "ASC",
    "DESC", "NULLS", "FIRST", "LAST", "IN", "LIKE", "NULL", "TRUE", "FALSE", "HAVING", "WITH", "FOR",
}


class Parser:
    """Recursive descent over the tokens; keywords are case-insensitive."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    # -- token helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def is_kw(self, *words: str) -> bool:
        return self.tok.kind == "ident" and self.tok.text.upper() in words

    def take(self) -> Token:
        token = self.tok
        self.i += 1
        return token

    def expect_kw(self, word: str) -> Token:
        if not self.is_kw(word):
            raise self.unexpected()
        return self.take()

    def expect_punct(self, ch: str) -> Token:
        if self.tok.kind != "punct" or self.tok.text != ch:
            raise self.unexpected()
        return self.take()

    def unexpected(self) -> SoqlError:
        return malformed(self.text, self.tok.pos, f"unexpected token: '{self.tok.text}'")

    # -- grammar
    def parse(self) -> Query:
        self.expect_kw("SELECT")
        select = self.select_list()
        self.expect_kw("FROM")
        if self.tok.kind != "ident" or self.tok.text.upper() in _RESERVED:
            raise self.unexpected()
        sobject = self.take()
        query = Query(self.text, select, sobject.text, sobject.pos)
        if self.is_kw("WHERE"):
            self.take()
            query.where = self.condition_group()
        if self.is_kw("GROUP"):
            self.take()
            self.expect_kw("BY")
            query.group_by = self.comma_list(self.group_item)
        if self.is_kw("ORDER"):
            self.take()
            self.expect_kw("BY")
            query.order_by = self.comma_list(self.order_item)
        if self.is_kw("LIMIT"):
            self.take()
            query.limit = self.integer()
        if self.is_kw("OFFSET"):
            self.take()
            query.offset = self.integer()
        if self.tok.kind != "eof":
            raise self.unexpected()
        return query

    def comma_list(self, item: Callable[[], Any]) -> list[Any]:
        items = [item()]
        while self.tok.kind == "punct" and self.tok.text == ",":
            self.take()
            items.append(item())
        return items

    def select_list(self) -> list[SelectItem]:
        return self.comma_list(self.select_item)

    def select_item(self) -> SelectItem:
        if self.is_kw("COUNT") and self.tokens[self.i + 1].text == "(":
            count = self.count()
            alias = None
            if self.tok.kind == "ident" and self.tok.text.upper() not in _RESERVED:
                alias = self.take().text
            return Count(count.field, alias, count.pos)
        if self.at_date_function():
            fn = self.date_function()
            if self.tok.kind == "ident" and self.tok.text.upper() not in _RESERVED:
                return DateFn(fn.name, fn.field, self.take().text, fn.pos)
            return fn
        return self.field_ref()

    def group_item(self) -> GroupItem:
        return self.date_function() if self.at_date_function() else self.field_ref()

    def at_date_function(self) -> bool:
        return self.is_kw(*DATE_FUNCTIONS) and self.tokens[self.i + 1].text == "("

    def date_function(self) -> DateFn:
        """``NAME(field)``; convertTimezone() is not supported here, so it is refused as malformed."""
        start = self.take()
        self.expect_punct("(")
        target = self.field_ref()
        self.expect_punct(")")
        return DateFn(start.text.upper(), target, None, start.pos)

    def count(self) -> Count:
        start = self.take()
        self.expect_punct("(")
        target = None if self.tok.text == ")" else self.field_ref()
        self.expect_punct(")")
        return Count(target, None, start.pos)

    def field_ref(self) -> FieldRef:
        if self.tok.kind != "ident" or self.tok.text.upper() in _RESERVED:
            raise self.unexpected()
        token = self.take()
        return FieldRef(token.text, token.pos)

    def order_item(self) -> OrderItem:
        target: FieldRef | Count = self.count() if self.is_kw("COUNT") else self.field_ref()
        desc = False
        if self.is_kw("ASC", "DESC"):
            desc = self.take().text.upper() == "DESC"
        nulls_last = desc  # Salesforce's default: nulls first ascending, last descending
        if self.is_kw("NULLS"):
            self.take()
            if not self.is_kw("FIRST", "LAST"):
                raise self.unexpected()
            nulls_last = self.take().text.upper() == "LAST"
        return OrderItem(target, desc, nulls_last)

    def integer(self) -> int:
        if self.tok.kind != "number" or not isinstance(self.tok.value, int) or self.tok.value < 0:
            raise self.unexpected()
        return int(self.take().value)

    def condition_group(self) -> Expr:
        """One level of conditions: AND and OR may not be mixed without parentheses, and NOT only
        opens a level (``A AND NOT B`` is refused by Salesforce: write ``A AND (NOT B)``)."""
        if self.is_kw("NOT"):
            self.take()
            first: Expr = Not(self.condition())
        else:
            first = self.condition()
        items = [first]
        joiner: str | None = None
        while self.is_kw("AND", "OR"):
            word = self.tok.text.upper()
            if joiner is not None and word != joiner:
                raise self.unexpected()
            joiner = word
            self.take()
            items.append(self.condition())
        return first if joiner is None else BoolOp(joiner, tuple(items))

    def condition(self) -> Expr:
        if self.tok.kind == "punct" and self.tok.text == "(":
            self.take()
            inner = self.condition_group()
            self.expect_punct(")")
            return inner
        return self.comparison()

    def comparison(self) -> Compare:
        target = self.field_ref()
        if self.tok.kind == "op":
            op = self.take().text
            return Compare(target, "!=" if op == "<>" else op, self.value())
        if self.is_kw("LIKE"):
            self.take()
            return Compare(target, "LIKE", self.value())
        negate = False
        if self.is_kw("NOT"):
            self.take()
            negate = True
            if not self.is_kw("IN"):
                raise self.unexpected()
        if self.is_kw("IN"):
            self.take()
            self.expect_punct("(")
            values = tuple(self.comma_list(self.value))
            self.expect_punct(")")
            return Compare(target, "NOT IN" if negate else "IN", values)
        raise self.unexpected()

    def value(self) -> Literal:
        token = self.tok
        if token.kind in ("string", "number", "datetime", "date"):
            self.take()
            return Literal(token.kind, token.value, token.pos, token.text)
        if token.kind != "ident":
            raise self.unexpected()
        word = token.text.upper()
        if word in ("NULL", "TRUE", "FALSE"):
            self.take()
            if word == "NULL":
                return Literal("null", None, token.pos, token.text)
            return Literal("boolean", word == "TRUE", token.pos, token.text)
        if word in _DATE_LITERALS:
            self.take()
            return Literal("range", (_DATE_LITERALS[word], _DATE_LITERALS[word] + 1), token.pos, token.text)
        if word in _N_DAYS:
            self.take()
            self.expect_punct(":")
            days = self.integer()
            span = (-days, 1) if word == "LAST_N_DAYS" else (1, days + 1)
            return Literal("range", span, token.pos, f"{token.text}:{days}")
        raise self.unexpected()


def parse(text: str) -> Query:
    return Parser(text).parse()


# -- binding and evaluation ----------------------------------------------------------------------
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
_LITERAL_FOR = {
    "id": ("string",), "string": ("string",), "datetime": ("datetime", "range"), "date": ("date", "range"),
    "boolean": ("boolean",), "number": ("number",),
}
_TYPE_WORD = {"id": "id", "string": "string", "datetime": "dateTime", "date": "date", "boolean": "boolean",
              "number": "number"}

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]


def _day(text: str) -> dt.date:
    return dt.date.fromisoformat(text[:10])


# Each date function: the field categories it takes, and its value from a stored text (date-times are
# stored in UTC, which is what SOQL's date functions use without convertTimezone()).
DATE_FUNCTIONS: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "DAY_ONLY": (("datetime",), lambda v: v[:10]),
    "HOUR_IN_DAY": (("datetime",), lambda v: int(v[11:13])),
    "CALENDAR_YEAR": (("date", "datetime"), lambda v: int(v[:4])),
    "CALENDAR_QUARTER": (("date", "datetime"), lambda v: (int(v[5:7]) - 1) // 3 + 1),
    "CALENDAR_MONTH": (("date", "datetime"), lambda v: int(v[5:7])),
    "DAY_IN_MONTH": (("date", "datetime"), lambda v: int(v[8:10])),
    "DAY_IN_WEEK": (("date", "datetime"), lambda v: _day(v).isoweekday() % 7 + 1),  # 1 is Sunday
    "DAY_IN_YEAR": (("date", "datetime"), lambda v: _day(v).timetuple().tm_yday),
}


def category(type_name: str) -> str:
    return CATEGORIES.get(type_name.lower(), "string")


def _key(cat: str, value: Any) -> Any:
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
            key = tuple(_key("string", value) for value in values.values())
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
        return SoqlError(code, _where(self.query.text, pos) + detail)

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
        predicate = self.compile(q.where) if q.where is not None else _always
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
        return _sort_key(spec.name, category(spec.type), item), item.desc

    def aggregate_order_key(self, item: OrderItem, plan: Plan) -> tuple[Callable[[Row], Any], bool]:
        if isinstance(item.target, FieldRef):
            name = self.resolve(item.target, "order").name
            if name not in plan.group_by:
                raise self.error("MALFORMED_QUERY", item.target.pos, f"Ordered field must be grouped or "
                                 f"aggregated: {name}")
            return _sort_key(name, "string", item), item.desc
        counted = self.resolve(item.target.field).name if item.target.field else None
        for out_key, counted_name, _ in plan.aggregate_items:
            if counted_name == counted:
                return _sort_key(out_key, "number", item), item.desc
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
            # A null in the list matches null fields: _key(None) is None.
            keys = {self.literal_key(spec, lit, in_list=True) for lit in cmp.value}
            if cmp.op == "IN":
                return lambda row: _key(cat, row.get(name)) in keys
            return lambda row: _key(cat, row.get(name)) not in keys
        assert isinstance(cmp.value, Literal)
        lit = cmp.value
        if cmp.op == "LIKE":
            return self.compile_like(spec, lit)
        if lit.kind == "range":
            self.literal_key(spec, lit)
            return _range_predicate(name, cat, cmp.op, self.range_bounds(cat, lit))
        return _compare_predicate(name, cat, cmp.op, self.literal_key(spec, lit))

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
        return _key(cat, lit.value)

    def range_bounds(self, cat: str, lit: Literal) -> tuple[str, str]:
        """A date literal as [start, end) in the field's stored text form (UTC days)."""
        lo, hi = lit.value
        today = dt.datetime.combine(self.now.astimezone(dt.UTC).date(), dt.time(), dt.UTC)
        start, end = today + dt.timedelta(days=lo), today + dt.timedelta(days=hi)
        if cat == "date":
            return start.date().isoformat(), end.date().isoformat()
        return format_datetime(start), format_datetime(end)


def _always(row: Row) -> bool:
    return True


def _compare_predicate(name: str, cat: str, op: str, key: Any) -> Predicate:
    if key is None:
        if op == "=":
            return lambda row: row.get(name) is None
        if op == "!=":
            return lambda row: row.get(name) is not None
        return lambda row: False
    if op == "=":
        return lambda row: (v := row.get(name)) is not None and _key(cat, v) == key
    if op == "!=":  # unlike SQL, SOQL's != also matches nulls
        return lambda row: (v := row.get(name)) is None or _key(cat, v) != key
    compare: dict[str, Callable[[Any], bool]] = {
        "<": lambda v: v < key, "<=": lambda v: v <= key, ">": lambda v: v > key, ">=": lambda v: v >= key,
    }
    test = compare[op]
    return lambda row: (v := row.get(name)) is not None and test(_key(cat, v))


def _range_predicate(name: str, cat: str, op: str, bounds: tuple[str, str]) -> Predicate:
    start, end = bounds
    tests: dict[str, Callable[[Any], bool]] = {
        "=": lambda v: start <= v < end, "<": lambda v: v < start, "<=": lambda v: v < end,
        ">": lambda v: v >= end, ">=": lambda v: v >= start,
    }
    if op == "!=":
        return lambda row: (v := row.get(name)) is None or not start <= v < end
    test = tests[op]
    return lambda row: (v := row.get(name)) is not None and test(v)


def _sort_key(name: str, cat: str, item: OrderItem) -> Callable[[Row], Any]:
    # Tuples keep nulls apart from values; the rank puts them first or last whichever way we sort.
    null_rank = (2 if item.nulls_last else 0) if not item.desc else (0 if item.nulls_last else 2)

    def key(row: Row) -> Any:
        value = row.get(name)
        return (null_rank,) if value is None else (1, _key(cat, value))

    return key


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


def compile_query(text: str, fields: Mapping[str, FieldSpec], *, sobject: str = "Task",
                  indexed: Sequence[str] = ("Id",), now: dt.datetime | None = None) -> Plan:
    """Parse, check and compile ``text``; raises SoqlError as Salesforce would answer."""
    return Binder(parse(text), fields, sobject, set(indexed), now).bind()
