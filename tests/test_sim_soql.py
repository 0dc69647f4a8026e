"""The simulator's SOQL: tokenizer, parser, binder and evaluator, checked without a server."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simple_salesforce import format_soql

from sfsync.sim import soql
from sfsync.sim.salesforce import DEFAULT_TASK_FIELDS, FieldDef

FIELDS = {spec["name"]: FieldDef.from_dict(spec) for spec in DEFAULT_TASK_FIELDS}
INDEXED = ("Id", "SMS_Message_Id__c")
NOW = dt.datetime(2026, 11, 15, 12, 0, tzinfo=dt.UTC)


def task_id(n: int) -> str:
    return soql.make_id("00T", 1000 + n)


ROWS: list[dict[str, Any]] = [
    {"Id": task_id(0), "Subject": "Alpha", "SMS_Status__c": "delivered", "SMS_Message_Id__c": "m-0",
     "CreatedDate": "2026-11-15T08:00:00.000+0000"},
    {"Id": task_id(1), "Subject": "beta", "SMS_Status__c": None, "SMS_Message_Id__c": "m-1",
     "CreatedDate": "2026-11-14T23:59:59.000+0000"},
    {"Id": task_id(2), "Subject": "it's 100% done", "SMS_Status__c": "failed", "SMS_Message_Id__c": "m-2",
     "CreatedDate": "2026-11-01T00:00:00.000+0000"},
    {"Id": task_id(3), "Subject": "x' OR Id != null", "SMS_Status__c": "delivered", "SMS_Message_Id__c": None,
     "CreatedDate": "2026-10-01T00:00:00.000+0000"},
    {"Id": task_id(4), "Subject": "back\\slash", "SMS_Status__c": "enroute", "SMS_Message_Id__c": "m-4",
     "CreatedDate": "2026-11-13T10:00:00.000+0000"},
]


def plan(text: str) -> soql.Plan:
    return soql.compile_query(text, FIELDS, indexed=INDEXED, now=NOW)


def subjects(text: str) -> list[str]:
    return [row["Subject"] for row in plan(text).select(ROWS)]


def error_of(text: str) -> soql.SoqlError:
    with pytest.raises(soql.SoqlError) as caught:
        plan(text)
    return caught.value


# -- Ids -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("id15", "id18"), [
    ("a01M00000062mPg", "a01M00000062mPgIAI"),
    ("001M000000qfPyS", "001M000000qfPySIAU"),
    ("a0FE000000D6r3F", "a0FE000000D6r3FMAR"),
    ("0F9E000000092w2", "0F9E000000092w2KAA"),
    ("AbCdEfGhIjKlMnO", "AbCdEfGhIjKlMnOVKV"),
    ("aBcDEfgHIJKLMNO", "aBcDEfgHIJKLMNO025"),
])
def test_case_safe_id_checksum_matches_salesforce(id15: str, id18: str) -> None:
    assert soql.canonical_id(id15) == id18
    assert soql.canonical_id(id18) == id18
    assert soql.canonical_id(id18.lower()) == id18  # the suffix restores the case


def test_malformed_ids_are_refused() -> None:
    assert soql.canonical_id("00T123") is None
    assert soql.canonical_id("00TSm0000000001!!!") is None
    assert soql.canonical_id("a01M00000062mPg999") is None  # '9' is not a checksum character
    made = soql.make_id("00T", 123456789)
    assert len(made) == 18 and made.startswith("00T") and soql.canonical_id(made) == made


# -- tokens and string literals ------------------------------------------------------------------
def test_escaped_quote_keeps_keywords_inside_the_literal() -> None:
    assert subjects("SELECT Subject FROM Task WHERE Subject = 'x\\' OR Id != null'") == ["x' OR Id != null"]


def test_doubled_quote_is_not_an_escape_in_soql() -> None:
    err = error_of("SELECT Id FROM Task WHERE Subject = 'x'' OR Id != null'")
    assert err.code == "MALFORMED_QUERY"
    assert "unexpected token" in err.message


def test_backslash_escapes_decode() -> None:
    assert subjects("SELECT Subject FROM Task WHERE Subject = 'back\\\\slash'") == ["back\\slash"]
    tokens = soql.tokenize("'a\\nb\\tc\\\"d\\u0041'")
    assert tokens[0].value.value == 'a\nb\tc"dA'


def test_illegal_escape_and_unterminated_string_are_malformed() -> None:
    assert error_of("SELECT Id FROM Task WHERE Subject = 'a\\qb'").code == "MALFORMED_QUERY"
    err = error_of("SELECT Id FROM Task WHERE Subject = 'open")
    assert err.code == "MALFORMED_QUERY" and "ERROR at Row:1:Column:37" in err.message


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_any_string_quoted_by_simple_salesforce_round_trips(text: str) -> None:
    query = format_soql("SELECT Id FROM Task WHERE Subject = {}", text)
    compiled = plan(query)
    # Salesforce keeps no empty text: '' stands for null.
    assert compiled.predicate({"Subject": text or None}) is True
    assert compiled.predicate({"Subject": text + "!"}) is False


def test_datetime_literals_with_offsets_compare_as_instants() -> None:
    assert subjects("SELECT Subject FROM Task WHERE CreatedDate = 2026-11-15T10:00:00+02:00") == ["Alpha"]
    assert subjects("SELECT Subject FROM Task WHERE CreatedDate >= 2026-11-15T00:00:00Z") == ["Alpha"]
    assert subjects("SELECT Subject FROM Task WHERE CreatedDate < 2026-11-01T00:00:00.000Z") == ["x' OR Id != null"]


# -- grammar ---------------------------------------------------------------------------------------
def test_keywords_and_names_are_case_insensitive() -> None:
    compiled = plan("select id, subject from task where sms_status__c = 'DELIVERED' order by subject desc limit 5")
    assert compiled.fields == ["Id", "Subject"]
    assert [r["Subject"] for r in compiled.select(ROWS)] == ["x' OR Id != null", "Alpha"]


def test_and_or_cannot_mix_without_parentheses() -> None:
    err = error_of("SELECT Id FROM Task WHERE Subject = 'a' AND Subject = 'b' OR Subject = 'c'")
    assert err.code == "MALFORMED_QUERY" and "unexpected token: 'OR'" in err.message
    assert subjects("SELECT Subject FROM Task WHERE (Subject = 'Alpha' OR Subject = 'beta') AND "
                    "SMS_Status__c = null") == ["beta"]


def test_not_opens_a_group_only() -> None:
    assert error_of("SELECT Id FROM Task WHERE Subject != null AND NOT Subject = 'beta'").code == "MALFORMED_QUERY"
    assert subjects("SELECT Subject FROM Task WHERE SMS_Status__c = 'delivered' AND (NOT Subject = 'Alpha')") == [
        "x' OR Id != null"]
    assert subjects("SELECT Subject FROM Task WHERE NOT (SMS_Status__c IN ('delivered', 'failed'))") == [
        "beta", "back\\slash"]


@pytest.mark.parametrize("text", [
    "SELECT FROM Task", "SELECT Id Task", "SELECT Id FROM Task WHERE", "SELECT Id FROM Task WHERE Subject",
    "SELECT Id FROM Task WHERE Subject = ", "SELECT Id FROM Task LIMIT -1", "SELECT Id FROM Task WHERE (Subject = 'a'",
    "SELECT Id FROM Task extra", "SELECT Id, FROM Task", "SELECT Id FROM Task WHERE Subject IN 'a'",
])
def test_syntax_errors_say_where(text: str) -> None:
    err = error_of(text)
    assert err.code == "MALFORMED_QUERY"
    assert "ERROR at Row:1:Column:" in err.message


# -- names and types -------------------------------------------------------------------------------
def test_unknown_field_and_object() -> None:
    err = error_of("SELECT Id, Nope__c FROM Task")
    assert err.code == "INVALID_FIELD"
    assert "No such column 'Nope__c' on entity 'Task'" in err.message
    assert "ERROR at Row:1:Column:12" in err.message
    assert error_of("SELECT Id FROM Account").code == "INVALID_TYPE"
    assert error_of("SELECT Id FROM Task WHERE Description = 'a'").code == "INVALID_FIELD"  # long text: no filter
    assert error_of("SELECT Id, Id FROM Task").code == "MALFORMED_QUERY"


@pytest.mark.parametrize("text", [
    "SELECT Id FROM Task WHERE CreatedDate = '2026-01-01T00:00:00Z'",
    "SELECT Id FROM Task WHERE CreatedDate > 2026-01-01",
    "SELECT Id FROM Task WHERE Subject = 5",
    "SELECT Id FROM Task WHERE Id = 'not-an-id'",
    "SELECT Id FROM Task WHERE CreatedDate LIKE 'x%'",
])
def test_literal_types_must_suit_the_field(text: str) -> None:
    assert error_of(text).code == "INVALID_QUERY_FILTER_OPERATOR"


# -- evaluation ------------------------------------------------------------------------------------
def test_null_semantics_follow_soql_not_sql() -> None:
    # != also matches nulls; = null matches only nulls.
    assert subjects("SELECT Subject FROM Task WHERE SMS_Status__c != 'delivered'") == [
        "beta", "it's 100% done", "back\\slash"]
    assert subjects("SELECT Subject FROM Task WHERE SMS_Status__c = null") == ["beta"]
    assert subjects("SELECT Subject FROM Task WHERE SMS_Message_Id__c IN ('m-0', null)") == [
        "Alpha", "x' OR Id != null"]
    assert subjects("SELECT Subject FROM Task WHERE SMS_Status__c NOT IN ('delivered', 'failed')") == [
        "beta", "back\\slash"]
    assert subjects("SELECT Subject FROM Task WHERE SMS_Status__c < 'e'") == ["Alpha", "x' OR Id != null"]


def test_text_comparisons_ignore_case_and_like_handles_escapes() -> None:
    assert subjects("SELECT Subject FROM Task WHERE Subject = 'ALPHA'") == ["Alpha"]
    assert subjects("SELECT Subject FROM Task WHERE Subject LIKE 'b%'") == ["beta", "back\\slash"]
    assert subjects("SELECT Subject FROM Task WHERE Subject LIKE '_eta'") == ["beta"]
    assert subjects("SELECT Subject FROM Task WHERE Subject LIKE '%100\\%%'") == ["it's 100% done"]
    assert subjects("SELECT Subject FROM Task WHERE Subject LIKE '%10\\%%'") == []


def test_id_filters_accept_15_and_18_characters() -> None:
    wanted = ROWS[2]["Id"]
    assert subjects(f"SELECT Subject FROM Task WHERE Id = '{wanted[:15]}'") == ["it's 100% done"]
    assert subjects(f"SELECT Subject FROM Task WHERE Id IN ('{wanted.lower()}')") == ["it's 100% done"]


def test_date_literals_are_utc_day_ranges() -> None:
    assert subjects("SELECT Subject FROM Task WHERE CreatedDate = TODAY") == ["Alpha"]
    assert subjects("SELECT Subject FROM Task WHERE CreatedDate = YESTERDAY") == ["beta"]
    assert subjects("SELECT Subject FROM Task WHERE CreatedDate = LAST_N_DAYS:2") == ["Alpha", "beta", "back\\slash"]
    assert subjects("SELECT Subject FROM Task WHERE CreatedDate < LAST_N_DAYS:14") == ["x' OR Id != null"]
    assert subjects("SELECT Subject FROM Task WHERE CreatedDate > YESTERDAY") == ["Alpha"]


def test_order_by_nulls_limit_and_offset() -> None:
    ordered = "SELECT Subject FROM Task ORDER BY SMS_Status__c {} , Subject ASC"
    assert subjects(ordered.format("ASC")) == ["beta", "Alpha", "x' OR Id != null", "back\\slash", "it's 100% done"]
    assert subjects(ordered.format("DESC")) == ["it's 100% done", "back\\slash", "Alpha", "x' OR Id != null", "beta"]
    assert subjects(ordered.format("ASC NULLS LAST"))[-1] == "beta"
    assert subjects(ordered.format("DESC NULLS FIRST"))[0] == "beta"
    assert subjects(ordered.format("ASC") + " LIMIT 2 OFFSET 1") == ["Alpha", "x' OR Id != null"]
    assert subjects("SELECT Subject FROM Task LIMIT 2") == ["Alpha", "beta"]
    assert error_of("SELECT Id FROM Task OFFSET 2001").code == "NUMBER_OUTSIDE_VALID_RANGE"


def test_aggregates() -> None:
    grouped = plan("SELECT SMS_Status__c, COUNT(Id) FROM Task GROUP BY SMS_Status__c ORDER BY COUNT(Id) DESC")
    assert grouped.kind == "aggregate"
    records = grouped.aggregate(ROWS)
    assert records[0] == {"attributes": {"type": "AggregateResult"}, "SMS_Status__c": "delivered", "expr0": 2}
    assert sum(r["expr0"] for r in records) == len(ROWS)
    aliased = plan("SELECT SMS_Status__c, COUNT(Id) cnt FROM Task WHERE SMS_Status__c != null "
                   "GROUP BY SMS_Status__c ORDER BY SMS_Status__c").aggregate(ROWS)
    assert [(r["SMS_Status__c"], r["cnt"]) for r in aliased] == [("delivered", 2), ("enroute", 1), ("failed", 1)]
    total = plan("SELECT COUNT(Id) FROM Task WHERE SMS_Status__c = 'delivered'").aggregate(ROWS)
    assert total == [{"attributes": {"type": "AggregateResult"}, "expr0": 2}]
    bare = plan("SELECT COUNT(Id) n FROM Task GROUP BY SMS_Status__c ORDER BY SMS_Status__c NULLS LAST").aggregate(ROWS)
    assert [r["n"] for r in bare] == [2, 1, 1, 1] and all(set(r) == {"attributes", "n"} for r in bare)
    counted = plan("SELECT COUNT() FROM Task WHERE Subject LIKE '%a%'")
    assert counted.kind == "count" and counted.count(ROWS) == 3
    err = error_of("SELECT Subject, COUNT(Id) FROM Task GROUP BY SMS_Status__c")
    assert err.code == "MALFORMED_QUERY" and "grouped or aggregated" in err.message


def test_date_functions_group_by_day_in_utc() -> None:
    """DAY_ONLY() and CALENDAR_*(): dates of dateTime fields in UTC (no convertTimezone()), unaliased ones
    numbered exprN together with the aggregates, in SELECT order."""
    by_day = plan("SELECT DAY_ONLY(CreatedDate), SMS_Status__c, COUNT(Id) FROM Task "
                  "GROUP BY DAY_ONLY(CreatedDate), SMS_Status__c").aggregate(ROWS)
    found = {(r["expr0"], r["SMS_Status__c"]): r["expr1"] for r in by_day}
    assert found == {("2026-11-15", "delivered"): 1, ("2026-11-14", None): 1, ("2026-11-01", "failed"): 1,
                     ("2026-10-01", "delivered"): 1, ("2026-11-13", "enroute"): 1}
    assert all(set(r) == {"attributes", "expr0", "SMS_Status__c", "expr1"} for r in by_day)
    months = plan("SELECT CALENDAR_MONTH(CreatedDate) m, COUNT(Id) n FROM Task "
                  "GROUP BY CALENDAR_MONTH(CreatedDate)").aggregate(ROWS)
    assert sorted((r["m"], r["n"]) for r in months) == [(10, 1), (11, 4)]
    assert error_of("SELECT DAY_ONLY(CreatedDate), COUNT(Id) FROM Task GROUP BY SMS_Status__c").code == \
        "MALFORMED_QUERY"
    assert error_of("SELECT DAY_ONLY(Subject), COUNT(Id) FROM Task GROUP BY DAY_ONLY(Subject)").code == \
        "INVALID_FIELD"
    assert error_of("SELECT DAY_ONLY(convertTimezone(CreatedDate)) FROM Task").code == "MALFORMED_QUERY"


def test_index_plans_avoid_scans_only_when_safe() -> None:
    assert plan("SELECT Id FROM Task WHERE SMS_Message_Id__c IN ('m-1', 'm-2')").lookups == [
        ("SMS_Message_Id__c", ["m-1", "m-2"])]
    assert plan("SELECT Id FROM Task WHERE Subject = 'a' AND SMS_Message_Id__c = 'm-1'").lookups == [
        ("SMS_Message_Id__c", ["m-1"])]
    by_id = plan(f"SELECT Id FROM Task WHERE Id = '{ROWS[0]['Id']}' OR SMS_Message_Id__c = 'm-2'").lookups
    assert by_id == [("Id", [ROWS[0]["Id"]]), ("SMS_Message_Id__c", ["m-2"])]
    assert plan("SELECT Id FROM Task WHERE Subject = 'a' OR SMS_Message_Id__c = 'm-1'").lookups is None
    assert plan("SELECT Id FROM Task WHERE SMS_Message_Id__c != 'm-1'").lookups is None
    assert plan("SELECT Id FROM Task WHERE SMS_Message_Id__c IN ('m-1', '')").lookups is None
    assert plan("SELECT Id FROM Task").lookups is None
