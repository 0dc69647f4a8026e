"""Bulk API 2.0 ingest (update only) on the Salesforce client's session, token and retries.

A job is: create, upload the CSV, mark UploadComplete, poll until JobComplete (or Failed or
Aborted), then read the per-row results. Memory stays flat whatever the job's size: the CSV is
uploaded from a file (requests streams a file body), and each result CSV is downloaded to a
temporary file inside the retried call, then read row by row.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.util import exception_handler

from sfsync.clients.retry import poll_until
from sfsync.clients.salesforce import SalesforceClient, WriteResult, is_lock_error
from sfsync.errors import ConfigError, RemoteError

log = logging.getLogger(__name__)

TERMINAL = ("JobComplete", "Failed", "Aborted")
POLL_GROWTH = 1.5  # each wait for a job this much longer than the last, up to poll_max_s
NULL = "#N/A"  # a CSV cell that sets a field to null (an empty cell leaves it as it is)


@dataclass(frozen=True)
class JobInfo:
    id: str
    state: str
    processed: int = 0
    failed: int = 0
    error_message: str = ""


def split_error(text: str) -> tuple[str, str]:
    """``sf__Error`` is ``CODE:message:fields --``: the code, and the rest as the message."""
    code, _, rest = text.partition(":")
    return (code.strip() or "UNKNOWN"), rest.removesuffix("--").strip(" :")


class BulkClient:
    def __init__(self, sf: SalesforceClient, *, poll_first_s: float = 0.5, poll_max_s: float = 15.0,
                 max_wait_s: float = 3600.0, sleep: Callable[[float], Any] = time.sleep):
        self.sf = sf
        self.poll_first_s = poll_first_s
        self.poll_max_s = poll_max_s
        self.max_wait_s = max_wait_s
        self.sleep = sleep
        self.on_step: Callable[[str, str], Any] = lambda step, job_id: None  # tests crash at a step

    # -- one job -------------------------------------------------------------------------------
    def update(self, csv_path: Path, sobject: str = "Task", on_created: Callable[[str], Any] | None = None
               ) -> JobInfo:
        """Run one update job over the CSV file (header first, LF, comma) and wait for its end.
        ``on_created`` gets the job id before anything is uploaded (to record the job durably:
        once closed, Salesforce processes it even if this process dies)."""
        job_id = self._create(sobject)
        try:
            if on_created is not None:
                on_created(job_id)
            self._upload(job_id, csv_path)
            self._set_state(job_id, "UploadComplete")
        except BaseException:
            self._abort_quietly(job_id)
            raise
        self.on_step("UploadComplete", job_id)
        log.info("Bulk API job %s uploaded; waiting for Salesforce to process it", job_id,
                 extra={"event": "bulk_job", "job_id": job_id})
        info = self._wait(job_id)
        if info.state == "Failed" and info.processed == 0:
            # The job as a whole was refused (a bad header is the usual cause): configuration.
            raise ConfigError(f"Salesforce failed Bulk API job {job_id}: {info.error_message or 'no reason given'}. "
                              "Check the SFSYNC_FIELD_* variables against the Task fields in your org.")
        return info

    def results(self, job_id: str) -> Iterator[WriteResult]:
        """Every processed row: successes, then failures with Salesforce's error."""
        yield from self._rows(job_id, "successfulResults", ok=True)
        yield from self._rows(job_id, "failedResults", ok=False)

    # -- steps ---------------------------------------------------------------------------------
    def _create(self, sobject: str) -> str:
        body = {"object": sobject, "operation": "update", "contentType": "CSV", "lineEnding": "LF",
                "columnDelimiter": "COMMA"}
        answer = self.sf.call("bulk", lambda sf: sf.restful("jobs/ingest", method="POST", json=body))
        if not isinstance(answer, dict) or not answer.get("id"):
            raise RemoteError("Salesforce Bulk API: the job answer has no id", transient=True)
        return str(answer["id"])

    def _upload(self, job_id: str, csv_path: Path) -> None:
        def put(sf: Salesforce) -> None:
            with csv_path.open("rb") as body:  # reopened on every attempt: a retry sends it all again
                response = sf.session.request("PUT", f"{sf.base_url}jobs/ingest/{job_id}/batches", data=body,
                                              headers={**sf.headers, "Content-Type": "text/csv"})
            _raise_for(response, "bulk_upload")

        self.sf.call("bulk_upload", put)

    def _set_state(self, job_id: str, state: str) -> None:
        self.sf.call("bulk", lambda sf: sf.restful(f"jobs/ingest/{job_id}", method="PATCH", json={"state": state}))

    def _abort_quietly(self, job_id: str) -> None:
        try:
            self._set_state(job_id, "Aborted")
        except Exception as exc:  # the job may already be closed or gone; the original error matters
            log.debug("could not abort Bulk API job %s: %s", job_id, exc)

    def abort(self, job_id: str) -> None:
        self._set_state(job_id, "Aborted")

    def info_or_gone(self, job_id: str) -> JobInfo | None:
        """The job's info, or None when Salesforce no longer knows it (jobs are deleted after 7 days)."""
        try:
            return self.info(job_id)
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise

    def info(self, job_id: str) -> JobInfo:
        answer = self.sf.call("bulk_poll", lambda sf: sf.restful(f"jobs/ingest/{job_id}"))
        if not isinstance(answer, dict):
            raise RemoteError("Salesforce Bulk API: the job status is not an object", transient=True)
        return JobInfo(job_id, str(answer.get("state", "")), int(answer.get("numberRecordsProcessed") or 0),
                       int(answer.get("numberRecordsFailed") or 0), str(answer.get("errorMessage") or ""))

    def _wait(self, job_id: str) -> JobInfo:
        """Poll the job until Salesforce has finished it (waits growing from ``poll_first_s`` to
        ``poll_max_s``, for at most ``max_wait_s``); a stop event in ``sleep`` ends the wait at once."""
        info = poll_until(lambda: self.info(job_id), lambda i: i.state in TERMINAL, max_seconds=self.max_wait_s,
                          first=self.poll_first_s, max_wait=self.poll_max_s, sleep=self.sleep,
                          growth=POLL_GROWTH)
        if info.state not in TERMINAL:
            raise RemoteError(f"Salesforce Bulk API job {job_id} is still {info.state} after {self.max_wait_s:g}s; "
                              "it may still finish: run again with --resume", transient=False)
        return info

    # -- results -------------------------------------------------------------------------------
    def _download(self, job_id: str, kind: str) -> IO[bytes]:
        def get(sf: Salesforce) -> IO[bytes]:
            response = sf.session.request("GET", f"{sf.base_url}jobs/ingest/{job_id}/{kind}", headers=sf.headers,
                                          stream=True)
            spool = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it)
            try:
                _raise_for(response, "bulk_results")
                for chunk in response.iter_content(1 << 16):
                    spool.write(chunk)
            except BaseException:
                spool.close()
                raise
            finally:
                response.close()
            spool.seek(0)
            return spool

        return self.sf.call("bulk_results", get)

    def _rows(self, job_id: str, kind: str, *, ok: bool) -> Iterator[WriteResult]:
        with self._download(job_id, kind) as spool:
            reader = csv.reader(io.TextIOWrapper(spool, encoding="utf-8-sig", newline=""))
            columns = ResultColumns.of([h.strip() for h in next(reader, [])], kind)
            for row in reader:
                task_id = columns.task_id(row)
                if not task_id:
                    continue
                if ok:
                    yield WriteResult(task_id, True)
                else:
                    code, message = split_error(columns.error(row))
                    yield WriteResult(task_id, False, code, message, transient=is_lock_error(code, message))


@dataclass(frozen=True)
class ResultColumns:
    """Where a result CSV keeps what we read, found by header name (Salesforce does not promise an
    order). The Task Id is the echoed ``Id`` column we uploaded, else ``sf__Id`` (which failed
    results carry only from API version 53.0)."""

    ids: tuple[int, ...]
    error_at: int | None

    @classmethod
    def of(cls, header: list[str], kind: str) -> ResultColumns:
        lowered = [h.lower() for h in header]
        ids = tuple(lowered.index(name) for name in ("id", "sf__id") if name in lowered)
        error_at = lowered.index("sf__error") if "sf__error" in lowered else None
        if not ids or (kind == "failedResults" and error_at is None):
            raise RemoteError(f"Salesforce Bulk API: the {kind} CSV has no Id or sf__Error column "
                              f"(header: {','.join(header)[:200]})", transient=False)
        return cls(ids, error_at)

    def task_id(self, row: list[str]) -> str:
        return next((row[i].strip() for i in self.ids if i < len(row) and row[i].strip()), "")

    def error(self, row: list[str]) -> str:
        return row[self.error_at] if self.error_at is not None and self.error_at < len(row) else ""


def _raise_for(response: requests.Response, name: str) -> None:
    if response.status_code >= 300:
        exception_handler(response, name)
