"""`sfsync serve`: receive the delivery reports MessageMedia pushes, and drain them into Salesforce.

A push is answered 2xx only once its reports are committed to the store's inbox (SQLite, WAL,
synchronous=FULL): a crash before the answer makes MessageMedia push again, and the report id
makes the second copy a no-op. A background thread drains the inbox through the same pipeline as
``sfsync run`` (``RunOptions(inbox=True)``), or ``--no-drain`` leaves that to ``sfsync run --inbox``.

The standard library's ``ThreadingHTTPServer`` is enough for this: one small endpoint, a request
is a few hundred bytes and one SQLite commit, and it adds no dependency to audit. TLS is best
terminated by a proxy or ingress in front; ``--tls-cert/--tls-key`` serve it directly when there
is none.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import re
import socket
import sqlite3
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from sfsync.config import Settings
from sfsync.domain.reports import InvalidReport, parse_report
from sfsync.errors import (
    EXIT_BUDGET,
    AlreadyRunning,
    AuthError,
    ConfigError,
    SfsyncError,
    UsageError,
)
from sfsync.httpd import BackgroundServer
from sfsync.logs import register_secret
from sfsync.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sfsync.ops.metrics import MetricsState
from sfsync.push.auth import AuthFailed, PushAuth
from sfsync.push.openapi import openapi_document
from sfsync.store import Store, now_utc

log = logging.getLogger("sfsync.serve")

DEFAULT_PATH = "/delivery-reports"
HEALTH_PATH = "/healthz"
OPENAPI_PATH = "/openapi.json"
METRICS_PATH = "/metrics"
# A whole request (headers and body) must arrive within this, however it trickles in (slowloris).
DEFAULT_REQUEST_TIMEOUT_S = 20.0
MAX_REQUEST_TIMEOUT_S = 300.0
IDLE_TIMEOUT_S = 15.0  # a keep-alive connection with no new request gives its thread back
RETRY_AFTER_S = 5  # what a client over its connection cap is told
# A delivery report is two levels deep ({"delivery_reports": [{"metadata": {...}}]}); Python's json
# recurses per level, so depth is bounded before parsing.
MAX_JSON_DEPTH = 16
JSON_TYPES = ("application/json",)
PRUNE_EVERY_S = 3600.0
MAX_BACKOFF_S = 60.0
BUDGET_BACKOFF_S = 300.0  # the daily API allocation does not come back within seconds
# A template variable MessageMedia left unrendered (no value for it): "$statusCode", "$metadata.get('k')".
_UNRENDERED = re.compile(r"^\$!?\{?[A-Za-z]\w*(?:\.\w+)*(?:\(.*\))?\}?$")


class AbortConnection(Exception):
    """Raised by the ``after_commit`` test hook: drop the connection without an answer, as a
    server killed between the commit and the answer would."""


class BadPush(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Reply:
    status: int
    payload: dict[str, Any]
    close: bool = False


@dataclass
class DrainState:
    enabled: bool = True
    runs: int = 0
    last_finished: str | None = None
    last_exit_reason: str | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    skipped_locked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


# -- pushed bodies ---------------------------------------------------------------------------------------
def reports_in(payload: Any) -> list[Any]:
    """The reports of a push: one report object, or ``{"delivery_reports": [...]}``."""
    if isinstance(payload, dict) and "delivery_reports" in payload:
        items = payload["delivery_reports"]
        if not isinstance(items, list):
            raise BadPush("delivery_reports must be a list")
        if not items:
            raise BadPush("delivery_reports is empty")
        return items
    if isinstance(payload, dict):
        return [payload]
    raise BadPush(f"the body must be a report object or {{\"delivery_reports\": [...]}}, not {type(payload).__name__}")


def _unrendered(value: Any) -> bool:
    return isinstance(value, str) and bool(_UNRENDERED.match(value.strip()))


def normalise_pushed(raw: Any) -> Any:
    """A pushed report as the pipeline reads polled ones. Webhook templates leave a variable with
    no value as its literal name (``"$statusCode"``): such a field is dropped, so it reads as
    absent rather than as a code. ``metadata`` rendered as a JSON string becomes the object."""
    if not isinstance(raw, dict):
        return raw
    clean = {k: v for k, v in raw.items() if not _unrendered(v)}
    metadata = clean.get("metadata")
    if isinstance(metadata, str):
        text = metadata.strip()
        if not text:
            clean.pop("metadata")
        elif text.startswith("{"):
            with contextlib.suppress(ValueError):
                clean["metadata"] = json.loads(text)
    metadata = clean.get("metadata")
    if isinstance(metadata, dict):
        clean["metadata"] = {k: v for k, v in metadata.items() if not _unrendered(v)}
    return clean


def json_depth(body: bytes, limit: int) -> int:
    """How deep the arrays and objects of a JSON text nest, as far as ``limit``: at most ``limit``
    when it is within it, more when it is not (a linear scan that never recurses; strings are
    skipped, escapes included)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return limit  # cannot nest deeper (the usual push has three or four): skip the scan
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def parse_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of a pushed body; ``BadPush`` for anything that is not bounded, valid JSON."""
    if json_depth(body, max_depth) > max_depth:
        raise BadPush(f"the body is nested deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except RecursionError:  # not reached after the scan; kept so no body can ever drop the connection
        raise BadPush(f"the body is nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of over 4300 digits
        raise BadPush(f"the body is not JSON ({exc})") from None


def json_content_type(value: str | None) -> bool:
    """A pushed body's Content-Type: JSON (``application/json``, ``application/*+json``), or none
    sent (per-message callbacks are JSON and not documented to name it)."""
    if value is None or not value.strip():
        return True
    media = value.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


# -- the application --------------------------------------------------------------------------------------
class PushServer:
    """The push receiver and its drain thread. ``start()``/``stop()``, or a context manager."""

    def __init__(self, settings: Settings, *, host: str = "127.0.0.1", port: int = 8080, path: str = DEFAULT_PATH,
                 drain: bool = True, drain_interval: float = 2.0, tls_cert: str | None = None,
                 tls_key: str | None = None, max_connections: int = 128, inbox_retention_days: float = 7.0,
                 store: Store | None = None, worker_factory: Callable[[threading.Event], Any] | None = None,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S, max_connections_per_client: int | None = None):
        if not path.startswith("/"):
            raise UsageError(f"--path must start with / (got {path!r})")
        if path in (HEALTH_PATH, OPENAPI_PATH, METRICS_PATH):
            raise UsageError(f"--path {path} is taken by the server itself")
        if not 0 < request_timeout <= MAX_REQUEST_TIMEOUT_S:
            raise UsageError(f"--request-timeout must be more than 0 and at most {MAX_REQUEST_TIMEOUT_S:g} seconds")
        per_client = max(1, max_connections // 4) if max_connections_per_client is None else max_connections_per_client
        if per_client < 1:
            raise UsageError("--max-connections-per-client must be at least 1")
        if drain_interval <= 0:
            raise UsageError("--drain-interval must be positive")
        self.settings = settings
        self.auth = PushAuth.from_settings(settings)  # ConfigError when neither method is configured
        if settings.push_secret:
            register_secret(settings.push_secret.value)
        self.path = path
        self.max_body = settings.push_max_body_bytes
        self.request_timeout = float(request_timeout)
        self.max_connections_per_client = min(per_client, max_connections)
        self.store = store or Store(settings.store_path)
        self.drain_interval = drain_interval
        self.inbox_retention = dt.timedelta(days=inbox_retention_days)
        self.drain_state = DrainState(enabled=drain)
        self.counts: Counter[str] = Counter()
        self.metrics = MetricsState(self.store)  # GET /metrics: drain runs, backlog, build info
        self.after_commit: Callable[[list[str]], None] | None = None  # test hook, see AbortConnection
        self.closing = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._worker_factory = worker_factory or self._default_worker
        self._worker: Any = None
        self._serve_thread: threading.Thread | None = None
        self._drain_thread: threading.Thread | None = None
        context = _tls_context(tls_cert, tls_key) if tls_cert or tls_key else None
        self.scheme = "https" if context else "http"
        self._httpd = _HTTPServer((host, port), self, context, max_connections, self.max_connections_per_client)
        self._openapi: bytes | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"{self.scheme}://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}{self.path}"

    def start(self) -> PushServer:
        self._httpd.deadlines.start()
        self._httpd.start_thread("sfsync-serve")
        self._serve_thread = self._httpd.thread
        if self.drain_state.enabled:
            self._drain_thread = threading.Thread(target=self._drain_loop, name="sfsync-drain", daemon=True)
            self._drain_thread.start()
        log.info("accepting pushed delivery reports at %s (auth: %s%s)", self.url, " and ".join(self.auth.methods),
                 f", {self.auth.mode} required" if len(self.auth.methods) > 1 else "",
                 extra={"event": "serve_start", "drain": self.drain_state.enabled})
        return self

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let requests in hand finish (bounded), then let the drain finish the
        batch in hand. Idempotent."""
        if self.closing.is_set() and self._serve_thread is None:
            return
        self.closing.set()
        self._stop.set()  # the drain stops after the batch in hand
        if self._serve_thread is not None:
            self._httpd.shutdown()
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout=grace_seconds)
        self._httpd.close_connections()  # idle keep-alive connections
        self._httpd.server_close()
        self._httpd.deadlines.close()
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=5)
            self._serve_thread = None
        if self._drain_thread is not None:
            self._drain_thread.join()
            self._drain_thread = None
        log.info("stopped", extra={"event": "serve_stop"})

    def __enter__(self) -> PushServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one push ------------------------------------------------------------------------------------
    def receive(self, method: str, target: str, version: str, header: Callable[[str], str | None],
                body: bytes, peer: str = "") -> Reply:
        """Authenticate, validate and store one pushed body; the reply is only returned once the
        reports are committed."""
        try:
            self.auth.check(method, target, header, body, versions=(version, "HTTP/1.1"))
        except AuthFailed as exc:
            self._count("unauthenticated")
            log.warning("push refused from %s: %s", peer, exc.reason, extra={"event": "push_unauthenticated"})
            return Reply(401, {"error": "unauthenticated", "reason": exc.reason})
        try:
            reports = self._validated(body)
        except BadPush as exc:
            self._count("malformed")
            log.warning("malformed push from %s: %s", peer, exc.reason, extra={"event": "push_malformed"})
            return Reply(400, {"error": "malformed", "reason": exc.reason})
        stored = 0
        try:
            with self.store.transaction():
                for report_id, raw in reports:
                    stored += self.store.inbox_add(report_id, raw)
        except (sqlite3.Error, ConfigError) as exc:
            # Not stored, so not acknowledged: MessageMedia pushes it again later.
            self._count("store_errors")
            log.error("cannot store a push: %s", exc, extra={"event": "push_store_error"})
            return Reply(503, {"error": "unavailable", "reason": "the local store cannot be written"})
        # Committed: from here on a lost answer only costs a duplicate push, stored once.
        self._count("stored", stored)
        self._count("duplicates", len(reports) - stored)
        log.debug("push stored: %d report(s), %d duplicate(s)", stored, len(reports) - stored,
                  extra={"event": "push_stored"})
        if self.after_commit is not None:
            self.after_commit([rid for rid, _ in reports])
        return Reply(200, {"stored": stored, "duplicates": len(reports) - stored})

    def _validated(self, body: bytes) -> list[tuple[str, dict[str, Any]]]:
        items = reports_in(parse_json_body(body))
        valid: list[tuple[str, dict[str, Any]]] = []
        for index, item in enumerate(items):
            try:
                raw = normalise_pushed(item)
                report = parse_report(raw, "push")
            except InvalidReport as exc:
                where = f"report {index}" + (f" ({exc.report_id})" if exc.report_id else "")
                raise BadPush(f"{where}: {exc.reason}") from None
            except Exception as exc:
                # The body made the parser fail where it should have said why: still the body's
                # fault for the sender (400, never stored), and logged as the parser's gap it is.
                log.warning("a pushed report the parser could not read (%s: %s)", type(exc).__name__, exc,
                            exc_info=True, extra={"event": "push_parser_gap"})
                raise BadPush(f"report {index}: unreadable ({type(exc).__name__})") from None
            if not report.report_id.strip() or not report.message_id.strip():
                # The inbox is keyed by report id: a blank one would make distinct reports "duplicates".
                raise BadPush(f"report {index}: blank delivery_report_id or message_id")
            valid.append((report.report_id.strip(), raw))
        return valid

    def openapi(self) -> bytes:
        """The OpenAPI description of this receiver, as served at ``/openapi.json``."""
        if self._openapi is None:
            document = openapi_document(
                push_path=self.path, health_path=HEALTH_PATH, openapi_path=OPENAPI_PATH, metrics_path=METRICS_PATH,
                auth=self.auth,
                max_body=self.max_body, max_depth=MAX_JSON_DEPTH)
            self._openapi = json.dumps(document, indent=1).encode()
        return self._openapi

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            pending = self.store.inbox_count()
        except Exception as exc:  # the store is what a push needs: without it, we are not healthy
            return 503, {"status": "unavailable", "reason": f"store: {exc}"}
        with self._lock:
            counts = dict(self.counts)
            drain = self.drain_state.as_dict()
        # 503 while stopping: a load balancer stops sending here before the port closes.
        return (503 if self.closing.is_set() else 200), {
            "status": "stopping" if self.closing.is_set() else "ok", "inbox_pending": pending,
            "pushes": counts, "drain": drain}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def request_started(self) -> None:
        with self._lock:
            self._inflight += 1

    def request_finished(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    # -- the drain -----------------------------------------------------------------------------------
    def _default_worker(self, stop: threading.Event) -> Any:
        from sfsync.engine import Worker

        return Worker(self.settings, store=self.store, stop=stop)

    def _drain_loop(self) -> None:
        delay = self.drain_interval
        next_prune = 0.0
        while not self._stop.wait(delay):
            delay = self.drain_once()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_S
                with contextlib.suppress(Exception):
                    pruned = self.store.inbox_prune(now_utc() - self.inbox_retention)
                    if pruned:
                        log.info("pruned %d processed inbox row(s)", pruned, extra={"event": "inbox_pruned"})
        self.store.close()

    def _work_due(self) -> bool:
        return bool(self.store.inbox_pending(1) or self.store.due_waiting(now_utc(), limit=1))

    def drain_once(self) -> float:
        """One drain if there is anything to do; returns the seconds to wait before the next."""
        from sfsync.engine import RunOptions

        state = self.drain_state
        try:
            if not self._work_due():
                return self.drain_interval
            if self._worker is None:
                self._worker = self._worker_factory(self._stop)
            summary = self._worker.run(RunOptions(inbox=True))
        except AlreadyRunning:
            # A cron `sfsync run` holds the lock: its turn now, ours at the next interval.
            with self._lock:
                state.skipped_locked += 1
            log.debug("drain skipped: another run holds the lock", extra={"event": "drain_locked"})
            return self.drain_interval
        except (AuthError, ConfigError) as exc:
            return self._drain_failed(exc, "error")
        except SfsyncError as exc:
            return self._drain_failed(exc, "warning")
        except Exception as exc:
            log.exception("drain crashed; retrying later", extra={"event": "drain_crash"})
            return self._drain_failed(exc, None)
        self.metrics.update(summary)
        with self._lock:
            state.runs += 1
            state.last_finished = now_utc().isoformat(timespec="seconds")
            state.last_exit_reason = summary.exit_reason
            state.last_error = None
            if summary.exit_code == EXIT_BUDGET:
                return BUDGET_BACKOFF_S
            if summary.counts.get("held") and not (summary.counts.get("applied") or summary.counts.get("drained")):
                state.consecutive_failures += 1  # nothing moved (writes failing transiently): back off
                return self._backoff()
            state.consecutive_failures = 0
        return self.drain_interval

    def _drain_failed(self, exc: BaseException, level: str | None) -> float:
        if level == "error":
            log.error("drain failed: %s", exc, extra={"event": "drain_error"})
        elif level == "warning":
            log.warning("drain failed: %s; the reports stay in the inbox", exc, extra={"event": "drain_error"})
        with self._lock:
            self.drain_state.last_error = f"{type(exc).__name__}: {exc}"
            self.drain_state.consecutive_failures += 1
            return self._backoff()

    def _backoff(self) -> float:
        return float(min(self.drain_interval * 2 ** self.drain_state.consecutive_failures, MAX_BACKOFF_S))


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext:
    if not cert or not key:
        raise UsageError("--tls-cert and --tls-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}") from exc
    return context


# -- HTTP ------------------------------------------------------------------------------------------------
class _Deadlines:
    """The whole-request deadline: a connection whose request (TLS handshake, request line, headers
    and body) has not fully arrived ``seconds`` after its first byte has its reading side shut, so
    the handler's blocked read ends at once. A per-read timeout cannot do this: a client sending a
    byte now and then never lets one read time out (slowloris). One thread watches every connection."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._due: dict[socket.socket, tuple[float, str]] = {}
        self._expired: set[socket.socket] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="sfsync-deadlines", daemon=True)
            self._thread.start()

    def arm(self, conn: socket.socket, peer: str) -> None:
        with self._cond:  # no wake-up: every deadline armed now falls after those already armed
            self._expired.discard(conn)
            self._due[conn] = (time.monotonic() + self.seconds, peer)

    def disarm(self, conn: socket.socket) -> bool:
        """Stop the clock; True when the deadline had already passed (the connection was cut)."""
        with self._cond:
            self._due.pop(conn, None)
            return conn in self._expired

    def expired(self, conn: socket.socket) -> bool:
        with self._cond:
            return conn in self._expired

    def forget(self, conn: socket.socket) -> None:
        with self._cond:
            self._due.pop(conn, None)
            self._expired.discard(conn)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                for conn, (due, peer) in list(self._due.items()):
                    if due <= now:
                        self._cut(conn, peer)
                # Looks again at least every quarter deadline: one armed meanwhile is then cut late by
                # at most that.
                next_due = min((due for due, _ in self._due.values()), default=now + self.seconds / 4)
                self._cond.wait(timeout=min(max(0.01, next_due - now), self.seconds / 4, 1.0))

    def _cut(self, conn: socket.socket, peer: str) -> None:
        del self._due[conn]
        self._expired.add(conn)
        log.warning("request from %s not complete within %g s: cut off", peer, self.seconds,
                    extra={"event": "push_request_timeout"})
        # socket.socket's own shutdown: SSLSocket's would also drop its TLS state, and the 408 with it.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(conn, socket.SHUT_RD)


class _HTTPServer(BackgroundServer):
    def __init__(self, address: tuple[str, int], app: PushServer, context: ssl.SSLContext | None,
                 max_connections: int, max_per_client: int):
        super().__init__(address, _Handler)
        self.app = app
        if context is not None:
            # The handshake runs in the connection's thread, so a slow client cannot stall accept().
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.deadlines = _Deadlines(app.request_timeout)
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
        self.app._count("refused_per_client")
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
            self.app.store.close()  # this thread's SQLite connection

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

    def close_connections(self) -> None:
        with self._connections_lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: MessageMedia and the simulator reuse connections
    server_version = "sfsync"
    sys_version = ""
    timeout = IDLE_TIMEOUT_S  # per read: an idle connection gives its thread back
    server: _HTTPServer
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

    def _peek(self) -> bytes:
        rfile = self.rfile
        if isinstance(rfile, io.BufferedReader):
            return rfile.peek(1)
        return b"-"  # unbuffered (never, with the default rbufsize): no way to wait without consuming

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

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
            return self._send(200, self.server.app.metrics.page().encode(), head=head,
                              content_type=METRICS_CONTENT_TYPE)
        if path == self.server.app.path:
            return self._reply(Reply(405, {"error": "method not allowed: POST delivery reports here"}), head=head,
                               allow="POST")
        return self._reply(Reply(404, {"error": "not found"}), head=head)

    def _refuse_method(self) -> None:
        self._guarded(self._not_allowed)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    def _post(self, app: PushServer) -> None:
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
            return self._reply(Reply(400, {"error": "malformed", "reason": "bad Content-Length"}, close=True))
        length = int(length_text)
        if length > app.max_body:
            app._count("too_large")
            log.warning("push refused from %s: %d bytes, over the limit of %d", self.client_address[0], length,
                        app.max_body, extra={"event": "push_too_large"})
            return self._reply(Reply(413, {"error": "too large", "limit_bytes": app.max_body}, close=True))
        if not json_content_type(self.headers.get("Content-Type")):
            app._count("unsupported_type")
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
        close = close or self.server.app.closing.is_set()
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

    def _abort(self) -> None:
        """Reset the connection with no answer (SO_LINGER 0 sends a TCP RST)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.request.close()
