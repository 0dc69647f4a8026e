"""Logging: one JSON object per line when stderr is not a terminal, readable lines when it is.

Phone numbers are masked (all but the last three digits) in every record above DEBUG, and any
secret registered here, and the user-info of any URL (``https://user:password@host``), is
redacted from every record, whatever its level.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import threading
from typing import Any

from sfsync.terminal import visible

# a digit run of phone length, but never part of a word, a decimal, a path or a UUID (whose first group
# can be eight digits: 1 message id in 40)
PHONE = re.compile(r"(?<![\w.\-/])\+?\d{8,15}(?![\w.])(?!-[0-9A-Fa-f]{4}-)")
# scheme://user-info@; wider than RFC 3986's user-info (a raw '/' in a password must not leak the rest)
URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^@\s'\"<>]*@")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """Redact this value from every log record from now on."""
    if value and len(value) >= 4:
        with _secrets_lock:
            _secrets.add(value)


def redact_urls(text: str) -> str:
    """``text`` (a URL, or a message holding URLs) without any URL's user name and password."""
    return URL_USERINFO.sub(r"\1***@", text)


def mask_phone(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        digits = match.group(0)
        return digits[0] + "*" * (len(digits) - 4) + digits[-3:] if digits.startswith("+") else \
            "*" * (len(digits) - 3) + digits[-3:]

    return PHONE.sub(hide, text)


def _clean(value: Any, mask: bool) -> Any:
    if isinstance(value, str):
        for secret in sorted(_secrets, key=len, reverse=True):  # longest first: one may contain another
            if secret in value:
                value = value.replace(secret, "***")
        value = redact_urls(value)
        return mask_phone(value) if mask else value
    if isinstance(value, dict):
        return {k: _clean(v, mask) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, mask) for v in value]
    return value


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        mask = record.levelno > logging.DEBUG
        payload: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _clean(record.getMessage(), mask),
        }
        payload.update(_clean(_fields(record), mask))
        if record.exc_info:
            payload["exc"] = _clean(self.formatException(record.exc_info), mask)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        mask = record.levelno > logging.DEBUG
        extra = _fields(record)
        extra.pop("event", None)
        tail = "  " + " ".join(f"{k}={v}" for k, v in _clean(extra, mask).items()) if extra else ""
        line = f"{record.levelname.lower():7} {_clean(record.getMessage(), mask)}{tail}"
        if record.exc_info:
            line += "\n" + _clean(self.formatException(record.exc_info), mask)
        return visible(line)  # a value in a line never drives the terminal (JSON lines are escaped already)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when set up."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup(fmt: str = "auto", level: int = logging.INFO, stream: Any = None) -> None:
    """Configure the root logger once per process (idempotent)."""
    if fmt == "auto":
        fmt = "text" if getattr(stream or sys.stderr, "isatty", lambda: False)() else "json"
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "simple_salesforce", "sfsync.sim"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


# Keys whose value is the text of an SMS (MessageMedia's ``original_text`` in delivery reports, ``content``
# in messages): shown to people only as its length.
MESSAGE_TEXT_KEYS = frozenset({"original_text", "content", "message_text"})


def masked(value: Any) -> Any:
    """``value`` (a report, a dead letter...) as the logs would show it: secrets and URL user-info
    redacted, phone numbers masked, message text replaced by its length."""
    if isinstance(value, dict):
        return {k: f"[{len(v)} characters hidden]" if k in MESSAGE_TEXT_KEYS and isinstance(v, str)
                else masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return _clean(value, True)
