"""Capacity planning from the benchmark's JSON: routed prompts per second per selector core and per Triton
instance, and the replicas a load needs at the bench's latency SLO. Nobody types the figures.

    python -m bench.capacity                          # bench/results/latest.json -> docs/deploy.md's table
    python -m bench.capacity --check                  # exit 1 if docs/deploy.md is not what the JSON gives
    python -m bench.capacity --load 5000              # the replicas 5,000 Routes/s need

The model: CPU per request is the bench's process CPU at 32 clients (`breakdown.cpu_ms_per_request`,
selector_route@32), split by process. A selector pod runs one event loop, so at most one core. A Triton CPU
instance is one Python stub process (one core at most) plus tritonserver's threads. The SLO utilisation is
the CPU the whole machine used at the highest rate that met p99 <= SLO (`targets.selector_route.slo`):
planning every pod to that utilisation keeps each queue as short as in the bench. It is an approximation:
there, load generator, selector and Triton shared 2 cores; pods on their own cores queue less.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from bench.readme_table import replace_block
from evals.provenance import REPO

START = "<!-- capacity:start -->"
END = "<!-- capacity:end -->"
DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"
DEFAULT_DOC = REPO / "docs" / "deploy.md"
SELECTOR_CORES = 1          # one asyncio event loop per selector process
TRITON_CORES = 2            # deploy/kubernetes/base/triton.yaml's request: stub + tritonserver threads
MIN_REPLICAS = 2            # the HPAs' minReplicas: one pod may be disrupted (PDB) and the service stays up


@dataclass(frozen=True)
class Capacity:
    encoder: str
    selector_cpu_ms: float          # selector process CPU per Route
    triton_cpu_ms: float            # tritonserver + Python stub CPU per routed prompt
    stub_cpu_ms: float              # the stub's share: one instance's bound
    slo_ms: float
    slo_rate: float | None          # Routes/s at which p99 <= slo_ms still held, whole machine
    slo_utilisation: float | None   # CPU used at slo_rate over the machine's CPUs
    cpus: int

    @classmethod
    def from_report(cls, report: dict, encoder: str = "static") -> "Capacity":
        high = max(report["settings"].get("clients") or [32])
        key = f"selector_route@{high}"
        cpu = report["breakdown"]["cpu_ms_per_request"].get(key)
        if not cpu or not cpu.get("selector_ms"):
            raise ValueError(f"the bench results have no selector CPU for {key}: run selector_route at {high} clients")
        slo = report["encoders"][encoder]["targets"]["selector_route"].get("slo") or {}
        cpus = int(report["meta"]["machine"]["cpus_usable"])
        rate = slo.get("max_rate")
        # A process whose CPU did not move in the run is left out of the breakdown: it cost 0.
        triton, stub = cpu.get("tritonserver_ms") or 0.0, cpu.get("python_stub_ms") or 0.0
        utilisation = min(1.0, rate * cpu["total_ms"] / (1000.0 * cpus)) if rate else None
        return cls(encoder, cpu["selector_ms"], triton + stub, stub, float(report["settings"]["slo_ms"]), rate,
                   utilisation, cpus)

    def selector_routes_per_core(self, utilisation: float = 1.0) -> float:
        return 1000.0 / self.selector_cpu_ms * utilisation

    def triton_prompts_per_instance(self, cores: int = TRITON_CORES, utilisation: float = 1.0) -> float:
        bounds = [1000.0 / self.stub_cpu_ms if self.stub_cpu_ms else math.inf,
                  cores * 1000.0 / self.triton_cpu_ms if self.triton_cpu_ms else math.inf]
        return min(bounds) * utilisation

    def replicas_for(self, load_rps: float, utilisation: float | None = None) -> dict[str, int]:
        """Selector and Triton pods (1 and 2 cores) for load_rps Routes/s at the SLO utilisation."""
        if not load_rps > 0:
            raise ValueError(f"load must be > 0 Routes/s, got {load_rps}")
        u = utilisation if utilisation is not None else self.slo_utilisation
        if u is None or not 0 < u <= 1:
            raise ValueError(f"no SLO utilisation in the bench results (p99 <= {self.slo_ms:g} ms was never met); "
                             f"pass one in (0, 1]")
        return {"selector": max(MIN_REPLICAS, math.ceil(load_rps / self.selector_routes_per_core(u))),
                "triton": max(MIN_REPLICAS, math.ceil(load_rps / self.triton_prompts_per_instance(utilisation=u)))}


def render(report: dict) -> str:
    meta = report["meta"]
    cap = Capacity.from_report(report)
    u = cap.slo_utilisation
    lines = [
        f"From `bench/results/latest.json` ({meta['date_utc'][:16]}, {meta['machine']['cpu']}, {cap.cpus} CPUs, "
        f"commit {meta['git']['commit'][:10]}), {cap.encoder} encoder; `python -m bench.capacity` regenerates it.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| selector CPU per Route | {cap.selector_cpu_ms:.2f} ms |",
        f"| Triton CPU per routed prompt (tritonserver + Python stub) | {cap.triton_cpu_ms:.2f} ms "
        f"({cap.stub_cpu_ms:.2f} ms in the stub) |",
        f"| Routes/s per selector core, flat out | {cap.selector_routes_per_core():,.0f} |",
        f"| prompts/s per Triton CPU instance ({TRITON_CORES} cores), flat out | "
        f"{cap.triton_prompts_per_instance():,.0f} |",
    ]
    if u is not None:
        lines += [
            f"| highest rate with p99 <= {cap.slo_ms:g} ms, whole machine | {cap.slo_rate:,.0f} Routes/s at "
            f"{u:.0%} CPU |",
            f"| Routes/s per selector core at that utilisation | {cap.selector_routes_per_core(u):,.0f} |",
            f"| prompts/s per Triton CPU instance at that utilisation | "
            f"{cap.triton_prompts_per_instance(utilisation=u):,.0f} |",
            "",
            f"Pods for a load at p99 <= {cap.slo_ms:g} ms (selector pods of {SELECTOR_CORES} core, Triton pods of "
            f"{TRITON_CORES}; at least {MIN_REPLICAS} of each):",
            "",
            "| Routes/s | selector pods | Triton pods (CPU, static) |",
            "| ---: | ---: | ---: |",
        ]
        for load in (500, 1_000, 5_000, 20_000):
            plan = cap.replicas_for(load)
            lines.append(f"| {load:,} | {plan['selector']} | {plan['triton']} |")
    else:
        lines.append(f"| p99 <= {cap.slo_ms:g} ms | never met in this run |")
    minilm = report["encoders"].get("minilm", {}).get("targets", {}).get("selector_route", {})
    if minilm:
        best = max((r.get("throughput_rps") or 0) for r in minilm.get("closed", [])) if minilm.get("closed") else None
        lines += ["", f"minilm on CPU: at most {best:,.1f} Routes/s on {cap.cpus} cores, and p99 <= {cap.slo_ms:g} ms "
                      f"{'never met' if not (minilm.get('slo') or {}).get('max_rate') else 'met'}: serve it on GPUs "
                      f"(no GPU figures yet)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc's table is out of date")
    parser.add_argument("--load", type=float, help="print the pods this many Routes/s need, and stop")
    parser.add_argument("--utilisation", type=float, help="plan to this CPU utilisation instead of the SLO's")
    args = parser.parse_args(argv)
    report = json.loads(args.json.read_text())
    if args.load is not None:
        try:
            plan = Capacity.from_report(report).replicas_for(args.load, args.utilisation)
        except ValueError as e:
            print(f"python -m bench.capacity: error: {e}")
            return 2
        print(f"{args.load:,.0f} Routes/s: {plan['selector']} selector pods, {plan['triton']} Triton pods")
        return 0
    text = args.doc.read_text()
    updated = replace_block(text, render(report), START, END, where=args.doc)
    if args.check:
        if updated != text:
            print(f"{args.doc} is out of date; run python -m bench.capacity")
            return 1
        return 0
    args.doc.write_text(updated)
    print(f"capacity table written to {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
