"""One key per report, from the moment it is staged to the commit that marks it done.

A report's key is its MessageMedia id (``delivery_report_id``) when it has one MessageMedia accepts
in a confirmation; a report without one, or a second, different report served under an id already
seen, is keyed by its content. The key is worked out once, where a report enters sfsync (staged
from a poll or a push, read from the waiting list, a dead letter or a backfill page), and carried
with it as an ``Item``: nothing works a key out again from the raw report.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from sfsync.domain.reports import MAX_ID


class Item(NamedTuple):
    """A report as it travels: its key and the report as received."""

    key: str
    raw: Any


def confirmable_id(raw: Any) -> str | None:
    """The id MessageMedia accepts in a confirmation, or None (blank, not a string, over 100
    characters): the same reading of the id as the report parser's."""
    rid = raw.get("delivery_report_id") if isinstance(raw, dict) else None
    if not isinstance(rid, str):
        return None
    return rid if rid.strip() and len(rid) <= MAX_ID else None  # exactly as served: never stripped


def content_key(raw: Any) -> str:
    text = json.dumps(raw, sort_keys=True, default=str)
    return "raw:" + hashlib.sha256(text.encode()).hexdigest()


def keyed(raws: Iterable[Any]) -> list[Item]:
    """Each report with its key: its id, or its content for a report without a confirmable id and
    for a second, different report served under an id already among ``raws``."""
    first: dict[str, str] = {}
    out = []
    for raw in raws:
        rid = confirmable_id(raw)
        key = rid if rid is not None else content_key(raw)
        text = json.dumps(raw, sort_keys=True, default=str)
        if first.setdefault(key, text) != text:
            key = content_key(raw)
        out.append(Item(key, raw))
    return out


def message_key(key: str, raw: Any) -> str:
    """What groups staged reports into one claim and one write: their message id, or the report's
    own key when it has none."""
    message = raw.get("message_id") if isinstance(raw, dict) else None
    if isinstance(message, str | int) and str(message).strip():
        return "m:" + str(message).strip()
    return "r:" + key
