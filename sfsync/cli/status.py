"""`sfsync status`: the last runs (idle ones hidden unless --all), the waiting, dead-letter and staged counts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sfsync.cli.common import common_options, idle_run, settings_for
from sfsync.errors import EXIT_OK
from sfsync.settings import bounds


def register(sub: Any) -> None:
    parser = sub.add_parser("status", parents=[common_options()], help="last runs, waiting and dead-letter counts")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=bounds.whole(1, 1000), default=5, help="how many recent runs to show")
    parser.add_argument("--all", action="store_true",
                        help="include idle runs (nothing to do: a loop's or a quiet timer's usual run)")
    parser.set_defaults(func=status_command)


def status_command(args: argparse.Namespace) -> int:
    from sfsync.store import open_store

    settings = settings_for(args, messagemedia=False, salesforce=False)
    store = open_store(settings.store_target)
    runs, hidden = _shown_runs(store, args.runs, args.all)
    staged, oldest = store.inbox_backlog()
    data: dict[str, Any] = {"store": store.name, "waiting": store.waiting_count(),
            "dead_letters": store.dead_letter_count(), "inbox_pending": staged,
            "staged_oldest_age_s": _age_seconds(oldest), "runs": runs, "idle_runs_hidden": hidden,
            "accounts": _accounts(store, settings)}
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return EXIT_OK
    print(f"store: {data['store']}")
    print(f"waiting for their Task: {data['waiting']}   dead letters: {data['dead_letters']}   "
          f"inbox pending: {data['inbox_pending']}")
    if staged:
        print(f"staged, not yet written to Salesforce: {staged} (oldest {_age_text(data['staged_oldest_age_s'])} "
              "old; the next run drains them)")
    if settings.mm_accounts or len(data["accounts"]) > 1:
        for name, figures in data["accounts"].items():
            last = f"   last poll: {figures['last_poll']}" if figures.get("last_poll") else ""
            oldest_text = (f" (oldest {_age_text(figures['staged_oldest_age_s'])})"
                           if figures["staged_oldest_age_s"] is not None else "")
            print(f"  account {name or '(not named in the report)'}: staged {figures['staged']}{oldest_text}, "
                  f"waiting {figures['waiting']}, dead letters {figures['dead_letters']}{last}")
    for run in runs:
        c = run["counts"]
        code = "" if run["exit_code"] is None else f"exit {run['exit_code']}"
        print(f"  #{run['id']} {run['kind']:7} {run['started_at'][:19]}  {code:7} "
              f"{run['exit_reason'] or 'running?':14} "
              f"fetched {c.get('fetched', 0)}, applied {c.get('applied', 0)}, waiting {c.get('waiting', 0)}, "
              f"dead {c.get('dead_lettered', 0)}, SF calls {c.get('salesforce_calls', 0)}")
    if hidden:
        print(f"  ({hidden} idle run(s) hidden among these: --all shows them)")
    return EXIT_OK


def _accounts(store: Any, settings: Any) -> dict[str, dict[str, Any]]:
    """Each MessageMedia account's backlog (the accounts of SFSYNC_MM_ACCOUNTS, and any other account
    reports in the store name), with how its last poll ended."""
    backlog = store.backlog_by_account()
    last: dict[str, Any] = {}
    for run in store.recent_runs(50):  # the latest run that polled several accounts
        if isinstance(run["counts"], dict) and isinstance(run["counts"].get("accounts"), dict):
            last = run["counts"]["accounts"]
            break
    names = [a.name for a in settings.mm_accounts] + [n for n in backlog if n not in
                                                     {a.name for a in settings.mm_accounts}]
    shown: dict[str, dict[str, Any]] = {}
    for name in names:
        figures = backlog.get(name, {})
        polled = last.get(name) if isinstance(last.get(name), dict) else None
        shown[name] = {"staged": figures.get("inbox_pending", 0),
                       "staged_oldest_age_s": _age_seconds(figures.get("oldest_inbox")),
                       "waiting": figures.get("waiting", 0), "dead_letters": figures.get("dead_letters", 0),
                       "last_poll": polled.get("end") if polled else None}
    return shown


def _shown_runs(store: Any, wanted: int, everything: bool) -> tuple[list[dict[str, Any]], int]:
    """The latest ``wanted`` runs, idle ones left out unless ``everything``; and how many were left out."""
    if everything:
        return store.recent_runs(wanted), 0
    shown: list[dict[str, Any]] = []
    hidden = 0
    for run in store.recent_runs(max(wanted * 50, 500)):
        if len(shown) == wanted:
            break
        if run["ended_at"] and idle_run({**run["counts"], "exit_reason": run["exit_reason"]}):
            hidden += 1
        else:
            shown.append(run)
    return shown, hidden


def _age_seconds(moment: Any) -> float | None:
    import datetime as dt

    return None if moment is None else round(max((dt.datetime.now(dt.UTC) - moment).total_seconds(), 0.0), 1)


def _age_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"
