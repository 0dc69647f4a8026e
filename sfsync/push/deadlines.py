"""The push receiver's whole-request deadline (slowloris): one thread watches every connection."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

log = logging.getLogger("sfsync.serve")


class Deadlines:
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
