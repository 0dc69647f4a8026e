"""The simulators' HTTP values: a route's ``Request`` (with a body reader that handles both
Content-Length and chunked bodies), its ``Response``, and the ``HttpError`` a route raises to answer
with an error in the simulator's own error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import Any


class HttpError(Exception):
    """Raised by a route to answer with an error in the simulator's own error shape."""

    def __init__(self, status: int, message: str, code: str | None = None, details: Any = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.details = details


class BodyReader:
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
    reader: BodyReader
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

