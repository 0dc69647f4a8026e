"""The code map: MessageMedia's delivery status codes and status strings, and what to write.

Loads ``config/status_codes.toml`` once, validates it, and answers one question for the worker:
``resolve(status, code)`` -> the SMS Status label, the normalised code, whether it is final, and
whether it was known. Unknown codes and statuses are kept (never dropped, never a crash).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sfsync.errors import ConfigError

log = logging.getLogger(__name__)

CATEGORIES = ("processing", "pending", "delivered", "discarded", "failed")
LABELS = ("Sending", "Scheduled", "Submitted", "Delivered", "Failed", "Rejected", "Stopped")
_CODE_RE = re.compile(r"^[1-4]\d{2}$")
# The installed package carries the map at sfsync/data (a link to config/ in the source tree).
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "status_codes.toml"


@dataclass(frozen=True)
class CodeEntry:
    code: str
    meaning: str
    category: str
    sms_status: str
    final: bool
    hint: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code, "meaning": self.meaning, "category": self.category,
            "sms_status": self.sms_status, "final": self.final, "hint": self.hint,
        }


@dataclass(frozen=True)
class Resolution:
    """What to write on the Task for one report."""

    label: str  # the SMS Status
    code: str | None  # the SMS Status Code, normalised, as received when unknown
    final: bool
    known: bool  # False when the code (or, with no code, the status) is not in the map


@dataclass(frozen=True)
class CodeMap:
    codes: dict[str, CodeEntry]
    statuses: dict[str, str]
    final_labels: frozenset[str]
    unknown_label: str

    def is_final(self, label: str | None) -> bool:
        return label in self.final_labels

    @property
    def labels(self) -> list[str]:
        return sorted({*self.statuses.values(), *(e.sms_status for e in self.codes.values()), self.unknown_label})


def normalise_code(code: object) -> str | None:
    """A code as a plain string: 220, "220", " 220 ", 220.0 -> "220"; empty or None -> None."""
    if code is None or isinstance(code, bool):
        return None
    if isinstance(code, float) and code.is_integer():
        code = int(code)
    text = str(code).strip()
    return text or None


def normalise_meaning(text: str) -> str:
    """Consistent punctuation: single spaces, one full stop at the end."""
    text = " ".join(text.split())
    return text.rstrip(" .;,") + "."


def _fail(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"code map {path}: {problem}. Fix the file (see docs/configuration.md, 'The code map').")


def load_code_map(path: Path | str | None = None) -> CodeMap:
    """Read and validate a code map file; every defect is a ConfigError naming what to fix."""
    path = Path(path or os.environ.get("SFSYNC_CODE_MAP") or DEFAULT_PATH)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise _fail(path, "file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"not valid TOML ({exc})") from exc
    if data.get("schema_version") != 1:
        raise _fail(path, "schema_version must be 1")
    final_labels = frozenset(data.get("final_labels", ()))
    unknown_label = data.get("unknown_label", "Unknown")
    statuses: dict[str, str] = {}
    for status, label in data.get("statuses", {}).items():
        if label not in LABELS:
            raise _fail(path, f"status {status!r} maps to unknown label {label!r}")
        statuses[status.lower()] = label
    codes: dict[str, CodeEntry] = {}
    for raw in data.get("codes", []):
        try:
            entry = CodeEntry(
                code=str(raw["code"]), meaning=str(raw["meaning"]), category=str(raw["category"]),
                sms_status=str(raw["sms_status"]), final=bool(raw["final"]), hint=str(raw["hint"]),
            )
        except KeyError as exc:
            raise _fail(path, f"entry {raw.get('code', '?')} lacks {exc.args[0]!r}") from exc
        if not _CODE_RE.match(entry.code):
            raise _fail(path, f"code {entry.code!r} is not a three-digit delivery status code")
        if entry.code in codes:
            raise _fail(path, f"code {entry.code} is listed twice")
        if entry.category not in CATEGORIES:
            raise _fail(path, f"code {entry.code} has unknown category {entry.category!r}")
        if entry.sms_status not in LABELS:
            raise _fail(path, f"code {entry.code} has unknown SMS Status {entry.sms_status!r}")
        if entry.final != (entry.sms_status in final_labels):
            raise _fail(path, f"code {entry.code}: final={entry.final} contradicts label {entry.sms_status}")
        if entry.meaning != normalise_meaning(entry.meaning):
            raise _fail(path, f"code {entry.code}: meaning {entry.meaning!r} is not normalised")
        if re.search(r"\b[1-4]\d{2}:", entry.meaning):
            raise _fail(path, f"code {entry.code}: meaning holds another code ({entry.meaning!r})")
        if not entry.hint.strip():
            raise _fail(path, f"code {entry.code} has no hint")
        codes[entry.code] = entry
    if not codes or not statuses:
        raise _fail(path, "no codes or no statuses")
    return CodeMap(codes, statuses, final_labels, unknown_label)


@cache
def default_map() -> CodeMap:
    return load_code_map()


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_once(kind: str, value: str, message: str, *args: object) -> None:
    with _warned_lock:
        if (kind, value) in _warned:
            return
        _warned.add((kind, value))
    log.warning(message, *args, extra={"event": f"unknown_{kind}" if kind != "disagreement" else kind})


def resolve(status: str | None, code: object = None, code_map: CodeMap | None = None,
            message_id: str | None = None, *, quiet: bool = False) -> Resolution:
    """The one function the worker calls to turn a report's status and code into Task values.

    A known code decides the label. An unknown code is written as received, with the label from
    the status string (or "Unknown"). When code and status disagree, the code wins (logged at info).
    ``quiet``: log nothing (a read-only look at stored reports, as `sfsync trace`, finds nothing new).
    """
    cmap = code_map or default_map()
    status_key = (status or "").strip().lower()
    status_label = cmap.statuses.get(status_key)
    if status_key and status_label is None and not quiet:
        _warn_once("status", status_key, "unknown MessageMedia status %r kept as %s", status_key, cmap.unknown_label)
    code_text = normalise_code(code)
    entry = cmap.codes.get(code_text or "")
    if entry is not None:
        # Worth a warning only when the status claims an outcome the code contradicts
        # ("failed" with 220); a status that lags behind its code ("submitted" with 221) is normal.
        if cmap.is_final(status_label) and status_label != entry.sms_status and not quiet:
            # Normal mapping (the code is the more precise of the two): info, naming the message.
            log.info("message %s: status %r disagrees with code %s (%s); the code wins", message_id or "?",
                     status_key, entry.code, entry.sms_status,
                     extra={"event": "disagreement", "message_id": message_id})
        return Resolution(entry.sms_status, entry.code, entry.final, True)
    if code_text is not None and not quiet:
        _warn_once("code", code_text, "unknown delivery status code %r kept as received", code_text)
    label = status_label or cmap.unknown_label
    return Resolution(label, code_text, cmap.is_final(label), code_text is None and status_label is not None)
