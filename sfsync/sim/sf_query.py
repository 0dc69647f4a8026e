"""The Salesforce simulator's SOQL endpoints: query and queryAll over the Tasks (the candidate rows,
by index look-up and visibility, come from the store), server-side cursors and paging, the running
user's permissions and the deployed reports."""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sfsync.sim import soql
from sfsync.sim.base import HttpError, Request, Response
from sfsync.sim.sf_records import TaskRecords
from sfsync.sim.sf_schema import SOBJECT, FieldDef

MAX_OPEN_CURSORS = 20
USER_PERMISSIONS = "UserPermissionAccess"  # the running user's effective permissions, one row
REPORT = "Report"  # deployed reports (queryable by DeveloperName, e.g. for a link to one)
_REPORT_FIELDS = {"Id": "id", "Name": "string", "DeveloperName": "string", "FolderName": "string",
                  "Format": "picklist"}


@dataclass
class QueryCursor:
    """A query's result set, paged out by ``queryMore``."""

    ids: list[str]
    fields: list[str]


class QueryApi:
    """``/query``, ``/queryAll`` and ``queryMore`` over ``records``; the open cursors live here."""

    def __init__(self, records: TaskRecords):
        self._records = records
        self._cursors: OrderedDict[str, QueryCursor] = OrderedDict()
        self._cursor_numbers = itertools.count(30_000_000_000, 7_907)  # never reused, even across reset()

    def reset(self) -> None:
        """Forget the open cursors."""
        with self._records.lock:
            self._cursors.clear()

    # -- route handlers ------------------------------------------------------------------------
    def query(self, request: Request) -> Response:
        """``GET /query?q=``: live Tasks only."""
        return self._query(request, include_deleted=False)

    def query_all(self, request: Request) -> Response:
        """``GET /queryAll?q=``: deleted Tasks too."""
        return self._query(request, include_deleted=True)

    def _query(self, request: Request, *, include_deleted: bool) -> Response:
        text = request.arg("q")
        if text is None or not text.strip():
            raise HttpError(400, "A query string has to be specified", "MALFORMED_QUERY")
        version = request.params["version"]
        if self._sobject_of(text).lower() == USER_PERMISSIONS.lower():
            return self._user_permissions(text, version)
        if self._sobject_of(text).lower() == REPORT.lower():
            return self._report_query(text, version)
        store = self._records
        with store.lock:
            try:
                plan = soql.compile_query(text, store.fields, sobject=SOBJECT, indexed=store.indexed_fields())
            except soql.SoqlError as exc:
                raise HttpError(400, exc.message, exc.code) from None
            rows = store.candidate_rows(plan, include_deleted)
            if plan.kind == "count":
                return Response.json(200, {"totalSize": plan.count(rows), "done": True, "records": []})
            if plan.kind == "aggregate":
                records = plan.aggregate(rows)
                return Response.json(200, {"totalSize": len(records), "done": True, "records": records})
            cursor = QueryCursor([row["Id"] for row in plan.select(rows)], plan.fields)
            return Response.json(200, self._page(cursor, None, 0, version, self._page_size(request)))

    @staticmethod
    def _sobject_of(text: str) -> str:
        try:
            return soql.parse(text).sobject
        except soql.SoqlError as exc:
            raise HttpError(400, exc.message, exc.code) from None

    def _user_permissions(self, text: str, version: str) -> Response:
        """``SELECT Permissions... FROM UserPermissionAccess``: the running user's effective permissions."""
        with self._records.lock:
            settings = self._records.settings
            row = {"Id": soql.make_id("0Up", 1), "PermissionsApiEnabled": True,
                   "PermissionsViewSetup": settings.view_setup,
                   "PermissionsViewAllData": settings.view_all_data, "PermissionsModifyAllData": False}
        specs = {name: FieldDef(name, "id" if name == "Id" else "boolean") for name in row}
        try:
            plan = soql.compile_query(text, specs, sobject=USER_PERMISSIONS, indexed=[])
        except soql.SoqlError as exc:
            raise HttpError(400, exc.message, exc.code) from None
        url = f"/services/data/v{version}/sobjects/{USER_PERMISSIONS}/{row['Id']}"
        records = [{"attributes": {"type": USER_PERMISSIONS, "url": url}, **{f: r[f] for f in plan.fields}}
                   for r in plan.select([row])] if plan.kind == "records" else []
        return Response.json(200, {"totalSize": len(records), "done": True, "records": records})

    def _report_query(self, text: str, version: str) -> Response:
        """``SELECT ... FROM Report``: the deployed reports, records queries only."""
        specs = {name: FieldDef(name, kind) for name, kind in _REPORT_FIELDS.items()}
        try:
            plan = soql.compile_query(text, specs, sobject=REPORT, indexed=[])
        except soql.SoqlError as exc:
            raise HttpError(400, exc.message, exc.code) from None
        if plan.kind != "records":
            raise HttpError(400, "the simulator answers only records queries on Report", "MALFORMED_QUERY")
        with self._records.lock:
            rows = plan.select(self._records.reports())
        records = [{"attributes": {"type": REPORT, "url": f"/services/data/v{version}/sobjects/{REPORT}/{r['Id']}"},
                    **{f: r[f] for f in plan.fields}} for r in rows]
        return Response.json(200, {"totalSize": len(records), "done": True, "records": records})

    def _page_size(self, request: Request) -> int:
        size = self._records.settings.query_page_size
        found = re.search(r"batchSize=(\d+)", request.headers.get("Sforce-Query-Options") or "")
        if found:  # a client may ask for smaller pages, 200 to 2000
            size = min(size, max(200, min(2000, int(found.group(1)))))
        return size

    def _page(self, cursor: QueryCursor, locator: str | None, start: int, version: str, size: int) -> dict[str, Any]:
        chunk = cursor.ids[start : start + size]
        end = start + len(chunk)
        page: dict[str, Any] = {"totalSize": len(cursor.ids), "done": end >= len(cursor.ids),
                                "records": [self._records.project(i, cursor.fields, version) for i in chunk]}
        if not page["done"]:
            if locator is None:
                locator = soql.make_id("01g", next(self._cursor_numbers))
                self._cursors[locator] = cursor
                while len(self._cursors) > MAX_OPEN_CURSORS:
                    self._cursors.popitem(last=False)
            page["nextRecordsUrl"] = f"/services/data/v{version}/query/{locator}-{end}"
        return page

    def query_more(self, request: Request) -> Response:
        """``GET /query/{locator}-{start}``: the next page of an open cursor."""
        found = re.fullmatch(r"(01g[0-9A-Za-z]{15})-(\d+)", request.params["locator"])
        with self._records.lock:
            cursor = self._cursors.get(found.group(1)) if found else None
            if found is None or cursor is None or int(found.group(2)) > len(cursor.ids):
                raise HttpError(400, "invalid query locator", "INVALID_QUERY_LOCATOR")
            self._cursors.move_to_end(found.group(1))
            page = self._page(cursor, found.group(1), int(found.group(2)), request.params["version"],
                              self._page_size(request))
            if self._records.settings.repeat_next_records_url and not page["done"]:
                page["nextRecordsUrl"] = request.path  # a broken cursor: this page names itself, for ever
        return Response.json(200, page)
