"""`sfsync serve`: receive the delivery reports MessageMedia pushes, and drain them into Salesforce.

A push is answered 2xx only once its reports are committed to the store's inbox (staging:
``sfsync.sources.inbox``): a crash before the answer makes MessageMedia push again, and the report id
makes the second copy a no-op. A background thread runs the engine's ``Loop`` over the inbox
(``RunOptions(inbox=True)``, the same drain as ``sfsync run``), or ``--no-drain`` leaves that to
``sfsync run --inbox``. The HTTP side (limits, deadlines, answers) is ``sfsync.push.http``.

The standard library's ``ThreadingHTTPServer`` is enough for this: one small endpoint, a request
is a few hundred bytes and one SQLite commit, and it adds no dependency to audit. TLS is best
terminated by a proxy or ingress in front; ``--tls-cert/--tls-key`` serve it directly when there
is none.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sfsync.engine import Loop, LoopState, RunOptions, RunSummary, Worker, work_due
from sfsync.engine.batching import BatchWindow
from sfsync.errors import ConfigError, UsageError
from sfsync.logs import register_secret
from sfsync.ops.metrics import MetricsState
from sfsync.push.auth import AuthFailed, PushAuth
from sfsync.push.body import MAX_JSON_DEPTH, BadPush, stage_push, validated
from sfsync.push.http import (
    HEALTH_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    AbortConnection,
    PushHTTPServer,
    Reply,
    tls_context,
)
from sfsync.push.openapi import openapi_document
from sfsync.settings.config import Settings
from sfsync.store import Store, now_utc, open_store

log = logging.getLogger("sfsync.serve")

DEFAULT_PATH = "/delivery-reports"
# A whole request (headers and body) must arrive within this, however it trickles in (slowloris).
DEFAULT_REQUEST_TIMEOUT_S = 20.0
MAX_REQUEST_TIMEOUT_S = 300.0
PRUNE_EVERY_S = 3600.0
DRAIN_TICK_S = 0.2  # how often the drain looks whether a batch is ready (a cheap read of the store)
__all__ = ["DEFAULT_PATH", "DEFAULT_REQUEST_TIMEOUT_S", "MAX_REQUEST_TIMEOUT_S", "AbortConnection", "PushServer"]


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
        self.store = store or open_store(settings.store_target)
        self.drain_interval = drain_interval
        self.inbox_retention = dt.timedelta(days=inbox_retention_days)
        self.counts: Counter[str] = Counter()
        self.metrics = MetricsState(self.store, pushes=self.push_counts)  # GET /metrics: runs, backlog, pushes
        self.after_commit: Callable[[list[str]], None] | None = None  # test hook, see AbortConnection
        self.closing = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition(self._lock)
        self._worker_factory = worker_factory or self._default_worker
        self._worker: Any = None
        # The drain: the engine's loop, run when a batch is ready (a full write's worth staged, or the
        # oldest staged report waited the window: sfsync.engine.batching) or a waiting report is due.
        self.window = BatchWindow(drain_interval)
        self._loop = Loop(self._drain_run, interval=drain_interval, stop=self._stop, due=self._work_due,
                          on_summary=self.metrics.update, state=LoopState(enabled=drain),
                          tick=min(DRAIN_TICK_S, drain_interval))
        self._next_prune = 0.0
        self._serve_thread: threading.Thread | None = None
        self._drain_thread: threading.Thread | None = None
        context = tls_context(tls_cert, tls_key) if tls_cert or tls_key else None
        self.scheme = "https" if context else "http"
        self._httpd = PushHTTPServer((host, port), self, context, max_connections, self.max_connections_per_client)
        self._openapi: bytes | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"{self.scheme}://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.port}{self.path}"

    def open_connections(self) -> dict[str, int]:
        """Connections accepted and not yet closed, per client address (the per-client cap's count)."""
        return self._httpd.connections_by_client()

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
            self.count("unauthenticated")
            log.warning("push refused from %s: %s", peer, exc.reason, extra={"event": "push_unauthenticated"})
            return Reply(401, {"error": "unauthenticated", "reason": exc.reason})
        try:
            reports = validated(body)
        except BadPush as exc:
            self.count("malformed")
            log.warning("malformed push from %s: %s", peer, exc.reason, extra={"event": "push_malformed"})
            return Reply(400, {"error": "malformed", "reason": exc.reason})
        try:
            stored = stage_push(self.store, reports)
        except (sqlite3.Error, ConfigError) as exc:
            # Not stored, so not acknowledged: MessageMedia pushes it again later.
            self.count("store_errors")
            log.error("cannot store a push: %s", exc, extra={"event": "push_store_error"})
            return Reply(503, {"error": "unavailable", "reason": "the local store cannot be written"})
        # Committed: from here on a lost answer only costs a duplicate push, stored once.
        self.count("stored", stored)
        self.count("duplicates", len(reports) - stored)
        log.debug("push stored: %d report(s), %d duplicate(s)", stored, len(reports) - stored,
                  extra={"event": "push_stored"})
        if self.after_commit is not None:
            self.after_commit([rid for rid, _ in reports])
        return Reply(200, {"stored": stored, "duplicates": len(reports) - stored})

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
            drain = self.drain_state.as_dict()  # a snapshot: the drain thread may change it meanwhile
        # 503 while stopping: a load balancer stops sending here before the port closes.
        return (503 if self.closing.is_set() else 200), {
            "status": "stopping" if self.closing.is_set() else "ok", "inbox_pending": pending,
            "pushes": counts, "drain": drain}

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def push_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    @property
    def drain_state(self) -> LoopState:
        return self._loop.state

    def metrics_page(self) -> bytes:
        return self.metrics.page().encode()

    def thread_done(self) -> None:
        self.store.close()  # a request thread's SQLite connection

    def request_started(self) -> None:
        with self._lock:
            self._inflight += 1

    def request_finished(self) -> None:
        with self._idle:
            self._inflight -= 1
            self._idle.notify_all()

    # -- the drain: the engine, again and again ---------------------------------------------------------------
    def _default_worker(self, stop: threading.Event) -> Any:
        return Worker(self.settings, store=self.store, stop=stop)

    def _drain_run(self) -> RunSummary:
        if self._worker is None:
            self._worker = self._worker_factory(self._stop)
        summary: RunSummary = self._worker.run(RunOptions(inbox=True, batch_window=self.drain_interval))
        return summary

    def _work_due(self) -> bool:
        return work_due(self.store, self.window)

    def drain_once(self) -> float:
        """One drain now if anything is staged or due, without waiting for a batch to fill or its
        window to pass (for tests and tools); returns the seconds the loop would wait before the next."""
        return self._loop.once(due=lambda: work_due(self.store))

    def _drain_loop(self) -> None:
        self._loop.forever(between=self._prune)
        self.store.close()

    def _prune(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        with contextlib.suppress(Exception):
            pruned = self.store.inbox_prune(now_utc() - self.inbox_retention)
            if pruned:
                log.info("pruned %d processed inbox row(s)", pruned, extra={"event": "inbox_pruned"})
