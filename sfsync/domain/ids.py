"""Salesforce record Ids, normalised once where they enter sfsync.

A Salesforce Id is 15 case-sensitive alphanumeric characters, or those 15 plus a 3-character
suffix that encodes the case of their letters, which makes the 18-character form safe to compare
case-insensitively. Salesforce resolves every spelling of one record to the same record: the
15-character form, and the 18-character form with the letters (suffix included) in any case. sfsync
turns all of them into the one canonical form, the 18-character Id with its letters in their
original case and an upper-case suffix, so that two spellings of one Task compare equal.

The suffix: split the first 15 characters into three chunks of five; per chunk, a 5-bit number with
bit ``i`` set when character ``i`` is an upper-case letter (first character lowest); that number
indexes ``A``-``Z`` then ``0``-``5``.
"""

from __future__ import annotations

import re

TASK_PREFIX = "00T"
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_SHAPE = re.compile(r"[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?")


def checksum(id15: str) -> str:
    """The 3-character suffix of a 15-character Id."""
    if len(id15) != 15:
        raise ValueError("a 15-character Id is needed")
    suffix = ""
    for start in (0, 5, 10):
        bits = sum(1 << i for i, ch in enumerate(id15[start : start + 5]) if "A" <= ch <= "Z")
        suffix += _ALPHABET[bits]
    return suffix


def canonical_id(value: object) -> str | None:
    """The canonical 18-character form of a 15- or 18-character Id, or None when it is not one.

    An 18-character Id is read as Salesforce reads it, case-insensitively: its suffix says which
    letters of the first 15 are upper case. A suffix that cannot describe those 15 characters (a bit
    set for a digit) is not an Id."""
    if not isinstance(value, str) or not _SHAPE.fullmatch(value):
        return None
    if len(value) == 15:
        return value + checksum(value)
    head, suffix = value[:15], value[15:].upper()
    if checksum(head) == suffix:
        return head + suffix  # the common case: only the suffix's case (if anything) differs
    chars = list(head)
    for chunk, letter in enumerate(suffix):
        bits = _ALPHABET.find(letter)
        if bits < 0:
            return None  # 6-9 never appear in a suffix
        for i in range(5):
            pos, upper = chunk * 5 + i, bool(bits >> i & 1)
            if chars[pos].isalpha():
                chars[pos] = chars[pos].upper() if upper else chars[pos].lower()
            elif upper:
                return None
    fixed = "".join(chars)
    return fixed + checksum(fixed)


def task_id(value: object) -> str | None:
    """The canonical form of a Task Id (key prefix ``00T``), or None for anything else."""
    if isinstance(value, str):
        value = value.strip()
    canonical = canonical_id(value)
    return canonical if canonical is not None and canonical.startswith(TASK_PREFIX) else None


def same_record(a: str, b: str) -> bool:
    """Whether two Ids, in any valid form, name the same record."""
    ca, cb = canonical_id(a), canonical_id(b)
    return ca is not None and ca == cb
