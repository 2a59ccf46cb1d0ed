"""The deployment files, checked offline (nothing is fetched at test time):

- every Kubernetes manifest under ``deploy/k8s`` against the Kubernetes API schemas that
  kubernetes-validate bundles (strict: an unknown field fails), for the oldest and the newest
  Kubernetes it knows, and ``kubectl kustomize`` of both kustomizations when kubectl is here;
- ``docker-compose.yml`` against the Compose Specification's JSON schema and ``skaffold.yaml``
  against Skaffold's, both vendored in ``tests/deploy/schemas`` (Apache-2.0; sources, commits
  and notices in its README.md);
- what the issue asks of them (replicas, probes, one-shot schema upgrade, health checks,
  non-root, secrets by reference), and that they name only settings pacs has.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from pacs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_VERSIONS = sorted({all_versions()[0], all_versions()[-1]})
#: the AWS SDK's own variables: the S3 blob store's endpoint, credentials and region
AWS_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_DEFAULT_REGION"}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in _documents(path):
            if doc["kind"] != "Kustomization":
                yield path, doc


def _objects(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [doc for path, doc in _manifests() if "dev" not in path.parts
            and doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]


def _one(kind: str, name: str) -> dict[str, Any]:
    (found,) = _objects(kind, name)
    return found


def _settings_names() -> set[str]:
    return {f"PACS_{name.upper()}" for name in Settings.model_fields}


MANIFESTS = [pytest.param(doc, id=f"{path.relative_to(K8S)}:{doc['kind']}/"
                          f"{doc['metadata']['name']}") for path, doc in _manifests()]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_is_valid_kubernetes(manifest: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(manifest, version, strict=True)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    deployment = _one("Deployment", "pacs")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"path": "/readyz"}

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomizations_list_every_file_and_only_existing_ones() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        (spec,) = _documents(kustomization)
        listed = {(kustomization.parent / entry).resolve() for entry in spec["resources"]}
        listed |= {(kustomization.parent / patch["path"]).resolve()
                   for patch in spec.get("patches", [])}
        assert all(path.exists() for path in listed), kustomization
        here = {path.resolve() for path in kustomization.parent.glob("*.yaml")}
        assert here - {kustomization.resolve()} <= listed, kustomization


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", ["base", "dev"])
def test_kustomize_renders_valid_manifests(overlay: str) -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S / overlay)], capture_output=True,
                              text=True, timeout=120, check=True).stdout
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]

    kinds = sorted(f"{doc['kind']}/{doc['metadata']['name']}" for doc in documents)
    assert {"ConfigMap/pacs-config", "Deployment/pacs", "Job/pacs-db-upgrade",
            "PodDisruptionBudget/pacs", "Service/pacs-dimse", "Service/pacs-http"} <= set(kinds)
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
    if overlay == "dev":  # the overlay's patch reached the ConfigMap
        (config,) = [doc for doc in documents if doc["kind"] == "ConfigMap"]
        assert config["data"]["AWS_ENDPOINT_URL"] == "http://pacs-minio:9000"
        assert config["data"]["PACS_AUTH"] == "required"


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {env["name"]: (env["valueFrom"]["secretKeyRef"]["name"],
                          env["valueFrom"]["secretKeyRef"]["key"])
            for env in container.get("env", []) if "secretKeyRef" in env.get("valueFrom", {})}


def test_deployment_runs_two_probed_non_root_replicas() -> None:
    deployment = _one("Deployment", "pacs")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)

    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == "pacs" and container["args"] == ["serve"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert {port["containerPort"] for port in container["ports"]} == {11112, 8042}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert _secret_refs(container) == {
        "PACS_DATABASE_URL": ("pacs-database", "url"),
        "AWS_ACCESS_KEY_ID": ("pacs-s3", "access-key-id"),
        "AWS_SECRET_ACCESS_KEY": ("pacs-s3", "secret-access-key"),
    }
    assert container["envFrom"] == [{"configMapRef": {"name": "pacs-config"}}]


def test_services_and_budget_select_the_replicas() -> None:
    pod_labels = _one("Deployment", "pacs")["spec"]["template"]["metadata"]["labels"]
    container_ports = {port["name"] for port in _container(_one("Deployment", "pacs"))["ports"]}
    ports = {}
    for service in _objects("Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
            ports[port["port"]] = service["metadata"]["name"]
    assert ports == {11112: "pacs-dimse", 8042: "pacs-http"}
    assert _one("Service", "pacs-dimse")["spec"]["externalTrafficPolicy"] == "Local"
    budget = _one("PodDisruptionBudget", "pacs")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["minAvailable"] == 1


def test_job_upgrades_the_schema_with_the_same_image_and_database() -> None:
    container = _container(_one("Job", "pacs-db-upgrade"))

    assert container["image"] == "pacs" and container["args"] == ["db", "upgrade"]
    assert _secret_refs(container) == {"PACS_DATABASE_URL": ("pacs-database", "url")}
    assert _one("Job", "pacs-db-upgrade")["spec"]["template"]["spec"]["securityContext"][
        "runAsNonRoot"] is True


def test_dev_secrets_have_every_key_the_workloads_reference() -> None:
    secrets = {doc["metadata"]["name"]: set(doc["stringData"])
               for path, doc in _manifests() if doc["kind"] == "Secret"}
    for path, doc in _manifests():
        if doc["kind"] in ("Deployment", "Job"):
            for name, key in _secret_refs(_container(doc)).values():
                assert key in secrets.get(name, set()), (path.name, name, key)


def test_manifests_name_only_settings_pacs_has() -> None:
    known = _settings_names() | AWS_VARIABLES
    names = set(_one("ConfigMap", "pacs-config")["data"])
    for workload in _objects("Deployment") + _objects("Job"):
        names |= {env["name"] for env in _container(workload).get("env", [])}
    assert names - known == set()


# -- skaffold.yaml --------------------------------------------------------------------------

def _skaffold() -> dict[str, Any]:
    (config,) = _documents(ROOT / "skaffold.yaml")
    return config


def test_skaffold_config_is_valid() -> None:
    config = _skaffold()
    assert config["apiVersion"] == "skaffold/v4beta11"
    schema = json.loads((SCHEMAS / "skaffold-v4beta11.json").read_text())
    jsonschema.Draft7Validator(schema).validate(config)

    (artifact,) = config["build"]["artifacts"]
    assert artifact["image"] == _container(_one("Deployment", "pacs"))["image"]
    assert (ROOT / artifact["docker"]["dockerfile"]).is_file()
    assert all((ROOT / path / "kustomization.yaml").is_file()
               for path in config["manifests"]["kustomize"]["paths"])
    forwarded = {(rule["resourceName"], rule["port"]) for rule in config["portForward"]}
    assert forwarded == {("pacs-http", 8042), ("pacs-dimse", 11112)}


def test_skaffold_schema_rejects_an_unknown_field() -> None:
    schema = json.loads((SCHEMAS / "skaffold-v4beta11.json").read_text())
    config = {**_skaffold(), "deploy": {"kubectl": {"hookz": {}}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(config))


# -- docker-compose.yml ----------------------------------------------------------------------

def _compose() -> dict[str, Any]:
    (compose,) = _documents(ROOT / "docker-compose.yml")
    return compose


def _compose_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / "compose-spec.json").read_text())
    return schema


def test_compose_file_follows_the_compose_specification() -> None:
    jsonschema.Draft7Validator(_compose_schema()).validate(_compose())


def test_compose_schema_rejects_an_unknown_field() -> None:
    compose = _compose()
    compose["services"]["pacs"]["healthcheck"]["tests"] = ["CMD", "true"]
    assert list(jsonschema.Draft7Validator(_compose_schema()).iter_errors(compose))


def _one_shots(services: dict[str, Any]) -> set[str]:
    """Services others wait for to *complete*: they run once, so no health check."""
    return {name for service in services.values()
            for name, condition in (service.get("depends_on") or {}).items()
            if isinstance(condition, dict)
            and condition.get("condition") == "service_completed_successfully"}


def test_compose_runs_replicas_behind_haproxy_with_health_checks() -> None:
    services = _compose()["services"]
    pacs = services["pacs"]

    assert set(services) == {"db", "minio", "bucket", "upgrade", "pacs", "haproxy", "viewer"}
    assert pacs["deploy"]["replicas"] == 2
    assert "ports" not in pacs  # reached through HAProxy only
    assert services["haproxy"]["ports"] == ["11112:11112", "8042:8042"]
    assert services["viewer"]["profiles"] == ["viewer"]
    assert _one_shots(services) == {"upgrade", "bucket"}
    assert services["upgrade"]["command"] == ["db", "upgrade"]
    assert services["upgrade"]["build"] == pacs["build"] == "."
    for name, service in services.items():
        if name not in _one_shots(services):
            assert service["healthcheck"]["test"], name
    assert "/readyz" in " ".join(pacs["healthcheck"]["test"])
    assert pacs["depends_on"]["upgrade"]["condition"] == "service_completed_successfully"


def test_compose_keeps_auth_cors_and_the_viewer_config() -> None:
    services = _compose()["services"]
    environment = services["pacs"]["environment"]

    assert environment["PACS_AUTH"] == "required"
    assert set(environment["PACS_CORS_ORIGINS"].split(",")) == {
        "http://localhost:3000", "http://127.0.0.1:3000"}
    assert environment["PACS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert environment["PACS_BLOB_STORE"] == "s3://pacs/blobs"
    assert environment["AWS_ENDPOINT_URL"] == "http://minio:9000"
    mounts = {volume.split(":")[0]: volume.split(":")[1]
              for service in services.values() for volume in service.get("volumes", [])
              if volume.startswith("./")}
    assert mounts == {
        "./docs/ohif-app-config.js": "/usr/share/nginx/html/app-config.js",
        "./deploy/haproxy/haproxy.cfg": "/usr/local/etc/haproxy/haproxy.cfg",
    }
    assert all((ROOT / path).is_file() for path in mounts)
    names = set(environment) | set(services["upgrade"]["environment"])
    assert names - (_settings_names() | AWS_VARIABLES) == set()


# -- Dockerfile ---------------------------------------------------------------------------------

def _final_stage() -> list[tuple[str, str]]:
    """The Dockerfile's last stage as (instruction, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", "", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    instructions = [tuple(line.split(None, 1)) for line in lines
                    if line and not line.startswith("#")]
    last = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return [(keyword.upper(), rest) for keyword, rest in instructions[last:]]


def test_image_runs_as_non_root_with_a_health_check_and_installs_nothing_at_run_time() -> None:
    stage = dict(_final_stage())

    user = stage["USER"].split(":")
    assert user[0].isdigit() and int(user[0]) != 0  # numeric: runAsNonRoot can check it
    interval, command = stage["HEALTHCHECK"].split(" CMD ", 1)
    health = json.loads(command)
    assert health[:2] == ["python", "-c"] and "/readyz" in health[2]
    compile(health[2], "HEALTHCHECK", "exec")
    assert json.loads(stage["ENTRYPOINT"]) == ["pacs"]
    assert json.loads(stage["CMD"]) == ["serve"]
    run_time = " ".join(rest for keyword, rest in _final_stage()
                        if keyword in ("RUN", "ENTRYPOINT", "CMD"))
    assert not re.search(r"\b(pip|apt-get|apt|apk)\b", run_time)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip uninstall --yes --quiet pip setuptools" in dockerfile
    assert '".[postgres,s3]"' in dockerfile
