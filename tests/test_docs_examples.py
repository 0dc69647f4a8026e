"""The manual's runnable examples: every shell block marked ``<!-- runnable -->`` in docs/ is run as
written, in a throwaway folder, against the bundled simulators (127.0.0.1 only), within a deadline. The
folder's ``.venv/bin/sfsync`` is this interpreter's sfsync and ``scripts/demo`` the real script with its
venv installation stubbed (the test already runs inside an installed sfsync)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RUNNABLE = re.compile(r"^<!-- runnable -->\n```sh\n(.*?)^```", flags=re.M | re.S)
DEADLINE_S = 120


def _blocks() -> list[tuple[str, int, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in RUNNABLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((str(page.relative_to(REPO)), line, match.group(1)))
    return found


BLOCKS = _blocks()


def test_the_quick_start_and_try_it_by_hand_are_marked_runnable() -> None:
    scripts = "\n".join(body for _, _, body in BLOCKS)
    assert re.search(r"^scripts/demo\b", scripts, flags=re.M), "the quick start's scripts/demo block"
    assert "sfsync sim --seed-demo" in scripts and "sfsync trace" in scripts, "the try-it-by-hand block"
    readme = (REPO / "README.md").read_text()
    assert "scripts/demo" in readme and "scripts/test" in readme


def _workspace(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / ".venv" / "bin").mkdir(parents=True)
    wrapper = work / ".venv" / "bin" / "sfsync"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sfsync.cli "$@"\n')
    wrapper.chmod(0o755)
    (work / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "demo", work / "scripts" / "demo")
    (work / "scripts" / "_env.sh").write_text("ensure_venv() { :; }  # the test's interpreter is the venv\n")
    return work


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_") and "proxy" not in k.lower()}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


@pytest.mark.parametrize("page, line, body", BLOCKS, ids=[f"{p}:{n}" for p, n, _ in BLOCKS])
def test_runnable_block(tmp_path: Path, page: str, line: int, body: str) -> None:
    work = _workspace(tmp_path)
    script = "set -euo pipefail\n" + body
    process = subprocess.Popen(["bash", "-c", script], cwd=work, env=_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{page}:{line} did not finish within {DEADLINE_S} s\n{out}\n{err}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # anything the block left running is stopped here
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, f"{page}:{line} exited {process.returncode}\n{out}\n{err[-4000:]}"
    if "scripts/demo" in body:
        assert "Tasks by SMS Status:" in out and "reports still unconfirmed at MessageMedia: 0" in out
    if "sfsync trace" in body:
        rows = (work / "var" / "results" / "success.csv").read_text().splitlines()
        assert len(rows) > 1 and rows[0].startswith("ID,MESSAGE_ID")
        assert "written by sfsync:" in out and "exit 0" in out
        assert re.search(r"^ok\s+salesforce token", out, flags=re.M)


def test_the_strict_build_fails_on_a_broken_link(tmp_path: Path) -> None:
    # scripts/test's mkdocs step, on a copy of the manual with one broken link: it must fail, naming it.
    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed beside this interpreter")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "troubleshooting.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    command = [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no-such-page.md" in result.stderr, result.stderr
