"""The HTTP machinery both simulators share: a threaded HTTPS server on loopback, a tiny router,
request/response values, and fault and latency injection.

A simulator is a ``SimApp`` subclass: it registers routes and says how its errors look
(MessageMedia answers ``{"message": ...}``, Salesforce a JSON list). Everything under ``/_sim/``
is the unauthenticated admin API and is never delayed or faulted.

The request and response values live in ``sim.wire``, fault injection in ``sim.faults``; both are
re-exported here, where the simulators and tests import them from.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sfsync.sim.faults import ALL_FAULT_KINDS, FAULT_KINDS, FaultConfig, Faults
from sfsync.sim.tls import EphemeralCA
from sfsync.sim.wire import BodyReader, HttpError, Request, Response

__all__ = [
    "ALL_FAULT_KINDS", "FAULT_KINDS", "FaultConfig", "Faults", "Handler", "HttpError", "Request", "Response",
    "SimApp", "SimServer",
]

log = logging.getLogger("sfsync.sim")

Handler = Callable[[Request], Response]


@dataclass
class Route:
    method: str
    regex: re.Pattern[str]
    name: str
    handler: Handler


class SimApp:
    """Base for a simulator: routes, error shape, counters, faults."""

    def __init__(self, faults: FaultConfig | None = None):
        self.faults = Faults(faults)
        self.calls: Counter[str] = Counter()
        self.lock = threading.RLock()  # guards the simulator's state
        self.stopping = threading.Event()
        self.base_url = ""  # set by SimServer once bound: https://127.0.0.1:PORT
        self._routes: list[Route] = []

    # -- routing -----------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler, name: str | None = None) -> None:
        """Register ``handler`` for ``method`` on ``pattern`` (``{name}`` matches one segment)."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self._routes.append(Route(method.upper(), regex, name or pattern, handler))

    def match(self, request: Request) -> tuple[Route | None, bool]:
        path_matched = False
        for route in self._routes:
            found = route.regex.match(request.path)
            if not found:
                continue
            path_matched = True
            if route.method == request.method:
                request.params = found.groupdict()
                return route, True
        return None, path_matched

    # -- hooks a simulator overrides ---------------------------------------------------------
    def error(self, status: int, message: str, code: str | None = None, details: Any = None) -> Response:
        return Response.json(status, {"message": message})

    def decorate(self, request: Request, response: Response) -> None:
        """Add headers every answer carries (Salesforce's Sforce-Limit-Info)."""

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.faults.counts.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: SimApp, context: ssl.SSLContext):
        super().__init__(address, _RequestHandler)
        self.app = app
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
    timeout = 120  # idle keep-alive connections are closed after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        try:
            self.request.settimeout(self.timeout)
            # Headers and body go out as separate writes: without NODELAY, Nagle plus the
            # client's delayed ACK add ~40 ms to every answer.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            self.close_connection = True
            raise

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def _serve(self) -> None:
        app = self.server.app
        parts = urlsplit(self.path)
        length = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        reader = BodyReader(self.rfile, int(length) if length and not chunked else None, chunked)
        request = Request(
            method=self.command,
            target=self.path,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=self.headers,
            reader=reader,
        )
        admin = request.path.startswith("/_sim/")
        fault = None
        route, path_matched = app.match(request)
        if not admin:
            app.calls[route.name if route else "unrouted"] += 1
            latency = app.faults.config.latency_ms
            if latency > 0 and app.stopping.wait(latency / 1000.0):
                return self._reset()
            fault = app.faults.draw()
            if fault and fault != "lost_response":
                reader.drain()
                return self._inject(fault)
        try:
            if route is None:
                if path_matched:
                    raise HttpError(405, f"method {request.method} not allowed on {request.path}", "METHOD_NOT_ALLOWED")
                raise HttpError(404, f"no resource at {request.path}", "NOT_FOUND")
            response = route.handler(request)
        except HttpError as exc:
            response = app.error(exc.status, exc.message, exc.code, exc.details)
        except Exception:
            log.exception("simulator route failed: %s %s", request.method, request.path)
            response = app.error(500, "internal simulator error", "UNKNOWN_EXCEPTION")
        reader.drain()
        if fault == "lost_response":
            return self._reset()
        if not admin:
            app.decorate(request, response)
        self._send(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)
        self.wfile.flush()

    def _reset(self) -> None:
        """Abort the connection with a TCP RST: the client sees 'connection reset by peer'."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.request.close()

    def _inject(self, fault: str) -> None:
        app = self.server.app
        if fault in ("500", "502", "503"):
            status = int(fault)
            code = "SERVER_UNAVAILABLE" if status == 503 else "UNKNOWN_EXCEPTION"
            return self._send(app.error(status, f"simulated {status}", code))
        if fault == "429":
            response = app.error(429, "Too many requests", "REQUEST_LIMIT_EXCEEDED")
            response.headers["Retry-After"] = str(app.faults.config.retry_after)
            return self._send(response)
        if fault == "malformed":
            return self._send(Response(200, b'{"records": [{"Id": ', {"Content-Type": "application/json"}))
        if fault == "stall":
            app.stopping.wait(app.faults.config.stall_seconds)
            return self._reset()
        return self._reset()  # "reset"


class SimServer:
    """Runs a ``SimApp`` on 127.0.0.1 in a background thread; a context manager for tests."""

    def __init__(self, app: SimApp, tls: EphemeralCA, host: str = "127.0.0.1", port: int = 0):
        if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
            raise ValueError(f"simulators bind loopback only, not {host!r}")
        self.app = app
        self.tls = tls
        self._server = _Server((host, port), app, tls.server_context())
        self._thread: threading.Thread | None = None
        app.base_url = self.url

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> SimServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"sim-{type(self.app).__name__}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.app.stopping.set()
        if self._thread:  # shutdown() blocks forever unless serve_forever is running
            self._server.shutdown()
        with self._server.connections_lock:
            open_connections = list(self._server.connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
