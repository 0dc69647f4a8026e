"""`sfsync report`: counts of Tasks by SMS Status and by SMS Status Code over a window, with each
code's meaning and hint: the delivery status dashboard admins expect.

One SOQL aggregate (GROUP BY status, code) gives both tables: one API call, plus the token.
Output: a table on a terminal, ``--json``, or ``--html FILE`` (a self-contained page: inline CSS
bars, no external assets).
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfsync import timeargs
from sfsync.codes import default_map
from sfsync.config import Settings
from sfsync.errors import EXIT_OK, UsageError
from sfsync.reports import format_time

if TYPE_CHECKING:
    from sfsync.salesforce import SalesforceClient


@dataclass
class StatusReport:
    since: dt.datetime
    until: dt.datetime
    by_status: Counter[str] = field(default_factory=Counter)
    by_code: Counter[tuple[str, str]] = field(default_factory=Counter)  # (status, code) -> count

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    def as_dict(self) -> dict[str, Any]:
        cmap = default_map()
        codes = []
        for (status, code), count in self.by_code.most_common():
            entry = cmap.codes.get(code)
            codes.append({"sms_status": status, "code": code or None, "count": count,
                          "meaning": entry.meaning if entry else ("no code" if not code else "not in the code map"),
                          "hint": entry.hint if entry else ""})
        return {"since": format_time(self.since), "until": format_time(self.until), "total": self.total,
                "by_status": [{"sms_status": s, "count": n} for s, n in self.by_status.most_common()],
                "by_code": codes}


def build(sf: SalesforceClient, settings: Settings, since: dt.datetime, until: dt.datetime) -> StatusReport:
    time_field = settings.field_updated or "LastModifiedDate"
    soql = (f"SELECT {settings.field_status}, {settings.field_code}, COUNT(Id) total FROM Task "
            f"WHERE {settings.field_status} != null AND {time_field} >= {format_time(since)} "
            f"AND {time_field} < {format_time(until)} GROUP BY {settings.field_status}, {settings.field_code}")
    report = StatusReport(since, until)
    for row in sf.query_all(soql, name="report"):
        status = str(row.get(settings.field_status) or "")
        code = str(row.get(settings.field_code) or "")
        count = int(row.get("total", row.get("expr0", 0)) or 0)
        report.by_status[status] += count
        report.by_code[(status, code)] += count
    return report


def render_text(report: StatusReport) -> str:
    data = report.as_dict()
    lines = [f"SMS delivery status, {data['since']} to {data['until']}: {data['total']} Tasks", ""]
    width = max([len(r["sms_status"]) for r in data["by_status"]] + [10])
    for row in data["by_status"]:
        share = 100.0 * row["count"] / report.total if report.total else 0
        lines.append(f"  {row['sms_status']:{width}}  {row['count']:>7}  {share:5.1f}%  {'#' * round(share / 2.5)}")
    lines += ["", "  by code:"]
    for row in data["by_code"]:
        lines.append(f"  {row['sms_status']:{width}}  {row['code'] or '-':>5}  {row['count']:>7}  {row['meaning']}")
        if row["hint"] and row["sms_status"] not in ("Delivered",):
            lines.append(f"  {'':{width}}  {'':>5}  {'':>7}  -> {row['hint']}")
    return "\n".join(lines)


def render_html(report: StatusReport) -> str:
    data = report.as_dict()
    colours = {"Delivered": "#2e7d32", "Failed": "#c62828", "Rejected": "#ef6c00", "Submitted": "#1565c0",
               "Sending": "#5e35b1", "Scheduled": "#00838f", "Stopped": "#6d4c41"}
    top = max([r["count"] for r in data["by_status"]] + [1])
    bars = "".join(
        f'<tr><th>{html.escape(r["sms_status"])}</th><td class="n">{r["count"]}</td><td class="bar">'
        f'<div style="width:{100.0 * r["count"] / top:.1f}%;background:{colours.get(r["sms_status"], "#757575")}">'
        f"</div></td></tr>"
        for r in data["by_status"]
    )
    codes = "".join(
        f"<tr><td>{html.escape(r['sms_status'])}</td><td>{html.escape(r['code'] or '-')}</td>"
        f'<td class="n">{r["count"]}</td><td>{html.escape(r["meaning"])}</td><td>{html.escape(r["hint"])}</td></tr>'
        for r in data["by_code"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SMS delivery status</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}} table{{border-collapse:collapse;margin:1rem 0}}
th,td{{padding:.3rem .6rem;text-align:left;border-bottom:1px solid #eee}} td.n{{text-align:right}}
td.bar{{width:28rem}} td.bar div{{height:1rem;border-radius:2px}} caption{{text-align:left;font-weight:600}}
</style></head><body>
<h1>SMS delivery status</h1>
<p>{html.escape(data['since'])} to {html.escape(data['until'])}: <strong>{data['total']}</strong> Tasks
with an SMS Status.</p>
<table><caption>By SMS Status</caption>{bars}</table>
<table><caption>By SMS Status Code</caption><tr><th>SMS Status</th><th>Code</th><th>Tasks</th><th>Meaning</th>
<th>What to do</th></tr>{codes}</table>
<p>Made by sfsync report.</p></body></html>
"""


def parse_window(since: str | None, until: str | None, days: float | str) -> tuple[dt.datetime, dt.datetime]:
    end = timeargs.instant(until, "--until") if until else dt.datetime.now(dt.UTC)
    start = timeargs.instant(since, "--since") if since else timeargs.days_before(end, timeargs.REPORT_DAYS.read(days))
    if start >= end:
        raise UsageError(f"the window is empty or the wrong way round: --since {since} is not before --until {until}")
    return start, end


# -- command -----------------------------------------------------------------------------------------------
def register(sub: Any) -> None:
    from sfsync.commands import common_options

    parser = sub.add_parser("report", parents=[common_options()],
                            help="counts of Tasks by SMS Status and Code over a window (table, JSON or HTML)")
    parser.add_argument("--since", help="start of the window (ISO date or date-time, UTC unless zoned)")
    parser.add_argument("--until", help="end of the window (default: now)")
    parser.add_argument("--days", type=timeargs.REPORT_DAYS.argument(), default=7,
                        help="window length in days when --since is not given (default 7, at most 36500)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--html", metavar="FILE", help="write a self-contained HTML page with a bar chart")
    parser.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from sfsync.commands import settings_for
    from sfsync.salesforce import SalesforceClient

    since, until = parse_window(args.since, args.until, args.days)  # usage errors before the settings
    settings = settings_for(args, messagemedia=False)
    report = build(SalesforceClient(settings), settings, since, until)
    if args.html:
        Path(args.html).write_text(render_html(report), encoding="utf-8")
        print(f"wrote {args.html}")
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif not args.html:
        print(render_text(report))
    return EXIT_OK
