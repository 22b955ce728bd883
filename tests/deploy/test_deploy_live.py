"""The dashboard, the alerting rules and the manifests' probes against live servers: one real `tritonserver`,
the real selector (over a DNS name, so through selector/replicas.py) and the real gateway (over
`dns:///localhost:PORT`, the form the manifests give it) with fake upstream LLMs, all on loopback ports.

Every metric the Grafana dashboard, the Prometheus rules and the Prometheus-adapter rule name must be one
that the selector's, Triton's or the gateway's /metrics exports; the probe paths of the rendered manifests
must answer 200, and the selector's gRPC health services they name must answer SERVING.
"""

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import GatewayConfig
from gateway.server import GatewayServer
from predictor_service.triton_server import TritonServer
from selector.config import SelectorConfig
from selector.pool import load_pool, pool_toml
from selector.proto import selector_pb2 as pb
from selector.proto import selector_pb2_grpc as pb_grpc
from selector.server import create_server
from tests.support.upstreams import FakeUpstream, LoopThread, pool_with_upstreams

ROOT = Path(__file__).resolve().parents[2]
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


def http_post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


@dataclass
class Live:
    triton: TritonServer
    selector: object            # selector.server's server (its metrics_port is the bound one)
    selector_port: int
    gateway: GatewayServer


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Triton, the selector and the gateway (on one event loop, as `routoo serve` runs them) with traffic behind
    them, so that every labelled series exists: Routes and a refused one; completions answered; one answered
    502 after every upstream failed with a 500."""
    upstreams = {m.name: FakeUpstream(m.name) for m in load_pool().models}
    pool_path = tmp_path_factory.mktemp("deploy-live") / "pool.toml"
    pool_path.write_text(pool_toml(pool_with_upstreams(load_pool(), upstreams)), encoding="utf-8")
    loop = LoopThread()
    try:
        with TritonServer(models=("routoo_predictor",)) as triton:
            config = SelectorConfig(port=0, triton_url=f"localhost:{triton.ports['grpc']}", pool_path=pool_path,
                                    metrics_port=0, health_poll_s=0.2)
            server, port = loop.call(create_server("127.0.0.1:0", config=config))
            loop.call(server.start())

            async def start_gateway():
                gateway = GatewayServer(GatewayConfig(port=0, selector_address=f"dns:///localhost:{port}",
                                                      pool_path=pool_path))
                await gateway.start()
                return gateway
            gateway = loop.call(start_gateway())
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    stub = pb_grpc.SelectorStub(channel)
                    for i in range(5):
                        stub.Route(pb.RouteRequest(prompt=f"What is {i} + {i}?"), timeout=10)
                    with pytest.raises(grpc.RpcError):           # so the errors counter has a series
                        stub.Route(pb.RouteRequest(prompt=" "), timeout=10)
                completions = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
                for i in range(3):
                    status = http_post(completions, {"model": "routoo", "messages": [
                        {"role": "user", "content": f"Name {i + 2} prime numbers."}]})
                    assert status == 200
                for upstream in upstreams.values():                  # so upstream failures and a 5xx have series
                    upstream.mode = "status_500"
                assert http_post(completions, {"model": "routoo", "messages": [
                    {"role": "user", "content": "What is the capital of France?"}]}) == 502
                for upstream in upstreams.values():
                    upstream.reset()
                yield Live(triton, server, port, gateway)
            finally:
                loop.call(gateway.stop())
                loop.call(server.stop(0))
    finally:
        loop.close()
        for upstream in upstreams.values():
            upstream.stop()


def test_metric_name_extraction():
    assert metric_names('sum by (le) (rate(a_bucket{method="Route",x=~"$ns"}[5m])) / clamp_min(b, 1e-9) > 0.025') \
        == {"a_bucket", "b"}
    assert metric_names("sum by (<<.GroupBy>>) (rate(q_us{<<.LabelMatchers>>}[1m])) / 1e6") == {"q_us"}


def test_every_metric_named_is_exported(live):
    _, selector_text = http_get(f"http://127.0.0.1:{live.selector.metrics_port}/metrics")
    _, triton_text = http_get(live.triton.metrics_url)
    _, gateway_text = http_get(f"http://127.0.0.1:{live.gateway.port}/metrics")
    exported = exposed_names(selector_text) | exposed_names(triton_text) | exposed_names(gateway_text)
    assert {"routoo_selector_replica_calls_total", "nv_inference_queue_duration_us",
            "routoo_gateway_upstream_failures_total"} <= exported
    named = {name for expr in dashboard_exprs() + rule_exprs() for name in metric_names(expr)}
    # The gateway's panels and alert: requests by model and status, routing and upstream times, spend and the
    # always-best-model spend that the saving is measured against.
    assert {"routoo_gateway_requests_total", "routoo_gateway_routing_seconds_bucket",
            "routoo_gateway_upstream_ttfb_seconds_bucket", "routoo_gateway_upstream_seconds_bucket",
            "routoo_gateway_spend_usd_total", "routoo_gateway_best_model_spend_usd_total"} <= named, sorted(named)
    assert len(named) >= 20, sorted(named)
    missing = sorted(named - exported)
    assert not missing, f"named in the dashboard or rules but exported by no server: {missing}"


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
    objects = _rendered_cpu_overlay()
    triton_container = _container(objects, "routoo-triton")
    ports = {p["name"]: p["containerPort"] for p in triton_container["ports"]}
    live_ports = {"http": live.triton.ports["http"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = triton_container[probe]["httpGet"]
        assert ports[get["port"]] == 8000      # the container's http port; here the test server's own port
        status, _ = http_get(f"http://127.0.0.1:{live_ports[get['port']]}{get['path']}")
        assert status == 200, (probe, get)
    gateway_container = _container(objects, "routoo-gateway")
    for probe in ("readinessProbe", "livenessProbe"):
        get = gateway_container[probe]["httpGet"]
        assert get["port"] == "http"
        status, _ = http_get(f"http://127.0.0.1:{live.gateway.port}{get['path']}")
        assert status == 200, (probe, get)
    selector_container = _container(objects, "routoo-selector")
    with grpc.insecure_channel(f"127.0.0.1:{live.selector_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            service = selector_container[probe]["grpc"].get("service", "")
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, (probe, service)
