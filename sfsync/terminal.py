"""What sfsync prints for people never drives their terminal.

Values sfsync shows come from outside: a Task's SMS Status, a report's code, a dead letter's error,
a file name. An escape sequence in one (``\\x1b]0;title\\x07``, ``\\x1b[2J``) would set the window
title, clear the screen or forge lines; a bidi override (U+202E) would reorder what is read. So the
``sfsync`` command writes its stdout and stderr through ``VisibleText``: every C0 control but newline
and tab, DEL, the C1 controls (U+0080-U+009F), the line and paragraph separators (U+2028/2029) and the
bidi controls (U+061C, U+200E/200F, U+202A-U+202E, U+2066-U+2069) are shown as escapes (``\\x1b``,
``\\u202e``) instead. JSON output needs nothing more (``json.dumps`` escapes every one of them), and
the text log format escapes its lines too (``sfsync.logs``). What sfsync itself means as terminal
control (doctor's colours, a backfill's progress bar) is written to ``raw(stream)``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every character that would control a terminal shown as an escape."""
    return INVISIBLE.sub(_escape, text)


class VisibleText:
    """A text stream that writes ``visible(text)`` to the stream under it; anything else is the
    stream's own (``fileno``, ``isatty``, ``flush``, ``buffer``...)."""

    def __init__(self, stream: Any):
        self.raw = stream

    def write(self, text: str) -> int:
        self.raw.write(visible(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def raw(stream: Any) -> Any:
    """The stream under a ``VisibleText`` (for sfsync's own colours and progress bar), else ``stream``."""
    return stream.raw if isinstance(stream, VisibleText) else stream


@contextmanager
def visible_output() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` written through ``VisibleText`` while a command runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout = VisibleText(raw(sys.stdout))
    sys.stderr = VisibleText(raw(sys.stderr))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
