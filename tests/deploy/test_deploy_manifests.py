"""deploy/kubernetes/ without a cluster: every overlay renders with `kubectl kustomize`, every rendered object
validates against the Kubernetes schemas bundled in `kubernetes-validate` (offline, strict: an unknown field
fails), and the manifests agree with the code: container args parse with the commands' own argument parsers,
ports are the code's defaults and the Services' ports, the selector's probe names its gRPC health service,
the predictor flags are those TritonServer gives the binary, and the security settings hold for every
container. Probe paths and metric names are checked against live servers in tests/deploy/test_deploy_live.py.
"""

import argparse
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cli.gateway import cmd_gateway
from gateway.config import GatewayConfig, gateway_config_from_args
from cli import predictor_serving as serve_commands
from cli.main import build_parser
from predictor_service import contract
from predictor_service.triton_server import TritonServer
from selector.config import SelectorConfig, add_selector_arguments, config_from_args
from selector.server import SERVICE_NAME
from selector.targets import parse_targets

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
KUBERNETES_VERSION = "1.32.0"       # the kubectl on these machines; autoscaling/v2 and gRPC probes are GA


def render(directory: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays (install kubectl >= 1.27)")
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(DEPLOY / "overlays" / request.param)


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def container(deployment: dict, name: str, init: bool = False) -> dict:
    key = "initContainers" if init else "containers"
    return next(c for c in deployment["spec"]["template"]["spec"][key] if c["name"] == name)


def named_ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


def test_overlays_exist():
    assert OVERLAYS == ["cpu", "gpu"]


def test_every_rendered_object_validates_offline(overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    name, objects = overlay
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Namespace", "NetworkPolicy",
                     "PodDisruptionBudget", "Service"], f"{name}: {kinds}"
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    # The validator is not a no-op: a misspelt field fails.
    broken = yaml.safe_load(yaml.safe_dump(find(objects, "Deployment", "routoo-selector")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_selector_args_ports_and_probes_match_the_code(overlay):
    _, objects = overlay
    deployment = find(objects, "Deployment", "routoo-selector")
    c = container(deployment, "selector")
    assert c["args"][:3] == ["python", "-m", "selector.server"]
    parser = argparse.ArgumentParser()
    add_selector_arguments(parser)                       # the parser selector.server's main() uses
    config = config_from_args(parser.parse_args(c["args"][3:]))
    assert config.port == SelectorConfig().port == named_ports(c)["grpc"]
    assert config.metrics_port == named_ports(c)["metrics"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(config.metrics_port)
    assert config.host == "0.0.0.0"                      # loopback, the default, is unreachable in a pod
    # The predictor URL names the headless Triton Service and its gRPC port.
    (target,) = parse_targets(config.triton_url)
    triton_service = find(objects, "Service", target.host)
    assert triton_service["spec"]["clusterIP"] == "None"
    assert target.port in [p["port"] for p in triton_service["spec"]["ports"] if p["name"] == "grpc"]
    # Readiness on the Selector service (NOT_SERVING without a ready predictor), liveness on the overall one.
    assert c["readinessProbe"]["grpc"] == {"port": config.port, "service": SERVICE_NAME}
    assert c["livenessProbe"]["grpc"] == {"port": config.port}
    service = find(objects, "Service", "routoo-selector")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == named_ports(c)


def test_cpu_triton_args_are_serve_predictor_defaults():
    objects = render(DEPLOY / "overlays" / "cpu")
    c = container(find(objects, "Deployment", "routoo-triton"), "triton")
    assert c["args"][:2] == ["routoo", "serve-predictor"]
    args = build_parser().parse_args(c["args"][1:])
    assert args.func is serve_commands.cmd_serve_predictor
    ports = named_ports(c)
    assert (args.http_port, args.grpc_port, args.metrics_port) == (
        contract.TRITON_HTTP_PORT, contract.TRITON_GRPC_PORT, contract.TRITON_METRICS_PORT) == (
        ports["http"], ports["grpc"], ports["metrics"])
    assert args.host == "0.0.0.0" and serve_commands.INSTANCE_KINDS[args.instance_kind] == "KIND_CPU"
    service = find(objects, "Service", "routoo-triton")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports


def test_gpu_triton_serves_the_written_repository_with_the_servers_flags():
    objects = render(DEPLOY / "overlays" / "gpu")
    deployment = find(objects, "Deployment", "routoo-triton")
    init, main = container(deployment, "model-repository", init=True), container(deployment, "triton")
    written = build_parser().parse_args(init["args"][1:])
    assert init["args"][:2] == ["routoo", "serve-predictor"] and written.write_repository
    assert serve_commands.INSTANCE_KINDS[written.instance_kind] == "KIND_GPU"
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (init, main)}
    assert mounts["model-repository"]["models"] == mounts["triton"]["models"] == written.write_repository
    assert main["args"][0] == "tritonserver"
    flags = main["args"][1:]
    assert f"--model-repository={written.write_repository}" in flags
    # The flags TritonServer gives the wheel's binary, for the model the selector asks for.
    server = TritonServer(models=(SelectorConfig().predictor_model,))
    server.ports = {"grpc": contract.TRITON_GRPC_PORT, "http": contract.TRITON_HTTP_PORT,
                    "metrics": contract.TRITON_METRICS_PORT}
    server._run_dir = Path("/unused")
    expected = [f for f in server.command()[1:] if f.split("=")[0] in (
        "--model-control-mode", "--load-model", "--disable-auto-complete-config", "--grpc-port", "--http-port",
        "--metrics-port")]
    assert expected and all(f in flags for f in expected), (expected, flags)
    ports = named_ports(main)
    assert f"--grpc-port={ports['grpc']}" in flags and f"--http-port={ports['http']}" in flags
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_gateway_args_match_its_parser(overlay):
    _, objects = overlay
    deployment = find(objects, "Deployment", "routoo-gateway")
    c = container(deployment, "gateway")
    assert c["args"][:2] == ["routoo", "gateway"]
    args = build_parser().parse_args(c["args"][1:])
    assert args.func is cmd_gateway
    config = gateway_config_from_args(args)
    assert config.port == GatewayConfig().port == named_ports(c)["http"]
    assert config.host == "0.0.0.0" and config.api_key_env
    # Its /metrics is on the API port.
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(config.port)
    service = find(objects, "Service", "routoo-gateway")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == named_ports(c)
    # The selector address is gRPC's DNS resolver over the headless selector Service: one address per ready
    # selector pod, which the gateway's round_robin channel spreads its calls over.
    scheme, _, address = config.selector_address.partition(":///")
    assert scheme == "dns", config.selector_address
    (target,) = parse_targets(address)
    headless = find(objects, "Service", target.host)
    assert headless["spec"]["clusterIP"] == "None"
    selector = find(objects, "Deployment", "routoo-selector")
    assert headless["spec"]["selector"] == selector["spec"]["selector"]["matchLabels"]
    grpc_ports = [p for p in headless["spec"]["ports"] if p["name"] == "grpc"]
    assert [p["port"] for p in grpc_ports] == [target.port] == [SelectorConfig().port]
    assert grpc_ports[0]["targetPort"] in named_ports(container(selector, "selector"))
    # The ClusterIP Service stays for other clients of the routing API.
    assert "clusterIP" not in find(objects, "Service", "routoo-selector")["spec"]


def test_every_pod_is_non_root_read_only_and_budgeted(overlay):
    name, objects = overlay
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert sorted(d["metadata"]["name"] for d in deployments) == ["routoo-gateway", "routoo-selector", "routoo-triton"]
    pdb_selectors = [o["spec"]["selector"]["matchLabels"] for o in objects if o["kind"] == "PodDisruptionBudget"]
    hpa_targets = {o["spec"]["scaleTargetRef"]["name"] for o in objects if o["kind"] == "HorizontalPodAutoscaler"}
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}: {d['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert "memory" in c["resources"]["limits"], where
        for c in pod["containers"]:
            assert {"readinessProbe", "livenessProbe"} <= set(c), f"{name}: {c['name']} lacks a probe"
        assert d["spec"]["selector"]["matchLabels"] in pdb_selectors, f"{d['metadata']['name']} has no PDB"
        assert d["metadata"]["name"] in hpa_targets, f"{d['metadata']['name']} has no HPA"


def test_network_policy_exposes_only_gateway_and_selector(overlay):
    _, objects = overlay
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and "ingress" not in deny[0]["spec"], "a default-deny ingress policy is missing"
    open_to_all, triton_sources = set(), []
    for policy in policies:
        component = policy["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
        for rule in policy["spec"].get("ingress", []):
            if "from" not in rule:
                open_to_all.add(component)
            elif component == "triton":
                triton_sources += rule["from"]
    assert open_to_all == {"gateway", "selector"}
    selector_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "routoo",
                                                     "app.kubernetes.io/component": "selector"}}}
    assert selector_pods in triton_sources
    assert all(s == selector_pods or "namespaceSelector" in s for s in triton_sources)
    # Egress: Triton none at all; the selector DNS and Triton's gRPC port only.
    by_component = {p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component"): p
                    for p in policies}
    triton, selector = by_component["triton"]["spec"], by_component["selector"]["spec"]
    assert "Egress" in triton["policyTypes"] and not triton.get("egress")
    assert "Egress" in selector["policyTypes"]
    triton_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "routoo",
                                                   "app.kubernetes.io/component": "triton"}}}
    for rule in selector["egress"]:
        ports = {(p["port"], p["protocol"]) for p in rule["ports"]}
        assert (rule.get("to") == [triton_pods] and ports == {(8001, "TCP")}) or \
            ("to" not in rule and ports == {(53, "UDP"), (53, "TCP")}), rule


def test_triton_autoscales_on_the_adapters_queue_metric(overlay):
    _, objects = overlay
    hpa = find(objects, "HorizontalPodAutoscaler", "routoo-triton")
    (metric,) = hpa["spec"]["metrics"]
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter-rules.yaml").read_text())
    served = [rule["name"]["as"] for rule in rules["rules"]["custom"]]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in served
    # The rule reads Triton's own queue counter, which tests/deploy/test_deploy_live.py finds on a live /metrics.
    assert any("nv_inference_queue_duration_us" in rule["metricsQuery"] for rule in rules["rules"]["custom"])
