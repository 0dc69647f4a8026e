"""The one HTTP server base of sfsync's long-running modes: a ``ThreadingHTTPServer`` run in a
background thread, with its port, start and stop. ``sfsync serve`` (the push receiver) builds its
hardened server on it; ``run --loop`` serves ``/metrics`` and ``/healthz`` with :class:`StatusServer`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("sfsync.httpd")


class BackgroundServer(ThreadingHTTPServer):
    """A threading HTTP server whose ``serve_forever`` runs in a daemon thread."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    thread: threading.Thread | None = None  # serving, between start_thread and stop_thread

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start_thread(self, name: str, poll_interval: float = 0.1) -> None:
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": poll_interval},
                                        name=name, daemon=True)
        self.thread.start()

    def stop_thread(self, timeout: float = 5.0) -> None:
        """Stop accepting and close the listening socket (idempotent)."""
        if self.thread is not None:
            self.shutdown()
            self.thread.join(timeout=timeout)
            self.thread = None
        self.server_close()


@dataclass(frozen=True)
class Page:
    status: int
    content_type: str
    body: bytes

    @classmethod
    def json(cls, status: int, payload: Any) -> Page:
        return cls(status, "application/json", json.dumps(payload, default=str).encode())


Route = Callable[[], Page]


class Handler(BaseHTTPRequestHandler):
    """The request handler base of sfsync's servers: one way to answer, and request logs at debug."""

    server_version = "sfsync"
    sys_version = ""

    def send_body(self, status: int, body: bytes, *, content_type: str = "application/json", head: bool = False,
                  close: bool = False, headers: Mapping[str, str] | None = None) -> None:
        """One whole answer: status, the headers every answer carries, ``headers``, then the body
        (not for HEAD); ``close`` ends the connection after it."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)


class _StatusHandler(Handler):
    server: StatusServer
    timeout = 10  # per read: an idle scraper gives its thread back

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        route = self.server.routes.get(urlsplit(self.path).path)
        try:
            page = route() if route else Page.json(404, {"error": "not found"})
        except Exception as exc:  # an answer, never a dropped connection
            log.error("failed answering %s: %s: %s", self.path, type(exc).__name__, exc, exc_info=True,
                      extra={"event": "status_server_error"})
            page = Page.json(500, {"error": "internal error"})
        self.send_body(page.status, page.body, content_type=page.content_type, head=head)


class StatusServer(BackgroundServer):
    """GET-only pages (``/metrics``, ``/healthz``) from callables, for ``run --loop``."""

    def __init__(self, host: str, port: int, routes: dict[str, Route]):
        super().__init__((host, port), _StatusHandler)
        self.routes = routes

    def start(self) -> StatusServer:
        self.start_thread("sfsync-status")
        return self
