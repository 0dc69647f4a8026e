"""The HTTP machinery both simulators share: a threaded HTTPS server on loopback, a tiny router,
request/response values, and fault and latency injection.

A simulator is a ``SimApp`` subclass: it registers routes and says how its errors look
(MessageMedia answers ``{"message": ...}``, Salesforce a JSON list). Everything under ``/_sim/``
is the unauthenticated admin API and is never delayed or faulted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import random
import re
import socket
import ssl
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sfsync.sim.tls import EphemeralCA

log = logging.getLogger("sfsync.sim")

# Every kind of fault a simulator can inject on a remote call.
#   500/502/503  an error answer in the service's own error shape
#   429          Too Many Requests with a Retry-After header
#   reset        the TCP connection is reset before any answer (nothing was applied)
#   stall        no answer until well past the client's timeout (nothing was applied)
#   malformed    200 with a truncated JSON body (nothing was applied)
#   lost_response the request IS applied, then the connection is reset: the client cannot
#                know it worked, so this is what proves idempotency
FAULT_KINDS: tuple[str, ...] = ("500", "502", "503", "429", "reset", "stall", "malformed")
ALL_FAULT_KINDS: tuple[str, ...] = (*FAULT_KINDS, "lost_response")


class HttpError(Exception):
    """Raised by a route to answer with an error in the simulator's own error shape."""

    def __init__(self, status: int, message: str, code: str | None = None, details: Any = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.details = details


class _BodyReader:
    """Reads a request body of known length or in chunked transfer encoding, lazily, so a
    route can stream a large upload (a Bulk API CSV) without holding it in memory."""

    def __init__(self, rfile: Any, length: int | None, chunked: bool):
        self._rfile = rfile
        self._left = length or 0
        self._chunked = chunked
        self._chunk_left = 0
        self._done = not chunked and not length
        self._buffer = b""

    def _raw_read(self, n: int) -> bytes:
        if self._done:
            return b""
        if not self._chunked:
            data = self._rfile.read(min(n, self._left))
            self._left -= len(data)
            if not data or self._left <= 0:
                self._done = True
            return data
        if self._chunk_left == 0:
            size_line = self._rfile.readline(65537)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Trailer section: read to the blank line.
                while self._rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                self._done = True
                return b""
            self._chunk_left = size
        data = self._rfile.read(min(n, self._chunk_left))
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(3)  # CRLF after the chunk
        if not data:
            self._done = True
        return data

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [self._buffer]
            self._buffer = b""
            while chunk := self._raw_read(1 << 16):
                parts.append(chunk)
            return b"".join(parts)
        while len(self._buffer) < n and not self._done:
            chunk = self._raw_read(max(n - len(self._buffer), 1 << 16))
            if not chunk:
                break
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def lines(self) -> Iterator[bytes]:
        """Yield lines (with their ending) with memory bounded by the longest line."""
        pending = self._buffer
        self._buffer = b""
        while True:
            cut = pending.find(b"\n")
            if cut >= 0:
                yield pending[: cut + 1]
                pending = pending[cut + 1 :]
                continue
            chunk = self._raw_read(1 << 16)
            if not chunk:
                if pending:
                    yield pending
                return
            pending += chunk

    def drain(self) -> None:
        while self._raw_read(1 << 16):
            pass


@dataclass
class Request:
    method: str
    target: str  # the request target as sent: path and query
    path: str
    query: dict[str, list[str]]
    headers: Message
    reader: _BodyReader
    params: dict[str, str] = field(default_factory=dict)
    _body: bytes | None = None
    principal: Any = None  # who the credentials name, once an app has authenticated the call
    account: str = ""  # the account the call acts for, once an app has authenticated it

    def body(self) -> bytes:
        if self._body is None:
            self._body = self.reader.read()
        return self._body

    def json(self) -> Any:
        try:
            return json.loads(self.body() or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}", "JSON_PARSER_ERROR") from exc

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, text.encode(), {"Content-Type": content_type})


@dataclass
class FaultConfig:
    latency_ms: float = 0.0
    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int | None = None
    stall_seconds: float = 15.0
    retry_after: int = 1


class Faults:
    """Thread-safe fault and latency injection; a seed makes the sequence repeatable."""

    def __init__(self, config: FaultConfig | None = None):
        self._lock = threading.Lock()
        self.config = FaultConfig()
        self.rng = random.Random()
        self.counts: Counter[str] = Counter()
        self.configure(**vars(config or FaultConfig()))

    def configure(self, **changes: Any) -> FaultConfig:
        with self._lock:
            for key, value in changes.items():
                if not hasattr(self.config, key):
                    raise HttpError(400, f"unknown fault setting {key!r}")
                if key == "kinds":
                    value = tuple(value)
                    unknown = set(value) - set(ALL_FAULT_KINDS)
                    if unknown:
                        raise HttpError(400, f"unknown fault kinds {sorted(unknown)}")
                setattr(self.config, key, value)
            if "seed" in changes:
                self.rng = random.Random(self.config.seed)
            return self.config

    def draw(self) -> str | None:
        with self._lock:
            if self.config.rate <= 0 or not self.config.kinds:
                return None
            if self.rng.random() >= self.config.rate:
                return None
            kind = self.rng.choice(self.config.kinds)
            self.counts[kind] += 1
            return kind

    def chance(self, rate: float) -> bool:
        """A seeded coin for app-level faults (UNABLE_TO_LOCK_ROW and the like)."""
        with self._lock:
            return rate > 0 and self.rng.random() < rate

    def count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            cfg = vars(self.config).copy()
            cfg["kinds"] = list(cfg["kinds"])
            return {"config": cfg, "injected": dict(self.counts)}


Handler = Callable[[Request], Response]


@dataclass
class _Route:
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
        self._routes: list[_Route] = []

    # -- routing -----------------------------------------------------------------------------
    def route(self, method: str, pattern: str, handler: Handler, name: str | None = None) -> None:
        """Register ``handler`` for ``method`` on ``pattern`` (``{name}`` matches one segment)."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self._routes.append(_Route(method.upper(), regex, name or pattern, handler))

    def match(self, request: Request) -> tuple[_Route | None, bool]:
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
        reader = _BodyReader(self.rfile, int(length) if length and not chunked else None, chunked)
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
