"""`sfsync serve` refuses every request framing RFC 9112 calls ambiguous (issue #20 item 8).

A request whose length two parsers could read differently (whitespace before a header's colon,
an invalid or doubled Content-Length, Transfer-Encoding with Content-Length or without a final
``chunked``, obsolete line folding, a bare CR) is request smuggling's way in: the receiver answers
400 and closes the connection, and stores nothing. Raw sockets against a real receiver on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import new_message_id, report
from tests.test_receiver_hostile import HEADER, SECRET, MakeServer, connect, make_server, stored_ids

__all__ = ["make_server"]  # the fixture, shared with the hostile-input tests


def read_all(sock: socket.socket, deadline_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes)."""
    sock.settimeout(deadline_s)
    got = b""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            break
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"the connection was kept open after {got[:200]!r}")


BODY = json.dumps(report(new_message_id(), "delivered")).encode()  # a valid push: stored if let through


def request(*header_lines: bytes, body: bytes = BODY, line_end: bytes = b"\r\n") -> bytes:
    head = [b"POST /delivery-reports HTTP/1.1", b"Host: x", b"Content-Type: application/json",
            f"{HEADER}: {SECRET}".encode(), *header_lines]
    return line_end.join(head) + line_end + line_end + body


N = str(len(BODY)).encode()
CASES = {
    "space before the colon of Transfer-Encoding": request(b"Transfer-Encoding : chunked",
                                                           b"Content-Length: " + N),
    "space before the colon of Content-Length": request(b"Content-Length : " + N),
    "tab before the colon": request(b"Content-Length\t: " + N),
    "space inside a field name": request(b"Content Length: " + N),
    "a header line without a colon": request(b"Content-Length " + N),
    "Content-Length with a sign": request(b"Content-Length: +" + N),
    "Content-Length negative": request(b"Content-Length: -1"),
    "Content-Length not digits": request(b"Content-Length: 0x1b"),
    "Content-Length with inner space": request(b"Content-Length: 2 7"),
    "Content-Length as a list": request(b"Content-Length: " + N + b", " + N),
    "Content-Length as a list of differing values": request(b"Content-Length: " + N + b", 5"),
    "two differing Content-Length lines": request(b"Content-Length: " + N, b"Content-Length: 5"),
    "Transfer-Encoding chunked with Content-Length": request(b"Transfer-Encoding: chunked",
                                                             b"Content-Length: " + N),
    "Transfer-Encoding identity with Content-Length": request(b"Transfer-Encoding: identity",
                                                              b"Content-Length: " + N),
    "Transfer-Encoding gzip alone (chunked not final)": request(b"Transfer-Encoding: gzip"),
    "Transfer-Encoding chunked then gzip": request(b"Transfer-Encoding: chunked, gzip"),
    "Transfer-Encoding on two lines, chunked not final": request(b"Transfer-Encoding: chunked",
                                                                 b"Transfer-Encoding: gzip"),
    "Transfer-Encoding folded": request(b"Transfer-Encoding: gzip,", b" chunked", b"Content-Length: " + N),
    "obsolete line folding of Content-Length": request(b"Content-Length:", b" " + N),
    "obsolete line folding with a tab": request(b"Content-Length: " + N, b"X-Other: a", b"\tb"),
    "a bare CR inside a header line": request(b"X-Other: a\rContent-Length: 5", b"Content-Length: " + N),
    "a NUL in a header value": request(b"X-Other: a\x00b", b"Content-Length: " + N),
}


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_ambiguous_framing_is_400_and_closes(make_server: MakeServer, raw: bytes) -> None:
    server = make_server()
    sock = connect(server)
    try:
        # A second request pipelined behind: a receiver that read the framing one way would answer it.
        follow = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.sendall(raw + follow)
        answer = read_all(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing after the refusal was read as a request
    answered = json.loads(body)
    assert answered["error"] == "malformed" and answered["reason"].startswith("framing:"), answered
    assert stored_ids(server) == set()


def whole_response(sock: socket.socket) -> bytes:
    """One response read to its end: the head, then as many body bytes as its Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_plain_framing_still_stored_and_kept_alive(make_server: MakeServer) -> None:
    """The checks refuse only ambiguity: a clean request is stored, identical duplicate
    Content-Length lines are one length (RFC 9110 8.6 allows it), and the connection stays open."""
    server = make_server()
    one = report(new_message_id(), "delivered")
    body = json.dumps(one).encode()
    n = str(len(body)).encode()
    sock = connect(server)
    try:
        sock.sendall(request(b"Content-Length: " + n, b"Content-Length: " + n, body=body))
        sock.settimeout(5)
        first = whole_response(sock)  # headers and body: they may come in more than one segment
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert whole_response(sock).startswith(b"HTTP/1.1 ")  # the same connection answers again
    finally:
        sock.close()
    assert stored_ids(server) == {one["delivery_report_id"]}
