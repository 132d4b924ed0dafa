"""k8s/kserve/: the ServingRuntime and the InferenceService, checked structurally against the KServe Python
SDK's model classes (vendored from the kserve wheel by scripts/vendor_kserve_models.py: no registry package
ships KServe's CRD YAML), with every Kubernetes core object inside them (containers, env, probes,
resources, metadata) validated by kubernetes-validate; and their haste specifics: protocol v2, the
/v2/health/* probes, the port, real settings."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SDK = json.loads((Path(__file__).parent / "kserve" / "kserve-0.21.0-models.json").read_text())
CLASSES = SDK["classes"]
KUBERNETES_VERSION = "1.30.0"
KINDS = {
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}


def _core_schema(name: str) -> dict:
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / "v1.30.0-local-strict"
    return json.loads((base / name).read_text())


CONTAINER_FIELDS = set(_core_schema("container-v1.json")["properties"])
POD_FIELDS = set(_core_schema("podspec-v1.json")["properties"])


def _validate_core(placed: dict, where: str) -> None:
    """Validate Kubernetes core values by placing them in a Pod: ``placed`` maps container / pod / metadata
    to the fields given there."""
    container = {"name": "probe", "image": "probe", **placed.get("container", {})}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", **placed.get("metadata", {})},
        "spec": {"containers": [container], **placed.get("pod", {})},
    }
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(f"{where}: {exc.message}") from None


def _is_core(kind: str) -> bool:
    return kind not in CLASSES and bool(re.fullmatch(r"(V1|K8sIo)\w+", kind))


def check(value: object, kind: str, where: str) -> None:
    """``value`` fits the SDK type ``kind``: unknown fields, missing required ones and wrong scalar types fail;
    Kubernetes core types are validated by kubernetes-validate."""
    if kind == "str":
        assert isinstance(value, str), f"{where}: expected a string, got {value!r}"
    elif kind == "int":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an integer, got {value!r}"
    elif kind == "bool":
        assert isinstance(value, bool), f"{where}: expected true or false, got {value!r}"
    elif kind in ("object", "ResourceQuantity"):
        pass
    elif m := re.fullmatch(r"list\[(.+)\]", kind):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, item in enumerate(value):
            check(item, m[1], f"{where}[{i}]")
    elif m := re.fullmatch(r"dict\(str, (.+)\)", kind):
        assert isinstance(value, dict), f"{where}: expected a mapping"
        for key, item in value.items():
            check(item, m[1], f"{where}.{key}")
    elif kind in CLASSES:
        assert isinstance(value, dict), f"{where}: expected an object ({kind})"
        fields, required = CLASSES[kind]["fields"], CLASSES[kind]["required"]
        unknown = sorted(set(value) - set(fields))
        assert not unknown, f"{where}: unknown field(s) {unknown} of {kind}"
        missing = sorted(set(required) - set(value))
        assert not missing, f"{where}: missing required field(s) {missing} of {kind}"
        container_like = "image" in fields and "args" in fields  # a Container plus KServe's fields (ModelSpec)
        placed: dict[str, dict] = {}
        for key, item in value.items():
            sub = fields[key]
            if not _is_core(sub.removeprefix("list[").removesuffix("]")) and not (
                container_like and key in CONTAINER_FIELDS
            ):
                check(item, sub, f"{where}.{key}")
            elif sub == "V1ObjectMeta":
                placed.setdefault("metadata", {}).update({k: v for k, v in item.items() if k != "name"})
            elif sub == "list[V1Container]" and key == "containers":
                _validate_core({"pod": {"containers": item}}, f"{where}.{key}")
            elif key in CONTAINER_FIELDS and (container_like or key not in POD_FIELDS):
                placed.setdefault("container", {})[key] = item
            elif key in POD_FIELDS:
                placed.setdefault("pod", {})[key] = item
            else:
                raise AssertionError(f"{where}.{key}: a {sub} with no place in a Pod to validate it")
        if placed:
            _validate_core(placed, where)
    else:
        raise AssertionError(f"{where}: type {kind} is neither a scalar, an SDK class nor a core type")


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / "k8s" / "kserve" / name).read_text())


def _check_document(doc: dict) -> None:
    cls = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
    assert cls, f"not a KServe kind: {doc.get('apiVersion')} {doc.get('kind')}"
    check(doc, cls, doc["kind"])


@pytest.mark.parametrize("name", ["servingruntime.yaml", "inferenceservice.yaml"])
def test_manifests_fit_the_kserve_sdk_models(name):
    _check_document(_load(name))


def test_runtime_speaks_v2_with_the_protocol_health_probes_and_real_settings():
    from service.settings import Settings

    runtime, isvc = _load("servingruntime.yaml"), _load("inferenceservice.yaml")
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container" and container["args"] == ["haste", "serve"]
    env = {e["name"]: e for e in container["env"]}
    port = int(env["HASTE_PORT"]["value"])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(port)
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    assert env["HASTE_API_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    names = {e["name"] for e in container["env"]} | {e["name"] for e in model["env"]}
    settings = {f"HASTE_{field.upper()}" for field in Settings.model_fields}
    assert names <= settings, sorted(names - settings)
    Settings(**{e["name"].removeprefix("HASTE_").lower(): e["value"] for e in model["env"]})


def test_the_structural_check_bites():
    isvc = _load("inferenceservice.yaml")
    typo = copy.deepcopy(isvc)
    typo["spec"]["predictor"]["model"]["protocolVersions"] = typo["spec"]["predictor"]["model"].pop("protocolVersion")
    with pytest.raises(AssertionError, match="unknown field"):
        _check_document(typo)
    wrong = copy.deepcopy(isvc)
    wrong["spec"]["predictor"]["minReplicas"] = "two"
    with pytest.raises(AssertionError, match="expected an integer"):
        _check_document(wrong)
    core = copy.deepcopy(_load("servingruntime.yaml"))
    core["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/v2/health/ready"
    with pytest.raises(AssertionError):
        _check_document(core)
    env = copy.deepcopy(isvc)
    env["spec"]["predictor"]["model"]["env"][0]["valu"] = "x"
    with pytest.raises(AssertionError):
        _check_document(env)
    missing = copy.deepcopy(isvc)
    del missing["spec"]["predictor"]["model"]["modelFormat"]
    with pytest.raises(AssertionError, match="missing required"):
        _check_document(missing)
