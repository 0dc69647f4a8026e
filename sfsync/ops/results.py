"""Result files in the manner of Salesforce Data Loader: ``success.csv`` and ``error.csv`` in one folder.

Data Loader writes the rows it processed back out, each with the columns it was given plus ``ID``
and ``STATUS`` in its success file, or plus ``ERROR`` in its error file. Here a row is one report's
result for one Task (``ReportResult``): ``ID`` is the Task Id, then the message and report ids, the
Task's SMS Status and Code as last known and as the report has them, the outcome, and ``STATUS``
(what was done) or ``ERROR`` (why not). Both files get their header at once, so an empty run still
leaves two readable files; rows are written as the run decides them (a run of any size). A report held
by a transient failure is tried again in the same run: its ``held`` row waits until the run ends, and is
dropped when a later row settles that report, so each report has one row. No report body is written:
no phone number, no message text; free text is masked as the logs mask it.

The files hold Task Ids and message ids: each is created 0600, and a folder created here 0700. Each
is a new file that takes its name (``sfsync.ops.files``): a symbolic link left in the folder under
either name is refused (exit 3, naming it), never written through. Cells a spreadsheet would run as a
formula (a leading ``=``, ``+``, ``-``, ``@``, tab or carriage return) get a leading ``'``: an SMS
Status read from a Task, or a code from a report, is data, never a formula.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from sfsync.domain.outcome import ReportOutcome, ReportResult
from sfsync.errors import ConfigError
from sfsync.logs import masked
from sfsync.ops.files import CsvOut, refuse_link, replacing

SUCCESS_FILE = "success.csv"
ERROR_FILE = "error.csv"
COLUMNS = ("ID", "MESSAGE_ID", "REPORT_ID", "OLD_STATUS", "OLD_CODE", "NEW_STATUS", "NEW_CODE", "OUTCOME")
DONE = {  # the STATUS of a success row, in words
    ReportOutcome.APPLIED: "Task updated",
    ReportOutcome.SKIPPED_UNCHANGED: "already up to date",
    ReportOutcome.SKIPPED_STALE: "left as it is",
    ReportOutcome.WAITING: "kept until its Task exists",
    ReportOutcome.WOULD_WRITE: "would update the Task",
    ReportOutcome.WOULD_WAIT: "would wait for its Task",
}


def _private(path: Path) -> IO[str]:
    """``path`` opened for writing: a new file readable by its owner only, never one a link points to."""
    return replacing(path, "--output-dir", mode=0o600)


class ResultFiles:
    """A results sink writing ``success.csv`` and ``error.csv`` in ``folder``. Opening it checks the
    folder can be written (a ``ConfigError``, exit 3, otherwise): open it before fetching anything."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.counts: Counter[ReportOutcome] = Counter()
        self._lock = threading.Lock()
        self._held: dict[str, dict[str | None, ReportResult]] = {}  # report -> Task -> its held row
        try:
            if not self.folder.is_dir():
                self.folder.mkdir(mode=0o700, parents=True)
            for name in (SUCCESS_FILE, ERROR_FILE):  # both refused before either is made
                refuse_link(self.folder / name, "--output-dir")
            self._success = _private(self.folder / SUCCESS_FILE)
        except OSError as exc:
            raise ConfigError(f"--output-dir {self.folder}: the result files cannot be written there "
                              f"({exc.strerror or exc}); give a folder this user can write") from exc
        try:
            self._error = _private(self.folder / ERROR_FILE)
        except OSError as exc:
            self._success.close()
            raise ConfigError(f"--output-dir {self.folder}: {ERROR_FILE} cannot be written there "
                              f"({exc.strerror or exc})") from exc
        self._writers = {False: CsvOut(self._success), True: CsvOut(self._error)}
        self._writers[False].writerow([*COLUMNS, "STATUS"])
        self._writers[True].writerow([*COLUMNS, "ERROR"])
        for out in (self._success, self._error):
            out.flush()

    @property
    def paths(self) -> tuple[Path, Path]:
        return self.folder / SUCCESS_FILE, self.folder / ERROR_FILE

    @property
    def errors(self) -> int:
        return sum(n for outcome, n in self.counts.items() if outcome.failed)

    def __call__(self, row: ReportResult) -> None:
        with self._lock:
            if row.outcome is ReportOutcome.HELD and row.report_id:
                self._held.setdefault(row.report_id, {})[row.task_id] = row  # written at the end, unless settled
                return
            if row.report_id:
                self._held.pop(row.report_id, None)
            self._write(row)

    def _write(self, row: ReportResult) -> None:
        failed = row.outcome.failed
        if failed:
            last = masked(row.error) or row.outcome.value
        else:
            done = DONE.get(row.outcome, row.outcome.value)
            last = f"{done}: {masked(row.error)}" if row.error else done
        cells = [row.task_id, row.message_id, row.report_id, row.old_status, row.old_code, row.new_status,
                 row.new_code, row.outcome.value, last]
        self._writers[failed].writerow("" if c is None else c for c in cells)
        self.counts[row.outcome] += 1

    def close(self) -> None:
        with self._lock:
            if self._success.closed:
                return
            for rows in self._held.values():
                for row in rows.values():
                    self._write(row)
            self._held.clear()
            for out in (self._success, self._error):
                out.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
