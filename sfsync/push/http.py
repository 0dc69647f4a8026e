"""The push receiver's HTTP side: a hardened ``ThreadingHTTPServer`` on the one server base.

Every request gets an answer (JSON, never a dropped connection unless the client went away); a
whole request must arrive within the request deadline (slowloris); connections are bounded in all
and per client address; the standard library's own refusals are JSON too. What a push means is
the application's business (``sfsync.push.receiver.PushServer``, seen here through ``App``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from sfsync.errors import ConfigError, UsageError
from sfsync.httpd import BackgroundServer, Handler
from sfsync.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sfsync.push.body import json_content_type
from sfsync.push.deadlines import Deadlines
from sfsync.push.framing import Recorder, framing_problem

log = logging.getLogger("sfsync.serve")

HEALTH_PATH = "/healthz"
OPENAPI_PATH = "/openapi.json"
METRICS_PATH = "/metrics"
IDLE_TIMEOUT_S = 15.0  # a keep-alive connection with no new request gives its thread back
RETRY_AFTER_S = 5  # what a client over its connection cap is told


class AbortConnection(Exception):
    """Raised by the ``after_commit`` test hook: drop the connection without an answer, as a
    server killed between the commit and the answer would."""



@dataclass
class Reply:
    status: int
    payload: dict[str, Any]
    close: bool = False




class App(Protocol):
    """What the HTTP side needs of the application."""

    path: str
    max_body: int
    request_timeout: float
    closing: threading.Event

    def receive(self, method: str, target: str, version: str, header: Callable[[str], str | None], body: bytes,
                peer: str = "") -> Reply: ...

    def health(self) -> tuple[int, dict[str, Any]]: ...

    def openapi(self) -> bytes: ...

    def metrics_page(self) -> bytes: ...

    def count(self, key: str, n: int = 1) -> None: ...

    def request_started(self) -> None: ...

    def request_finished(self) -> None: ...

    def thread_done(self) -> None: ...


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext:
    if not cert or not key:
        raise UsageError("--tls-cert and --tls-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}") from exc
    return context



# -- the server ------------------------------------------------------------------------------------------------
class PushHTTPServer(BackgroundServer):
    def __init__(self, address: tuple[str, int], app: App, context: ssl.SSLContext | None,
                 max_connections: int, max_per_client: int):
        super().__init__(address, _Handler)
        self.app = app
        if context is not None:
            # The handshake runs in the connection's thread, so a slow client cannot stall accept().
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.deadlines = Deadlines(app.request_timeout)
        self.max_per_client = max_per_client
        self._slots = threading.BoundedSemaphore(max_connections)
        self._connections: dict[socket.socket, str] = {}
        self._per_client: Counter[str] = Counter()
        self._connections_lock = threading.Lock()
        self._refusals_logged: dict[str, float] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0])
        with self._connections_lock:
            over = self._per_client[peer] >= self.max_per_client
            if not over:
                self._per_client[peer] += 1
                self._connections[request] = peer
        if over:
            return self._refuse(request, peer)
        # A bound on connections (and so threads): beyond it, new ones wait in the listen backlog.
        while not self._slots.acquire(timeout=0.5):
            if self.app.closing.is_set():
                self._forget(request)
                self.shutdown_request(request)
                return None
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise
        return None

    def _refuse(self, request: socket.socket, peer: str) -> None:
        """A client over its connection cap: 429 with Retry-After (plain HTTP; a TLS connection is
        just closed, as a handshake here would stall accept()), without a thread."""
        self.app.count("refused_per_client")
        now = time.monotonic()
        if now - self._refusals_logged.get(peer, -60.0) >= 60.0:  # once a minute per client, not per flood
            if len(self._refusals_logged) >= 1024:  # many addresses (IPv6): bounded memory, some lines more
                self._refusals_logged.clear()
            self._refusals_logged[peer] = now
            log.warning("%s holds %d connections, its limit: refusing more", peer, self.max_per_client,
                        extra={"event": "push_per_client_limit"})
        if not isinstance(request, ssl.SSLSocket):
            body = json.dumps({"error": "too many connections from your address",
                               "limit": self.max_per_client}).encode()
            head = (f"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n")
            with contextlib.suppress(OSError):
                request.settimeout(0.5)
                request.sendall(head.encode() + body)
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)
            self.app.thread_done()

    def _forget(self, request: Any) -> bool:
        with self._connections_lock:
            peer = self._connections.pop(request, None)
            if peer is None:
                return False
            self._per_client[peer] -= 1
            if self._per_client[peer] <= 0:
                del self._per_client[peer]
        self.deadlines.forget(request)
        return True

    def _release(self, request: Any) -> None:
        if self._forget(request):
            self._slots.release()

    def connections_by_client(self) -> dict[str, int]:
        """Open connections per client address, as the per-client cap counts them."""
        with self._connections_lock:
            return dict(self._per_client)

    def close_connections(self) -> None:
        with self._connections_lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)


class _Handler(Handler):
    protocol_version = "HTTP/1.1"  # keep-alive: MessageMedia and the simulator reuse connections
    timeout = IDLE_TIMEOUT_S  # per read: an idle connection gives its thread back
    server: PushHTTPServer
    _replied = False

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.request, ssl.SSLSocket):
            self.server.deadlines.arm(self.request, self.client_address[0])
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError):
                self.close_connection = True
                raise
            finally:
                self.server.deadlines.disarm(self.request)

    def handle_one_request(self) -> None:
        """One request, under the whole-request deadline from its first byte."""
        try:
            first = self._peek()  # waits for a new request up to the idle timeout
        except (TimeoutError, OSError, ssl.SSLError):
            first = b""
        if not first:
            self.close_connection = True
            return
        self._replied = False
        self.server.deadlines.arm(self.connection, self.client_address[0])
        try:
            super().handle_one_request()
        finally:
            if self.server.deadlines.disarm(self.connection):
                self.close_connection = True

    def parse_request(self) -> bool:
        """The standard library's parse, then RFC 9112's framing rules on the header lines as they
        arrived (``sfsync.push.framing``): an ambiguous request is 400 and the connection is closed,
        whatever its method, before a byte of its body is read."""
        rfile = self.rfile
        recorder = Recorder(rfile)
        self.rfile = recorder  # type: ignore[assignment]
        try:
            parsed = super().parse_request()
        finally:
            self.rfile = rfile
        if not parsed:
            return False
        problem = framing_problem(recorder.lines)
        if problem is None:
            return True
        self.server.app.count("bad_framing")
        log.warning("request refused from %s: %s", self.client_address[0], problem,
                    extra={"event": "push_bad_framing"})
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._reply(Reply(400, {"error": "malformed", "reason": f"framing: {problem}"}, close=True))
        return False

    def _peek(self) -> bytes:
        rfile = self.rfile
        if isinstance(rfile, io.BufferedReader):
            return rfile.peek(1)
        return b"-"  # unbuffered (never, with the default rbufsize): no way to wait without consuming

    # -- routes ----------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._guarded(lambda: self._get(head=False))

    def do_HEAD(self) -> None:
        self._guarded(lambda: self._get(head=True))

    def do_POST(self) -> None:
        app = self.server.app
        app.request_started()
        try:
            self._guarded(lambda: self._post(app))
        finally:
            app.request_finished()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request line, headers too long, unknown method)
        in JSON like every other answer; an unknown method is 405 (or 404 off our paths), not 501."""
        if code == 501:
            return self._not_allowed()
        with contextlib.suppress(OSError):
            self._reply(Reply(code, {"error": message or self.responses.get(code, ("error",))[0]}, close=True),
                        head=getattr(self, "command", None) == "HEAD")
        return None

    def _not_allowed(self) -> None:
        path = urlsplit(self.path).path
        allow = "POST" if path == self.server.app.path else \
            "GET, HEAD" if path in (HEALTH_PATH, OPENAPI_PATH, METRICS_PATH) else None
        if allow is None:
            return self._reply(Reply(404, {"error": "not found"}, close=True))
        return self._reply(Reply(405, {"error": "method not allowed"}, close=True), allow=allow)

    def _guarded(self, route: Callable[[], None]) -> None:
        """Every request gets an answer: a failure of ours is logged and answered 500 (never 2xx,
        so nothing unstored is acknowledged), instead of a connection dropped without a word."""
        try:
            route()
        except AbortConnection:
            self._abort()
        except Exception as exc:
            log.error("failed answering %s %s from %s: %s: %s", self.command, urlsplit(self.path).path,
                      self.client_address[0], type(exc).__name__, exc, exc_info=True,
                      extra={"event": "serve_internal_error"})
            self.close_connection = True
            if not self._replied:
                with contextlib.suppress(OSError):
                    self._reply(Reply(500, {"error": "internal error"}, close=True), head=self.command == "HEAD")

    def _request_read(self) -> bool:
        """The request has fully arrived: stop its clock. False (answered 408) when it came too late."""
        if not self.server.deadlines.disarm(self.connection):
            return True
        self._reply(Reply(408, {"error": "request timeout", "limit_seconds": self.server.app.request_timeout},
                          close=True))
        return False

    def _get(self, head: bool) -> None:
        if not self._request_read():
            return None
        path = urlsplit(self.path).path
        if path == HEALTH_PATH:
            status, payload = self.server.app.health()
            return self._reply(Reply(status, payload), head=head)
        if path == OPENAPI_PATH:
            return self._send(200, self.server.app.openapi(), head=head)
        if path == METRICS_PATH:
            return self._send(200, self.server.app.metrics_page(), head=head,
                              content_type=METRICS_CONTENT_TYPE)
        if path == self.server.app.path:
            return self._reply(Reply(405, {"error": "method not allowed: POST delivery reports here"}), head=head,
                               allow="POST")
        return self._reply(Reply(404, {"error": "not found"}), head=head)

    def _refuse_method(self) -> None:
        self._guarded(self._not_allowed)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def _post(self, app: App) -> None:
        if self.server.deadlines.expired(self.connection):
            self._request_read()  # the headers were cut short: say so, read nothing more
            return None
        if urlsplit(self.path).path != app.path:
            return self._not_allowed()
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._reply(Reply(411, {"error": "send a Content-Length, not chunked encoding"}, close=True))
        lengths = set(self.headers.get_all("Content-Length") or [])
        if not lengths:
            return self._reply(Reply(411, {"error": "Content-Length required"}, close=True))
        length_text = lengths.pop().strip()
        if lengths or not re.fullmatch(r"[0-9]{1,18}", length_text):
            return self._reply(Reply(400, {"error": "malformed", "reason": "framing: bad Content-Length"},
                                     close=True))
        length = int(length_text)
        if length > app.max_body:
            app.count("too_large")
            log.warning("push refused from %s: %d bytes, over the limit of %d", self.client_address[0], length,
                        app.max_body, extra={"event": "push_too_large"})
            return self._reply(Reply(413, {"error": "too large", "limit_bytes": app.max_body}, close=True))
        if not json_content_type(self.headers.get("Content-Type")):
            app.count("unsupported_type")
            log.warning("push refused from %s: Content-Type %r is not JSON", self.client_address[0],
                        self.headers.get("Content-Type"), extra={"event": "push_unsupported_type"})
            return self._reply(Reply(415, {"error": "unsupported media type", "accepted": "application/json"},
                                     close=True))
        body = self.rfile.read(length)
        if not self._request_read():
            return None
        if len(body) < length:
            self.close_connection = True  # the client went away mid-body: nothing to answer
            return None
        reply = app.receive(self.command, self.path, self.request_version, self.headers.get, body,
                            self.client_address[0])
        return self._reply(reply)

    # -- answers ---------------------------------------------------------------------------------------
    def _reply(self, reply: Reply, head: bool = False, allow: str | None = None) -> None:
        headers = {"Allow": allow} if allow else {}
        if reply.status in (429, 503):
            headers["Retry-After"] = str(RETRY_AFTER_S)
        self._send(reply.status, json.dumps(reply.payload).encode(), head=head, close=reply.close, headers=headers)

    def _send(self, status: int, body: bytes, *, head: bool = False, close: bool = False,
              headers: dict[str, str] | None = None, content_type: str = "application/json") -> None:
        self._replied = True
        self.send_body(status, body, content_type=content_type, head=head, headers=headers,
                       close=close or self.server.app.closing.is_set())

    def _abort(self) -> None:
        """Reset the connection with no answer (SO_LINGER 0 sends a TCP RST)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.request.close()


