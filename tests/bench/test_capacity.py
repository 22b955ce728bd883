"""bench/capacity.py: docs/deploy.md's capacity table is what bench/results/latest.json gives, the replica
plans cover their load, and the manifests request what the plan assumes (no timing here: the figures are
the bench's)."""

import copy
import json
import math

import pytest
import yaml

from bench import capacity

REPORT = json.loads(capacity.DEFAULT_JSON.read_text())
BASE = capacity.REPO / "deploy" / "kubernetes" / "base"


def test_docs_table_is_up_to_date():
    assert capacity.main(["--check"]) == 0, "docs/deploy.md is stale: run python -m bench.capacity"


def test_figures_come_from_the_report():
    cap = capacity.Capacity.from_report(REPORT)
    cpu = REPORT["breakdown"]["cpu_ms_per_request"]["selector_route@32"]
    assert cap.selector_cpu_ms == cpu["selector_ms"]
    assert cap.triton_cpu_ms == pytest.approx(cpu["tritonserver_ms"] + cpu["python_stub_ms"])
    # At the SLO rate the machine's CPU was that busy: rate x CPU per Route over the cores.
    assert cap.slo_utilisation * cap.cpus * 1000 == pytest.approx(cap.slo_rate * cpu["total_ms"])


@pytest.mark.parametrize("load", [1.0, 406.0, 999.0, 5_000.0, 123_456.0])
def test_plans_cover_their_load_and_no_more(load):
    cap = capacity.Capacity.from_report(REPORT)
    u = cap.slo_utilisation
    plan = cap.replicas_for(load)
    for name, per_pod in (("selector", cap.selector_routes_per_core(u)),
                          ("triton", cap.triton_prompts_per_instance(utilisation=u))):
        assert plan[name] * per_pod >= load
        assert plan[name] == capacity.MIN_REPLICAS or (plan[name] - 1) * per_pod < load
        assert plan[name] == max(capacity.MIN_REPLICAS, math.ceil(load / per_pod))


def test_bad_inputs_are_refused():
    cap = capacity.Capacity.from_report(REPORT)
    with pytest.raises(ValueError, match="load must be > 0"):
        cap.replicas_for(0)
    never = copy.deepcopy(REPORT)
    never["encoders"]["static"]["targets"]["selector_route"]["slo"]["max_rate"] = None
    with pytest.raises(ValueError, match="never met"):
        capacity.Capacity.from_report(never).replicas_for(100)
    assert capacity.main(["--load", "-5"]) == 2


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def test_manifests_request_what_the_plan_assumes():
    cap = capacity.Capacity.from_report(REPORT)
    (selector,) = [d for d in _docs("selector.yaml") if d["kind"] == "Deployment"]
    (triton,) = [d for d in _docs("triton.yaml") if d["kind"] == "Deployment"]
    cpu = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
           for d in (selector, triton)}
    assert cpu == {"routoo-selector": str(capacity.SELECTOR_CORES), "routoo-triton": str(capacity.TRITON_CORES)}
    (hpa,) = [d for d in _docs("selector.yaml") if d["kind"] == "HorizontalPodAutoscaler"]
    target = hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] / 100
    assert target <= cap.slo_utilisation, "the selector HPA lets pods run hotter than the bench met its SLO at"
    assert hpa["spec"]["minReplicas"] == capacity.MIN_REPLICAS
