"""`sfsync doctor`: a preflight an admin runs before the first cron entry.

One line per check (ok / warn / fail) with what to do; ``--json``; exit status 9 when any check
fails. It makes only harmless calls: a token, a describe, the limits, the integration user's
permissions and Task counts, and a GET for a message id that cannot exist. It never prints a secret.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from sfsync.domain.codes import default_map
from sfsync.errors import AlreadyRunning, ConfigError, SfsyncError
from sfsync.logs import redact_urls
from sfsync.settings.config import Settings, missing_variables, unknown_text
from sfsync.store.lock import RunLock

if TYPE_CHECKING:  # the clients are imported when the checks run, so `sfsync --help` stays quick
    from sfsync.clients.messagemedia import MessageMediaClient
    from sfsync.clients.salesforce import SalesforceClient

TEXT_TYPES = {"string", "textarea", "picklist", "multipicklist", "phone", "url", "email", "encryptedstring"}
NUMBER_TYPES = {"double", "int", "long", "currency", "percent"}
PROBE_MESSAGE_ID = "00000000-0000-4000-8000-000000000000"  # a uuid no message has


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str


def run_checks(settings: Settings, *, mm: MessageMediaClient | None = None,
               sf: SalesforceClient | None = None) -> list[Check]:
    from sfsync.clients.messagemedia import MessageMediaClient
    from sfsync.clients.retry import RetryPolicy
    from sfsync.clients.salesforce import SalesforceClient

    checks: list[Check] = []
    missing = missing_variables(settings)
    checks.append(Check("configuration", "fail" if missing else "ok",
                        "missing: " + ", ".join(missing) + " (see config/sfsync.env.example)" if missing
                        else f"Salesforce auth: {settings.sf_auth_mode.replace('_', ' ')}; fields "
                             f"{settings.field_status}, {settings.field_code}, {settings.field_message_id}"))
    if settings.unknown_variables:  # a warning: the run goes on, without what was meant
        checks.append(Check("unknown variables", "warn", "; ".join(
            unknown_text(name, closest) for name, closest in settings.unknown_variables)))
    checks.append(_state_folder(settings))
    checks.append(_store_integrity(settings))
    checks.append(_store_space(settings))
    checks.append(_lock(settings))
    quick = RetryPolicy(attempts=2, max_seconds=20)
    if not any(m.startswith("SFSYNC_MM") for m in missing):
        checks.append(_guard("messagemedia credentials", lambda: _messagemedia(mm or MessageMediaClient(
            settings, policy=quick))))
        for account in settings.mm_accounts[1:]:  # SFSYNC_MM_ACCOUNTS: each account's key (and Account header)
            probe = MessageMediaClient(settings, policy=quick, account=account)
            name = f"messagemedia account {account.name}"
            checks.append(_guard(name, partial(_messagemedia, probe, name)))
    if any(m.startswith("SFSYNC_SF") for m in missing):
        return checks
    client = sf or SalesforceClient(settings, policy=quick)
    token = _guard("salesforce token", lambda: _token(client))
    checks.append(token)
    if token.status == "fail":
        return checks
    describe: dict[str, Any] = {}

    def fetch_describe() -> Check:
        describe.update(client.describe_task())
        return Check("task describe", "ok", f"{len(describe.get('fields', []))} Task fields")

    checks.append(_guard("task describe", fetch_describe))
    if describe:
        checks += field_checks(settings, {f["name"]: f for f in describe.get("fields", []) if isinstance(f, dict)})
    checks.append(_guard("task visibility", lambda: _visibility(client, settings)))
    checks.append(_guard("api usage", lambda: _usage(client, settings)))
    return checks


def field_checks(settings: Settings, fields: dict[str, dict[str, Any]]) -> list[Check]:
    """Each configured field: present, updateable, of a type and length that fit what we write."""
    checks = []
    labels = default_map().labels
    longest = max(labels, key=len)
    checks.append(_text_field(settings.field_status, "SFSYNC_FIELD_STATUS", fields, len(longest),
                              f"the longest SMS Status label, {longest!r}", labels))
    code = fields.get(settings.field_code)
    if code and code.get("type") in NUMBER_TYPES:
        checks.append(_updateable(Check(f"field {settings.field_code}", "warn",
                                        f"a {code['type']} field: codes fit, but an unknown non-numeric code "
                                        "would be refused; a Text(10) field keeps every code"), code))
    else:
        checks.append(_text_field(settings.field_code, "SFSYNC_FIELD_CODE", fields, 3, "a 3-digit code", None,
                                  comfortable=10))
    msg = fields.get(settings.field_message_id)
    name = f"field {settings.field_message_id}"
    if msg is None:
        checks.append(Check(name, "fail", "no such Task field: deploy config/salesforce or set "
                                          "SFSYNC_FIELD_MESSAGE_ID to the field holding MessageMedia's message id"))
    elif not msg.get("filterable", True):
        checks.append(Check(name, "fail", "not filterable: sfsync cannot look Tasks up by it"))
    elif not (msg.get("externalId") or msg.get("idLookup")):
        checks.append(Check(name, "warn", "not an External ID, so not indexed: look-ups slow down as Tasks grow; "
                                          "tick External ID on the field"))
    else:
        checks.append(Check(name, "ok", "filterable and indexed (External ID)"))
    if settings.field_updated:
        updated = fields.get(settings.field_updated)
        name = f"field {settings.field_updated}"
        if updated is None:
            checks.append(Check(name, "fail", "no such Task field: create it or unset SFSYNC_FIELD_UPDATED"))
        elif updated.get("type") != "datetime":
            checks.append(Check(name, "fail", f"type {updated.get('type')}, needs Date/Time"))
        else:
            checks.append(_updateable(Check(name, "ok", "Date/Time"), updated))
    return checks


def _text_field(name: str, variable: str, fields: dict[str, dict[str, Any]], need: int, what: str,
                labels: list[str] | None, comfortable: int = 0) -> Check:
    spec = fields.get(name)
    title = f"field {name}"
    if spec is None:
        return Check(title, "fail", f"no such Task field: deploy config/salesforce (sf project deploy start) or "
                                    f"set {variable} to the field's API name")
    kind = spec.get("type")
    if kind not in TEXT_TYPES:
        return Check(title, "fail", f"type {kind}: needs a text field")
    length = int(spec.get("length") or 0)
    if length < need:
        return Check(title, "fail", f"length {length} is shorter than {what} ({need}): make it longer")
    if kind == "picklist" and labels and spec.get("restrictedPicklist"):
        listed = {v.get("value") for v in spec.get("picklistValues", []) if isinstance(v, dict)}
        absent = [label for label in labels if label not in listed]
        if absent:
            return Check(title, "fail", f"restricted picklist lacks {absent}: add them or use a Text(40) field")
    if comfortable and length < comfortable:
        return _updateable(Check(title, "warn", f"length {length}: unknown codes longer than that become dead "
                                                f"letters; Text({comfortable}) is safer"), spec)
    return _updateable(Check(title, "ok", f"{kind}, length {length}"), spec)


def _updateable(check: Check, spec: dict[str, Any]) -> Check:
    if not spec.get("updateable", False):
        return Check(check.name, "fail", "not updateable by the integration user: grant edit access "
                                         "(permission set SFSync_Integration in config/salesforce)")
    return check


def _state_folder(settings: Settings) -> Check:
    folder = settings.state_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("state folder", "fail", f"{folder} is not writable ({exc.strerror}): set SFSYNC_STATE_DIR")
    return Check("state folder", "ok", f"{folder.resolve()} is writable")


def _store_integrity(settings: Settings) -> Check:
    from sfsync.store import integrity_problem
    from sfsync.store.health import postgres_findings

    target = settings.store_target
    if target.dialect == "postgresql":
        finding = postgres_findings(target)
        return Check("store", finding.status, finding.detail)
    path = settings.store_path
    if not path.exists():
        return Check("store", "ok", f"SQLite: no store yet at {path}; the first run creates it")
    problem = integrity_problem(path)
    return Check("store", "fail", problem) if problem else Check("store", "ok",
                                                                 f"SQLite: {path} passes SQLite's quick check")


def _store_space(settings: Settings) -> Check:
    from sfsync.store import MIN_FREE_BYTES, free_bytes

    if settings.store_target.dialect != "sqlite":
        return Check("store disk space", "ok", "the store is on PostgreSQL: its server watches its own disk")
    folder = settings.state_dir if settings.state_dir.exists() else settings.state_dir.parent
    free = free_bytes(folder)
    if free is None:
        return Check("store disk space", "warn", f"cannot tell the free space of {folder}")
    mb = free / (1024 * 1024)
    if free < MIN_FREE_BYTES:
        status = "fail" if free < MIN_FREE_BYTES // 10 else "warn"
        return Check("store disk space", status,
                     f"only {mb:.1f} MB free on the disk holding {folder}: runs stop with 'disk is full' when it "
                     f"runs out; free space there or move SFSYNC_STATE_DIR (keep at least "
                     f"{MIN_FREE_BYTES // (1024 * 1024)} MB free)")
    return Check("store disk space", "ok", f"{mb:,.0f} MB free on the disk holding {folder}")


def _lock(settings: Settings) -> Check:
    try:
        target = settings.store_target
        if target.dialect == "postgresql":
            from sfsync.store.leases import LEASES_SCHEMA
            from sfsync.store.postgres import PostgresBackend

            backend = PostgresBackend(target)  # read only: doctor never migrates
            try:
                free = backend.schema_version() < LEASES_SCHEMA or backend.run_lock().is_free()
            finally:
                backend.close()
        else:
            free = RunLock(settings.lock_path).is_free()
    except AlreadyRunning:
        free = False
    except SfsyncError as exc:
        return Check("run lock", "fail", str(exc))
    return Check("run lock", "ok" if free else "warn",
                 "free" if free else "held by a running sfsync (fine if a run is under way)")


def _messagemedia(mm: MessageMediaClient, name: str = "messagemedia credentials") -> Check:
    mm.message(PROBE_MESSAGE_ID)  # 404 is the expected, harmless answer; 401/403 raise AuthError
    whose = f" for {mm.account.label}" if mm.account.name else ""
    return Check(name, "ok", f"accepted by {redact_urls(mm.base_url)}{whose}")


def _token(sf: SalesforceClient) -> Check:
    from sfsync.clients.salesforce import jwt_audience

    sf.login()
    mode = sf.settings.sf_auth_mode
    extra = f" (audience {jwt_audience(sf.settings)})" if mode == "jwt" else ""
    return Check("salesforce token", "ok", f"token obtained for {mode.replace('_', ' ')}{extra}")


def _usage(sf: SalesforceClient, settings: Settings) -> Check:
    from sfsync.clients.salesforce import VIEW_SETUP

    try:
        limits = sf.limits().get("DailyApiRequests", {})
        top, used = int(limits.get("Max", 0)), int(limits.get("Max", 0)) - int(limits.get("Remaining", 0))
        refused = ""
    except ConfigError:  # 403: GET /limits needs a permission sfsync's runs do without
        top, used = sf.usage.max, sf.usage.used
        refused = (", read from Sforce-Limit-Info: GET /limits was refused, the integration user lacks "
                   f"\"{VIEW_SETUP}\", the permission it needs for the API usage figures. sfsync runs never "
                   "call /limits (they read the same header), so granting it is optional")
    if not top:
        return Check("api usage", "warn", "limits not reported" + refused)
    share = 100.0 * used / top
    status = "warn" if share >= settings.api_budget_pct or refused else "ok"
    return Check("api usage", status, f"{used}/{top} daily API requests used ({share:.0f}%; sfsync stops at "
                                      f"{settings.api_budget_pct:g}%){refused}")


VISIBILITY_OPTIONS = (
    "Tasks it cannot see are no error: their reports wait SFSYNC_WAIT_MAX_AGE_HOURS (24 h), then become dead "
    "letters. Give it access in one of these ways (manual: Task visibility): (1) View All Data in its permission "
    "set: it reads every record of the org, simplest and broadest; (2) Read/Write access to the records the Tasks "
    "relate to (Name/Related To: a role above the Task owners', or sharing rules on those objects): Tasks follow "
    "their parent records; (3) make it the owner of the Tasks when they are logged"
)


def _visibility(sf: SalesforceClient, settings: Settings) -> Check:
    """Task has no sharing of its own: without View All Data the integration user sees only the Tasks
    it owns or whose related records it can see, and a query silently returns fewer rows."""
    from simple_salesforce.format import format_soql

    try:
        records = list(sf.query_all("SELECT PermissionsViewAllData, PermissionsModifyAllData FROM "
                                    "UserPermissionAccess", name="permissions"))
    except SfsyncError as exc:
        return Check("task visibility", "warn", f"cannot read the integration user's permissions ({exc}). "
                                                "Without View All Data it sees only some Tasks. " + VISIBILITY_OPTIONS)
    perms = records[0] if records else {}
    if perms.get("PermissionsViewAllData") or perms.get("PermissionsModifyAllData"):
        return Check("task visibility", "ok", "View All Data: the integration user sees every Task")
    counts = ""
    try:
        field = settings.field_message_id
        seen = _count(sf, f"SELECT COUNT() FROM Task WHERE {field} != null")
        counts = f" (now it sees {seen} Tasks with a message id"
        if sf.user_id:
            own = _count(sf, format_soql(f"SELECT COUNT() FROM Task WHERE {field} != null AND OwnerId = {{}}",
                                         sf.user_id))
            counts += f", {own} of them its own"
        counts += ")"
    except SfsyncError:
        pass
    return Check("task visibility", "warn", "the integration user lacks View All Data: it sees only the Tasks it "
                                            f"owns or whose related record it can see{counts}. " + VISIBILITY_OPTIONS)


def _count(sf: SalesforceClient, soql: str) -> int:
    answer = sf.call("count", lambda api: api.query(soql))
    return int(answer.get("totalSize", 0)) if isinstance(answer, dict) else 0


def _guard(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except SfsyncError as exc:
        return Check(name, "fail", redact_urls(str(exc)))
    except Exception as exc:  # a network failure is a finding here, not a crash
        return Check(name, "fail", redact_urls(f"{type(exc).__name__}: {exc}"))
