"""Static checks of the admin and deployment kit: config/salesforce, config/deploy, config/sfsync.env.example.

Nothing here talks to Salesforce or starts a service; every check reads the files (and, where the tool is
installed, asks systemd-analyze about the units).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml  # PyYAML: part of the test extras

from sfsync.domain.codes import default_map
from sfsync.settings.config import VARIABLES
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[1]
SF_PROJECT = REPO / "config" / "salesforce"
SF_SOURCE = SF_PROJECT / "force-app" / "main" / "default"
FIELDS_DIR = SF_SOURCE / "objects" / "Activity" / "fields"
PERMSET = SF_SOURCE / "permissionsets" / "SFSync_Integration.permissionset-meta.xml"
LIST_VIEW = SF_SOURCE / "objects" / "Task" / "listViews" / "SMS_Failed_Rejected_Last_7_Days.listView-meta.xml"
DEPLOY = REPO / "config" / "deploy"
ENV_EXAMPLE = REPO / "config" / "sfsync.env.example"

MD_NS = "http://soap.sforce.com/2006/04/metadata"
NS = {"md": MD_NS}

# The worker's configuration defaults for the field API names.
FIELD_DEFAULTS = {
    "SFSYNC_FIELD_STATUS": "SMS_Status__c",
    "SFSYNC_FIELD_CODE": "SMS_Status_Code__c",
    "SFSYNC_FIELD_MESSAGE_ID": "SMS_Message_Id__c",
    "SFSYNC_FIELD_UPDATED": "SMS_Status_Updated__c",  # optional; the suggested name
}
# Every SMS Status label sfsync can write, from the code map itself (statuses, codes and "Unknown").
STATUS_LABELS = tuple(default_map().labels)
# Unknown codes are kept verbatim, up to this many characters.
MAX_CODE_LENGTH = 10
# Every environment variable sfsync reads: the settings, plus SFSYNC_CODE_MAP read by sfsync.domain.codes.
# Taken from the code, so the example cannot drift from what sfsync actually reads.
ENV_VARS = (*VARIABLES, "SFSYNC_CODE_MAP")
SECRET_VARS = ("SFSYNC_MM_API_KEY", "SFSYNC_MM_API_SECRET", "SFSYNC_SF_CLIENT_SECRET", "SFSYNC_SF_ACCESS_TOKEN")
# Exit statuses that are not failures for a scheduler: 5 API budget reached, 7 already running.
BENIGN_EXIT = {5, 7}
STATE_DIR = "/var/lib/sfsync"


# --------------------------------------------------------------------------------------------- Salesforce


def _xml(path: Path) -> ET.Element:
    return ET.parse(path).getroot()  # noqa: S314 (our own files, not untrusted input)


def _text(elem: ET.Element, tag: str) -> str | None:
    child = elem.find(f"md:{tag}", NS)
    return None if child is None or child.text is None else child.text.strip()


def _fields() -> dict[str, ET.Element]:
    return {p.name.removesuffix(".field-meta.xml"): _xml(p) for p in sorted(FIELDS_DIR.glob("*.field-meta.xml"))}


def _metadata_files() -> list[Path]:
    return sorted(SF_PROJECT.rglob("*.xml"))


def test_sfdx_project() -> None:
    project = json.loads((SF_PROJECT / "sfdx-project.json").read_text())
    assert [d["path"] for d in project["packageDirectories"]] == ["force-app"]
    assert project["sourceApiVersion"] == "59.0"


@pytest.mark.parametrize("path", _metadata_files(), ids=lambda p: str(p.relative_to(SF_PROJECT)))
def test_metadata_xml_parses_in_metadata_namespace(path: Path) -> None:
    root = _xml(path)
    assert root.tag.startswith(f"{{{MD_NS}}}"), f"{path.name}: root {root.tag} not in the Metadata API namespace"
    # Source-format file names carry the type: Foo.field-meta.xml holds a CustomField, and so on.
    expected_root = {"field": "CustomField", "permissionset": "PermissionSet", "listView": "ListView",
                     "report": "Report", "reportFolder": "ReportFolder", "dashboard": "Dashboard",
                     "dashboardFolder": "DashboardFolder"}
    kind = path.name.removesuffix("-meta.xml").rsplit(".", 1)[-1]
    assert root.tag == f"{{{MD_NS}}}{expected_root[kind]}"


def test_metadata_files_present() -> None:
    names = {p.name for p in _metadata_files()}
    assert {f"{name}.field-meta.xml" for name in FIELD_DEFAULTS.values()} <= names
    assert PERMSET.name in names
    assert LIST_VIEW.name in names


def test_field_api_names_are_the_configuration_defaults() -> None:
    fields = _fields()
    assert set(fields) == set(FIELD_DEFAULTS.values())
    for name, root in fields.items():
        assert _text(root, "fullName") == name


@pytest.mark.parametrize("name", sorted(FIELD_DEFAULTS.values()))
def test_field_has_label_description_and_help(name: str) -> None:
    root = _fields()[name]
    label, description, help_text = (_text(root, t) for t in ("label", "description", "inlineHelpText"))
    assert label and len(label) <= 40
    assert description and len(description) <= 1000
    assert help_text and len(help_text) <= 510
    assert _text(root, "required") == "false", "sfsync only updates existing Tasks: the field must not be required"


def test_status_field_holds_every_label() -> None:
    root = _fields()[FIELD_DEFAULTS["SFSYNC_FIELD_STATUS"]]
    # Text, not a (restricted) picklist: a picklist rejects values it does not list.
    assert _text(root, "type") == "Text"
    assert int(_text(root, "length") or 0) >= max(len(label) for label in STATUS_LABELS)


def test_code_field_holds_unknown_codes_verbatim() -> None:
    root = _fields()[FIELD_DEFAULTS["SFSYNC_FIELD_CODE"]]
    assert _text(root, "type") == "Text"
    assert int(_text(root, "length") or 0) >= MAX_CODE_LENGTH


def test_message_id_field_is_an_indexed_external_id() -> None:
    root = _fields()[FIELD_DEFAULTS["SFSYNC_FIELD_MESSAGE_ID"]]
    assert _text(root, "type") == "Text"
    assert _text(root, "externalId") == "true"
    assert _text(root, "unique") == "false"
    assert int(_text(root, "length") or 0) >= 36  # MessageMedia message ids are UUIDs


def test_updated_field_is_a_datetime() -> None:
    root = _fields()[FIELD_DEFAULTS["SFSYNC_FIELD_UPDATED"]]
    assert _text(root, "type") == "DateTime"


def test_permission_set_grants_read_and_edit_on_every_field() -> None:
    root = _xml(PERMSET)
    assert _text(root, "label")
    grants = {
        _text(fp, "field"): (_text(fp, "readable"), _text(fp, "editable"))
        for fp in root.findall("md:fieldPermissions", NS)
    }
    for name in _fields():
        # Activity fields get field-level security per object. Task and Event share it, so both are listed
        # (a deployment naming one object only can switch the field off on the other).
        for obj in ("Task", "Event"):
            assert grants.get(f"{obj}.{name}") == ("true", "true"), f"{obj}.{name} must be readable and editable"
    # Everything granted is a field this project defines.
    assert {g.split(".", 1)[1] for g in grants} <= set(_fields())


def test_permission_set_task_access_uses_user_permissions() -> None:
    root = _xml(PERMSET)
    # Task and Event have no object permissions (ObjectPermissions does not cover activities); access to
    # Tasks is the Edit Tasks user permission plus sharing. An objectPermissions entry for them fails the deploy.
    objects = {_text(op, "object") for op in root.findall("md:objectPermissions", NS)}
    assert not objects & {"Task", "Event", "Activity"}
    enabled = {_text(up, "name") for up in root.findall("md:userPermissions", NS) if _text(up, "enabled") == "true"}
    assert {"ApiEnabled", "EditTask"} <= enabled


def test_list_view_of_failed_and_rejected_sms() -> None:
    root = _xml(LIST_VIEW)
    assert _text(root, "fullName") == LIST_VIEW.name.removesuffix(".listView-meta.xml")
    label = _text(root, "label")
    assert label and len(label) <= 40
    status_field = FIELD_DEFAULTS["SFSYNC_FIELD_STATUS"]
    columns = [c.text for c in root.findall("md:columns", NS)]
    assert columns == ["SUBJECT", status_field, FIELD_DEFAULTS["SFSYNC_FIELD_CODE"], "LAST_UPDATE"]
    filters = {_text(f, "field"): (_text(f, "operation"), _text(f, "value")) for f in root.findall("md:filters", NS)}
    operation, value = filters[status_field]
    assert operation == "equals"
    values = set((value or "").split(","))
    assert values == {"Failed", "Rejected"}
    assert values <= set(STATUS_LABELS)
    assert filters["LAST_UPDATE"] == ("equals", "LAST_N_DAYS:7")
    # Custom fields referenced by the view exist in this project.
    referenced = {c for c in [*columns, *filters] if c and c.endswith("__c")}
    assert referenced <= set(_fields())


def test_salesforce_readme_commands_match_the_project() -> None:
    readme = (SF_PROJECT / "README.md").read_text()
    assert "sf project deploy start --source-dir force-app --target-org" in readme
    permset_name = PERMSET.name.removesuffix(".permissionset-meta.xml")
    assert f"sf org assign permset --name {permset_name} --on-behalf-of" in readme
    assert "namespace" in readme and "SFSYNC_FIELD_STATUS" in readme


# --------------------------------------------------------------------------------------------- env example


def _env_lines() -> list[tuple[bool, str, str]]:
    """(active, name, value) for each KEY=value line, active or commented out."""
    entries = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.fullmatch(r"(#\s*)?(SFSYNC_[A-Z0-9_]+)=(.*)", line.strip())
        if m:
            entries.append((m.group(1) is None, m.group(2), m.group(3)))
    return entries


def test_env_example_lists_every_variable_once() -> None:
    names = [name for _, name, _ in _env_lines()]
    assert sorted(names) == sorted(ENV_VARS), "every variable exactly once, and no unknown (misspelt) ones"


def test_env_example_variables_each_have_a_comment() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"#?\s*SFSYNC_[A-Z0-9_]+=", line):
            # The nearest preceding non-variable line is a comment (a block of related variables may share one).
            j = i - 1
            while j >= 0 and re.match(r"#?\s*SFSYNC_[A-Z0-9_]+=", lines[j]):
                j -= 1
            assert j >= 0 and lines[j].startswith("#") and len(lines[j]) > 2, f"no comment above {line!r}"


def test_env_example_is_plain_key_value() -> None:
    # Read by python-dotenv (--env-file), systemd EnvironmentFile= and kubectl --from-env-file: only the
    # common subset of their syntaxes is safe.
    for raw in ENV_EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line), f"not a plain KEY=value line: {raw!r}"
        value = line.split("=", 1)[1]
        assert not value.startswith(("'", '"')) and "#" not in value, f"quotes or inline comment: {raw!r}"


def test_env_example_values() -> None:
    active = {name: value for is_active, name, value in _env_lines() if is_active}
    for name in SECRET_VARS:
        if name in active:
            assert active[name].startswith("REPLACE_"), f"{name} must be an obvious placeholder"
    for name, default in FIELD_DEFAULTS.items():
        value = {n: v for _, n, v in _env_lines()}[name]
        assert value == default, f"{name} example {value!r} differs from the default {default!r}"
    assert active["SFSYNC_STATE_DIR"] == STATE_DIR
    # Exactly one Salesforce authentication alternative is active: client credentials.
    assert {"SFSYNC_SF_CLIENT_ID", "SFSYNC_SF_CLIENT_SECRET"} <= set(active)
    assert not {"SFSYNC_SF_USERNAME", "SFSYNC_SF_PRIVATE_KEY_FILE", "SFSYNC_SF_ACCESS_TOKEN"} & set(active)


# --------------------------------------------------------------------------------------------- Kubernetes


def _k8s(name: str = "kubernetes-cronjob.yaml") -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]
    by_kind = {d["kind"]: d for d in docs}
    assert len(by_kind) == len(docs), "one document of each kind"
    return by_kind


def _pod_spec() -> dict:
    return _k8s()["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _container() -> dict:
    (container,) = _pod_spec()["containers"]
    return container


def test_k8s_documents() -> None:
    docs = _k8s()
    assert set(docs) == {"PersistentVolumeClaim", "CronJob"}  # no Secret: applying it keeps real credentials
    assert docs["CronJob"]["apiVersion"] == "batch/v1"
    assert docs["PersistentVolumeClaim"]["apiVersion"] == "v1"
    assert docs["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"]


def test_k8s_cronjob_schedule_and_concurrency() -> None:
    spec = _k8s()["CronJob"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedule"] == "*/5 * * * *"
    assert 0 < spec["startingDeadlineSeconds"] < 300, "a start later than the next run is pointless"
    assert _pod_spec()["restartPolicy"] in {"Never", "OnFailure"}


def test_k8s_environment_from_the_secret() -> None:
    example = _k8s("kubernetes-secret.example.yaml")
    assert set(example) == {"Secret"}, "the placeholder Secret stands alone"
    container = _container()
    refs = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    assert refs == [example["Secret"]["metadata"]["name"]]
    secret = example["Secret"].get("stringData", {})
    assert set(secret) <= set(ENV_VARS)
    for name in SECRET_VARS:
        if name in secret:
            assert secret[name].startswith("REPLACE_"), f"{name} must be a placeholder in the example Secret"


def test_k8s_state_on_the_pvc() -> None:
    docs = _k8s()
    pod, container = _pod_spec(), _container()
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["SFSYNC_STATE_DIR"] == STATE_DIR
    claim_volumes = {
        v["name"] for v in pod["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == docs["PersistentVolumeClaim"]["metadata"]["name"]
    }
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get(STATE_DIR) in claim_volumes


def test_k8s_security_context_and_resources() -> None:
    pod, container = _pod_spec(), _container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert container["resources"][kind]["memory"]
    # With a read-only root filesystem, /tmp must be a volume.
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


def _max_seconds(command: str) -> float:
    m = re.search(r"\bsfsync run\b.*--max-seconds[ =](\d+)", command)
    assert m, f"no --max-seconds in {command!r}"
    return float(m.group(1))


def test_k8s_run_ends_before_the_deadline() -> None:
    job = _k8s()["CronJob"]["spec"]["jobTemplate"]["spec"]
    # sfsync stops starting batches after --max-seconds; the batch in hand must still fit in the deadline.
    assert _max_seconds(_wrapper_command()[2]) <= job["activeDeadlineSeconds"] - 120


def _fake_sfsync(tmp_path: Path) -> dict[str, str]:
    """A stand-in `sfsync` on PATH: records its arguments, then kills itself with $SELF_SIGNAL, exits $RC, or
    waits for SIGTERM (and exits $TERM_RC) when RC is empty."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sfsync"
    fake.write_text(
        "#!/bin/sh\n"
        'echo "$@" > "$ARGS_FILE"\n'
        'trap \'kill "$sleeper" 2>/dev/null; echo term > "$TERM_FILE"; exit "$TERM_RC"\' TERM\n'
        ': > "$STARTED_FILE"\n'
        'if [ -n "$SELF_SIGNAL" ]; then kill -"$SELF_SIGNAL" $$; fi\n'
        'if [ -n "$RC" ]; then exit "$RC"; fi\n'
        "sleep 10 & sleeper=$!\n"
        'wait "$sleeper"\n'
        "exit 99\n"
    )
    fake.chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ARGS_FILE": str(tmp_path / "args"),
        "TERM_FILE": str(tmp_path / "term"),
        "STARTED_FILE": str(tmp_path / "started"),
        "TERM_RC": "0",
        "RC": "",
        "SELF_SIGNAL": "",
    }


def _wrapper_command() -> list[str]:
    command = _container()["command"]
    assert command[:2] == ["/bin/sh", "-c"], "the container runs sfsync through the exit-status wrapper"
    return command


@pytest.mark.parametrize("rc", [0, 1, 2, 3, 4, 5, 6, 7])
def test_k8s_wrapper_maps_benign_exits_to_success(tmp_path: Path, rc: int) -> None:
    env = _fake_sfsync(tmp_path)
    result = subprocess.run(_wrapper_command(), env={**env, "RC": str(rc)}, capture_output=True, timeout=10)
    assert result.returncode == (0 if rc in BENIGN_EXIT else rc)
    assert (tmp_path / "args").read_text().split()[0] == "run"


def test_k8s_wrapper_passes_on_death_by_signal(tmp_path: Path) -> None:
    env = {**_fake_sfsync(tmp_path), "SELF_SIGNAL": "KILL"}
    result = subprocess.run(_wrapper_command(), env=env, capture_output=True, timeout=10)
    assert result.returncode == 128 + signal.SIGKILL


@pytest.mark.parametrize("term_rc", [0, 6])
def test_k8s_wrapper_forwards_sigterm(tmp_path: Path, term_rc: int) -> None:
    env = {**_fake_sfsync(tmp_path), "TERM_RC": str(term_rc)}
    proc = subprocess.Popen(_wrapper_command(), env=env)
    try:
        assert wait_until((tmp_path / "started").exists, 5, step=0.01), "fake sfsync did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == term_rc, "the wrapper exits with sfsync's own status"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "term").read_text().strip() == "term", "SIGTERM reached sfsync"


# --------------------------------------------------------------------------------------------- systemd


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file; a key may repeat, so each maps to a list of values."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: setting outside a section: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_service_settings() -> None:
    service = _unit(DEPLOY / "sfsync.service")["Service"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, f"{key} set once"
        return service[key][0]

    assert one("Type") == "oneshot"
    exec_start = one("ExecStart")
    assert exec_start.startswith("/opt/sfsync/.venv/bin/sfsync run")
    assert one("EnvironmentFile") == "/etc/sfsync/sfsync.env"
    assert f"SFSYNC_STATE_DIR={STATE_DIR}" in service["Environment"]
    assert one("StateDirectory") == "sfsync"
    assert "/var/lib/" + one("StateDirectory") == STATE_DIR
    for key, value in {
        "DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes",
    }.items():
        assert one(key) == value
    assert {int(s) for s in one("SuccessExitStatus").split()} == BENIGN_EXIT
    timeout = re.fullmatch(r"(\d+)(min|s)", one("TimeoutStartSec"))
    assert timeout, "TimeoutStartSec in s or min"
    timeout_s = int(timeout.group(1)) * (60 if timeout.group(2) == "min" else 1)
    assert _max_seconds(exec_start) <= timeout_s - 120, "a run ends by itself before the timeout kills it"


def test_systemd_timer_settings() -> None:
    timer = _unit(DEPLOY / "sfsync.timer")
    assert timer["Timer"]["OnCalendar"] == ["*:0/5"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Timer"]["RandomizedDelaySec"]
    assert timer["Timer"].get("Unit", ["sfsync.service"]) == ["sfsync.service"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_systemd_units_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # `verify` checks that ExecStart's program exists, and /opt/sfsync/.venv/bin/sfsync exists only on a
    # deployed host. Verify a copy whose ExecStart is /bin/true: everything else is checked as written.
    service = (DEPLOY / "sfsync.service").read_text()
    exec_start = r"^ExecStart=/opt/sfsync/\.venv/bin/sfsync run( .*)?$"
    service, count = re.subn(exec_start, "ExecStart=/bin/true", service, flags=re.M)
    assert count == 1
    (tmp_path / "sfsync.service").write_text(service)
    shutil.copy(DEPLOY / "sfsync.timer", tmp_path / "sfsync.timer")
    result = subprocess.run(
        [tool, "verify", "--man=no", "sfsync.service", "sfsync.timer"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    # verify exits 0 even when it ignores a misspelt key or a bad value: fail on any message about our units.
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "sfsync." in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------- cron


def _crontab() -> tuple[dict[str, str], list[str]]:
    settings, jobs = {}, []
    for raw in (DEPLOY / "crontab").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"[A-Z_]+=", line):
            key, _, value = line.partition("=")
            settings[key] = value
            continue
        jobs.append(line)
    return settings, jobs


def test_crontab_line() -> None:
    _, jobs = _crontab()
    assert len(jobs) == 1
    fields = jobs[0].split(None, 6)
    assert fields[:5] == ["*/5", "*", "*", "*", "*"]
    words = shlex.split(fields[6])
    run = words.index("run")
    assert words[run - 1].endswith("/sfsync")
    assert "--env-file" in words
    assert "logger -t sfsync" in fields[6] or ">>" in fields[6]
    assert "flock" not in fields[6], "sfsync locks itself"
    assert _max_seconds(fields[6]) < 300, "a run ends before the next one is due"


@pytest.mark.parametrize("rc", [0, 5, 6, 7, 8])
def test_crontab_job_keeps_the_exit_status(tmp_path: Path, rc: int) -> None:
    settings, (job,) = _crontab()
    command = job.split(None, 6)[6]
    sfsync = shlex.split(command.split("|")[0].split(";")[-1])[0]
    env = _fake_sfsync(tmp_path)
    logger = tmp_path / "bin" / "logger"
    logger.write_text('#!/bin/sh\n{ echo "args: $*"; cat; } >> "$LOG_FILE"\n')
    logger.chmod(0o755)
    fake = command.replace(sfsync, str(tmp_path / "bin" / "sfsync"))
    env.update(RC=str(rc), LOG_FILE=str(tmp_path / "log"))
    done = subprocess.run([settings["SHELL"], "-c", fake], env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == rc
    logged = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    assert (f"sfsync run exited {rc}" in logged) == (rc != 0)
    if rc:  # 5 (budget reached) and 7 (already running) are benign: info, never a warning that pages
        priority = "user.info" if rc in (5, 7) else "user.warning"
        assert f"-p {priority} sfsync run exited {rc}" in logged, logged
    assert (tmp_path / "args").read_text().split()[:1] == ["run"]


def test_k8s_deployment_for_the_loop_with_probes_and_metrics() -> None:
    docs = _k8s("kubernetes-deployment.yaml")
    assert set(docs) == {"PersistentVolumeClaim", "Deployment"}
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate", "one process per state folder"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["run", "--loop"]
    port = int(args[args.index("--metrics-port") + 1])
    assert args[args.index("--metrics-host") + 1] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == port
    for probe in ("livenessProbe", "readinessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/healthz" and check["port"] in ("metrics", port)
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == ["sfsync-env"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["SFSYNC_STATE_DIR"] == STATE_DIR
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}[STATE_DIR] in claims
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


# --------------------------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def test_dockerfile() -> None:
    instructions = _dockerfile()
    froms = [args.split()[0] for kw, args in instructions if kw == "FROM"]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    final_stage = instructions[max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM"):]
    users = [args for kw, args in final_stage if kw == "USER"]
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert int(user) == _pod_spec()["securityContext"]["runAsUser"], "same uid as the CronJob's runAsUser"
    last = {kw: args for kw, args in final_stage}
    assert json.loads(last["ENTRYPOINT"]) == ["sfsync"]
    assert json.loads(last["CMD"]) == ["run"]
    assert STATE_DIR in json.loads(last["VOLUME"])
    assert f"SFSYNC_STATE_DIR={STATE_DIR}" in last["ENV"]


def test_dockerfile_copies_are_in_the_build_context() -> None:
    # Built with the repository root as context: every COPY source must exist there and must not be
    # excluded by Dockerfile.dockerignore (which excludes everything, then re-includes what is copied).
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for kw, args in _dockerfile():
        if kw == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert source.rstrip("/") in allowed, f"COPY {source}: excluded by Dockerfile.dockerignore"


def test_pyproject_license_is_an_spdx_expression() -> None:
    """A table (`{ text = ... }`) makes setuptools print a deprecation warning on every install."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    license_ = project["project"]["license"]
    assert isinstance(license_, str)
    assert re.fullmatch(r"(LicenseRef-[A-Za-z0-9.\-]+|[A-Za-z0-9.\-+]+)( (AND|OR|WITH) [A-Za-z0-9.\-+]+)*", license_)
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    setuptools = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools == ["setuptools>=77"]  # the first to read a license expression (PEP 639)
