"""The dashboard, the alerting rules and the manifests' probes against live servers: one real `tritonserver`
and the real selector (over a DNS name, so through selector/replicas.py), both on loopback ports.

Every metric the Grafana dashboard, the Prometheus rules and the Prometheus-adapter rule name must be one
that the selector's or Triton's /metrics exports; the Triton probe paths of the rendered manifests must
answer 200, and the selector's gRPC health services they name must answer SERVING.
"""

import asyncio
import json
import re
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from predictor_service.triton_server import TritonServer
from selector.config import SelectorConfig
from selector.proto import selector_pb2 as pb
from selector.proto import selector_pb2_grpc as pb_grpc
from selector.server import create_server

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY = ROOT / "deploy" / "observability"
KUBERNETES = ROOT / "deploy" / "kubernetes"

# PromQL's functions, aggregations and keywords: every other identifier in an expression is a metric name.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "group", "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min",
    "clamp_max", "clamp", "abs", "absent", "absent_over_time", "avg_over_time", "max_over_time",
    "min_over_time", "sum_over_time", "label_replace", "label_join", "vector", "scalar", "time", "round",
    "ceil", "floor", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)                 # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)                           # label matchers (and <<.LabelMatchers>>)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                          # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"(?<![\w.])\d+(\.\d+)?([eE][+-]?\d+)?", "", expr)  # numbers, 1e-9 included
    return {name for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr) if name not in PROMQL_WORDS}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs += [m.group(1) for m in re.finditer(r"label_values\((\w+)", query["query"])]
    return exprs


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((OBSERVABILITY / "prometheus-rules.yaml").read_text())
    adapter = yaml.safe_load((KUBERNETES / "prometheus-adapter-rules.yaml").read_text())
    return ([rule["expr"] for group in rules["groups"] for rule in group["rules"]]
            + [r[key] for r in adapter["rules"]["custom"] for key in ("seriesQuery", "metricsQuery")])


def exposed_names(text: str) -> set[str]:
    """Sample names as Prometheus stores them (Triton's counters have no _total; the parser would add one)."""
    return {re.split(r"[{\s]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.fixture(scope="module")
def live():
    """(triton, selector server, selector port) with a few Routes and one refused request behind them."""
    with TritonServer(models=("routoo_predictor",)) as triton:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True)
        thread.start()

        def call(coroutine):
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result(120)

        config = SelectorConfig(port=0, triton_url=f"localhost:{triton.ports['grpc']}", metrics_port=0,
                                health_poll_s=0.2)
        server, port = call(create_server("127.0.0.1:0", config=config))
        call(server.start())
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.SelectorStub(channel)
                for i in range(5):
                    stub.Route(pb.RouteRequest(prompt=f"What is {i} + {i}?"), timeout=10)
                with pytest.raises(grpc.RpcError):           # so the errors counter has a series
                    stub.Route(pb.RouteRequest(prompt=" "), timeout=10)
            yield triton, server, port
        finally:
            call(server.stop(0))
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()


def test_metric_name_extraction():
    assert metric_names('sum by (le) (rate(a_bucket{method="Route",x=~"$ns"}[5m])) / clamp_min(b, 1e-9) > 0.025') \
        == {"a_bucket", "b"}
    assert metric_names("sum by (<<.GroupBy>>) (rate(q_us{<<.LabelMatchers>>}[1m])) / 1e6") == {"q_us"}


def test_every_metric_named_is_exported(live):
    triton, server, _ = live
    _, selector_text = http_get(f"http://127.0.0.1:{server.metrics_port}/metrics")
    _, triton_text = http_get(triton.metrics_url)
    exported = exposed_names(selector_text) | exposed_names(triton_text)
    assert "routoo_selector_replica_calls_total" in exported and "nv_inference_queue_duration_us" in exported
    named = {name for expr in dashboard_exprs() + rule_exprs() for name in metric_names(expr)}
    gateway = {name for name in named if name.startswith("routoo_gateway_")}
    assert not gateway, f"gateway metrics {sorted(gateway)} are named, but this branch has no gateway to export them"
    assert len(named) >= 12, sorted(named)
    missing = sorted(named - exported)
    assert not missing, f"named in the dashboard or rules but exported by neither server: {missing}"


def test_alert_thresholds_follow_the_code_and_bench():
    rules = {r["alert"]: r["expr"] for g in yaml.safe_load((OBSERVABILITY / "prometheus-rules.yaml").read_text())[
        "groups"] for r in g["rules"]}
    slo_s = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())["settings"]["slo_ms"] / 1000
    assert float(rules["RoutooRouteLatencyOverSLO"].rsplit(">", 1)[1]) == slo_s
    saturated = float(rules["RoutooSelectorSaturated"].rsplit(">", 1)[1])
    assert 0 < saturated < SelectorConfig().max_concurrent_requests


def _rendered_cpu_overlay() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot render deploy/kubernetes/overlays/cpu to read its probes")
    out = subprocess.run(["kubectl", "kustomize", str(KUBERNETES / "overlays" / "cpu")], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _container(objects: list[dict], deployment: str) -> dict:
    (d,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == deployment]
    return d["spec"]["template"]["spec"]["containers"][0]


def test_manifest_probes_answer_on_live_servers(live):
    triton, _, selector_port = live
    objects = _rendered_cpu_overlay()
    triton_container = _container(objects, "routoo-triton")
    ports = {p["name"]: p["containerPort"] for p in triton_container["ports"]}
    live_ports = {"http": triton.ports["http"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = triton_container[probe]["httpGet"]
        assert ports[get["port"]] == 8000      # the container's http port; here the test server's own port
        status, _ = http_get(f"http://127.0.0.1:{live_ports[get['port']]}{get['path']}")
        assert status == 200, (probe, get)
    selector_container = _container(objects, "routoo-selector")
    with grpc.insecure_channel(f"127.0.0.1:{selector_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = selector_container[probe]["grpc"].get("service", "")
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, (probe, service)
