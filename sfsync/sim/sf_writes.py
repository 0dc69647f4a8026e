"""The Salesforce simulator's write and record endpoints: sObject Collections update, single-record
get and update, describe, limits and the Bulk API 2.0 ingest routes, all through the one write rule."""

from __future__ import annotations

import threading
from typing import Any

from sfsync.sim.base import HttpError, Request, Response
from sfsync.sim.bulk import RESULT_KINDS, BulkIngest
from sfsync.sim.sf_records import TaskRecords
from sfsync.sim.sf_schema import SOBJECT, TASK_PREFIX, RecordError
from sfsync.sim.sf_usage import ApiUsage

MAX_COLLECTION = 200
ROLLED_BACK = ("ALL_OR_NONE_OPERATION_ROLLED_BACK",
               "Record rolled back because not all records were valid and the request was using AllOrNone header")


class RecordApi:
    """Record writes and reads, describe, limits and Bulk ingest over ``records``; each public
    method but ``reset`` is a route handler. ``bulk`` runs the ingest jobs (their rows go through
    ``records.check`` and ``records.apply`` like every other write)."""

    def __init__(self, records: TaskRecords, usage: ApiUsage, stopping: threading.Event):
        self._records = records
        self._usage = usage
        self.bulk = BulkIngest(self._bulk_columns, self._bulk_write, lambda: records.settings.bulk_processing_s,
                               stopping)

    def reset(self) -> None:
        """Forget every Bulk job."""
        self.bulk.reset()

    # -- writes --------------------------------------------------------------------------------
    def collections_update(self, request: Request) -> Response:
        """``PATCH /composite/sobjects``: sObject Collections update."""
        body = request.json()
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise HttpError(400, "The request body must be an object with a records list", "JSON_PARSER_ERROR")
        if len(records) > MAX_COLLECTION:
            raise HttpError(400, f"record limit reached. cannot submit more than {MAX_COLLECTION} records into this "
                            "call", "EXCEEDED_ID_LIMIT")
        all_or_none = body.get("allOrNone") is True
        with self._records.lock:
            outcomes = [self._check_item(record) for record in records]
            failed = any(isinstance(o, RecordError) for o in outcomes)
            results = [self._collection_result(o, rolled_back=all_or_none and failed) for o in outcomes]
            if not (all_or_none and failed):
                for outcome in outcomes:
                    if not isinstance(outcome, RecordError):
                        self._records.apply(*outcome, "composite")
            results = self._garbled(results)
        return Response.json(200, results)

    def _garbled(self, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The answer as the ``collection_*_calls`` faults garble it (lock held): results in reverse
        order, or refused records marked ``success: true`` with their errors kept. What was applied
        is unchanged: only the answer lies."""
        settings = self._records.settings
        if settings.collection_false_success_calls:
            settings.collection_false_success_calls -= 1
            results = [{**r, "success": True} for r in results]
        if settings.collection_shuffled_calls:
            settings.collection_shuffled_calls -= 1
            results = results[::-1]
        return results

    def _check_item(self, record: Any) -> tuple[str, dict[str, Any]] | RecordError:
        try:
            if not isinstance(record, dict):
                raise RecordError("JSON_PARSER_ERROR", "each record must be a JSON object")
            attributes = record.get("attributes")
            kind = attributes.get("type") if isinstance(attributes, dict) else None
            if not isinstance(kind, str) or kind.lower() != SOBJECT.lower():
                raise RecordError("INVALID_TYPE", f"sObject type '{kind}' is not supported here: send "
                                  "attributes.type Task")
            raw_id = record.get("id", record.get("Id"))
            values = {k: v for k, v in record.items() if k not in ("attributes", "id", "Id")}
            return self._records.check(raw_id, values, from_csv=False)
        except RecordError as err:
            return err

    def _collection_result(self, outcome: tuple[str, dict[str, Any]] | RecordError, *,
                           rolled_back: bool) -> dict[str, Any]:
        if isinstance(outcome, RecordError):
            result: dict[str, Any] = {"success": False, "errors": [outcome.as_result()]}
            if outcome.task_id:
                result = {"id": outcome.task_id, **result}
            return result
        if rolled_back:
            error = RecordError(*ROLLED_BACK)
            return {"id": outcome[0], "success": False, "errors": [error.as_result()]}
        return {"id": outcome[0], "success": True, "errors": []}

    def sobject_update(self, request: Request) -> Response:
        """``PATCH /sobjects/Task/{id}``."""
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "The request body must be a JSON object", "JSON_PARSER_ERROR")
        values = {k: v for k, v in body.items() if k != "attributes"}
        with self._records.lock:
            try:
                task_id, changes = self._records.check(request.params["record_id"], values, from_csv=False)
            except RecordError as err:
                raise self._record_http_error(err) from None
            self._records.apply(task_id, changes, "sobject")
        return Response(204)

    def _record_http_error(self, err: RecordError) -> HttpError:
        if err.code in ("MALFORMED_ID", "INVALID_CROSS_REFERENCE_KEY", "MISSING_ARGUMENT"):
            return HttpError(404, "The requested resource does not exist", "NOT_FOUND")
        status = 404 if err.code == "ENTITY_IS_DELETED" else 400
        return HttpError(status, err.message, err.code, err.fields)

    def sobject_get(self, request: Request) -> Response:
        """``GET /sobjects/Task/{id}``, optionally ``?fields=``."""
        records = self._records
        with records.lock:
            try:
                task_id = records.resolve_id(request.params["record_id"])
            except RecordError as err:
                raise self._record_http_error(err) from None
            wanted = request.arg("fields")
            names = list(records.fields)
            if wanted:
                specs = [records.field(n.strip()) for n in wanted.split(",")]
                if any(s is None for s in specs):
                    raise HttpError(400, f"No such column in '{wanted}' on entity '{SOBJECT}'", "INVALID_FIELD")
                names = [s.name for s in specs if s is not None]
            return Response.json(200, records.project(task_id, names, request.params["version"]))

    def describe(self, request: Request) -> Response:
        """``GET /sobjects/Task/describe``."""
        return Response.json(200, {"name": SOBJECT, "label": SOBJECT, "keyPrefix": TASK_PREFIX, "updateable": True,
                                   "queryable": True, "fields": self._records.schema()})

    def limits(self, request: Request) -> Response:
        """``GET /limits``: needs View Setup and Configuration."""
        if not self._records.settings.view_setup:
            raise HttpError(403, "Insufficient Privileges: the limits resource requires the View Setup and "
                            "Configuration permission", "INSUFFICIENT_ACCESS")
        limit, used = self._usage.allocation()
        return Response.json(200, {"DailyApiRequests": {"Max": limit, "Remaining": max(0, limit - used)},
                                   "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000}})

    # -- bulk ----------------------------------------------------------------------------------
    @staticmethod
    def _job_id(request: Request) -> str:
        return request.params["job_id"]

    def bulk_create(self, request: Request) -> Response:
        return Response.json(200, self.bulk.create(request.json(), request.params["version"]))

    def bulk_jobs(self, request: Request) -> Response:
        return Response.json(200, self.bulk.all_jobs())

    def bulk_info(self, request: Request) -> Response:
        return Response.json(200, self.bulk.info(self._job_id(request)))

    def bulk_set_state(self, request: Request) -> Response:
        return Response.json(200, self.bulk.set_state(self._job_id(request), request.json()))

    def bulk_upload(self, request: Request) -> Response:
        self.bulk.upload(self._job_id(request), request.reader.lines(), request.headers.get("Content-Type") or "")
        return Response(201)

    def bulk_delete(self, request: Request) -> Response:
        self.bulk.delete(self._job_id(request))
        return Response(204)

    def bulk_results(self, request: Request) -> Response:
        # Salesforce matches this segment whatever its case: its docs say unprocessedrecords (as
        # jsforce sends it), simple-salesforce sends unprocessedRecords.
        kind = {k.lower(): k for k in RESULT_KINDS}.get(request.params["kind"].lower(), "")
        if not kind:
            raise HttpError(404, "The requested resource does not exist", "NOT_FOUND")
        return Response.text(200, self.bulk.results(self._job_id(request), kind), "text/csv; charset=UTF-8")

    def _bulk_columns(self, header: list[str]) -> list[str]:
        with self._records.lock:
            names = []
            for column in header:
                spec = self._records.field(column)
                if spec is None:
                    raise ValueError(f"Field name not found : {column}")
                names.append(spec.name)
        if len(set(names)) != len(names):
            raise ValueError("Duplicate field name in the header")
        if "Id" not in names:
            raise ValueError("Id column is required for update")
        return names

    def _bulk_write(self, raw_id: str, values: dict[str, str | None]) -> tuple[str, str | None]:
        with self._records.lock:
            try:
                task_id, changes = self._records.check(raw_id, values, from_csv=True)
            except RecordError as err:
                return err.task_id or "", err.as_bulk()
            self._records.apply(task_id, changes, "bulk")
        return task_id, None
