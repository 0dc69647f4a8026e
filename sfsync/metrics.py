"""Prometheus text exposition of a run's figures, written atomically for node_exporter's
textfile collector (write to a temporary file beside the target, then rename)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

_COUNTS = {
    "fetched": "Delivery reports fetched (polled or from the inbox) in the last run.",
    "applied": "Task updates written in the last run.",
    "skipped_stale": "Reports skipped in the last run because a later or final status is already on the Task.",
    "skipped_unchanged": "Reports skipped in the last run because the Task already held their values.",
    "waiting": "Reports newly kept in the last run because their Task does not exist yet.",
    "dead_lettered": "Reports dead-lettered in the last run.",
    "confirmed": "Reports confirmed to MessageMedia in the last run.",
    "held": "Reports left unconfirmed in the last run after transient write failures.",
}


def render(summary: Any, now: float | None = None, last_success: float | None = None) -> str:
    data = summary.as_dict()
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value: float, labels: str = "") -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{labels} {value:g}"])

    for key, help_text in _COUNTS.items():
        metric(f"sfsync_last_run_{key}_reports", "gauge", help_text, float(data.get(key, 0)))
    metric("sfsync_last_run_salesforce_calls", "gauge", "Salesforce API calls made by the last run.",
           float(data["salesforce_calls"]))
    metric("sfsync_last_run_messagemedia_calls", "gauge", "MessageMedia API calls made by the last run.",
           float(data["messagemedia_calls"]))
    used, _, limit = str(data.get("api_usage", "")).partition("/")
    ratio = int(used) / int(limit) if used.isdigit() and limit.isdigit() and int(limit) else 0.0
    metric("sfsync_salesforce_api_usage_ratio", "gauge", "Salesforce daily API usage as a share of the allocation.",
           ratio)
    metric("sfsync_last_run_duration_seconds", "gauge", "Duration of the last run.", float(data["duration_s"]))
    metric("sfsync_last_run_exit_code", "gauge", "Exit status of the last run (0 success).", float(data["exit_code"]))
    metric("sfsync_last_run_timestamp_seconds", "gauge", "When the last run ended (Unix time).", now or time.time())
    if last_success is not None:
        metric("sfsync_last_success_timestamp_seconds", "gauge", "When a run last ended with exit status 0 or 6.",
               last_success)
    return "\n".join(lines) + "\n"


def write_textfile(path: str | Path, summary: Any) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    last_success = _previous_success(target)
    if summary.exit_code in (0, 6):
        last_success = now
    fd, tmp = tempfile.mkstemp(prefix=".sfsync-metrics-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(render(summary, now, last_success))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _previous_success(target: Path) -> float | None:
    """Carry the last success time across failed runs (the file is the only memory needed)."""
    try:
        for line in target.read_text().splitlines():
            if line.startswith("sfsync_last_success_timestamp_seconds "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class MetricsEndpoint:
    """``GET /metrics`` with the last run's figures, for long-running modes (``--loop``, ``serve``).
    The standard library is enough for one text page; no client library needed."""

    def __init__(self, host: str, port: int):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = endpoint.page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.page = "# no run finished yet\n"
        self.last_success: float | None = None
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsEndpoint:
        self._thread.start()
        return self

    def update(self, summary: Any) -> None:
        now = time.time()
        if summary.exit_code in (0, 6):
            self.last_success = now
        self.page = render(summary, now, self.last_success)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
