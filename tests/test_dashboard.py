"""`sfsync report --html`: the dashboard's figures from the simulators, its links into the org, its API
cost, and the page itself in headless Chromium (rendered DOM, width at 400 px, screenshots)."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import itertools
import json
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from sfsync.clients.salesforce import SalesforceClient
from sfsync.ops.report import DRILL_DOWN_REPORT, StatusReport, build, read_health, render_html
from sfsync.settings.config import Settings
from sfsync.sim.harness import Simulators
from sfsync.sim.soql import format_datetime
from tests.conftest import new_message_id, on_postgresql, store_of

# (SMS Status, code, Tasks per day from 6 days ago to today): a plausible week of one org.
WEEK: list[tuple[str, str | None, list[int]]] = [
    ("Delivered", "221", [22, 25, 19, 27, 24, 21, 9]),
    ("Delivered", None, [6, 4, 5, 7, 3, 5, 2]),  # polled reports: no code
    ("Failed", "414", [2, 1, 3, 0, 2, 1, 1]),
    ("Failed", "401", [0, 1, 0, 1, 0, 0, 1]),
    ("Rejected", "411", [1, 0, 2, 1, 0, 1, 0]),
    ("Rejected", "999", [0, 0, 0, 0, 1, 0, 1]),  # a code MessageMedia added: not in the code map
    ("Submitted", "210", [0, 0, 0, 0, 0, 1, 4]),
    ("Sending", None, [0, 0, 0, 0, 0, 0, 2]),
]
NO_STATUS_TODAY = 3


def stamp(value: dt.datetime) -> str:
    return format_datetime(value)


def seed_week(sims: Simulators, now: dt.datetime) -> dict[str, int]:
    """The week above, plus Tasks the window or the SMS filter must leave out; returns the day totals."""
    tasks: list[dict[str, Any]] = []
    per_day: dict[str, int] = {}
    for status, code, counts in WEEK:
        for days_ago, count in zip(range(6, -1, -1), counts, strict=True):
            when = now - dt.timedelta(days=days_ago, minutes=5)
            per_day[when.date().isoformat()] = per_day.get(when.date().isoformat(), 0) + count
            tasks += [{"Subject": "SMS", "SMS_Message_Id__c": new_message_id(), "SMS_Status__c": status,
                       "SMS_Status_Code__c": code, "CreatedDate": stamp(when - dt.timedelta(minutes=1)),
                       "LastModifiedDate": stamp(when)} for _ in range(count)]
    recent, old = stamp(now - dt.timedelta(hours=1)), stamp(now - dt.timedelta(days=10))
    tasks += [{"Subject": "SMS", "SMS_Message_Id__c": new_message_id(), "CreatedDate": recent,
               "LastModifiedDate": recent} for _ in range(NO_STATUS_TODAY)]
    tasks += [
        {"Subject": "Call", "CreatedDate": recent, "LastModifiedDate": recent},  # not an SMS Task
        {"Subject": "SMS", "SMS_Message_Id__c": new_message_id(), "CreatedDate": old, "LastModifiedDate": old},
        {"Subject": "SMS", "SMS_Message_Id__c": new_message_id(), "SMS_Status__c": "Failed",
         "SMS_Status_Code__c": "414", "CreatedDate": old, "LastModifiedDate": old},  # before the window
    ]
    sims.sf.add_tasks(tasks)
    return per_day


def seed_store(settings: Settings, now: dt.datetime) -> None:
    store = store_of(settings)
    ok = store.start_run("run")
    store.finish_run(ok, {"applied": 10}, "queue_empty", 0)
    failed = store.start_run("run")
    store.finish_run(failed, {}, "unavailable", 8)
    store.add_dead_letter("r-1", "m-1", {"x": 1}, "poll", "ENTITY_IS_DELETED")
    store.add_dead_letter("r-2", "m-2", {"x": 2}, "poll", "STRING_TOO_LONG")
    store.add_waiting("r-3", "m-3", {"x": 3}, "poll", "no Task yet", now + dt.timedelta(minutes=1))
    store.stage("push", [("r-4", {"x": 4})])
    store.close()


def make_report(sims: Simulators, settings: Settings, now: dt.datetime) -> tuple[StatusReport, SalesforceClient]:
    client = SalesforceClient(settings)
    report = build(client, settings, now - dt.timedelta(days=7), now)
    report.generated = now
    report.health = read_health(settings.store_target)
    return report, client


@pytest.fixture
def week(sims: Simulators, settings_for: Callable[..., Settings]) -> tuple[StatusReport, dict[str, int], str]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    per_day = seed_week(sims, now)
    report_id = sims.sf.add_report(DRILL_DOWN_REPORT, "SMS Tasks by Status and Code (detail)")
    settings = settings_for()
    seed_store(settings, now)
    before = sims.sf.stats()["api_calls"].get("query", 0)
    report, client = make_report(sims, settings, now)
    assert sims.sf.stats()["api_calls"]["query"] - before == 4  # group by code, by day, no status, report Id
    assert client.calls_total == 4 + client.calls["token"]
    return report, per_day, report_id


def test_headline_figures_count_tasks_with_no_status(week: tuple[StatusReport, dict[str, int], str]) -> None:
    report, _, _ = week
    data = report.as_dict()
    headline = {h["group"]: (h["count"], h["percent"]) for h in data["headline"]}
    delivered = sum(sum(c) for s, _, c in WEEK if s == "Delivered")
    failed = sum(sum(c) for s, _, c in WEEK if s in ("Failed", "Rejected"))
    in_flight = sum(sum(c) for s, _, c in WEEK if s in ("Submitted", "Sending"))
    total = delivered + failed + in_flight + NO_STATUS_TODAY
    assert data["sms_tasks"] == total and data["no_status"] == NO_STATUS_TODAY
    assert headline["delivered"] == (delivered, round(100 * delivered / total, 1))
    assert headline["failed or rejected"] == (failed, round(100 * failed / total, 1))
    assert headline["still in flight"] == (in_flight, round(100 * in_flight / total, 1))
    assert headline["no status yet"] == (NO_STATUS_TODAY, round(100 * NO_STATUS_TODAY / total, 1))
    assert data["org"].startswith("127.0.0.1:") and data["version"]


def test_codes_grouped_with_meanings_hints_and_links(week: tuple[StatusReport, dict[str, int], str]) -> None:
    report, _, report_id = week
    rows = {(r["sms_status"], r["code"]): r for r in report.as_dict()["by_code"]}
    assert rows[("Rejected", "999")]["meaning"] == "new code: add it to the code map"
    assert "polled reports usually carry none" in rows[("Delivered", None)]["meaning"]
    assert rows[("Failed", "414")]["meaning"] == "Destination unreachable." and rows[("Failed", "414")]["hint"]
    assert rows[("Delivered", "221")]["link"] is None  # nothing to do there
    link = urlsplit(rows[("Failed", "414")]["link"])
    assert link.path == f"/lightning/r/Report/{report_id}/view"
    assert parse_qs(link.query) == {"fv0": ["Failed"], "fv1": ["414"]}
    page = render_html(report)
    failed = re.search(r'<tbody data-status="Failed">(.*?)</tbody>', page, re.S)
    assert failed and 'data-code="414"' in failed.group(1) and 'data-code="221"' not in failed.group(1)
    assert "What to do:" in failed.group(1)
    delivered = re.search(r'<tbody data-status="Delivered">(.*?)</tbody>', page, re.S)
    assert delivered and "What to do:" not in delivered.group(1) and "<a " not in delivered.group(1)
    assert not re.search(r"""\ssrc=|<link\b|url\(|@import""", page)  # no external assets
    assert "<script" not in page


def test_trend_per_day_and_health_from_the_store(week: tuple[StatusReport, dict[str, int], str]) -> None:
    report, per_day, _ = week
    data = report.as_dict()
    assert {d["day"]: sum(v for k, v in d.items() if k != "day") for d in data["trend"]} == per_day
    health = data["health"]
    assert health["last_success"] and health["last_run_exit"] == 8 and health["last_run_reason"] == "unavailable"
    assert (health["dead_letters"], health["waiting"], health["inbox_pending"], health["backlog"]) == (2, 1, 1, 2)
    page = render_html(report)
    assert "unavailable (exit 8)" in page and "sfsync dead-letters list" in page


def test_values_are_escaped_in_the_page_and_in_links(sims: Simulators, settings_for: Callable[..., Settings],
                                                     tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    odd = '<b>"Failed" & co</b>'
    sims.sf.add_tasks([{"Subject": "SMS", "SMS_Message_Id__c": "m", "SMS_Status__c": odd, "SMS_Status_Code__c": "4&1",
                        "LastModifiedDate": stamp(now - dt.timedelta(hours=1))}])
    sims.sf.add_report(DRILL_DOWN_REPORT, "detail")
    report, _ = make_report(sims, settings_for(SFSYNC_STATE_DIR=str(tmp_path / "none")), now)
    page = render_html(report)
    assert odd not in page and html.escape(odd) in page
    [row] = report.as_dict()["by_code"]
    assert parse_qs(urlsplit(row["link"]).query) == {"fv0": [odd], "fv1": ["4&1"]}
    assert html.escape(row["link"]) in page
    if on_postgresql():  # the store is the database, not a file in the state folder
        assert "No store at" not in page and not (tmp_path / "none").exists()
    else:
        assert "No store at" in page and not (tmp_path / "none").exists()  # read-only: no store created


def test_links_fall_back_to_the_list_view_without_the_report(sims: Simulators,
                                                             settings_for: Callable[..., Settings]) -> None:
    now = dt.datetime.now(dt.UTC)
    sims.sf.add_tasks([{"Subject": "SMS", "SMS_Message_Id__c": "m", "SMS_Status__c": "Failed",
                        "SMS_Status_Code__c": "414", "LastModifiedDate": stamp(now - dt.timedelta(hours=1))}])
    report, _ = make_report(sims, settings_for(), now)
    [row] = report.as_dict()["by_code"]
    link = urlsplit(row["link"])
    assert report.report_id is None
    assert link.path == "/lightning/o/Task/list" and parse_qs(link.query) == {
        "filterName": ["SMS_Failed_Rejected_Last_7_Days"]}


# -- in a real browser --------------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGE_STATE = ("JSON.stringify({dom: document.documentElement.outerHTML, viewport: window.innerWidth, "
              "scrollWidth: document.documentElement.scrollWidth})")


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4: no port is opened),
    so the viewport can be any width: a headless window is never narrower than 500 px."""

    def __init__(self, profile: Path):
        to_browser, self._writer = os.pipe()
        self._reader, from_browser = os.pipe()

        def wire() -> None:  # in the child: the pipe ends where Chromium expects them, inheritable
            read_end, write_end = os.dup(to_browser), os.dup(from_browser)  # above 4: dup2 never a no-op
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", "about:blank"]
        self.process = subprocess.Popen([CHROMIUM, *flags], preexec_fn=wire, close_fds=False,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._ids = itertools.count(1)
        self.session = ""
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page, flatten=True)["sessionId"]

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._reader], [], [], 1.0)
            if ready:
                chunk = os.read(self._reader, 1 << 20)
                if not chunk:
                    raise EOFError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, wait_event: str | None = None, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        command: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            command["sessionId"] = self.session
        os.write(self._writer, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + 60
        result: dict[str, Any] | None = None
        seen_event = wait_event is None
        while result is None or not seen_event:
            message = self._message(deadline)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result = message.get("result", {})
            elif message.get("method") == wait_event:
                seen_event = True
        return result

    def open(self, url: str, width: int, height: int = 900) -> dict[str, Any]:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=width < 600)
        self.call("Page.enable")
        self.call("Page.navigate", "Page.loadEventFired", url=url)
        value = self.call("Runtime.evaluate", expression=PAGE_STATE, returnByValue=True)["result"]["value"]
        state: dict[str, Any] = json.loads(value)
        return state

    def screenshot(self, path: Path, height: float | None = None) -> None:
        """The whole page (or its top ``height`` pixels), not only the viewport."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": height or size["height"], "scale": 1}
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, TimeoutError, RuntimeError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._writer)
        os.close(self._reader)


class DomFigures(HTMLParser):
    """The text of the elements that have an id, from the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("br", "meta", "link", "img", "input", "wbr", "hr"):
            self._open.append((tag, dict(attrs).get("id")))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text[ident] = self.text.get(ident, "") + data


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (scripts/test installs it as "
                    "root: apt-get install chromium)")
def test_dashboard_in_headless_chromium(week: tuple[StatusReport, dict[str, int], str], tmp_path: Path) -> None:
    report, _, _ = week
    page = tmp_path / "dashboard.html"
    page.write_text(render_html(report), encoding="utf-8")
    shots = Path(os.environ.get("SFSYNC_DASHBOARD_SHOTS") or tmp_path)  # set it to keep the screenshots
    shots.mkdir(parents=True, exist_ok=True)
    data = report.as_dict()
    headline = {h["group"]: h for h in data["headline"]}
    browser = Chromium(tmp_path / "profile")
    try:
        for width in (1280, 400):
            state = browser.open(page.as_uri(), width)
            assert state["viewport"] == width
            assert state["scrollWidth"] <= width, f"the page scrolls sideways at {width} px"
            dom = DomFigures()
            dom.feed(state["dom"])
            for ident, group in (("fig-delivered", "delivered"), ("fig-failed", "failed or rejected"),
                                 ("fig-in-flight", "still in flight"), ("fig-no-status", "no status yet")):
                figure = dom.text[ident]
                assert f"{headline[group]['count']:,}" in figure and f"{headline[group]['percent']:.1f}%" in figure
            assert dom.text["window"].startswith("The last 7 days") and dom.text["org"] == data["org"]
            assert "2" in dom.text["health-dead"] and "1 waiting" in dom.text["health-backlog"]
            shot = shots / f"dashboard-{width}.png"
            browser.screenshot(shot)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
            if width == 1280:  # the top of the page, small enough for docs/dashboard.png
                browser.screenshot(shots / "dashboard-1280-top.png", height=1000)
    finally:
        browser.close()
