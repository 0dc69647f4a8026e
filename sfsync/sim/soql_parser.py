"""SOQL's syntax tree and its recursive-descent parser (SELECT, FROM, WHERE, GROUP BY, ORDER BY,
LIMIT, OFFSET; date literals and date functions), from the tokens of ``soql_tokens``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sfsync.sim.soql_tokens import Token, malformed, tokenize
from sfsync.sim.soql_values import DATE_FUNCTIONS, SoqlError


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


