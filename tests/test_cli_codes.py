"""`sfsync codes`, `--version` and `--help`, through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sfsync import __version__
from sfsync.cli.main import main

SFSYNC = str(Path(sys.executable).parent / "sfsync")  # the console script of this environment


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFSYNC, *args], capture_output=True, text=True, timeout=60)


def test_codes_json_lists_all_30_published_codes_once() -> None:
    result = run("codes", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    codes = [r["code"] for r in rows]
    assert len(codes) == 30 and len(set(codes)) == 30
    assert set(rows[0]) == {"code", "meaning", "category", "sms_status", "final", "hint"}
    by_code = {r["code"]: r for r in rows}
    assert by_code["411"]["sms_status"] == "Rejected" and by_code["411"]["final"] is True
    assert by_code["403"]["meaning"] == "Message skipped by downstream provider."


def test_codes_one_code_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["codes", "411"]) == 0
    out = capsys.readouterr().out
    assert "Invalid destination address." in out and "Rejected" in out and "401" not in out


def test_codes_unknown_code_is_not_found(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["codes", "999"]) == 10  # not found: its own status, not 1 (a bug)
    assert "999" in capsys.readouterr().err


def test_codes_table_has_every_code_and_the_status_strings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["codes"]) == 0
    out = capsys.readouterr().out
    assert all(code in out for code in ("101", "221", "333", "414"))
    assert "cancelled" in out and "Stopped" in out


def test_version_and_help() -> None:
    assert run("--version").stdout.strip() == f"sfsync {__version__}"
    helptext = run("--help")
    assert helptext.returncode == 0 and "codes" in helptext.stdout
    assert run().returncode == 2


def test_closed_stdout_pipe_ends_quietly() -> None:
    import subprocess
    import sys
    from pathlib import Path

    sfsync = str(Path(sys.executable).with_name("sfsync"))
    for reader in ("head -1", "true"):  # "true" has gone before sfsync writes a byte
        done = subprocess.run(["bash", "-o", "pipefail", "-c", f"'{sfsync}' codes --json | {reader}"],
                              capture_output=True, text=True, timeout=60)
        assert done.stdout == ("[\n" if reader.startswith("head") else "")
        assert done.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" line
        assert done.returncode in (0, 141)  # success, or what a shell reports for SIGPIPE
