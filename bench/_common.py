"""Shared by ``bench/run_bench.py`` and ``bench/chaos.py``.

The simulators run in *this* (the driver's) process, on their own threads; whatever is measured
(``sfsync run``, the naive script, ``sfsync backfill``) runs as a child process, under a small
launcher (``_measure.py``) so that its wall time and peak memory are its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python bench/x.py`: make `sfsync` importable from the tree
    sys.path.insert(0, str(REPO))

from sfsync.sim.harness import Simulators  # noqa: E402

PYTHON = sys.executable
SFSYNC = str(Path(sys.executable).parent / "sfsync")  # the console script, as cron runs it
MEASURE = Path(__file__).resolve().parent / "_measure.py"


@dataclass
class ChildResult:
    argv: list[str]
    returncode: int
    wall_s: float
    max_rss_kb: int
    stdout: str
    stderr: str
    killed: bool = False

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr (``SFSYNC_LOG_FORMAT=json``)."""
        lines = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    parsed = json.loads(line)
                    if isinstance(parsed, dict):
                        lines.append(parsed)
        return lines

    def summary(self) -> dict[str, Any] | None:
        """The run's ``run_summary`` line, if it got that far."""
        found = [line for line in self.log_lines() if line.get("event") == "run_summary"]
        return found[-1] if found else None

    @property
    def max_rss_mb(self) -> float:
        return self.max_rss_kb / 1024.0


def run_child(argv: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None,
              kill_after: float | None = None, timeout: float = 3600.0, measure: bool = False) -> ChildResult:
    """Run one child to its end, or SIGKILL it after ``kill_after`` seconds (or ``timeout``).

    With ``measure``, the child runs under ``_measure.py`` (in its own process group, killed as a
    group) and its wall time and peak RSS are its own; without, the child is the program itself
    (what ``kill_after`` kills) and its RSS is not reported."""
    with tempfile.TemporaryDirectory(prefix="sfsync-child-") as folder:
        report = Path(folder) / "measure.json"
        full = [PYTHON, "-I", str(MEASURE), str(report), "--", *argv] if measure else list(argv)
        with open(Path(folder) / "out", "w+b") as out, open(Path(folder) / "err", "w+b") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(full, env=dict(env), cwd=cwd, stdout=out, stderr=err, start_new_session=measure)
            guard = threading.Lock()
            state = {"reaped": False, "killed": False}

            def kill() -> None:
                with guard:  # a reaped pid may be reused: never signal after the reaping
                    if not state["reaped"]:
                        state["killed"] = True
                        if measure:
                            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's own group: it and its child
                        else:
                            proc.send_signal(signal.SIGKILL)

            delay = timeout if kill_after is None else min(kill_after, timeout)
            timer = threading.Timer(delay, kill)
            timer.daemon = True
            timer.start()
            try:
                _, status, _usage = os.wait4(proc.pid, 0)
            except BaseException:  # Ctrl-C on the bench: take the child (and its group) down too
                timer.cancel()
                kill()
                os.waitpid(proc.pid, 0)
                raise
            finally:
                with guard:
                    state["reaped"] = True
                timer.cancel()
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            rss = 0
            if measure and report.exists():
                figures = json.loads(report.read_text())
                proc.returncode, rss, wall = int(figures["returncode"]), int(figures["maxrss_kb"]), figures["wall_s"]
            out.seek(0)
            err.seek(0)
            return ChildResult(list(argv), proc.returncode, wall, rss, out.read().decode("utf-8", "replace"),
                               err.read().decode("utf-8", "replace"), killed=state["killed"])


def worker_env(sims: Simulators, state_dir: Path, **extra: str) -> dict[str, str]:
    """The environment ``sfsync`` reads, as ops would set it, pointing at the simulators."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    return {**keep, **sims.env(), "SFSYNC_STATE_DIR": str(state_dir), "SFSYNC_LOG_FORMAT": "json", **extra}


@dataclass
class Calls:
    """API calls as the simulators counted them, between two snapshots."""

    salesforce: Counter[str] = field(default_factory=Counter)
    messagemedia: Counter[str] = field(default_factory=Counter)
    composite: Counter[str] = field(default_factory=Counter)  # Composite calls by what they carry

    @property
    def sf_total(self) -> int:
        return sum(self.salesforce.values())

    @property
    def sf_rest(self) -> int:
        """Calls that count against the org's daily API allocation (the token grant does not)."""
        return sum(n for kind, n in self.salesforce.items() if kind != "token")

    @property
    def sf_writes(self) -> int:
        """Write calls: sObject Collections, single-record (neither script GETs a record), Bulk API,
        and Composite requests carrying writes (a mixed one counts here and as a look-up)."""
        plain = sum(n for kind, n in self.salesforce.items() if kind in ("composite", "sobject", "bulk"))
        return plain + self.composite["writes"] + self.composite["mixed"]

    @property
    def sf_lookups(self) -> int:
        """Look-up calls: queries and their further pages, and Composite requests carrying queries."""
        plain = sum(n for kind, n in self.salesforce.items() if kind in ("query", "query_all", "query_more"))
        return plain + self.composite["lookups"] + self.composite["mixed"]

    @property
    def mm_total(self) -> int:
        return sum(self.messagemedia.values())

    def as_dict(self) -> dict[str, Any]:
        return {"salesforce": dict(self.salesforce), "messagemedia": dict(self.messagemedia),
                "salesforce_composite": dict(self.composite),
                "salesforce_total": self.sf_total, "salesforce_rest": self.sf_rest,
                "messagemedia_total": self.mm_total}


class CallMeter:
    """Counts what the simulators served between ``start()`` and ``stop()``."""

    def __init__(self, sims: Simulators):
        self.sims = sims
        self._start: tuple[Counter[str], Counter[str], Counter[str]] = (Counter(), Counter(), Counter())

    def _now(self) -> tuple[Counter[str], Counter[str], Counter[str]]:
        sf = self.sims.sf.stats()
        return Counter(sf["api_calls"]), Counter(self.sims.mm.stats()["calls"]), Counter(sf["composite_calls"])

    def start(self) -> CallMeter:
        self._start = self._now()
        return self

    def stop(self) -> Calls:
        sf, mm, composite = self._now()
        for now, then in zip((sf, mm, composite), self._start, strict=True):
            now.subtract(then)
        return Calls(+sf, +mm, +composite)


def git_commit() -> str:
    """The commit the tree is at (read only), for comparing figures across commits."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = done.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty.stdout.strip() else "")
