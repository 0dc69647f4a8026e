"""``scripts/chaos --replicas N --store postgresql://...``: replicas on one PostgreSQL store under
faults and SIGKILLs.

N workers (``sfsync run --loop``, each as if on a host of its own) and 2 receivers (``sfsync
serve``: the MessageMedia simulator pushes every report to one by its push URL, to the other by a
webhook) share one PostgreSQL database, while the simulators inject faults on every endpoint.
SIGKILLs come at random instants; killed processes are restarted, except one worker killed while
it holds claims on staged reports and never restarted (its host lost): its claims must expire and
be finished by the others. ``--store postgresql`` starts a throwaway cluster (``tests/pgcluster.py``).

Checks, from the simulators' records and the database, never from what sfsync says:
  lost        every Task holds its message's winning report (computed here from the seeded reports)
  regressed   no final status on a Task was followed by a non-final one
  stale       no write on a Task whose report precedes one already written there (write history)
  confirmed / pushed before durable  every confirm and every 2xx push answer came after the report
              was committed to the store
  processed twice  no staged report marked drained by two replicas (each process logs what it
              marked, once its transaction committed)
Prints the figures and one JSON line; exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from _common import PYTHON, worker_env
from _pg import postgres
from chaos import CHAOS_ENV, FAULT_KINDS, TokenExpiry
from chaos_checks import history
from chaos_workload import FINAL_LABELS, METADATA_KEY, Workload, build_workload

from sfsync.sim.base import FaultConfig
from sfsync.sim.harness import Simulators

CHILD = Path(__file__).resolve().parent / "chaos_child.py"
SECRET = "chaos-push-secret-0123456789abcdef"  # noqa: S105 - the simulators only
HEADER = "X-SFSync-Secret"


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    kills: int = 0
    lost: bool = False  # killed and never restarted
    starts: int = 0

    def start(self, logs: Path) -> None:
        with open(logs / f"{self.name}.log", "ab") as err:
            self.popen = subprocess.Popen(self.argv, env=self.env, cwd=logs, stdout=subprocess.DEVNULL, stderr=err)
        self.starts += 1

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
            self.kills += 1

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    regressed: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    early_confirms: list[str] = field(default_factory=list)
    early_push_answers: list[str] = field(default_factory=list)
    processed_twice: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(vars(self).values())


def _db(url: str, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, password=password, autocommit=True)


def staged_at(url: str, password: str) -> dict[str, float]:
    with _db(url, password) as conn:
        rows = conn.execute("SELECT report_id, received_at FROM inbox").fetchall()
    return {key: dt.datetime.fromisoformat(at).timestamp() for key, at in rows}


def backlog(url: str, password: str, deleted: set[str]) -> tuple[int, int]:
    """Staged reports not drained, and waiting reports other than those of deleted Tasks."""
    with _db(url, password) as conn:
        pending = conn.execute("SELECT COUNT(*) FROM inbox WHERE processed_at IS NULL").fetchone()
        waiting = {r[0] for r in conn.execute("SELECT report_id FROM waiting")}
    return int(pending[0] if pending else 0), len(waiting - deleted)


def stuck(url: str, password: str) -> str:
    with _db(url, password) as conn:
        rows = conn.execute("SELECT report_id, source, claimed_by, claim_expires, substr(raw, 1, 300) FROM inbox "
                            "WHERE processed_at IS NULL LIMIT 3").fetchall()
    return f"staged and not drained, e.g. {rows}"


def claim_holders(url: str, password: str) -> set[int]:
    """The pids of the processes holding live claims on staged reports now."""
    with contextlib.suppress(psycopg.Error), _db(url, password) as conn:
        rows = conn.execute("SELECT DISTINCT claimed_by FROM inbox WHERE processed_at IS NULL "
                            "AND claim_expires > clock_timestamp()").fetchall()
        return {int(r[0].split(":")[1]) for r in rows if r[0] and r[0].count(":") >= 2}
    return set()


def check(sims: Simulators, work: Workload, url: str, password: str, record: Path) -> Verdict:
    verdict = Verdict()
    for msg in work.messages.values():
        if msg.deleted or msg.task_id is None:
            continue
        task = sims.sf.task(msg.task_id) or {}
        if (task.get("SMS_Status__c"), task.get("SMS_Status_Code__c")) != msg.winner().values:
            verdict.lost.append(msg.message_id)
        # values -> the best precedence key among the message's reports carrying them
        rank: dict[tuple[Any, Any], tuple[Any, ...]] = {}
        for seeded in msg.reports:
            rank[seeded.values] = max(rank.get(seeded.values, seeded.key()), seeded.key())
        seen_final, best = False, None
        for _, values in history(sims, msg.task_id):
            label = values[0]
            if seen_final and label not in FINAL_LABELS:
                verdict.regressed.append(msg.task_id)
            seen_final = seen_final or label in FINAL_LABELS
            key = rank.get(values)
            if key is not None and best is not None and key < best:
                verdict.stale.append(msg.task_id)  # written over a report that beats it
            best = key if best is None or (key is not None and key > best) else best
    staged = staged_at(url, password)
    confirmed: dict[str, float] = {}
    for report_id, at in sims.mm.confirm_log():
        confirmed.setdefault(report_id, at)
    for wire in work.queue:
        rid = wire["delivery_report_id"]
        if rid not in confirmed:
            verdict.unconfirmed.append(rid)
        elif staged.get(rid) is None or staged[rid] > confirmed[rid]:
            verdict.early_confirms.append(rid)
    for push in sims.mm.push_log():
        rid = push.get("delivery_report_id")
        if push.get("status") == 200 and isinstance(rid, str) and (staged.get(rid) is None
                                                                    or staged[rid] > push["at"]):
            verdict.early_push_answers.append(rid)
    marked: Counter[str] = Counter()
    if record.exists():
        for line in record.read_text().splitlines():
            _, _, staged_key = line.partition(" ")
            marked[staged_key] += 1
    verdict.processed_twice = [k for k, n in marked.items() if n > 1]
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos --replicas N", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, required=True, help="workers (sfsync run --loop), at least 2")
    parser.add_argument("--store", required=True,
                        help="postgresql://user@host:port/db (password in SFSYNC_STORE_PASSWORD), or 'postgresql' "
                             "for a throwaway cluster")
    parser.add_argument("--reports", type=int, default=1000, help="delivery reports to seed (default 1,000)")
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs at random instants (default 8)")
    parser.add_argument("--fault-rate", type=float, default=0.05, help="share of API calls that fail (default 0.05)")
    parser.add_argument("--lease-seconds", type=float, default=3.0, help="SFSYNC_LEASE_SECONDS (default 3)")
    parser.add_argument("--budget", type=float, default=55.0, help="give up (and fail) after this many seconds")
    parser.add_argument("--seed", type=int, help="seed for the workload, the faults and the kills")
    p = parser.parse_args(argv)
    if p.replicas < 2:
        parser.error("--replicas: at least 2 (one of them is lost for good)")
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    started = time.monotonic()
    work_dir = Path(tempfile.mkdtemp(prefix="sfsync-chaos-replicas-"))
    record = work_dir / "drained.log"
    procs: list[Proc] = []
    try:
        with postgres(p.store) as server, Simulators(
                tls_dir=work_dir / "tls",
                mm_faults=FaultConfig(rate=p.fault_rate, kinds=FAULT_KINDS, seed=seed + 1, stall_seconds=3),
                sf_faults=FaultConfig(rate=p.fault_rate, kinds=FAULT_KINDS, seed=seed + 2, stall_seconds=3)) as sims:
            url, password = server.fresh("chaos"), server.password
            extra = {**CHAOS_ENV, "SFSYNC_STORE_URL": url, "SFSYNC_STORE_PASSWORD": password,
                     "SFSYNC_LEASE_SECONDS": f"{p.lease_seconds:g}", "SFSYNC_PUSH_SECRET": SECRET,
                     "CHAOS_RECORD": str(record), "SFSYNC_METADATA_TASK_KEY": METADATA_KEY}
            ports = [_free_port(), _free_port()]
            for i, port in enumerate(ports):
                env = worker_env(sims, work_dir / f"receiver{i}", **extra)
                procs.append(Proc(f"receiver{i}", [PYTHON, str(CHILD), "serve", "--port", str(port),
                                                   "--drain-interval", "0.5"], env))
            for i in range(p.replicas):
                env = worker_env(sims, work_dir / f"worker{i}", **extra)
                procs.append(Proc(f"worker{i}", [PYTHON, str(CHILD), "run", "--loop", "--interval", "0.5",
                                                 "--retry-waiting"], env))
            for proc in procs:
                proc.start(work_dir)
            _wait_healthy(ports)
            sims.mm.configure(push_url=f"http://127.0.0.1:{ports[0]}/delivery-reports", push_headers={HEADER: SECRET},
                              push_max_attempts=8, push_retry_delay_s=0.2, push_retry_max_delay_s=2.0,
                              confirm_delay_s=0.1)
            _install_webhook(procs[1].env, f"http://127.0.0.1:{ports[1]}/delivery-reports")
            sims.sf.configure(lock_row_rate=0.01)
            work = build_workload(sims, p.reports, rng)
            deleted = {s.report_id for m in work.messages.values() if m.deleted for s in m.reports}
            print(f"chaos: seed {seed}; {work.report_count:,} reports over {len(work.messages):,} messages; "
                  f"{p.replicas} workers and 2 receivers on one PostgreSQL; faults {p.fault_rate:.0%} on every "
                  f"endpoint; {p.kills} kills", flush=True)
            with TokenExpiry(sims, 3.0):
                kills = _kill_loop(procs, p, rng, url, password, work_dir, started, work, sims)
                print(f"  {kills} kills done at {time.monotonic() - started:.1f} s; draining", flush=True)
                while True:
                    pending, waiting = backlog(url, password, deleted)
                    through = sims.mm.stats()["unconfirmed"] == 0 and not pending
                    if through and work.rest:
                        work.release_rest(sims)  # the first half is confirmed and drained: the second comes
                    elif through and not waiting and sims.mm.wait_for_pushes(0.1):
                        break
                    if time.monotonic() - started > p.budget:
                        raise TimeoutError(f"not drained within {p.budget:g} s: {sims.mm.stats()['unconfirmed']} "
                                           f"unconfirmed, {pending} staged, {waiting} waiting; "
                                           f"{stuck(url, password)}")
                    for proc in procs:  # a process that ended on its own (an outage outlasting its retries)
                        if not proc.lost and proc.popen is not None and proc.popen.poll() is not None:
                            proc.start(work_dir)
                    time.sleep(0.3)
                for proc in procs:
                    proc.stop()
                verdict = check(sims, work, url, password, record)
                injected = sum(Counter(sims.mm.faults.snapshot()["injected"]).values()) + \
                    sum(Counter(sims.sf.faults.snapshot()["injected"]).values())
                pushes = Counter(str(x.get("status")) for x in sims.mm.push_log())
                lines = len(record.read_text().splitlines()) if record.exists() else 0
    except TimeoutError as exc:
        for proc in procs:
            proc.kill()
        for log in sorted(work_dir.glob("*.log")):
            text = log.read_text(errors="replace").strip().splitlines()
            tail = [*text[:2], "...", *text[-2:]]
            print(f"  {log.stem}: " + "\n    ".join(tail)[-1500:])
        print(f"chaos: FAILED: {exc}")
        print(json.dumps({"chaos": "replicas", "seed": seed, "ok": False, "error": str(exc)}))
        return 1
    finally:
        for proc in procs:
            proc.kill()
        shutil.rmtree(work_dir, ignore_errors=True)
    figures = {
        "chaos": "replicas", "seed": seed, "ok": verdict.ok, "elapsed_s": round(time.monotonic() - started, 1),
        "replicas": p.replicas, "receivers": 2, "reports": work.report_count, "messages": len(work.messages),
        "kills": kills, "lost_hosts": sum(x.lost for x in procs), "faults_injected": injected,
        "pushes": dict(pushes), "drained_records": lines,
        **{name: len(items) for name, items in vars(verdict).items()},
    }
    print(f"\nchaos (replicas): {work.report_count:,} reports, {kills} kills, {figures['lost_hosts']} host lost for "
          f"good, {injected} faults injected, {figures['elapsed_s']} s")
    print("  " + "   ".join(f"{name.replace('_', ' ')}: {len(items)}" for name, items in vars(verdict).items()))
    for name, items in vars(verdict).items():
        if items:
            print(f"  {name}: {items[:10]}")
    print(f"  {'OK' if verdict.ok else 'VIOLATIONS FOUND'}")
    print(json.dumps(figures, separators=(",", ":")))
    return 0 if verdict.ok else 1


def _kill_loop(procs: list[Proc], p: argparse.Namespace, rng: random.Random, url: str, password: str,
               work_dir: Path, started: float, work: Workload, sims: Simulators) -> int:
    """SIGKILL a random process every so often and restart it; the first worker found holding
    claims is killed and never restarted (its host lost). Late Tasks appear half-way."""
    kills = 0
    lost_one = False
    while kills < p.kills:
        if time.monotonic() - started > p.budget * 0.6:
            break
        time.sleep(rng.uniform(0.3, 1.2))
        if not lost_one:
            holders = claim_holders(url, password)
            victims = [x for x in procs if x.name.startswith("worker") and x.popen and x.popen.pid in holders]
            if victims:
                victim = victims[0]
                victim.kill()
                victim.lost = lost_one = True
                kills += 1
                continue
        victim = rng.choice([x for x in procs if not x.lost])
        victim.kill()
        kills += 1
        victim.start(work_dir)
        if kills == p.kills // 2:
            work.add_late_tasks(sims)
    if not any(m.task_id for m in work.messages.values() if m.late):
        work.add_late_tasks(sims)
    if not lost_one:  # nothing was ever claimed at a kill: lose a worker anyway
        victim = next(x for x in procs if x.name.startswith("worker"))
        victim.kill()
        victim.lost = True
    return kills


def _install_webhook(env: dict[str, str], url: str) -> None:
    """The second receiver gets every report by an account webhook (sfsync's template; plain HTTP
    here, which ``sfsync webhooks install`` refuses, so the body is posted directly)."""
    from sfsync.clients.messagemedia import MessageMediaClient
    from sfsync.push.webhooks import dr_template
    from sfsync.settings.config import load_settings

    settings = load_settings(environ={k: v for k, v in env.items() if k != "SFSYNC_STORE_URL"})
    MessageMediaClient(settings).create_webhook({
        "url": url, "method": "POST", "encoding": "JSON", "headers": {HEADER: SECRET},
        "events": ["ENROUTE_DR", "SUBMITTED_DR", "DELIVERED_DR", "EXPIRED_DR", "REJECTED_DR", "FAILED_DR"],
        "template": dr_template(METADATA_KEY), "retries": 5, "retry_delay": 5})


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(ports: list[int]) -> None:
    import urllib.request

    deadline = time.monotonic() + 45
    for port in ports:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"sfsync serve on port {port} did not come up")
            time.sleep(0.1)


if __name__ == "__main__":
    import sys

    sys.exit(main())
