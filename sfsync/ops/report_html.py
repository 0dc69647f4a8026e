"""The ``sfsync report --html`` page: a self-contained page (inline CSS, no external assets, no
JavaScript), readable at 400 px, with text beside every bar, rendered from a ``StatusReport``."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from sfsync import __version__
from sfsync.ops.report_data import ACTION_GROUPS, COLOURS, NEW_CODE, Group, StatusReport, group_of

# -- the page ----------------------------------------------------------------------------------------------
LABEL_COLOURS = {"Rejected": "#e65100", "Sending": "#5e35b1", "Scheduled": "#00838f"}
CSS = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#f3f4f6}
main{max-width:62rem;margin:0 auto;padding:1rem}
h1{font-size:1.6rem;margin:.3rem 0}
h2{font-size:1.15rem;margin:0 0 .7rem}
p{margin:.3rem 0}
section{background:#fff;border:1px solid #d8dce1;border-radius:8px;padding:1rem 1.1rem;margin:1rem 0}
.meta,.note{color:#555d66;font-size:.9rem}
.cards{list-style:none;padding:0;margin:0;display:grid;grid-template-columns:repeat(auto-fit,minmax(10rem,1fr));
  gap:.6rem}
.card{border:1px solid #d8dce1;border-top:5px solid var(--c);border-radius:6px;padding:.5rem .8rem}
.card .fig{display:block;font-size:1.9rem;font-weight:700;line-height:1.2;font-variant-numeric:tabular-nums}
.card .pct{color:#555d66}
.stack{display:flex;height:1rem;border-radius:4px;overflow:hidden;background:#e8eaed;margin:.9rem 0 .3rem}
.stack span{display:block;height:100%;background:var(--c)}
.trend .stack{margin:.25rem 0}
.trend th[scope=row]{width:7.5rem;white-space:nowrap}
.trend td.n{width:4rem}
table{width:100%;border-collapse:collapse}
caption{text-align:left;color:#555d66;font-size:.9rem;padding-bottom:.4rem}
th,td{padding:.45rem .5rem;text-align:left;vertical-align:top;border-bottom:1px solid #eceef1;overflow-wrap:anywhere}
thead th{font-size:.85rem;color:#555d66;font-weight:600}
.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
tr.status th{background:#f6f7f9;border-left:5px solid var(--c);font-size:1rem}
tr.status .n{float:right;font-weight:400;color:#555d66}
td.code{font-weight:600;white-space:nowrap}
.hint{color:#3d444d;font-size:.9rem;margin-top:.25rem}
.new{color:#b3261e;font-weight:600}
a{color:#0b57d0}
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;background:var(--c);margin-right:.4em}
.legend{font-size:.85rem;color:#3d444d}
dl.health{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1.2rem;margin:0}
dl.health dt{font-weight:600}
dl.health dd{margin:0}
.warn{color:#b3261e;font-weight:600}
.ok{color:#2e7d32;font-weight:600}
code{font-size:.9em;background:#f3f4f6;padding:0 .2em;border-radius:3px}
@media (max-width:32rem){
  main{padding:.5rem}
  section{padding:.75rem}
  h1{font-size:1.35rem}
  .cards{grid-template-columns:1fr 1fr}
  .card .fig{font-size:1.5rem}
  dl.health{grid-template-columns:1fr}
  dl.health dd{margin-bottom:.4rem}
  .trend th[scope=row]{width:auto;white-space:normal}
}
"""


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%a %d %b %Y, %H:%M UTC")


def _plain_window(report: StatusReport) -> str:
    span = report.until - report.since
    days = span.total_seconds() / 86400
    recent = abs((report.generated - report.until).total_seconds()) < 300
    if recent and days == round(days):
        lead = "The last day" if days == 1 else f"The last {int(days)} days"
    else:
        lead = f"{days:g} days" if days >= 1 else f"{span.total_seconds() / 3600:g} hours"
    return f"{lead}: {_when(report.since)} to {_when(report.until)}"


def _colour(label: str) -> str:
    return LABEL_COLOURS.get(label, COLOURS[group_of(label)])


def _stack(parts: list[tuple[str, int, str]], total: int) -> str:
    """A bar of coloured parts with its figures as text for assistive technology (the text beside it too)."""
    text = ", ".join(f"{n} {name}" for name, n, _ in parts if n) or "none"
    spans = "".join(f'<span style="--c:{c};width:{100.0 * n / total:.2f}%"></span>' for _, n, c in parts
                    if n and total)
    return f'<div class="stack" role="img" aria-label="{html.escape(text)}">{spans}</div>'


def _headline_html(report: StatusReport) -> str:
    headline = report.headline()
    shown = [g for g in Group if g is not Group.OTHER or headline[g]]
    cards = "".join(
        f'<li class="card" id="fig-{g.name.lower().replace("_", "-")}" style="--c:{COLOURS[g]}">'
        f'<span class="swatch"></span>{html.escape(g.value.capitalize())}'
        f'<strong class="fig">{headline[g]:,}</strong><span class="pct">{report.share(headline[g]):.1f}%</span></li>'
        for g in shown)
    parts = [(g.value, headline[g], COLOURS[g]) for g in shown]
    return (f'<section aria-labelledby="h-figures"><h2 id="h-figures">{report.sms_tasks:,} SMS Tasks</h2>'
            f'<ul class="cards">{cards}</ul>{_stack(parts, report.sms_tasks)}'
            f'<p class="note">Percentages are of all SMS Tasks: {report.total:,} with an SMS Status changed in the '
            f"window, and {report.no_status:,} created in it (with a message id) that have no status yet.</p>"
            "</section>")


def _code_rows(report: StatusReport, rows: list[dict[str, Any]]) -> str:
    out = []
    for row in rows:
        code = row["code"] or "none"
        known = row["code"] is None or row["meaning"] != NEW_CODE
        meaning = html.escape(row["meaning"]) if known else f'<span class="new">{html.escape(row["meaning"])}</span>'
        extra = ""
        if row["group"] in (g.value for g in ACTION_GROUPS):
            if row["hint"]:
                extra += f'<div class="hint"><strong>What to do:</strong> {html.escape(row["hint"])}</div>'
            if row["link"]:
                what = "these Tasks" if report.report_id else "failed and rejected Tasks (list view)"
                extra += (f'<div class="hint"><a href="{html.escape(row["link"])}">Open {what} in '
                          "Salesforce</a></div>")
        out.append(f'<tr data-code="{html.escape(code)}"><td class="code">{html.escape(code)}</td>'
                   f'<td class="n">{row["count"]:,}</td><td>{meaning}{extra}</td></tr>')
    return "".join(out)


def _codes_html(report: StatusReport, data: dict[str, Any]) -> str:
    bodies = []
    order = list(Group)
    for label, count in sorted(report.by_status.items(),
                               key=lambda item: (order.index(group_of(item[0])), -item[1], item[0])):
        rows = [r for r in data["by_code"] if r["sms_status"] == label]
        bodies.append(
            f'<tbody data-status="{html.escape(label)}"><tr class="status" style="--c:{_colour(label)}">'
            f'<th scope="rowgroup" colspan="3"><span class="swatch"></span>{html.escape(label or "(empty)")}'
            f'<span class="n">{count:,} · {report.share(count):.1f}%</span></th></tr>'
            f"{_code_rows(report, rows)}</tbody>")
    if not bodies:
        return ('<section aria-labelledby="h-codes"><h2 id="h-codes">By status and code</h2>'
                "<p>No Task had its SMS Status changed in the window.</p></section>")
    return ('<section aria-labelledby="h-codes"><h2 id="h-codes">By status and code</h2><table class="codes">'
            "<caption>Each SMS Status with the codes MessageMedia reported; what to do where action is "
            'needed.</caption><thead><tr><th scope="col">Code</th><th scope="col" class="n">Tasks</th>'
            f'<th scope="col">Meaning</th></tr></thead>{"".join(bodies)}</table></section>')


def _trend_html(data: dict[str, Any]) -> str:
    if not data["trend"]:
        return ""
    groups = [g for g in Group if g is not Group.NO_STATUS]
    days = [(day, [(g.value, int(day[g.value]), COLOURS[g]) for g in groups]) for day in data["trend"]]
    busiest = max(sum(n for _, n, _ in parts) for _, parts in days) or 1
    rows = []
    for day, parts in days:
        total = sum(n for _, n, _ in parts)
        legend = " · ".join(f"{n:,} {name}" for name, n, _ in parts if n)
        label = dt.date.fromisoformat(day["day"]).strftime("%a %d %b")
        rows.append(f'<tr data-day="{html.escape(day["day"])}"><th scope="row">{html.escape(label)}</th>'
                    f'<td class="n">{total:,}</td><td><div style="width:{100.0 * total / busiest:.1f}%">'
                    f'{_stack(parts, total)}</div><div class="legend">{html.escape(legend)}</div></td></tr>')
    return ('<section aria-labelledby="h-trend"><h2 id="h-trend">Per day</h2><table class="trend">'
            "<caption>Tasks whose SMS Status changed that day (UTC), by outcome.</caption>"
            '<thead><tr><th scope="col">Day</th><th scope="col" class="n">Tasks</th><th scope="col">Outcome</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


def _age(then: dt.datetime, now: dt.datetime) -> str:
    minutes = max(0, int((now - then).total_seconds() // 60))
    if minutes < 120:
        return f"{minutes} minute{'s' if minutes != 1 else ''} before this page"
    hours = minutes // 60
    return f"{hours} hours before this page" if hours < 48 else f"{hours // 24} days before this page"


def _health_html(report: StatusReport) -> str:
    health = report.health
    if health is None:
        return ""
    head = '<section aria-labelledby="h-health"><h2 id="h-health">sfsync\'s health</h2>'
    if not health.found:
        return (f"{head}<p>No store at <code>{html.escape(health.store)}</code>: sfsync has not run with this "
                "state folder (set <code>SFSYNC_STATE_DIR</code> as the worker has it).</p></section>")
    if health.last_success:
        then = dt.datetime.fromisoformat(health.last_success)
        stale = report.generated - then > dt.timedelta(hours=1)
        success = (f'<span class="{"warn" if stale else "ok"}">{html.escape(_when(then))}</span> '
                   f"({_age(then, report.generated)})")
    else:
        success = '<span class="warn">none recorded</span>'
    last = ""
    if health.last_run and health.last_run_exit != 0:
        started = _when(dt.datetime.fromisoformat(health.last_run))
        outcome = f"{health.last_run_reason} (exit {health.last_run_exit})" if health.last_run_exit is not None \
            else "still running, or killed"
        last = f'<dt>Last run</dt><dd class="warn">{html.escape(started)}: {html.escape(outcome)}</dd>'
    dead = (f'<span class="warn">{health.dead_letters:,}</span>: see <code>sfsync dead-letters list</code>'
            if health.dead_letters else '<span class="ok">0</span>')
    return (f'{head}<dl class="health"><dt>Last successful run</dt><dd id="health-success">{success}</dd>{last}'
            f'<dt>Backlog</dt><dd id="health-backlog">{health.backlog:,} report(s): {health.waiting:,} waiting for '
            f"their Task, {health.inbox_pending:,} pushed and not yet applied</dd>"
            f'<dt>Dead letters</dt><dd id="health-dead">{dead}</dd></dl></section>')


def render_html(report: StatusReport) -> str:
    data = report.as_dict()
    org = html.escape(data["org"] or "unknown org")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SMS delivery status, {html.escape(data['org'] or 'Salesforce')}</title>
<style>{CSS}</style></head>
<body><main>
<header><h1>SMS delivery status</h1>
<p id="window">{html.escape(_plain_window(report))}</p>
<p class="meta">Org <strong id="org">{org}</strong> · generated {html.escape(_when(report.generated))} ·
sfsync {html.escape(__version__)}</p></header>
{_headline_html(report)}
{_codes_html(report, data)}
{_trend_html(data)}
{_health_html(report)}
<p class="note">Made by <code>sfsync report --html</code>. The window applies to when each Task's SMS Status last
changed. Days are in UTC.</p>
</main></body></html>
"""


