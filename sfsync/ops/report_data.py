"""What ``sfsync report`` says: the figures read from Salesforce (SMS Tasks by SMS Status and code
over a window, the per-day trend, Tasks with no status yet, the drill-down report's Id for links) and
sfsync's own health read from the local store, as one ``StatusReport``."""

from __future__ import annotations

import datetime as dt
import enum
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from sfsync import __version__
from sfsync.domain.codes import default_map
from sfsync.domain.reports import format_time
from sfsync.errors import ConfigError, RemoteError
from sfsync.settings.config import Settings
from sfsync.store import StoreTarget, open_store, sqlite_target

if TYPE_CHECKING:
    from sfsync.clients.salesforce import SalesforceClient

# In config/salesforce: the drill-down report whose first two filters (SMS Status, SMS Status Code)
# the links set with fv0 and fv1, and the list view used when that report is not deployed.
DRILL_DOWN_REPORT = "SMS_Tasks_by_Status_and_Code_Detail"
FALLBACK_LIST_VIEW = "SMS_Failed_Rejected_Last_7_Days"


class Group(enum.Enum):
    """What a Task's SMS Status means for the headline figures."""

    DELIVERED = "delivered"
    FAILED = "failed or rejected"
    IN_FLIGHT = "still in flight"
    NO_STATUS = "no status yet"
    OTHER = "stopped or unknown"


GROUP_OF_LABEL = {"Delivered": Group.DELIVERED, "Failed": Group.FAILED, "Rejected": Group.FAILED,
                  "Sending": Group.IN_FLIGHT, "Submitted": Group.IN_FLIGHT, "Scheduled": Group.IN_FLIGHT}
COLOURS = {Group.DELIVERED: "#2e7d32", Group.FAILED: "#c62828", Group.IN_FLIGHT: "#1565c0",
           Group.NO_STATUS: "#8a8a8a", Group.OTHER: "#6d4c41"}
NEW_CODE = "new code: add it to the code map"
ACTION_GROUPS = (Group.FAILED, Group.OTHER)  # rows whose hint is shown: someone has something to do


def group_of(label: str) -> Group:
    return GROUP_OF_LABEL.get(label, Group.OTHER)


@dataclass(frozen=True)
class Health:
    """sfsync's own state, from the store (absent: no run has used this state folder yet)."""

    store: str
    found: bool
    last_success: str | None = None  # started_at of the newest run that exited 0
    last_run: str | None = None
    last_run_reason: str | None = None
    last_run_exit: int | None = None
    waiting: int = 0
    inbox_pending: int = 0
    dead_letters: int = 0

    @property
    def backlog(self) -> int:
        return self.waiting + self.inbox_pending


def read_health(where: StoreTarget | Path) -> Health:
    """Read-only: a missing SQLite store is reported as such, not created."""
    target = where if isinstance(where, StoreTarget) else sqlite_target(where)
    store_path = target.path or target.label
    if target.path is not None and not target.path.exists():
        return Health(str(store_path), found=False)
    store = open_store(target)
    try:
        runs = store.recent_runs(50)
        success = next((r for r in runs if r.get("exit_code") == 0), None)
        last = runs[0] if runs else None
        return Health(str(store_path), True,
                      last_success=success["started_at"] if success else None,
                      last_run=last["started_at"] if last else None,
                      last_run_reason=last.get("exit_reason") if last else None,
                      last_run_exit=last.get("exit_code") if last else None,
                      waiting=store.waiting_count(), inbox_pending=store.inbox_count(),
                      dead_letters=store.dead_letter_count())
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read the store {store_path} ({exc}); check SFSYNC_STATE_DIR") from exc
    finally:
        store.dispose()


@dataclass
class StatusReport:
    since: dt.datetime
    until: dt.datetime
    by_status: Counter[str] = field(default_factory=Counter)
    by_code: Counter[tuple[str, str]] = field(default_factory=Counter)  # (status, code) -> count
    by_day: Counter[tuple[str, str]] = field(default_factory=Counter)  # (YYYY-MM-DD, status) -> count
    no_status: int = 0  # SMS Tasks created in the window that have no SMS Status yet
    generated: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    instance_url: str = ""  # https://<the org's host>
    report_id: str | None = None  # the drill-down report, when deployed
    health: Health | None = None

    @property
    def total(self) -> int:
        """Tasks with an SMS Status."""
        return sum(self.by_status.values())

    @property
    def sms_tasks(self) -> int:
        return self.total + self.no_status

    def headline(self) -> dict[Group, int]:
        counts = dict.fromkeys(Group, 0)
        for label, n in self.by_status.items():
            counts[group_of(label)] += n
        counts[Group.NO_STATUS] = self.no_status
        return counts

    def share(self, count: int) -> float:
        return 100.0 * count / self.sms_tasks if self.sms_tasks else 0.0

    def link(self, status: str, code: str) -> str | None:
        """A URL into the org listing the Tasks with this status and code (None without an org)."""
        if not self.instance_url:
            return None
        if self.report_id:
            query = urlencode({"fv0": status, "fv1": code}, quote_via=quote)
            return f"{self.instance_url}/lightning/r/Report/{quote(self.report_id, safe='')}/view?{query}"
        return f"{self.instance_url}/lightning/o/Task/list?{urlencode({'filterName': FALLBACK_LIST_VIEW})}"

    def as_dict(self) -> dict[str, Any]:
        cmap = default_map()
        codes = []
        for (status, code), count in sorted(self.by_code.items(), key=lambda item: (-item[1], item[0])):
            entry = cmap.codes.get(code)
            group = group_of(status)
            if entry:
                meaning = entry.meaning
            elif code:
                meaning = NEW_CODE
            else:
                meaning = "no code (polled reports usually carry none; the status string decided)"
            codes.append({"sms_status": status, "code": code or None, "count": count, "group": group.value,
                          "meaning": meaning, "hint": entry.hint if entry else "",
                          "link": self.link(status, code) if group in ACTION_GROUPS else None})
        days = sorted({day for day, _ in self.by_day})
        trend = []
        for day in days:
            counts = dict.fromkeys((g.value for g in Group if g is not Group.NO_STATUS), 0)
            for (d, label), n in self.by_day.items():
                if d == day:
                    counts[group_of(label).value] += n
            trend.append({"day": day, **counts})
        headline = self.headline()
        health = self.health
        return {"since": format_time(self.since), "until": format_time(self.until),
                "generated": format_time(self.generated), "org": self.instance_url.removeprefix("https://"),
                "version": __version__, "total": self.total, "no_status": self.no_status,
                "sms_tasks": self.sms_tasks,
                "headline": [{"group": g.value, "count": n, "percent": round(self.share(n), 1)}
                             for g, n in headline.items()],
                "by_status": [{"sms_status": s, "count": n} for s, n in self.by_status.most_common()],
                "by_code": codes, "trend": trend,
                "health": None if health is None else {**vars(health), "backlog": health.backlog}}


def build(sf: SalesforceClient, settings: Settings, since: dt.datetime, until: dt.datetime) -> StatusReport:
    status, code = settings.field_status, settings.field_code
    time_field = settings.field_updated or "LastModifiedDate"
    window = f"{time_field} >= {format_time(since)} AND {time_field} < {format_time(until)}"
    report = StatusReport(since, until)
    for row in sf.query_all(f"SELECT {status}, {code}, COUNT(Id) total FROM Task WHERE {status} != null "
                            f"AND {window} GROUP BY {status}, {code}", name="report"):
        label, code_text, count = str(row.get(status) or ""), str(row.get(code) or ""), _count(row)
        report.by_status[label] += count
        report.by_code[(label, code_text)] += count
    for row in sf.query_all(f"SELECT DAY_ONLY({time_field}) sms_day, {status}, COUNT(Id) total FROM Task "
                            f"WHERE {status} != null AND {window} GROUP BY DAY_ONLY({time_field}), {status}",
                            name="report_trend"):
        report.by_day[(str(row.get("sms_day") or ""), str(row.get(status) or ""))] += _count(row)
    created = f"CreatedDate >= {format_time(since)} AND CreatedDate < {format_time(until)}"
    for row in sf.query_all(f"SELECT COUNT(Id) total FROM Task WHERE {status} = null AND "
                            f"{settings.field_message_id} != null AND {created}", name="report_no_status"):
        report.no_status += _count(row)
    report.instance_url = f"https://{sf.sf.sf_instance}"
    if any(group_of(label) in ACTION_GROUPS for label in report.by_status):
        report.report_id = _drill_down_report_id(sf)
    return report


def _count(row: dict[str, Any]) -> int:
    return int(row.get("total", row.get("expr0", 0)) or 0)


def _drill_down_report_id(sf: SalesforceClient) -> str | None:
    """The deployed drill-down report's Id, or None (not deployed, or reports not visible to the user)."""
    try:
        for row in sf.query_all(f"SELECT Id FROM Report WHERE DeveloperName = '{DRILL_DOWN_REPORT}' LIMIT 1",
                                name="report_link"):
            return str(row["Id"])
    except (ConfigError, RemoteError):
        return None
    return None

