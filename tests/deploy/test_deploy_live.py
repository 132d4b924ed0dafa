"""The observability stack, live: Debian's Prometheus, with the repository's scrape config and alert rules
(targets pointed at a loopback port), scrapes the real service (``haste serve``) while mixed-level
traffic is sent; then every PromQL expression of the Grafana dashboard, and the prometheus-adapter rule
behind the HPA, is evaluated through Prometheus' HTTP API and must return data. The GPU panels
(dcgm-exporter) are the only ones allowed to come back empty: there is no GPU here.

Everything listens on 127.0.0.1; traffic is bounded (a few dozen requests).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from deploytools import ROOT, find_tool

pytestmark = pytest.mark.timeout(420)

MODELS = ("fmnist-resnet18", "fmnist-resnet34")  # the lightest reference model with weights is served
LEVELS = ("off", "low", "medium", "high")
REQUESTS_PER_LEVEL = 6  # per traffic phase
RATE_WINDOW = "2m"  # stands for Grafana's $__rate_interval: longer than the whole test's traffic
POD = {"namespace": "haste-live", "pod": "haste-live-0"}  # what the Prometheus Operator would add
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "haste.json"
ADAPTER_CONFIGMAP = ROOT / "k8s" / "prometheus-adapter" / "configmap.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}:\n{log.read_text()[-4000:] if log else ''}")
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}" + (f":\n{log.read_text()[-4000:]}" if log else ""))


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _served_model() -> str | None:
    """The lightest reference model whose trained weights are there (packaged, or in HASTE_WEIGHTS_DIR)."""
    import haste.zoo

    root = Path(os.environ["HASTE_WEIGHTS_DIR"]) if os.environ.get("HASTE_WEIGHTS_DIR") else haste.zoo.WEIGHTS_DIR
    for name in MODELS:
        if all(path.is_file() for path in haste.zoo.paths(name, root)):
            return name
    return None


@pytest.fixture(scope="module")
def model() -> str:
    name = _served_model()
    if name is None:
        pytest.skip(f"LIVE TEST NOT RUN: no trained weights of {' or '.join(MODELS)} in haste/zoo/weights yet")
    return name


@pytest.fixture(scope="module")
def service_url(model, tmp_path_factory):
    """The real service, started as its users start it (``haste serve``), on a free loopback port."""
    pytest.importorskip("service.app", reason="LIVE TEST NOT RUN: the service (service/app.py) is not there yet")
    port = _free_port()
    log = tmp_path_factory.mktemp("service") / "service.log"
    env = {
        **os.environ,
        "HASTE_MODELS": model,
        "HASTE_DEFAULT_MODEL": model,
        "HASTE_DEVICE": "cpu",
        "HASTE_TORCH_THREADS": "1",
        "HASTE_DECODE_THREADS": "1",
        "HASTE_MAX_BATCH_DELAY_MS": "20",  # so that concurrent requests share batches
        "HASTE_LOG_LEVEL": "warning",
        "HASTE_OFFLINE": "1",
    }
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "haste.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 300, "/readyz", proc, log)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def prometheus_url(service_url, tmp_path_factory):
    """Debian's Prometheus with docker/prometheus/prometheus.yml, its haste job pointed at the service."""
    tmp = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "haste"]
    (static,) = job["static_configs"]
    static["targets"] = [service_url.removeprefix("http://")]
    static["labels"] = {**static.get("labels", {}), **POD}
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    # Only the haste job: the dcgm job resolves a compose service name and the self-scrape is not needed.
    config["scrape_configs"] = [job]
    for rule_file in config.get("rule_files", []):
        shutil.copy(ROOT / "docker" / "prometheus" / rule_file, tmp / rule_file)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = tmp / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                find_tool("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 60, "Prometheus ready", proc, log)
        _wait(lambda: _values(url, 'up{job="haste"}') == [1.0], 60, "the haste target up", proc, log)
        yield url
    finally:
        _stop(proc)


def _query(prometheus: str, expr: str) -> list[dict]:
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    body = reply.json()
    assert reply.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def _values(prometheus: str, expr: str) -> list[float]:
    return [float(r["value"][1]) for r in _query(prometheus, expr)]


def _png() -> bytes:
    from PIL import Image

    image = Image.effect_noise((28, 28), 64).convert("L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _send_traffic(service: str) -> tuple[int, dict[int, int]]:
    """One phase: REQUESTS_PER_LEVEL images per level, 4 at a time, plus requests that must fail."""
    png = _png()
    calls = [("/v1/classify", {"level": level}, png) for level in LEVELS for _ in range(REQUESTS_PER_LEVEL)]
    calls += [
        ("/v1/classify", {"level": "high"}, b"not an image"),  # 400 invalid_image
        ("/classify", {"level": "low", "model": "no-such-model"}, png),  # 404 unknown_model
        ("/v1/classify", {"level": "max"}, png),  # 400 invalid_level
    ]
    with httpx.Client(base_url=service, timeout=30) as client:

        def post(call):
            path, params, body = call
            return client.post(path, params=params, content=body, headers={"Content-Type": "image/png"}).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(post, calls))
    counts: dict[int, int] = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return len(codes), counts


def _scraped_requests(prometheus: str) -> float:
    values = _values(prometheus, 'sum(haste_requests_total{job="haste"})')
    return values[0] if values else 0.0


@pytest.fixture(scope="module")
def traffic(service_url, prometheus_url):
    """Two phases of traffic, each followed by a scrape that sees all of it, so that every counter and
    histogram series has risen between two samples (rate() > 0)."""
    sent = 0
    for _ in range(2):
        n, counts = _send_traffic(service_url)
        assert counts.get(200) == len(LEVELS) * REQUESTS_PER_LEVEL and counts.get(400) == 2 and counts.get(404) == 1
        sent += n
        _wait(lambda total=sent: _scraped_requests(prometheus_url) >= total, 30, f"a scrape seeing {sent} requests")
    time.sleep(1.5)  # one more scrape: gauges (queue depth, in-flight) back at rest
    return sent


def _substitute_grafana_variables(expr: str) -> str:
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", RATE_WINDOW, expr)
    expr = re.sub(r"\$\{?model\}?", ".*", expr)  # the "All" value of the model variable
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_every_dashboard_expression_returns_data(prometheus_url, traffic):
    panels = json.loads(DASHBOARD.read_text())["panels"]
    empty, nan_only, gpu_with_data, checked = [], [], [], 0
    for panel in panels:
        for target in panel.get("targets", []):
            expr = _substitute_grafana_variables(target["expr"])
            result = _query(prometheus_url, expr)
            checked += 1
            label = f"{panel['title']} [{target['refId']}]: {expr}"
            if "DCGM_" in expr:  # GPU telemetry: no GPU, no dcgm-exporter here
                if result:
                    gpu_with_data.append(label)
                continue
            if not result:
                empty.append(label)
            elif all(math.isnan(float(r["value"][1])) for r in result):
                nan_only.append(label)
    assert checked >= 20
    assert not empty, "expressions without data:\n" + "\n".join(empty)
    assert not nan_only, "expressions with only NaN:\n" + "\n".join(nan_only)
    assert not gpu_with_data, gpu_with_data


def test_dashboard_numbers_match_the_traffic(prometheus_url, traffic, model):
    """A few panels checked for values, not just presence: levels, codes, readiness, FLOPs saved."""
    by_level = _query(prometheus_url, f"sum by (level) (increase(haste_requests_total{{code='200'}}[{RATE_WINDOW}]))")
    assert {r["metric"]["level"] for r in by_level} == set(LEVELS)
    codes = {r["metric"]["code"] for r in _query(prometheus_url, "sum by (code) (haste_requests_total)")}
    assert codes == {"200", "400", "404"}
    assert _values(prometheus_url, "sum(haste_ready)") == [1.0]
    saved = {
        r["metric"]["level"]: float(r["value"][1])
        for r in _query(
            prometheus_url, "sum by (level) (haste_flops_saved_total) / sum by (level) (haste_flops_dense_total)"
        )
    }
    assert saved["off"] == 0.0 and 0.0 < saved["low"] <= saved["high"] < 1.0, saved
    (info,) = _query(prometheus_url, "haste_model_info")
    assert info["metric"]["model"] == model and info["metric"]["device"] == "cpu"
    (engine,) = _query(prometheus_url, "haste_engine_info")
    assert engine["metric"]["model"] == model and engine["metric"]["engine"] in ("cpu", "reference")
    # The median per-image saving from the histogram: exactly 0 at level off (its own bucket), and within
    # a bucket (0.01) of the mean saving the counters give at the other levels (one image, one saving).
    median = {
        r["metric"]["level"]: float(r["value"][1])
        for r in _query(
            prometheus_url,
            f"histogram_quantile(0.5, sum by (le, level) (increase(haste_flops_saved_ratio_bucket[{RATE_WINDOW}])))",
        )
    }
    assert median["off"] == 0.0, median
    for level in ("low", "medium", "high"):
        assert abs(median[level] - saved[level]) <= 0.02, (level, median, saved)


def test_adapter_rule_serves_the_hpa_metric_per_pod(prometheus_url, traffic):
    config = yaml.safe_load(yaml.safe_load(ADAPTER_CONFIGMAP.read_text())["data"]["config.yaml"])
    for rule in config["rules"]:
        series = httpx.get(f"{prometheus_url}/api/v1/series", params={"match[]": rule["seriesQuery"]}, timeout=10)
        assert series.json()["data"], f"seriesQuery {rule['seriesQuery']} discovers nothing"
        series_name = re.match(r"\w+", rule["seriesQuery"]).group(0)
        # prometheus-adapter's template variables, as it fills them for the pods of one HPA.
        matchers = f'namespace="{POD["namespace"]}",pod=~"{POD["pod"]}"'
        expr = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series_name)
            .replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", "pod")
        )
        assert "<<" not in expr
        (sample,) = _query(prometheus_url, expr)
        assert sample["metric"] == {"pod": POD["pod"]}
        value = float(sample["value"][1])
        assert math.isfinite(value) and value > 0.0, f"{rule['name']['as']} = {value}"


def test_alert_rules_evaluate_on_live_data(prometheus_url, traffic):
    def loaded():
        groups = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule.get("lastEvaluation", "").startswith("2") for rule in rules) else None

    rules = _wait(loaded, 30, "alert rules evaluated")
    assert {rule["name"] for rule in rules} >= {"HasteDown", "HasteNotReady", "HasteServerErrors", "HasteQueueBacklog"}
    bad = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not bad, bad
    # A healthy replica: up, ready, no 5xx. (HasteQueueBacklog depends on how loaded this machine is.)
    state = {rule["name"]: rule["state"] for rule in rules}
    for name in ("HasteDown", "HasteNotReady", "HasteServerErrors"):
        assert state[name] == "inactive", f"{name} is {state[name]} on a healthy service"
    assert "firing" not in state.values(), state
