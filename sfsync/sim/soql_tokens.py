"""SOQL's tokenizer: literals (strings with their escapes, numbers, dates and date-times),
identifiers, operators and punctuation, and Salesforce's MALFORMED_QUERY error text with its caret."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sfsync.sim.soql_values import SoqlError, format_datetime, parse_datetime


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
    return SoqlError("MALFORMED_QUERY", where_in_text(text, pos) + detail)


def where_in_text(text: str, pos: int) -> str:
    """Salesforce's error prefix: the line, a caret under the fault, and its row and column."""
    row = text.count("\n", 0, pos) + 1
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    col = pos - line_start
    lo = max(0, col - 60)
    return f"\n{line[lo : col + 60]}\n{' ' * (col - lo)}^\nERROR at Row:{row}:Column:{col + 1}\n"

