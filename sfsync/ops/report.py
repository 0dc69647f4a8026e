"""`sfsync report`: the page an admin opens each morning. Counts of SMS Tasks by SMS Status and by
SMS Status Code over a window, with each code's meaning and, where action is needed, what to do; the SMS
Tasks with no status yet; a per-day trend; and sfsync's own health from the local store.

Salesforce API cost, whatever the number of Tasks (plus the token):

- one SOQL aggregate ``GROUP BY`` status, code (the headline figures and the by-code table);
- one SOQL aggregate ``GROUP BY DAY_ONLY(<time field>)``, status (the trend; days in UTC);
- one ``COUNT(Id)`` of SMS Tasks (with a message id) created in the window without a status;
- only when some Tasks failed or were rejected: one look-up of the drill-down report's Id
  (``SELECT Id FROM Report WHERE DeveloperName = ...``) for the links into the org.

sfsync's health (last successful run, backlog, dead letters) is read from the store, never written.
Output: a table on a terminal, ``--json``, or ``--html FILE``: a self-contained page (inline CSS, no
external assets, no JavaScript), readable at 400 px, with text beside every bar.

The figures live in ``ops.report_data``, the HTML page in ``ops.report_html``; this module is the
command's entry point (the terminal table, the window) and re-exports both.
"""

from __future__ import annotations

import datetime as dt

from sfsync.domain.reports import format_time
from sfsync.errors import UsageError
from sfsync.ops.report_data import (
    ACTION_GROUPS,
    COLOURS,
    DRILL_DOWN_REPORT,
    FALLBACK_LIST_VIEW,
    GROUP_OF_LABEL,
    NEW_CODE,
    Group,
    Health,
    StatusReport,
    build,
    group_of,
    read_health,
)
from sfsync.ops.report_html import render_html
from sfsync.settings import timeargs

__all__ = [
    "ACTION_GROUPS", "COLOURS", "DRILL_DOWN_REPORT", "FALLBACK_LIST_VIEW", "GROUP_OF_LABEL", "NEW_CODE", "Group",
    "Health", "StatusReport", "build", "format_time", "group_of", "parse_window", "read_health", "render_html",
    "render_text",
]


def render_text(report: StatusReport) -> str:
    data = report.as_dict()
    lines = [f"SMS delivery status, {data['since']} to {data['until']}: {data['sms_tasks']} SMS Tasks, "
             f"{data['total']} with an SMS Status", ""]
    lines += [f"  {h['group']:20} {h['count']:>7}  {h['percent']:5.1f}%" for h in data["headline"] if h["count"]]
    width = max([len(r["sms_status"]) for r in data["by_status"]] + [10])
    lines += ["", "  by code:"]
    for row in data["by_code"]:
        lines.append(f"  {row['sms_status']:{width}}  {row['code'] or '-':>5}  {row['count']:>7}  {row['meaning']}")
        if row["hint"] and row["group"] in (g.value for g in ACTION_GROUPS):
            lines.append(f"  {'':{width}}  {'':>5}  {'':>7}  -> {row['hint']}")
    return "\n".join(lines)


def parse_window(since: str | None, until: str | None, days: float | str) -> tuple[dt.datetime, dt.datetime]:
    end = timeargs.instant(until, "--until") if until else dt.datetime.now(dt.UTC)
    start = timeargs.instant(since, "--since") if since else timeargs.days_before(end, timeargs.REPORT_DAYS.read(days))
    if start >= end:
        raise UsageError(f"the window is empty or the wrong way round: --since {since} is not before --until {until}")
    return start, end
