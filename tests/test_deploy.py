"""The Kubernetes manifests in deploy/k8s: schema-valid, and consistent with the image and API.

    .venv/bin/pytest tests/test_deploy.py

`kubernetes-validate` ships the Kubernetes JSON schemas inside the package; the test blocks
every outgoing connection while validating, so it proves the check runs offline.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from cifarlab.serve.app import create_app
from cifarlab.serve.settings import Settings
from tiny_onnx import write_tiny_model

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # oldest release still common in managed clusters


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((K8S / name).read_text())
    assert isinstance(doc, dict)
    return doc


def resources() -> list[str]:
    return list(load("kustomization.yaml")["resources"])


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the validator tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_kustomization_lists_every_manifest() -> None:
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(resources()) == files


@pytest.mark.parametrize("name", resources())
def test_manifest_is_valid_against_the_kubernetes_schema(name: str, offline: None) -> None:
    doc = load(name)
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_validator_rejects_a_broken_manifest(offline: None) -> None:
    broken = load("deployment.yaml")
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    unknown = load("service.yaml")
    unknown["spec"]["colour"] = "blue"  # strict: unknown fields are errors
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def test_pod_runs_as_the_images_non_root_user() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    uid = int(re.search(r"useradd[^\n]*--uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    gid = int(re.search(r"groupadd[^\n]*--gid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid != 0
    assert pod["securityContext"]["runAsGroup"] == gid
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert "EXPOSE 8000" in dockerfile and container["ports"][0]["containerPort"] == 8000


def test_probes_requests_limits_service_and_autoscaler_fit_together(tmp_path: Path) -> None:
    deployment = load("deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for key in ("requests", "limits"):
        assert set(container["resources"][key]) == {"cpu", "memory"}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["CIFARLAB_ORT_THREADS"]) == int(container["resources"]["limits"]["cpu"])
    Settings(ort_threads=int(env["CIFARLAB_ORT_THREADS"]))  # a setting the server knows

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = load("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    hpa = load("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    # The probe paths exist and answer 200 on a loaded server.
    model = write_tiny_model(tmp_path / "tiny.onnx")
    with TestClient(create_app(Settings(model_path=model))) as c:
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert c.get(container[probe]["httpGet"]["path"]).status_code == 200
