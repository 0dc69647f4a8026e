"""Store failures are operational errors, not bugs: a damaged ``sfsync.db``, a state folder sfsync
may not write and a full disk each end with exit 3 and one message that says what to do, never a
traceback; nothing is confirmed that was not stored; ``doctor`` checks the store's integrity and
the free space of its disk.

Each failure is made real, not simulated:
- damaged: bytes written over the file's header, or over its pages;
- read-only: tests run as root, whom file permissions do not stop, so sfsync runs under
  ``setpriv`` with every capability dropped (still uid 0, but without CAP_DAC_OVERRIDE the kernel
  applies the folder's mode to it);
- full disk: sfsync runs in a private mount namespace (``unshare -m``) with its state folder on a
  small tmpfs that is filled up, so SQLite meets a real ENOSPC. The mount is invisible outside
  that process and disappears with it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sfsync.errors import EXIT_AUTH, EXIT_CONFIG, EXIT_OK
from sfsync.ops.doctor import run_checks
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.store import Store
from tests.conftest import add_tasks, new_message_id, on_postgresql, report

BIN = Path(sys.executable).parent
SFSYNC = str(BIN / "sfsync")


def cli_env(sims: Simulators, state: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, **sims.env(), "SFSYNC_STATE_DIR": str(state), "SFSYNC_LOG_FORMAT": "json",
            "SFSYNC_RETRY_ATTEMPTS": "2", **extra}


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def log_lines(stderr: str) -> list[dict[str, Any]]:
    lines = []
    for line in stderr.splitlines():
        assert line.startswith("{"), f"not a log line (a traceback?): {line!r}\n{stderr}"
        lines.append(json.loads(line))
    return lines


def assert_one_clear_error(result: subprocess.CompletedProcess[str], *phrases: str) -> dict[str, Any]:
    """Exit 3, exactly one error line holding every phrase, and no traceback anywhere."""
    assert "Traceback" not in result.stderr and "unexpected error" not in result.stderr, result.stderr
    assert result.returncode == EXIT_CONFIG, (result.returncode, result.stderr)
    errors = [e for e in log_lines(result.stderr) if e["level"] == "error"]
    assert len(errors) == 1, errors
    assert not any("exc" in e for e in log_lines(result.stderr))
    for phrase in phrases:
        assert phrase in errors[0]["msg"], (phrase, errors[0]["msg"])
    return errors[0]


def seeded_store(state: Path) -> Path:
    """A store holding a waiting report and a dead letter, closed."""
    store = Store(state / "sfsync.db")
    store.add_dead_letter("r-dead", "m-dead", {"x": 1}, "poll", "invalid")
    for i in range(200):  # a few pages of data
        store.add_dead_letter(f"r-{i}", f"m-{i}", {"pad": "x" * 400}, "poll", "invalid")
    store.close()
    return state / "sfsync.db"


def queue_one(sims: Simulators) -> str:
    message = new_message_id()
    (task,) = add_tasks(sims, [message])
    sims.mm.add_reports([report(message, "delivered", "220")])
    return task


# -- a damaged store ------------------------------------------------------------------------------------------
def test_a_damaged_store_is_a_clear_error_and_nothing_is_confirmed(sims: Simulators, tmp_path: Path) -> None:
    state = tmp_path / "state"
    db = seeded_store(state)
    with db.open("r+b") as f:
        f.write(b"this is not a SQLite file" * 4)  # over the header
    queue_one(sims)
    env = cli_env(sims, state)
    for argv in ([SFSYNC, "run"], [SFSYNC, "status"], [SFSYNC, "dead-letters", "list"]):
        assert_one_clear_error(run(argv, env, tmp_path), str(db), "damaged", "move the file aside", "backup",
                               "dead letters")
    assert sims.mm.confirm_log() == []


@pytest.mark.skipif(on_postgresql(), reason="a damaged SQLite file: the PostgreSQL store has no file to damage")
def test_doctor_reports_a_damaged_store(sims: Simulators, settings_for: Callable[..., Settings],
                                        state_dir: Path) -> None:
    db = seeded_store(state_dir)
    checks = {c.name: c for c in run_checks(settings_for())}
    assert checks["store"].status == "ok" and "quick check" in checks["store"].detail
    assert checks["store disk space"].status == "ok"
    size = db.stat().st_size
    with db.open("r+b") as f:  # the header survives; pages in the middle do not
        f.seek(4096 * 2)
        f.write(os.urandom(min(4096 * 8, size - 4096 * 2)))
    check = {c.name: c for c in run_checks(settings_for())}["store"]
    assert check.status == "fail", check
    assert "damaged" in check.detail and "move the file aside" in check.detail


# -- a state folder sfsync may not write ------------------------------------------------------------------------
def without_privileges(argv: list[str]) -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
    if os.geteuid() != 0:
        return argv  # an ordinary user: the folder's mode applies already
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", *argv]


@pytest.mark.parametrize("existing", [True, False], ids=["existing store", "new store"])
def test_a_read_only_state_folder_is_a_clear_error(sims: Simulators, tmp_path: Path, existing: bool) -> None:
    state = tmp_path / "state"
    state.mkdir()
    if existing:
        seeded_store(state)
    for path in [state, *state.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    queue_one(sims)
    try:
        result = run(without_privileges([SFSYNC, "run"]), cli_env(sims, state), tmp_path)
    finally:
        for path in [state, *state.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert_one_clear_error(result, str(state.resolve()), "writable", "SFSYNC_STATE_DIR")
    assert sims.mm.confirm_log() == []


# -- a full disk ------------------------------------------------------------------------------------------------
def on_a_full_tmpfs(state: Path, script: str) -> list[str]:
    """``script`` (shell) run with ``state`` on a private 1 MB tmpfs."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-m", "true"], capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("a private mount namespace (unshare -m) is needed to give sfsync a small disk")
    state.mkdir(exist_ok=True)
    return [unshare or "unshare", "-m", "sh", "-c",
            f"mount -t tmpfs -o size=1m sfsync-test {state} && {script}"]


FILL = "cat /dev/zero > \"$SFSYNC_STATE_DIR/filler\" 2>/dev/null; "

# The worker with Salesforce credentials that are refused, on a disk that fills up once the run has
# started (after its reports are staged and confirmed): the run fails for its own reason, then the
# store cannot record it.
FILLED_MID_RUN = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from sfsync import logs
    from sfsync.cli.main import exit_status
    from sfsync.settings.config import load_settings
    from sfsync.engine import Worker

    settings = load_settings()
    logs.setup("json")

    def fill(stage):
        if stage == "confirmed":
            with open(Path(os.environ["SFSYNC_STATE_DIR"]) / "filler", "wb") as filler:
                try:
                    while True:
                        filler.write(b"\\0" * 65536)
                        filler.flush()
                except OSError:
                    pass

    sys.exit(exit_status(lambda: Worker(settings, on_stage=fill).run().exit_code))
""")


def test_a_full_disk_at_the_start_of_a_run_is_a_clear_error(sims: Simulators, tmp_path: Path) -> None:
    state = tmp_path / "state"
    queue_one(sims)
    env = cli_env(sims, state)
    argv = on_a_full_tmpfs(state, f"{SFSYNC} status >/dev/null && {FILL} exec {SFSYNC} run")
    result = run(argv, env, tmp_path)
    assert_one_clear_error(result, "disk holding", "is full", "free space")
    assert sims.mm.confirm_log() == []


def test_a_full_disk_never_hides_why_a_run_failed_and_the_summary_is_still_logged(sims: Simulators,
                                                                                   tmp_path: Path) -> None:
    state = tmp_path / "state"
    queue_one(sims)
    env = cli_env(sims, state, SFSYNC_SF_CLIENT_SECRET="not-the-secret")
    argv = on_a_full_tmpfs(state, f"exec {sys.executable} -c '{FILLED_MID_RUN}'")
    result = run(argv, env, tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == EXIT_AUTH, result.stderr  # why the run failed, not the store's trouble
    lines = log_lines(result.stderr)
    not_recorded = [e for e in lines if e.get("event") == "run_not_recorded"]
    assert len(not_recorded) == 1 and "is full" in not_recorded[0]["msg"], lines
    (summary,) = [e for e in lines if e.get("event") == "run_summary"]
    assert summary["exit_reason"] == "AuthError" and summary["exit_code"] == EXIT_AUTH
    assert next(e for e in lines if e.get("event") == "error")["error"] == "AuthError"
    assert len(sims.mm.confirm_log()) == 1  # confirmed only once staged, before the disk filled


def test_doctor_warns_when_the_store_disk_is_nearly_full(sims: Simulators, tmp_path: Path) -> None:
    state = tmp_path / "state"
    argv = on_a_full_tmpfs(state, f"{FILL} exec {SFSYNC} doctor --json")
    result = run(argv, cli_env(sims, state), tmp_path)
    space = {c["name"]: c for c in json.loads(result.stdout)}["store disk space"]
    assert space["status"] == "fail", space
    assert "MB free" in space["detail"] and "SFSYNC_STATE_DIR" in space["detail"]
    assert result.returncode != EXIT_OK
