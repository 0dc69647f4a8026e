"""The code map against MessageMedia's published lists, defects included.

`fixtures/messagemedia_status_codes.txt` holds the code list lines exactly as published (one code
listed twice, two codes merged on one line, a missing full stop, a grouping that differs from the
guide). `check_against_sources` proves the map resolves each defect; the mutation tests prove the
check fails if any defect is put back into the map.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfsync.domain import codes
from sfsync.domain.codes import CodeMap, load_code_map, normalise_meaning, resolve
from sfsync.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
MAP_PATH = Path(__file__).parent.parent / "config" / "status_codes.toml"
CODE_RE = re.compile(r"(\d{3}):\s*(.*?)(?=\d{3}:|$)")

# Headings of the code list, and the categories each may hold: its "Delivery" lumps pending
# (200-213) with delivered (220, 221).
CODE_LIST_HEADINGS = {
    "Processing": {"processing"},
    "Delivery": {"pending", "delivered"},
    "Discarded": {"discarded"},
    "Failed": {"failed"},
}
# The guide is finer grained: one category per heading.
GUIDE_HEADINGS = {
    "Processing (100-series)": "processing",
    "Submitted / Delivery Pending (200-series)": "pending",
    "Delivered (220-series)": "delivered",
    "Discarded / Blocked / Routing Issues (300-series)": "discarded",
    "Failed / Rejected / Expired (400-series)": "failed",
}
# The labels of the campaign guide's vocabulary, as the foundation issue assigns them.
EXPECTED_LABELS = {
    **dict.fromkeys(["101", "102", "151"], "Sending"),
    **dict.fromkeys(["200", "210", "211", "212", "213"], "Submitted"),
    **dict.fromkeys(["220", "221"], "Delivered"),
    **dict.fromkeys(["301", "302", "303", "304", "305", "320", "330", "331", "332", "333"], "Rejected"),
    **dict.fromkeys(["402", "410", "411", "412"], "Rejected"),
    **dict.fromkeys(["400", "401", "403", "405", "413", "414"], "Failed"),
}


def parse_code_list() -> list[tuple[str, str, str]]:
    """(heading, code, meaning) for every code on every line, in published order."""
    heading = ""
    found = []
    for line in (FIXTURES / "messagemedia_status_codes.txt").read_text().splitlines():
        matches = CODE_RE.findall(line)
        if not matches:
            heading = line.strip()
            continue
        found += [(heading, code, meaning.strip()) for code, meaning in matches]
    return found


def parse_guide() -> dict[str, tuple[str, str]]:
    """code -> (category, meaning) from the guide's tables."""
    category = ""
    found = {}
    for line in (FIXTURES / "business_messaging_status_guide_codes.txt").read_text().splitlines():
        row = re.match(r"^\|\s*(\d{3})\s*\|\s*(.*?)\s*\|$", line)
        if row:
            found[row.group(1)] = (category, row.group(2))
        else:
            category = GUIDE_HEADINGS[line.strip()]
    return found


def check_against_sources(cmap: CodeMap) -> list[str]:
    """Every way the map differs from the two published sources; empty when it resolves them."""
    problems = []
    published = parse_code_list()
    guide = parse_guide()
    for heading, code, meaning in published:
        entry = cmap.codes.get(code)
        if entry is None:
            problems.append(f"{code}: published but missing from the map")
            continue
        if entry.meaning != normalise_meaning(meaning):
            problems.append(f"{code}: meaning {entry.meaning!r} differs from published {meaning!r}")
        if entry.category not in CODE_LIST_HEADINGS[heading]:
            problems.append(f"{code}: category {entry.category} does not fit the code list's {heading!r}")
    for code, (category, meaning) in guide.items():
        entry = cmap.codes.get(code)
        if entry is None:
            problems.append(f"{code}: in the guide but missing from the map")
            continue
        if entry.category != category:
            problems.append(f"{code}: category {entry.category} differs from the guide's {category}")
        if entry.meaning != normalise_meaning(meaning):
            problems.append(f"{code}: meaning differs from the guide's {meaning!r}")
    for entry in cmap.codes.values():
        if entry.meaning != normalise_meaning(entry.meaning):
            problems.append(f"{entry.code}: meaning not normalised: {entry.meaning!r}")
        if EXPECTED_LABELS.get(entry.code) != entry.sms_status:
            problems.append(f"{entry.code}: label {entry.sms_status} is not {EXPECTED_LABELS.get(entry.code)}")
    extra = set(cmap.codes) - {code for _, code, _ in published}
    problems += [f"{code}: in the map but never published" for code in sorted(extra)]
    return problems


def test_fixture_still_holds_every_published_defect() -> None:
    published = parse_code_list()
    codes_listed = [code for _, code, _ in published]
    assert codes_listed.count("400") == 2
    raw = (FIXTURES / "messagemedia_status_codes.txt").read_text()
    assert "403: Message skipped by downstream provider.410: Invalid source address." in raw
    assert "405: Message cancelled or deleted by provider\n" in raw
    headings = {code: heading for heading, code, _ in published}
    assert headings["220"] == headings["200"] == "Delivery"
    assert parse_guide()["220"][0] == "delivered"
    assert len(set(codes_listed)) == 30


def test_map_resolves_every_defect() -> None:
    cmap = load_code_map(MAP_PATH)
    assert check_against_sources(cmap) == []
    assert len(cmap.codes) == 30
    assert MAP_PATH.read_text().count('code = "400"') == 1
    assert cmap.codes["403"].meaning == "Message skipped by downstream provider."
    assert cmap.codes["410"].meaning == "Invalid source address."
    assert cmap.codes["405"].meaning == "Message cancelled or deleted by provider."
    assert {cmap.codes[c].category for c in ("220", "221")} == {"delivered"}
    assert {cmap.codes[c].category for c in ("200", "210", "211", "212", "213")} == {"pending"}


def _mutated(tmp_path: Path, old: str, new: str) -> Path:
    text = MAP_PATH.read_text()
    assert old in text, old
    path = tmp_path / "status_codes.toml"
    path.write_text(text.replace(old, new, 1))
    return path


DUPLICATE_400 = '''
[[codes]]
code = "400"
category = "failed"
meaning = "Message failed; undeliverable."
sms_status = "Failed"
final = true
hint = "Listed twice."
'''


@pytest.mark.parametrize(
    ("defect", "old", "new"),
    [
        ("merged 403/410", 'meaning = "Message skipped by downstream provider."',
         'meaning = "Message skipped by downstream provider.410: Invalid source address."'),
        ("405 without full stop", 'meaning = "Message cancelled or deleted by provider."',
         'meaning = "Message cancelled or deleted by provider"'),
        ("220 grouped as pending", 'code = "220"\ncategory = "delivered"', 'code = "220"\ncategory = "pending"'),
        ("410 missing", 'code = "410"', 'code = "499"'),
        ("meaning reworded", 'meaning = "Destination unreachable."', 'meaning = "Destination not reachable."'),
        ("wrong label", 'code = "402"\ncategory = "failed"\nmeaning = "Message rejected by downstream provider."\n'
         'sms_status = "Rejected"', 'code = "402"\ncategory = "failed"\nmeaning = '
         '"Message rejected by downstream provider."\nsms_status = "Failed"'),
    ],
)
def test_check_fails_when_a_defect_is_reintroduced(tmp_path: Path, defect: str, old: str, new: str) -> None:
    path = _mutated(tmp_path, old, new)
    try:
        cmap = load_code_map(path)
    except ConfigError:
        return  # the loader itself refuses the defect: the map can never carry it
    assert check_against_sources(cmap), f"{defect} went unnoticed"


def test_duplicate_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "status_codes.toml"
    path.write_text(MAP_PATH.read_text() + DUPLICATE_400)
    with pytest.raises(ConfigError, match="400 is listed twice"):
        load_code_map(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("schema_version = 1", "schema_version = 2", "schema_version"),
        ('code = "101"', 'code = "1010"', "three-digit"),
        ('sms_status = "Sending"', 'sms_status = "Sent-ish"', "unknown SMS Status"),
        ('category = "processing"', 'category = "busy"', "unknown category"),
        ('sms_status = "Delivered"\nfinal = true', 'sms_status = "Delivered"\nfinal = false', "contradicts"),
    ],
)
def test_loader_names_the_problem(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_code_map(_mutated(tmp_path, old, new))


def test_missing_or_broken_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_code_map(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[codes]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_code_map(bad)


# -- resolution ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        ("delivered", None, ("Delivered", None, True, True)),
        ("DELIVERED", "220", ("Delivered", "220", True, True)),
        ("enroute", " 200 ", ("Submitted", "200", False, True)),
        ("submitted", 221, ("Delivered", "221", True, True)),
        ("submitted", 221.0, ("Delivered", "221", True, True)),
        ("failed", "411", ("Rejected", "411", True, True)),
        ("rejected", "400", ("Failed", "400", True, True)),
        ("queued", None, ("Sending", None, False, True)),
        ("scheduled", None, ("Scheduled", None, False, True)),
        ("cancelled", None, ("Stopped", None, True, True)),
        ("read", None, ("Delivered", None, True, True)),
        ("expired", None, ("Failed", None, True, True)),
        ("undeliverable", "", ("Failed", None, True, True)),
        ("delivered", "999", ("Delivered", "999", True, False)),
        ("warp-drive", None, ("Unknown", None, False, False)),
        (None, "999", ("Unknown", "999", False, False)),
    ],
)
def test_resolve(status: str | None, code: object, expected: tuple[str, str | None, bool, bool]) -> None:
    r = resolve(status, code)
    assert (r.label, r.code, r.final, r.known) == expected


def test_every_status_string_of_the_reference_is_known() -> None:
    strings = ["undefined", "queued", "processing", "processed", "failed", "scheduled", "cancelled", "delivered",
               "expired", "enroute", "held", "submitted", "rejected", "read", "undeliverable"]
    assert all(resolve(s).known for s in strings)


def test_unknown_code_is_kept_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    codes._warned.clear()
    with caplog.at_level(logging.WARNING, logger="sfsync.domain.codes"):
        first = resolve("failed", "987")
        resolve("failed", "987")
    assert (first.label, first.code, first.known) == ("Failed", "987", False)
    assert [r.message for r in caplog.records].count("unknown delivery status code '987' kept as received") == 1


def test_code_wins_over_a_contradicting_status(caplog: pytest.LogCaptureFixture) -> None:
    """Normal mapping, not a warning: logged at info, naming the message."""
    codes._warned.clear()
    with caplog.at_level(logging.INFO, logger="sfsync.domain.codes"):
        r = resolve("failed", "220", message_id="msg-42")
    assert r.label == "Delivered"
    said = [rec for rec in caplog.records if "disagrees" in rec.message]
    assert [rec.levelno for rec in said] == [logging.INFO]
    assert "msg-42" in said[0].message and getattr(said[0], "message_id", None) == "msg-42"


@given(status=st.one_of(st.none(), st.text(max_size=30)),
       code=st.one_of(st.none(), st.text(max_size=12), st.integers(), st.floats(allow_nan=True)))
def test_resolve_never_fails_and_never_drops(status: str | None, code: object) -> None:
    r = resolve(status, code)
    cmap = codes.default_map()
    assert r.label in cmap.labels
    assert r.final == cmap.is_final(r.label)
    if code is not None and str(code).strip():
        assert r.code is not None  # a code is never dropped
