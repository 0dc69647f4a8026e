"""Files sfsync writes for people (result files, the HTML report, a public key): created so that
nothing is ever written through a link, and CSV cells a spreadsheet would run made inert.

Links: a name given to write must not be a symbolic link already (someone may have planted
``out/success.csv -> ~/.ssh/authorized_keys`` in a shared folder): that is refused with a
``ConfigError`` (exit 3) naming the file. The content goes to a new file made in the same folder
(``O_EXCL``, never following a link) which then takes the name with ``os.replace``: replacing a
directory entry never writes through it, so a link (or a hard link) planted between the check and
the replace loses its entry, and the file it pointed to is left as it was. The folder itself may be a
link: that is the user's choice.

Spreadsheets (OWASP's CSV injection rule): a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return is a formula to Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)``,
``=1+cmd|'/C calc'!A0``). Every CSV sfsync writes (``success.csv``, ``error.csv``, ``dead-letters list
--csv``) puts a single quote ``'`` before such a cell, which the spreadsheet shows as text. The values
in these files are ids, SMS Statuses, codes and error text: no legitimate cell is a negative number,
so nothing meant as a number is changed. A row holding a carriage return anywhere is written with every
cell quoted (Python's csv module quotes only the characters of the line terminator, ``\n`` here), so
a reader never takes that ``\r`` for the end of a row.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from sfsync.errors import ConfigError

FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def inert(cell: Any) -> Any:
    """``cell`` as a spreadsheet shows it without running it: a leading ``'`` before a formula lead."""
    if isinstance(cell, str) and cell.startswith(FORMULA_LEADS):
        return "'" + cell
    return cell


def inert_row(cells: Iterable[Any]) -> list[Any]:
    return [inert(c) for c in cells]


class CsvOut:
    """A CSV writer (lines end in ``\n``) whose rows are made inert for spreadsheets."""

    def __init__(self, out: IO[str]):
        self._minimal = csv.writer(out, lineterminator="\n")
        self._all = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)

    def writerow(self, cells: Iterable[Any]) -> None:
        row = inert_row(cells)
        quoted = any(isinstance(c, str) and "\r" in c for c in row)
        (self._all if quoted else self._minimal).writerow(row)


def refuse_link(path: Path, what: str) -> None:
    """A ``ConfigError`` when ``path`` is a symbolic link (or anything but a regular file), not followed."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be checked ({exc.strerror or exc})") from exc
    import stat

    if stat.S_ISLNK(mode):
        raise ConfigError(f"{what} {path} is a symbolic link: sfsync does not write through a link left in the "
                          "folder; remove it (or choose another folder) and run again")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} {path} exists and is not a regular file: remove it (or choose another folder)")


def replacing(path: Path, what: str, *, mode: int = 0o600, text: bool = True) -> IO[Any]:
    """``path`` opened for writing as a new file (``mode``) that has taken the name at once (so rows
    written as they come are readable while a run goes on). Refuses a link at ``path``."""
    refuse_link(path, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return os.fdopen(fd, "w", newline="", encoding="utf-8") if text else os.fdopen(fd, "wb")


def write_replacing(path: Path, data: str | bytes, what: str, *, mode: int = 0o644, refuse: bool = True) -> None:
    """Write ``data`` whole to a new file that then takes the name ``path`` (never a half-written file,
    never through a link). ``refuse``: a link at ``path`` is an error (otherwise the new file replaces
    the link itself, as for a file the configuration names)."""
    if refuse:
        refuse_link(path, what)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
