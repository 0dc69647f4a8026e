"""RFC 9112 message framing, checked on a request's header lines exactly as they arrived.

The standard library's header parser is lenient (it reads ``Transfer-Encoding : chunked`` as no
header at all, unfolds obsolete line folding, keeps the last of two Content-Length values): two
parsers on the way could read one request's length differently, which is how requests are
smuggled. So the raw lines are checked before anything is read by them, and every ambiguity RFC
9112 names is refused (400, connection closed):

* a field line that is not ``token ":" value`` — whitespace between the name and its colon
  (RFC 9112 5.1: MUST be 400), no colon, a name that is not a token;
* obsolete line folding (a line starting with SP or HTAB; RFC 9112 5.2);
* a bare CR, or a NUL, inside a line (RFC 9112 2.2; RFC 9110 5.5);
* a Content-Length that is not one run of digits, or a list, or several differing values
  (RFC 9112 6.3 item 5; identical duplicate lines are one value, as RFC 9110 8.6 allows);
* Transfer-Encoding together with Content-Length (RFC 9112 6.1: MAY be treated as an error, and a
  server that does not must close the connection anyway), or whose final coding is not ``chunked``
  (RFC 9112 6.3 item 4: MUST be 400 and close).

A Transfer-Encoding of a final ``chunked`` alone is not ambiguous; the receiver refuses chunked
bodies with 411 elsewhere, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
DIGITS = re.compile(rb"[0-9]{1,18}")
MAX_REASON = 120


class Recorder:
    """Wraps a request's ``rfile`` while the standard library reads the header block: keeps each
    line as read (``readline`` is all ``http.client.parse_headers`` uses)."""

    def __init__(self, inner: object):
        self.inner = inner
        self.lines: list[bytes] = []

    def readline(self, limit: int = -1) -> bytes:
        line: bytes = self.inner.readline(limit)  # type: ignore[attr-defined]
        self.lines.append(line)
        return line

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def framing_problem(lines: Iterable[bytes]) -> str | None:
    """What makes a header block's framing ambiguous (for the answer), or None when it is sound.
    ``lines``: the field lines as read, each with its line ending, the empty line included or not."""
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for raw in lines:
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
        if not line:
            break  # the end of the header block
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding (a header line starting with whitespace)"
        if b"\r" in line:
            return "a bare CR inside a header line"
        if b"\x00" in line or b"\n" in line:
            return "a NUL or LF inside a header line"
        name, colon, value = line.partition(b":")
        if not colon:
            return f"a header line without a colon ({_shown(line)})"
        if not TOKEN.fullmatch(name):
            if name.rstrip(b" \t") != name:
                return f"whitespace between the header name and its colon ({_shown(name)})"
            return f"a header name that is not a token ({_shown(name)})"
        value = value.strip(b" \t")
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.append(value)
        elif lowered == b"transfer-encoding":
            codings.extend(c.strip(b" \t").lower() for c in value.split(b","))
    if codings:
        if lengths:
            return "Transfer-Encoding together with Content-Length"
        if codings[-1] != b"chunked":
            return "a Transfer-Encoding whose final coding is not chunked"
    if lengths:
        bad = next((v for v in lengths if not DIGITS.fullmatch(v)), None)
        if bad is not None:
            return f"an invalid Content-Length ({_shown(bad)}: digits only, one value)"
        if len(set(lengths)) > 1:
            return "several differing Content-Length values"
    return None


def _shown(text: bytes) -> str:
    shown = repr(text.decode("latin-1"))
    return shown if len(shown) <= MAX_REASON else shown[: MAX_REASON - 3] + "..."
