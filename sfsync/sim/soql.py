"""SOQL for the Salesforce simulator: a tokenizer, a recursive-descent parser, a binder that checks
names and types against the object's fields, and an evaluator.

Also the value rules that SOQL and the write path share: Salesforce Ids (15 characters, or 18 with
the case-safe checksum) and Salesforce's date-time format. Date-times are stored normalised to
``YYYY-MM-DDThh:mm:ss.sss+0000`` so comparing the strings compares the instants.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from sfsync.sim.soql_binder import Binder
from sfsync.sim.soql_parser import Parser, Query, parse
from sfsync.sim.soql_plan import CATEGORIES, FieldSpec, Plan, category
from sfsync.sim.soql_tokens import Token, malformed, tokenize
from sfsync.sim.soql_values import (
    DATE_FUNCTIONS,
    SoqlError,
    canonical_id,
    format_datetime,
    id_suffix,
    make_id,
    now_text,
    parse_datetime,
)

# The simulator and tests use SOQL through this module; the parts live in soql_values (ids, date-times,
# SoqlError), soql_tokens, soql_parser, soql_plan (the evaluator) and soql_binder.
__all__ = [
    "CATEGORIES", "DATE_FUNCTIONS", "FieldSpec", "Parser", "Plan", "Query", "SoqlError", "Token", "canonical_id",
    "category", "compile_query", "format_datetime", "id_suffix", "make_id", "malformed", "now_text", "parse",
    "parse_datetime", "tokenize",
]


def compile_query(text: str, fields: Mapping[str, FieldSpec], *, sobject: str = "Task",
                  indexed: Sequence[str] = ("Id",), now: dt.datetime | None = None) -> Plan:
    """Parse, check and compile ``text``; raises SoqlError as Salesforce would answer."""
    return Binder(parse(text), fields, sobject, set(indexed), now).bind()
