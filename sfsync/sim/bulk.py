"""Bulk API 2.0 ingest (update only) for the Salesforce simulator.

As Salesforce does, rows are applied only after the job is marked ``UploadComplete``, and
asynchronously: a background thread waits the configured processing delay (the job shows
``InProgress`` half-way), applies the rows, then moves the job to ``JobComplete`` (or ``Failed``).
A client that dies after ``UploadComplete`` leaves a job that still lands later.

Uploads are streamed: each CSV row is parsed as it arrives and spooled (on disk past a few MB), so a
million-row upload needs memory for one row at a time; per-row results go to spooled files too.
Failed results carry ``sf__Id`` only from API version 53.0, and put ``sf__Error`` first: a client
must read the result columns by name.
"""

from __future__ import annotations

import csv
import itertools
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from sfsync.sim.base import HttpError
from sfsync.sim.soql import make_id, now_text

# (raw Id, {field: text or None for #N/A}) -> (sf__Id, error text or None); the simulator's one write rule.
RowWriter = Callable[[str, dict[str, str | None]], tuple[str, str | None]]
# header -> canonical field names (raises ValueError naming the bad column).
ColumnResolver = Callable[[list[str]], list[str]]

JOB_PREFIX = "750"
USER_ID = make_id("005", 1)  # the integration user every job and token belongs to
DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
TERMINAL = ("JobComplete", "Failed", "Aborted")
RESULT_KINDS = ("successfulResults", "failedResults", "unprocessedRecords")
NULL_MARK = "#N/A"  # a CSV cell that sets the field to null; an empty cell leaves it unchanged
SPOOL_BYTES = 4 << 20
SF_ID_SINCE = 53.0  # failedResults carry sf__Id from this API version on


def _spool() -> IO[str]:
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+", newline="", encoding="utf-8")


def _text_lines(lines: Iterable[bytes]) -> Iterator[str]:
    first = True
    for raw in lines:
        text = raw.decode("utf-8", errors="replace")
        if first:
            text = text.lstrip("\ufeff")
            first = False
        yield text


@dataclass
class IngestJob:
    id: str
    object: str
    api_version: str
    line_ending: str
    delimiter_name: str
    created: str
    state: str = "Open"
    columns: list[str] | None = None  # the header as uploaded
    fields: list[str] = field(default_factory=list)  # canonical field per column
    processed: int = 0
    failed: int = 0
    error_message: str | None = None
    closed_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: IO[str] | None = None  # uploaded rows, applied after UploadComplete
    pending_writer: Any = None
    files: dict[str, IO[str]] = field(default_factory=dict)
    writers: dict[str, Any] = field(default_factory=dict)

    @property
    def delimiter(self) -> str:
        return DELIMITERS[self.delimiter_name]

    def writer(self, kind: str) -> Any:
        if kind not in self.writers:
            self.files[kind] = _spool()
            self.writers[kind] = csv.writer(self.files[kind], delimiter=self.delimiter,
                                            lineterminator=LINE_ENDINGS[self.line_ending])
        return self.writers[kind]

    def spool_row(self, row: list[str]) -> None:
        if self.pending is None:
            self.pending = _spool()
            self.pending_writer = csv.writer(self.pending, lineterminator="\n")
        self.pending_writer.writerow(row)

    def pending_rows(self) -> Iterator[list[str]]:
        if self.pending is None:
            return iter(())
        self.pending.seek(0)
        return csv.reader(self.pending)

    def close_files(self) -> None:
        for handle in self.files.values():
            handle.close()
        if self.pending is not None:
            self.pending.close()
            self.pending = None
        self.files.clear()
        self.writers.clear()

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": self.id, "operation": "update", "object": self.object, "createdById": USER_ID,
            "createdDate": self.created, "systemModstamp": self.created, "state": self.state,
            "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(self.api_version),
            "jobType": "V2Ingest", "contentUrl": f"services/data/v{self.api_version}/jobs/ingest/{self.id}/batches",
            "lineEnding": self.line_ending, "columnDelimiter": self.delimiter_name,
            "numberRecordsProcessed": self.processed, "numberRecordsFailed": self.failed, "retries": 0,
            "totalProcessingTime": 0, "apiActiveProcessingTime": 0, "apexProcessingTime": 0,
        }
        if self.error_message:
            info["errorMessage"] = self.error_message
        return info


def _state_error(job: IngestJob, wanted: str) -> HttpError:
    return HttpError(400, f"Job {job.id} is in state {job.state}, not {wanted}", "INVALIDJOBSTATE")


class BulkIngest:
    """The ingest jobs of one simulator."""

    def __init__(self, resolve_columns: ColumnResolver, write_row: RowWriter, processing_s: Callable[[], float],
                 stopping: threading.Event | None = None):
        self.resolve_columns = resolve_columns
        self.write_row = write_row
        self.processing_s = processing_s
        self.jobs: dict[str, IngestJob] = {}
        self._lock = threading.Lock()
        self._stopping = stopping or threading.Event()  # set when the simulator stops
        self._numbers = itertools.count(20_000_000_000, 7_919)

    # -- job lifecycle -------------------------------------------------------------------------
    def create(self, body: Any, version: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise HttpError(400, "job definition must be a JSON object", "JSON_PARSER_ERROR")
        obj = body.get("object")
        if not isinstance(obj, str) or obj.lower() != "task":
            raise HttpError(400, f"InvalidJob : Unable to find object: {obj}", "INVALIDJOB")
        operation = body.get("operation")
        if operation != "update":
            raise HttpError(400, f"InvalidJob : operation {operation!r} is not supported by the simulator (update "
                            "only)", "INVALIDJOB")
        if body.get("contentType", "CSV") != "CSV":
            raise HttpError(400, "InvalidJob : contentType must be CSV", "INVALIDJOB")
        line_ending = body.get("lineEnding", "LF")
        delimiter = body.get("columnDelimiter", "COMMA")
        if line_ending not in LINE_ENDINGS or delimiter not in DELIMITERS:
            raise HttpError(400, "InvalidJob : unknown lineEnding or columnDelimiter", "INVALIDJOB")
        with self._lock:
            job = IngestJob(make_id(JOB_PREFIX, next(self._numbers)), "Task", version, line_ending, delimiter,
                            now_text())
            self.jobs[job.id] = job
        return job.info()

    def job(self, job_id: str) -> IngestJob:
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise HttpError(404, f"Job {job_id} not found", "NOT_FOUND")
        return job

    def _start_processing(self, job: IngestJob) -> None:
        thread = threading.Thread(target=self._process, args=(job, self.processing_s()), daemon=True,
                                  name=f"sim-bulk-{job.id}")
        thread.start()

    def _process(self, job: IngestJob, delay: float) -> None:
        """UploadComplete -> (delay/2) InProgress -> (delay/2) rows applied -> JobComplete or Failed."""
        if self._stopping.wait(delay / 2):
            return
        with job.lock:
            if job.state != "UploadComplete":
                return  # aborted meanwhile
            job.state = "InProgress"
        if self._stopping.wait(delay / 2):
            return
        with job.lock:
            if job.state != "InProgress" or self.jobs.get(job.id) is not job:
                return
            try:
                for row in job.pending_rows():
                    if job.error_message is None:
                        self._process_row(job, row)
                    elif row:
                        job.writer("unprocessedRecords").writerow(row)
            except (ValueError, OSError):  # reset() closed the job's files meanwhile: it is gone
                return
            job.state = "Failed" if job.error_message else "JobComplete"

    def info(self, job_id: str) -> dict[str, Any]:
        return self.job(job_id).info()

    def all_jobs(self) -> dict[str, Any]:
        with self._lock:
            jobs = list(self.jobs.values())
        return {"done": True, "records": [job.info() for job in jobs], "nextRecordsUrl": None}

    def set_state(self, job_id: str, body: Any) -> dict[str, Any]:
        job = self.job(job_id)
        wanted = body.get("state") if isinstance(body, dict) else None
        if wanted == "UploadComplete":
            if job.state != "Open":
                raise _state_error(job, "Open")
            with job.lock:
                if job.columns is None:
                    job.error_message = "InvalidBatch : no data was uploaded"
                job.closed_at = time.monotonic()
                job.state = "UploadComplete"
            self._start_processing(job)
        elif wanted == "Aborted":
            with job.lock:
                if job.state in TERMINAL:
                    raise _state_error(job, "Open, UploadComplete or InProgress")
                job.state = "Aborted"
        else:
            raise HttpError(400, f"InvalidJobState : cannot set state {wanted!r}", "INVALIDJOBSTATE")
        return job.info()

    def delete(self, job_id: str) -> None:
        job = self.job(job_id)
        if job.state not in TERMINAL:
            raise _state_error(job, "JobComplete, Failed or Aborted")
        with self._lock:
            self.jobs.pop(job_id, None)
        with job.lock:
            job.close_files()

    def reset(self) -> None:
        with self._lock:
            jobs = list(self.jobs.values())
            self.jobs.clear()
        for job in jobs:
            job.close_files()

    # -- upload --------------------------------------------------------------------------------
    def upload(self, job_id: str, lines: Iterable[bytes], content_type: str) -> None:
        """Read the CSV row by row and spool it; rows are applied after UploadComplete."""
        job = self.job(job_id)
        if not content_type.lower().startswith("text/csv"):
            raise HttpError(415, f"Content type {content_type or 'none'!r} not supported: send text/csv",
                            "UNSUPPORTED_MEDIA_TYPE")
        with job.lock:
            if job.state != "Open":
                raise _state_error(job, "Open")
            reader = csv.reader(_text_lines(lines), delimiter=job.delimiter)
            try:
                header = next(reader, None)
                if header is None:
                    raise HttpError(400, "InvalidBatch : the upload has no header row", "INVALIDBATCH")
                self._accept_header(job, [c.strip() for c in header])
                for row in reader:
                    if row:  # rows after a failed header are left unprocessed when the job runs
                        job.spool_row(row)
            except csv.Error as exc:
                job.error_message = f"InvalidBatch : malformed CSV at line {reader.line_num}: {exc}"

    def _accept_header(self, job: IngestJob, columns: list[str]) -> bool:
        """Check the header; False when the job has failed on it (its rows are then unprocessed)."""
        if job.columns is not None:
            if [c.lower() for c in columns] != [c.lower() for c in job.columns]:
                raise HttpError(400, "InvalidBatch : the header differs from the job's first upload",
                                "INVALIDBATCH")
            return job.error_message is None
        job.columns = columns
        try:
            job.fields = self.resolve_columns(columns)
        except ValueError as exc:
            job.error_message = f"InvalidBatch : {exc}"
            return False
        return True

    def _process_row(self, job: IngestJob, row: list[str]) -> None:
        if not row:
            return  # a blank line
        if len(row) != len(job.fields):
            job.processed += 1
            job.failed += 1
            job.writer("failedResults").writerow(self._failed(job, "", "INVALID_ROW:wrong number of columns:--", row))
            return
        raw_id = ""
        values: dict[str, str | None] = {}
        for name, cell in zip(job.fields, row, strict=True):
            if name == "Id":
                raw_id = cell.strip()
            elif cell != "":
                values[name] = None if cell == NULL_MARK else cell
        sf_id, error = self.write_row(raw_id, values)
        job.processed += 1
        if error is None:
            job.writer("successfulResults").writerow([sf_id, "false", *row])
        else:
            job.failed += 1
            job.writer("failedResults").writerow(self._failed(job, sf_id, error, row))

    @staticmethod
    def _failed(job: IngestJob, sf_id: str, error: str, row: list[str]) -> list[str]:
        return [error, sf_id, *row] if _has_sf_id(job) else [error, *row]

    # -- results -------------------------------------------------------------------------------
    def results(self, job_id: str, kind: str) -> str:
        job = self.job(job_id)
        if job.state not in TERMINAL:
            raise _state_error(job, "JobComplete, Failed or Aborted")
        ending = LINE_ENDINGS[job.line_ending]
        with job.lock:
            columns = job.delimiter.join(_quote(c, job.delimiter) for c in job.columns or [])
            lead = {"successfulResults": '"sf__Id","sf__Created"',
                    "failedResults": '"sf__Error","sf__Id"' if _has_sf_id(job) else '"sf__Error"'}.get(kind)
            header = job.delimiter.join(part for part in (lead, columns) if part)
            handle = job.files.get(kind)
            body = ""
            if handle is not None:
                handle.seek(0)
                body = handle.read()
                handle.seek(0, 2)
        return header + ending + body


def _has_sf_id(job: IngestJob) -> bool:
    return float(job.api_version) >= SF_ID_SINCE


def _quote(value: str, delimiter: str) -> str:
    if any(ch in value for ch in (delimiter, '"', "\n", "\r")):
        return '"' + value.replace('"', '""') + '"'
    return value
