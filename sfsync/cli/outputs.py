"""What `run`, `backfill` and `dead-letters retry` give people besides their logs: result files
(``--output-dir``), a dry run's whole plan, and one JSON document on stdout (``--json``).

With ``--json`` stdout carries that one document and nothing else (logs go to stderr). A dry run's
plan is streamed: in text, one line per report as it is planned; in JSON, as the document's ``plan``
array, written row by row before the summary that closes the document.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import IO, Any

from sfsync.domain.outcome import ReportOutcome, ReportResult
from sfsync.errors import UsageError
from sfsync.ops.results import ResultFiles


def add_output_options(parser: argparse.ArgumentParser, *, json_help: str) -> None:
    parser.add_argument("--output-dir", metavar="DIR",
                        help="write success.csv and error.csv here, one row per report (Task Id, message id, old "
                             "and new SMS Status and Code, outcome, error), as Salesforce Data Loader does")
    parser.add_argument("--json", action="store_true", help=json_help)


def _shown(status: str | None, code: str | None) -> str:
    if not status:
        return "(empty)"
    return f"{status} ({code})" if code else status


class PlanPrinter:
    """A dry run's plan on stdout, row by row: text lines, or the ``plan`` array of the JSON document."""

    def __init__(self, as_json: bool, out: IO[str] | None = None):
        self.as_json = as_json
        self.out = out or sys.stdout
        self.rows = 0

    def __call__(self, row: ReportResult) -> None:
        if self.as_json:
            item = {"task_id": row.task_id, "message_id": row.message_id, "report_id": row.report_id,
                    "old_status": row.old_status, "old_code": row.old_code, "new_status": row.new_status,
                    "new_code": row.new_code, "outcome": row.outcome.value, "error": row.error}
            self.out.write(("{\"plan\": [\n  " if not self.rows else ",\n  ") + json.dumps(item))
        else:
            if not self.rows:
                self.out.write("dry run plan, every report planned (outcome, Task, SMS Status now -> planned):\n")
            why = f"  [{row.error}]" if row.error else ""
            old = _shown(row.old_status, row.old_code) if row.task_id else "-"  # no Task: nothing known
            self.out.write(f"  {row.outcome.value:17} {row.task_id or '-':18}  {old}"
                           f" -> {_shown(row.new_status, row.new_code)}  message {row.message_id or '-'}{why}\n")
        self.rows += 1

    def close_json(self, document: dict[str, Any]) -> None:
        """End the JSON document the plan opened (or write it whole when nothing was planned)."""
        rest = json.dumps(document, indent=2, default=str)
        if not self.rows:
            self.out.write(json.dumps({"plan": [], **document}, indent=2, default=str) + "\n")
            return
        self.out.write("\n],\n" + rest[1:].lstrip("\n") + "\n")


class Outputs:
    """The results sink of one command, and how it ends on stdout."""

    def __init__(self, args: argparse.Namespace, *, dry_run: bool):
        self.as_json = bool(getattr(args, "json", False))
        if getattr(args, "loop", False) and (self.as_json or getattr(args, "output_dir", None)):
            raise UsageError("--json and --output-dir describe one run: they do not go with --loop")
        folder = getattr(args, "output_dir", None)
        self.files = ResultFiles(folder) if folder else None  # an unwritable folder fails here, before any fetch
        self.plan = PlanPrinter(self.as_json) if dry_run and self.files is None else None
        self.by_label: Counter[str] = Counter()  # planned (or made) writes per new SMS Status

    def __call__(self, row: ReportResult) -> None:
        if row.outcome in (ReportOutcome.WOULD_WRITE, ReportOutcome.APPLIED):
            self.by_label[row.new_status or "?"] += 1
        if self.files is not None:
            self.files(row)
        if self.plan is not None:
            self.plan(row)

    def close(self) -> None:
        if self.files is not None:
            self.files.close()

    def files_dict(self) -> dict[str, Any] | None:
        if self.files is None:
            return None
        success, error = self.files.paths
        rows = sum(self.files.counts.values())
        return {"success": str(success), "error": str(error), "success_rows": rows - self.files.errors,
                "error_rows": self.files.errors}

    def finish(self, document: dict[str, Any]) -> None:
        """Close the files; with --json, the one document on stdout (the plan's end, for a dry run)."""
        self.close()
        if not self.as_json:
            files = self.files_dict()
            if files:
                print(f"results: {files['success_rows']} row(s) in {files['success']}, {files['error_rows']} in "
                      f"{files['error']}")
            return
        document = {**document, **({"output_dir": self.files_dict()} if self.files else {})}
        if self.plan is not None:
            self.plan.close_json(document)
        else:
            print(json.dumps(document, indent=2, default=str))

    def by_label_text(self) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted(self.by_label.items()))
