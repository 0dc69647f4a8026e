"""The generated reference pages (docs/reference/) against the code: settings, exit statuses, metrics."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from sfsync import errors
from sfsync.ops import docref
from sfsync.ops.docref import DocDrift
from sfsync.settings.config import NUMBERS, VARIABLES
from sfsync.settings.meanings import MEANINGS, OTHER_VARIABLES

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "reference"
METRICS_SOURCE = REPO / "sfsync" / "ops" / "metrics.py"


def _first_column(page: str) -> list[str]:
    """The backticked names in the first column of a page's table."""
    return re.findall(r"^\| `([^`]+)` \|", page, flags=re.M)


def test_checked_in_pages_match_the_code() -> None:
    assert docref.stale_pages(REFERENCE) == [], "run scripts/docs-ref and commit docs/reference/"


def test_check_mode_fails_on_a_page_edited_by_hand(tmp_path: Path) -> None:
    shutil.copytree(REFERENCE, tmp_path / "reference")
    assert docref.main(["--check", str(tmp_path / "reference")]) == errors.EXIT_OK
    page = tmp_path / "reference" / "settings.md"
    page.write_text(page.read_text().replace("SFSYNC_HTTP_TIMEOUT", "SFSYNC_HTTP_TIMEOUTS"))
    assert docref.main(["--check", str(tmp_path / "reference")]) == errors.EXIT_CHECK_FAILED
    assert docref.main([str(tmp_path / "reference")]) == errors.EXIT_OK  # regenerates it
    assert docref.stale_pages(tmp_path / "reference") == []


# -- settings ----------------------------------------------------------------------------------------------
def test_settings_page_lists_every_variable_sfsync_reads_and_nothing_else() -> None:
    listed = _first_column((REFERENCE / "settings.md").read_text())
    assert sorted(listed) == sorted([*VARIABLES, *OTHER_VARIABLES])
    assert len(listed) == len(set(listed))


def test_a_setting_without_a_meaning_fails() -> None:
    variables = {**VARIABLES, "SFSYNC_NEW_KNOB": ("new_knob", "number")}
    with pytest.raises(DocDrift, match="no meaning for SFSYNC_NEW_KNOB"):
        docref.setting_docs(variables=variables)


def test_a_meaning_for_a_setting_that_does_not_exist_fails() -> None:
    meanings = {**MEANINGS, "SFSYNC_HTTP_TIMEOUTS": "a misspelt variable"}
    with pytest.raises(DocDrift, match="SFSYNC_HTTP_TIMEOUTS, which sfsync does not read"):
        docref.setting_docs(meanings=meanings)


def test_a_variable_documented_as_read_elsewhere_must_be_read_there() -> None:
    others = {**OTHER_VARIABLES, "SFSYNC_NOT_READ": ("sfsync.domain.codes", "", "text", "nothing")}
    with pytest.raises(DocDrift, match=r"SFSYNC_NOT_READ: sfsync\.domain\.codes does not read it"):
        docref.setting_docs(others=others)
    others = {**OTHER_VARIABLES,
              "SFSYNC_MM_ACCOUNT_<ID>_API_TOKEN": ("sfsync.settings.accounts", "", "text", "nothing")}
    with pytest.raises(DocDrift, match="no such variable"):
        docref.setting_docs(others=others)


def test_numbers_show_their_range_and_secrets_are_marked() -> None:
    rows = {row.variable: row for row in docref.setting_docs()}
    for name, bound in NUMBERS.items():
        assert rows[name].accepts == bound.describe()
    assert rows["SFSYNC_HTTP_TIMEOUT"].default == "`30`"
    assert rows["SFSYNC_LEASE_SECONDS"].accepts == "a number from 1 to 3600"
    secrets = {name for name, row in rows.items() if row.secret}
    assert {"SFSYNC_MM_API_SECRET", "SFSYNC_SF_CLIENT_SECRET", "SFSYNC_SF_ACCESS_TOKEN", "SFSYNC_PUSH_SECRET",
            "SFSYNC_STORE_PASSWORD", "SFSYNC_MM_ACCOUNT_<ID>_API_SECRET"} <= secrets
    assert "SFSYNC_MM_BASE_URL" not in secrets


# -- exit statuses -------------------------------------------------------------------------------------------
def test_exit_page_lists_every_exit_constant() -> None:
    page = (REFERENCE / "exit-statuses.md").read_text()
    statuses = [int(s) for s in re.findall(r"^\| (\d+) \|", page, flags=re.M)]
    assert statuses == sorted(docref.exit_constants().values())
    assert set(statuses) >= {0, 3, 5, 6, 7, 8, 141}


def test_an_exit_constant_without_a_docstring_line_fails() -> None:
    constants = {**docref.exit_constants(), "EXIT_NEW": 42}
    with pytest.raises(DocDrift, match="EXIT_NEW = 42 has no line"):
        docref.exit_rows(constants=constants)


def test_a_documented_exit_status_without_a_constant_fails() -> None:
    meanings = {**docref.exit_meanings(), 11: "something new"}
    with pytest.raises(DocDrift, match="documents 11, which no EXIT_"):
        docref.exit_rows(meanings=meanings)


def test_exit_meanings_join_continuation_lines() -> None:
    meanings = docref.exit_meanings()
    assert "confirm_pending" in meanings[errors.EXIT_UNAVAILABLE]
    assert meanings[errors.EXIT_PIPE_CLOSED].startswith("stdout was closed early")


# -- metrics ------------------------------------------------------------------------------------------------
def test_every_metric_the_collector_declares_is_in_the_full_exposition() -> None:
    # Every metric name written in sfsync/ops/metrics.py (f-string families expanded by their keys) appears.
    names = docref.metric_names()
    declared = set(re.findall(r'"(sfsync_[a-z_]+)"', METRICS_SOURCE.read_text()))
    declared |= {f"sfsync_last_run_{key}_reports" for key in re.findall(
        r'^    "([a-z_]+)": "', METRICS_SOURCE.read_text(), flags=re.M)}
    assert declared, "the regular expressions no longer find the metric names"
    for name in declared:
        assert any(n == name or n.startswith(name + "_") for n in names), name


def test_metrics_page_lists_the_exposition() -> None:
    listed = _first_column((REFERENCE / "metrics.md").read_text())
    assert listed == sorted(docref.metric_names())
    assert {"sfsync_last_success_timestamp_seconds", "sfsync_reports_total", "sfsync_build_info"} <= set(listed)
