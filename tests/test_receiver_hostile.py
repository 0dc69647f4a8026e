"""`sfsync serve` under hostile input and faults (issue #14 items 1, 8, 9): slow clients, one
client hogging connections, bodies that break a parser, and failures inside a handler.

Real sockets against a receiver on 127.0.0.1 (no simulators needed: the drain is off). Clients
on other loopback addresses (127.0.0.2 and up) stand for other client machines. Every test is
bounded in time and stops its server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.client import HTTPConnection, HTTPResponse
from pathlib import Path
from typing import Any

import pytest

from sfsync.errors import UsageError
from sfsync.push.receiver import PushServer
from sfsync.settings.config import load_settings
from sfsync.sim.tls import EphemeralCA
from sfsync.store import Store
from tests.conftest import inbox_ids, new_message_id, report, store_of, wait_until

SECRET = "push-secret-for-hostile-tests-0123"
HEADER = "X-SFSync-Secret"

MakeServer = Callable[..., PushServer]


@pytest.fixture
def make_server(tmp_path: Path, store_env: dict[str, str]) -> Iterator[MakeServer]:
    started: list[PushServer] = []

    def make(**options: Any) -> PushServer:
        settings = load_settings(environ={"SFSYNC_STATE_DIR": str(tmp_path / "state"), "SFSYNC_PUSH_SECRET": SECRET,
                                          **store_env})
        server = PushServer(settings, port=0, drain=False, **options)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop(grace_seconds=2)


def connect(server: PushServer, source: str = "127.0.0.2", timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout, source_address=(source, 0))


def push(server: PushServer, body: bytes, *, source: str = "127.0.0.2", timeout: float = 5.0,
         headers: dict[str, str] | None = None) -> HTTPResponse:
    """POST from a given loopback address; the response is read before returning."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=timeout, source_address=(source, 0))
    sent = {"Content-Type": "application/json", HEADER: SECRET, **(headers or {})}
    conn.request("POST", server.path, body=body, headers=sent)
    answer = conn.getresponse()
    answer.read()
    conn.close()
    return answer


def push_json(server: PushServer, payload: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    conn = HTTPConnection("127.0.0.1", server.port, timeout=5)
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    conn.request("POST", server.path, body=body, headers={"Content-Type": "application/json", HEADER: SECRET,
                                                           **kwargs.get("headers", {})})
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer.status, json.loads(data) if data else {}


def wait_for_connections(server: PushServer, source: str, count: int, timeout: float = 10.0) -> None:
    """Wait (with a deadline) until the server holds ``count`` connections from ``source``."""
    assert wait_until(lambda: server.open_connections().get(source, 0) == count, timeout, step=0.01), \
        f"{source} holds {server.open_connections()}, not {count}"


def stored_ids(server: PushServer) -> set[str]:
    return inbox_ids(store_of(server.settings))  # read afresh, not through the server's store


class SlowClient(threading.Thread):
    """Slowloris: a request line, then one header line every ``every`` seconds, never the blank line.
    Records when the server cut it off (closed, or answered) and what it answered."""

    def __init__(self, server: PushServer, source: str, every: float = 0.25, give_up: float = 8.0):
        super().__init__(daemon=True)
        self.sock = connect(server, source)
        self.every = every
        self.give_up = give_up
        self.started = time.monotonic()
        self.cut_after: float | None = None
        self.answer = b""

    def run(self) -> None:
        self.sock.settimeout(self.every)
        try:
            self.sock.sendall(b"POST /delivery-reports HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() - self.started < self.give_up:
                try:
                    data = self.sock.recv(4096)
                except TimeoutError:
                    self.sock.sendall(b"X-Slow: 1\r\n")
                    continue
                self.answer = data
                break
        except OSError:
            pass  # reset: cut off
        else:
            if time.monotonic() - self.started >= self.give_up:
                return
        self.cut_after = time.monotonic() - self.started
        self.sock.close()


# -- item 8: slowloris --------------------------------------------------------------------------------------
def test_slow_clients_are_cut_off_and_a_push_still_gets_through(make_server: MakeServer) -> None:
    server = make_server(max_connections=4, max_connections_per_client=4, request_timeout=1.5)
    slow = [SlowClient(server, f"127.0.0.{3 + i}") for i in range(4)]
    for client in slow:
        client.start()
    # Until all four slots are held by slow clients.
    assert wait_until(lambda: sum(server.open_connections().values()) >= 4
                      or any(c.cut_after is not None for c in slow), 10, step=0.01), server.open_connections()
    one = report(new_message_id(), "delivered", "221")
    # The push waits for a slot: only the request deadline (1.5 s) can free one, as the slow clients keep
    # sending and give up only after 8 s; so an answer within the push's own timeout (6 s) is the
    # deadline at work (no wall-time bound of our own, which a loaded machine would break).
    answer = push(server, json.dumps(one).encode(), timeout=6)
    assert answer.status == 200
    assert one["delivery_report_id"] in stored_ids(server)
    for client in slow:
        client.join(timeout=10)
        # cut_after is set only when the server ended the connection (the client gives up after 8 s without).
        assert client.cut_after is not None, "a slow client held its connection"
        assert client.answer == b"" or client.answer.startswith(b"HTTP/1.1 408")


def test_a_slow_body_is_cut_off_and_nothing_is_stored(make_server: MakeServer) -> None:
    server = make_server(request_timeout=1.0)
    body = json.dumps(report(new_message_id(), "delivered")).encode()
    sock = connect(server)
    sock.sendall(f"POST /delivery-reports HTTP/1.1\r\nHost: x\r\n{HEADER}: {SECRET}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    began = time.monotonic()
    sock.settimeout(0.2)
    answer = b""
    for byte in body:  # one byte every 0.2 s: each read is quick, the whole is not
        try:
            sock.sendall(bytes([byte]))
            answer = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        break
    assert time.monotonic() - began < 3.0
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    sock.close()
    assert stored_ids(server) == set()


def test_connections_per_client_address_are_capped(make_server: MakeServer) -> None:
    server = make_server(max_connections=8, max_connections_per_client=2, request_timeout=10)
    hogs = [connect(server, "127.0.0.3") for _ in range(2)]
    for hog in hogs:
        hog.sendall(b"POST /deliv")
    wait_for_connections(server, "127.0.0.3", 2)
    third = connect(server, "127.0.0.3")
    third.settimeout(3)
    refused = third.recv(4096)
    assert refused.startswith(b"HTTP/1.1 429") and b"\r\nRetry-After: " in refused
    third.close()
    # Another client is not affected; the hogs' slots come back when they go.
    assert push(server, json.dumps(report(new_message_id(), "delivered")).encode()).status == 200
    for hog in hogs:
        hog.close()
    wait_for_connections(server, "127.0.0.3", 0)  # the hogs' slots are back
    assert push(server, json.dumps(report(new_message_id(), "delivered")).encode(), source="127.0.0.3").status == 200


# -- item 9 and hostile bodies ------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"[" * 20_000, b'{"a":' * 12_000, b'{"delivery_reports": ' + b"[" * 200 + b"]" * 200
                                  + b"}", b'{"metadata": ' + b'{"k": ' * 100 + b"1" + b"}" * 101],
                         ids=["20000 [", "12000 {", "200 deep in a list", "100 deep in metadata"])
def test_deeply_nested_json_is_400(make_server: MakeServer, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    server = make_server()
    status, answer = push_json(server, body)
    assert status == 400 and "nested" in answer["reason"]
    assert stored_ids(server) == set()
    assert any("nested" in r.getMessage() for r in caplog.records if r.name == "sfsync.serve")


@pytest.mark.parametrize(("body", "status", "reason"), [
    (b'{"delivery_report_id": "a", "message_id": "b", "status": "delivered", "error_code": ' + b"9" * 5000 + b"}",
     400, "not JSON"),
    (b'{"delivery_report_id": "a\xff\xfe", "message_id": "b", "status": "delivered"}', 400, "not JSON"),
    (b"\xef\xbb\xbf{}", 400, ""),
    (b"", 400, "not JSON"),
], ids=["huge number", "invalid UTF-8", "BOM", "empty"])
def test_hostile_bodies_are_400(make_server: MakeServer, body: bytes, status: int, reason: str) -> None:
    server = make_server()
    got, answer = push_json(server, body)
    assert got == status and reason in answer.get("reason", "")
    assert stored_ids(server) == set()


def test_a_body_that_is_not_json_by_content_type_is_415(make_server: MakeServer) -> None:
    server = make_server()
    good = report(new_message_id(), "delivered")
    for content_type in ("application/x-www-form-urlencoded", "application/xml", "text/plain"):
        status, answer = push_json(server, good, headers={"Content-Type": content_type})
        assert status == 415 and answer["error"] == "unsupported media type"
    assert stored_ids(server) == set()
    assert push_json(server, good, headers={"Content-Type": "application/json; charset=utf-8"})[0] == 200


@pytest.mark.parametrize("date", ["99999-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00",
                                  "1" * 400])
def test_a_date_out_of_range_is_answered_and_only_2xx_when_stored(make_server: MakeServer, date: str) -> None:
    server = make_server()
    one = report(new_message_id(), "delivered", submitted_date=date)
    status, _answer = push_json(server, one)  # a dropped connection raises here
    assert status == 400 or (status == 200 and one["delivery_report_id"] in stored_ids(server))


# -- item 1: any exception is an answer, logged ---------------------------------------------------------------
def test_a_parser_failure_is_400_and_logged(make_server: MakeServer, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    def broken(raw: Any, default_tz: Any = None) -> Any:
        raise OverflowError("date value out of range")

    monkeypatch.setattr("sfsync.push.body.parse_report", broken)
    server = make_server()
    status, answer = push_json(server, report(new_message_id(), "delivered"))
    assert status == 400 and "unreadable" in answer["reason"]
    assert stored_ids(server) == set()
    assert any(r.levelno >= logging.WARNING and "OverflowError" in r.getMessage() + str(r.exc_info)
               for r in caplog.records if r.name == "sfsync.serve")


def test_our_own_bug_is_500_logged_and_nothing_is_acknowledged(make_server: MakeServer,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: Store, source: str, reports: Any) -> set[str]:
        raise KeyError("a bug")

    monkeypatch.setattr(Store, "stage", broken)
    server = make_server()
    status, answer = push_json(server, report(new_message_id(), "delivered"))
    assert status == 500 and answer["error"] == "internal error"
    assert stored_ids(server) == set()
    errors = [r for r in caplog.records if r.name == "sfsync.serve" and r.levelno >= logging.ERROR]
    assert errors and errors[0].exc_info is not None

    def health_bug(self: PushServer) -> Any:
        raise ZeroDivisionError("another bug")

    monkeypatch.setattr(PushServer, "health", health_bug)
    conn = HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 500
    conn.close()


def test_bad_content_length_headers_are_400(make_server: MakeServer) -> None:
    server = make_server()
    body = json.dumps(report(new_message_id(), "delivered")).encode()
    for lengths in ([f"+{len(body)}"], [f"{len(body)}_0"], [str(len(body)), str(len(body) + 1)]):
        sock = connect(server)
        sock.sendall(f"POST /delivery-reports HTTP/1.1\r\nHost: x\r\n{HEADER}: {SECRET}\r\n".encode()
                     + b"".join(f"Content-Length: {n}\r\n".encode() for n in lengths) + b"\r\n" + body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
        sock.close()
    assert stored_ids(server) == set()


def test_brackets_inside_strings_do_not_count_as_nesting(make_server: MakeServer) -> None:
    server = make_server()
    one = report(new_message_id(), "delivered", original_text='[{"\\' + "[" * 500 + "{" * 500)
    status, answer = push_json(server, one)
    assert status == 200 and answer == {"stored": 1, "duplicates": 0}
    assert one["delivery_report_id"] in stored_ids(server)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"])
def test_other_methods_are_405_or_404_in_json_never_5xx(make_server: MakeServer, method: str) -> None:
    server = make_server()
    for path, allow in ((server.path, "POST"), ("/healthz", "GET, HEAD"), ("/openapi.json", "GET, HEAD"),
                        ("/elsewhere", None)):
        conn = HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request(method, path, body=b"{}", headers={HEADER: SECRET})
        answer = conn.getresponse()
        body = answer.read()
        conn.close()
        assert answer.status == (405 if allow else 404), (method, path, answer.status)
        assert answer.getheader("Allow") == allow
        assert answer.getheader("Content-Type") == "application/json" and "error" in json.loads(body)
    assert stored_ids(server) == set()


@pytest.mark.parametrize(("options", "message"), [
    ({"request_timeout": 0}, "--request-timeout"), ({"request_timeout": 301}, "--request-timeout"),
    ({"max_connections_per_client": 0}, "--max-connections-per-client"), ({"path": "/openapi.json"}, "--path"),
])
def test_receiver_limits_are_bounded(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    settings = load_settings(environ={"SFSYNC_STATE_DIR": str(tmp_path / "state"), "SFSYNC_PUSH_SECRET": SECRET})
    with pytest.raises(UsageError, match=message):
        PushServer(settings, port=0, drain=False, **options)


def test_over_tls_a_slow_handshake_and_slow_headers_are_cut_off(make_server: MakeServer, tmp_path: Path) -> None:
    ca = EphemeralCA.create(tmp_path / "ca")
    server = make_server(request_timeout=1.0, tls_cert=str(ca.server_cert), tls_key=str(ca.server_key))
    # A ClientHello that never completes: bytes of a TLS record header, then one more now and then.
    raw = connect(server)
    raw.settimeout(0.2)
    began = time.monotonic()
    closed = False
    raw.sendall(b"\x16\x03\x01\x02\x00")
    while time.monotonic() - began < 5 and not closed:
        try:
            raw.recv(4096)  # an alert or EOF: the server gave up on it
            closed = True
        except TimeoutError:
            with contextlib.suppress(OSError):
                raw.sendall(b"\x01")
        except OSError:
            closed = True
    raw.close()
    assert closed and time.monotonic() - began < 3.0
    # Headers trickled after a completed handshake: 408 (over TLS) or closed, within the deadline.
    context = ssl.create_default_context(cafile=str(ca.ca_bundle))
    with context.wrap_socket(connect(server), server_hostname="127.0.0.1") as tls:
        tls.settimeout(0.2)
        tls.sendall(b"POST /delivery-reports HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        answer = b""
        while time.monotonic() - began < 5:
            try:
                answer = tls.recv(4096)
                break
            except TimeoutError:
                tls.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        assert time.monotonic() - began < 3.0
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    # And a push over TLS still works.
    body = json.dumps(report(new_message_id(), "delivered")).encode()
    with context.wrap_socket(connect(server), server_hostname="127.0.0.1") as tls:
        tls.sendall(f"POST /delivery-reports HTTP/1.1\r\nHost: x\r\n{HEADER}: {SECRET}\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert tls.recv(4096).startswith(b"HTTP/1.1 200")
