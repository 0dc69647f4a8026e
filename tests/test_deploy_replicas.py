"""The replicas deployment kit (config/deploy): Kubernetes Deployments of `sfsync serve` (3
replicas, probes, a PodDisruptionBudget) and `sfsync run --loop` on one PostgreSQL URL from a
Secret, and the docker-compose file for trying it locally. Loaded as YAML (docker compose is not
on the test machines) and checked against what sfsync accepts: its command line and store URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sfsync.cli.main import build_parser
from sfsync.store import parse_store_url

DEPLOY = Path(__file__).resolve().parent.parent / "config" / "deploy"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def _by_component(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in _docs("kubernetes-replicas.yaml") if d["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_replicas_file_holds_no_secret_and_the_placeholder_stands_alone() -> None:
    kinds = sorted(d["kind"] for d in _docs("kubernetes-replicas.yaml"))
    assert kinds == ["Deployment", "Deployment", "PodDisruptionBudget", "Service"]
    (secret,) = _docs("kubernetes-store-secret.example.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "sfsync-store"
    assert secret["stringData"]["password"].startswith("REPLACE_")
    target = parse_store_url(secret["stringData"]["url"], Path("unused"))  # refuses a URL holding a password
    assert target.dialect == "postgresql" and "verify-full" in target.conninfo


def test_serve_has_three_replicas_probes_and_a_disruption_budget() -> None:
    serve = _by_component("Deployment")["serve"]
    assert serve["spec"]["replicas"] == 3
    assert serve["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = _container(serve)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["push"]
    args = build_parser().parse_args(container["args"])
    assert container["args"][0] == "serve" and args.port == port and args.host == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "push"}
    (budget,) = [d for d in _docs("kubernetes-replicas.yaml") if d["kind"] == "PodDisruptionBudget"]
    assert budget["apiVersion"] == "policy/v1" and 1 <= budget["spec"]["minAvailable"] < 3
    labels = serve["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = [d for d in _docs("kubernetes-replicas.yaml") if d["kind"] == "Service"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_the_loop_and_serve_share_one_store_url_with_the_password_from_the_secret() -> None:
    deployments = _by_component("Deployment")
    loop = _container(deployments["worker"])
    assert build_parser().parse_args(loop["args"]).loop and loop["args"][:2] == ["run", "--loop"]
    for deployment in deployments.values():
        container = _container(deployment)
        env = {e["name"]: e for e in container["env"]}
        assert env["SFSYNC_STORE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "sfsync-store", "key": "url"}
        assert "SFSYNC_STORE_PASSWORD" not in env  # a file from the Secret, not an environment value
        password_file = Path(env["SFSYNC_STORE_PASSWORD_FILE"]["value"])
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["store-secret"]["secret"]["secretName"] == "sfsync-store"
        assert password_file.parent == Path(mounts["store-secret"])
        assert [e["secretRef"]["name"] for e in container["envFrom"]] == ["sfsync-env"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_docker_compose_runs_replicas_on_postgresql() -> None:
    (compose,) = _docs("docker-compose.yml")
    services = compose["services"]
    assert services["postgres"]["image"] == "postgres:15"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/store_password"
    assert compose["secrets"]["store_password"]["file"]
    for name in ("serve", "worker"):
        service = services[name]
        env = service["environment"]
        assert parse_store_url(env["SFSYNC_STORE_URL"], Path("unused")).dialect == "postgresql"
        assert env["SFSYNC_STORE_PASSWORD_FILE"] == "/run/secrets/store_password"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert build_parser().parse_args(service["command"]).command == service["command"][0]
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert (DEPLOY / services["serve"]["build"]["context"] / services["serve"]["build"]["dockerfile"]).exists()
