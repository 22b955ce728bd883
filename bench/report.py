"""The benchmark's outputs: a short table on stdout, a JSON file with every figure, a PNG plot.

The JSON (schema below) is what bench/readme_table.py turns into the README's table; nobody types figures.

    {"meta": {machine, date, versions, git revision, load average}, "settings": {...},
     "encoders": {"static": {"artifact", "n_models", "skipped": {target: why},
                             "targets": {name: {"closed": [RunResult.summary() + "server": split],
                                                "slo": SloResult.as_dict()}},
                             "paired_1_client": Measurer.paired's echo_floor vs predictor blocks}},
     "micro": {"route_batch_10k_x_32_ms": {...}},
     "goals": [{"goal", "measured", "met"}], "breakdown": {...}, "notes": [...]}
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from evals.provenance import git_commit, git_output, utc_now

PACKAGES = ("torch", "numpy", "tritonclient", "grpcio", "nvidia-pytriton", "transformers", "model2vec",
            "protobuf")

# The targets, one source of truth for the checks and the table (static encoder unless named).
GOALS = {
    "route_p50_ms": 2.0,               # selector Route, 1 client
    "route_p99_ms": 5.0,
    "predictor_vs_echo_p50": 1.5,      # predictor in Triton p50 / echo_floor p50, 1 client
    "predictor_vs_echo_rps_32": 0.7,   # predictor throughput / echo_floor throughput, 32 clients
    "routed_rps_at_slo": 1000.0,       # selector Route, highest offered rate with p99 <= slo bound
    "minilm_batching_lift_32": 3.0,    # minilm, batching on / off throughput at 32 clients
    "route_batch_10k_ms": 50.0,        # RouteBatch solver, 10,000 prompts x 32 models
    "selector_cpu_ms_32": 0.5,         # issue 15: selector CPU per routed prompt, 32 clients
    "server_cpu_ms_32": 1.0,           # issue 15: selector + tritonserver + Python stub CPU, 32 clients
}


def git_revision() -> dict:
    return {"commit": git_commit() or "unknown",
            "dirty": bool(git_output("status", "--porcelain", "--untracked-files=no"))}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"hostname": platform.node(), "platform": platform.platform(), "cpu": _cpu_model(),
            "cpus_usable": usable, "versions": versions}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def new_report(settings: dict) -> dict:
    return {"meta": {"date_utc": utc_now(),
                     "machine": machine_info(), "git": git_revision(), "load_average_start": load_average()},
            "settings": settings, "encoders": {}, "micro": {}, "goals": [], "breakdown": {}, "notes": []}


# --- derived figures ------------------------------------------------------------------------------------

def closed_at(report: dict, encoder: str, target: str, clients: int) -> dict | None:
    runs = report.get("encoders", {}).get(encoder, {}).get("targets", {}).get(target, {}).get("closed", [])
    return next((r for r in runs if r.get("clients") == clients), None)


def slo_rate(report: dict, encoder: str, target: str) -> float | None:
    slo = report.get("encoders", {}).get(encoder, {}).get("targets", {}).get(target, {}).get("slo")
    return None if not slo else slo.get("max_rate")


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def _get(run: dict | None, key: str):
    return None if run is None else run.get(key)


def evaluate_goals(report: dict, *, high_clients: int = 32) -> list[dict]:
    """The issue's targets against this run's figures; `met` is None where a figure is missing."""
    bound = report.get("settings", {}).get("slo_ms", 25.0)
    route1 = closed_at(report, "static", "selector_route", 1)
    echo1, pred1 = closed_at(report, "static", "echo_floor", 1), closed_at(report, "static", "predictor_batching", 1)
    echo_n = closed_at(report, "static", "echo_floor", high_clients)
    pred_n = closed_at(report, "static", "predictor_batching", high_clients)
    mini_on = closed_at(report, "minilm", "predictor_batching", high_clients)
    mini_off = closed_at(report, "minilm", "predictor_no_batch", high_clients)
    solver = report.get("micro", {}).get("route_batch_10k_x_32_ms", {}).get("median_ms")

    def row(goal: str, measured, ok, unit: str = "", *, run: dict | None = None) -> dict:
        """`run`: the closed-loop run a latency goal reads; its percentiles are over completed requests
        only, so a run with failed or timed-out requests does not meet a latency goal whatever they say."""
        failed = 0 if run is None else (run.get("errors") or 0) + (run.get("timed_out") or 0)
        met = None if measured is None else bool(ok(measured)) and not failed
        return {"goal": goal, "measured": None if measured is None else round(measured, 3), "unit": unit,
                "met": met, **({"failed": failed} if failed else {})}

    p50_ratio = _ratio(_get(pred1, "p50_ms"), _get(echo1, "p50_ms"))
    rps_ratio = _ratio(_get(pred_n, "throughput_rps"), _get(echo_n, "throughput_rps"))
    lift = _ratio(_get(mini_on, "throughput_rps"), _get(mini_off, "throughput_rps"))
    paired = report.get("encoders", {}).get("static", {}).get("paired_1_client") or {}
    route_cpu = _get(closed_at(report, "static", "selector_route", high_clients), "cpu_per_request") or {}
    server_cpu = None
    if route_cpu.get("selector_ms") is not None:
        server_cpu = sum(route_cpu.get(k) or 0.0 for k in ("selector_ms", "tritonserver_ms", "python_stub_ms"))
    routed = slo_rate(report, "static", "selector_route")
    slo_ran = report.get("encoders", {}).get("static", {}).get("targets", {}).get("selector_route", {}).get("slo")
    return [
        row(f"selector Route, 1 client: p50 <= {GOALS['route_p50_ms']:g} ms", _get(route1, "p50_ms"),
            lambda v: v <= GOALS["route_p50_ms"], "ms", run=route1),
        row(f"selector Route, 1 client: p99 <= {GOALS['route_p99_ms']:g} ms", _get(route1, "p99_ms"),
            lambda v: v <= GOALS["route_p99_ms"], "ms", run=route1),
        row(f"predictor in Triton p50 / echo_floor p50, 1 client <= {GOALS['predictor_vs_echo_p50']:g}x",
            p50_ratio, lambda v: v <= GOALS["predictor_vs_echo_p50"], "x"),
        row(f"predictor / echo_floor throughput, {high_clients} clients >= {GOALS['predictor_vs_echo_rps_32']:g}x",
            rps_ratio, lambda v: v >= GOALS["predictor_vs_echo_rps_32"], "x"),
        row(f"routed prompts/s end to end at p99 <= {bound:g} ms >= {GOALS['routed_rps_at_slo']:,.0f}",
            routed if routed is not None else (0.0 if slo_ran else None),
            lambda v: v >= GOALS["routed_rps_at_slo"], "/s"),
        row(f"minilm: batching on / off throughput, {high_clients} clients >= {GOALS['minilm_batching_lift_32']:g}x",
            lift, lambda v: v >= GOALS["minilm_batching_lift_32"], "x"),
        row(f"RouteBatch solver, 10,000 prompts x 32 models < {GOALS['route_batch_10k_ms']:g} ms", solver,
            lambda v: v < GOALS["route_batch_10k_ms"], "ms"),
        row(f"selector CPU per routed prompt, {high_clients} clients <= {GOALS['selector_cpu_ms_32']:g} ms",
            route_cpu.get("selector_ms"), lambda v: v <= GOALS["selector_cpu_ms_32"], "ms"),
        row(f"server CPU (selector + Triton + stub) per routed prompt, {high_clients} clients "
            f"<= {GOALS['server_cpu_ms_32']:g} ms", server_cpu, lambda v: v <= GOALS["server_cpu_ms_32"], "ms"),
        row(f"predictor in Triton p50 / echo_floor p50, 1 client, interleaved blocks "
            f"<= {GOALS['predictor_vs_echo_p50']:g}x", paired.get("p50_ratio"),
            lambda v: v <= GOALS["predictor_vs_echo_p50"], "x"),
    ]


def breakdown(report: dict, encoder: str = "static", *, high_clients: int = 32) -> dict:
    """Where the time goes, static encoder.

    `latency_1_client_ms` (means): the in-process predictor, Triton's own cost (echo_floor), the predictor
    inside Triton (queue, compute) and what the selector adds on top. `cpu_ms_per_request`: CPU time each
    process spent per completed request at `high_clients` clients; on 2 cores, 2000 / total is the
    throughput ceiling the processes' own work allows.
    """
    def one(target):
        return closed_at(report, encoder, target, 1)

    echo, pred, route, local = one("echo_floor"), one("predictor_batching"), one("selector_route"), one("in_process")
    server = (pred or {}).get("server") or {}
    echo_server = (echo or {}).get("server") or {}
    latency = {
        "in_process_predict": _get(local, "mean_ms"),
        "echo_floor_client": _get(echo, "mean_ms"),
        "echo_floor_server": echo_server.get("server_total_ms"),
        "predictor_client": _get(pred, "mean_ms"),
        "predictor_server_total": server.get("server_total_ms"),
        "predictor_server_queue": server.get("queue_ms"),
        "predictor_server_compute_infer": server.get("compute_infer_ms"),
        "selector_route_client": _get(route, "mean_ms"),
    }
    if latency["predictor_client"] is not None and latency["predictor_server_total"] is not None:
        latency["predictor_rpc_and_client"] = round(latency["predictor_client"] - latency["predictor_server_total"], 4)
    if latency["selector_route_client"] is not None and latency["predictor_client"] is not None:
        latency["selector_adds"] = round(latency["selector_route_client"] - latency["predictor_client"], 4)
    cpu = {}
    for target in report.get("encoders", {}).get(encoder, {}).get("targets", {}):
        run = closed_at(report, encoder, target, high_clients)
        if run and run.get("cpu_per_request"):
            cpu[f"{target}@{high_clients}"] = run["cpu_per_request"]
    return {"latency_1_client_ms": {k: v for k, v in latency.items() if v is not None},
            "cpu_ms_per_request": cpu}


# --- output ---------------------------------------------------------------------------------------------

def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render_table(report: dict) -> str:
    lines = []
    header = (f"{'encoder':<7} {'target':<19} {'cl':>3} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} "
              f"{'req/s':>9} {'err':>4} {'queue':>7} {'infer':>7} {'batch':>6}")
    lines += ["closed loop (latency ms; queue/infer: Triton server-side mean ms per request)", header,
              "-" * len(header)]
    for encoder, enc in report.get("encoders", {}).items():
        for target, data in enc.get("targets", {}).items():
            for run in data.get("closed", []):
                server = run.get("server") or {}
                lines.append(
                    f"{encoder:<7} {target:<19} {run['clients']:>3} {_fmt(run['p50_ms']):>8} "
                    f"{_fmt(run['p95_ms']):>8} {_fmt(run['p99_ms']):>8} {_fmt(run['max_ms']):>8} "
                    f"{_fmt(run['throughput_rps'], 1):>9} {run['errors'] + run['timed_out']:>4} "
                    f"{_fmt(server.get('queue_ms')):>7} {_fmt(server.get('compute_infer_ms')):>7} "
                    f"{_fmt(server.get('mean_batch_size'), 1):>6}")
        for target, why in enc.get("skipped", {}).items():
            lines.append(f"{encoder:<7} {target:<19} skipped: {why}")
    coalescing = []
    for encoder, enc in report.get("encoders", {}).items():
        for target, data in enc.get("targets", {}).items():
            for run in data.get("closed", []):
                sel, server = run.get("selector"), run.get("server") or {}
                if sel is not None:
                    coalescing.append(
                        f"{encoder:<7} {target:<19} {run['clients']:>3} {_fmt(sel.get('requests_per_call'), 2):>9} "
                        f"{_fmt(sel.get('rows_per_call'), 2):>9} {_fmt(sel.get('queue_wait_ms'), 3):>9} "
                        f"{_fmt(server.get('rows_per_request'), 2):>9} {_fmt(server.get('mean_batch_size'), 2):>9}")
    if coalescing:
        head = (f"{'encoder':<7} {'target':<19} {'cl':>3} {'req/call':>9} {'rows/call':>9} {'wait ms':>9} "
                f"{'rows/infer':>9} {'batch':>9}")
        lines += ["", "coalescing: per selector->Triton call, requests and rows it carried and each request's mean "
                      "wait for a call slot (selector /metrics); rows per ModelInfer and per execution (Triton)",
                  head, "-" * len(head)] + coalescing
    slo_lines = []
    for encoder, enc in report.get("encoders", {}).items():
        for target, data in enc.get("targets", {}).items():
            slo = data.get("slo")
            if slo:
                probes = ", ".join(f"{p['rate']:g}{'+' if p['passed'] else 'x'}" for p in slo["probes"])
                slo_lines.append(f"{encoder:<7} {target:<19} {_fmt(slo['max_rate'], 0):>9}   probes /s: {probes}"
                                 + (f"  ({slo['note']})" if slo.get("note") else ""))
    if slo_lines:
        bound = report.get("settings", {}).get("slo_ms")
        lines += ["", f"SLO: highest offered rate (Poisson, req/s) with p99 <= {bound:g} ms "
                      f"(+ passed, x missed; drops count as misses)"] + slo_lines
    micro = report.get("micro", {}).get("route_batch_10k_x_32_ms")
    if micro:
        lines += ["", f"RouteBatch solver, 10,000 prompts x 32 models: median {micro['median_ms']:.2f} ms, "
                      f"min {micro['min_ms']:.2f} ms over {micro['repeats']} runs"]
    for encoder, enc in report.get("encoders", {}).items():
        paired = enc.get("paired_1_client")
        if paired:
            order = paired["order"]
            lines += ["", f"{encoder}: {' and '.join(order)} interleaved, 1 client, {paired['blocks']} blocks of "
                          f"{paired['block_s']:g} s (same machine state for both):"]
            lines += [f"  {name:<19} p50 {_fmt(paired[name]['p50_ms']):>7} ms  p99 {_fmt(paired[name]['p99_ms']):>7} ms"
                      f"  ({paired[name]['completed']} requests, {paired[name].get('failed', 0)} failed)"
                      for name in order]
            ratios = paired["block_p50_ratios"]
            lines.append(f"  p50 ratio {_fmt(paired['p50_ratio'], 3)}x; per block {min(ratios, default=0):.2f}x to "
                         f"{max(ratios, default=0):.2f}x, median {float(np.median(ratios)) if ratios else 0:.2f}x")
    latency = report.get("breakdown", {}).get("latency_1_client_ms")
    if latency:
        lines += ["", "where the time goes, static encoder, 1 client (mean ms):"]
        lines += [f"  {k:<32} {v:>8.3f}" for k, v in latency.items()]
    cpu = report.get("breakdown", {}).get("cpu_ms_per_request")
    if cpu:
        roles = sorted({r for row in cpu.values() for r in row if r != "total_ms"}) + ["total_ms"]
        lines += ["", "CPU ms per completed request, by process (static encoder):",
                  f"  {'target@clients':<24}" + "".join(f"{r[:-3]:>13}" for r in roles)]
        for name, row in cpu.items():
            lines.append(f"  {name:<24}" + "".join(f"{_fmt(row.get(r), 3):>13}" for r in roles))
    if report.get("goals"):
        lines += ["", "issue 6 and 15 targets (static encoder unless named):"]
        for g in report["goals"]:
            status = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
            lines.append(f"  [{status:>6}] {g['goal']}: {_fmt(g['measured'])}{g['unit'] if g['measured'] is not None else ''}")
    for note in report.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def write_results(path: Path, results: list[dict], **settings) -> Path:
    """A micro-benchmark's JSON (bench.predictor_latency, bench.window_latency): machine, git revision, its
    settings, local date and result rows, in that order; prints where it went."""
    report = {"machine": machine_info(), "git": git_revision(), **settings,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def plot(report: dict, path: Path) -> Path | None:
    """Latency percentiles (p50 dashed, p99 solid) against offered rate, one panel per encoder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    encoders = [e for e, enc in report.get("encoders", {}).items()
                if any(t.get("slo") for t in enc.get("targets", {}).values())]
    if not encoders:
        return None
    fig, axes = plt.subplots(1, len(encoders), figsize=(6.5 * len(encoders), 4.6), squeeze=False)
    bound = report.get("settings", {}).get("slo_ms", 25.0)
    for ax, encoder in zip(axes[0], encoders):
        for i, (target, data) in enumerate(report["encoders"][encoder]["targets"].items()):
            probes = (data.get("slo") or {}).get("probes", [])
            if not probes:
                continue
            color = f"C{i}"
            rates = [p["rate"] for p in probes]
            # The p99 drawn is the one that decided pass/fail: failed and late requests count as slow
            # (slo_p99_ms; null = over 1% failed, drawn at the top of the axis). Older JSON lacks it.
            top = 4 * max([bound] + [p.get("p99_ms") or 0 for p in probes])
            decided = [p.get("slo_p99_ms", p["p99_ms"]) if "slo_p99_ms" not in p or p["slo_p99_ms"] is not None
                       else top for p in probes]
            ax.plot(rates, [p["p50_ms"] if p["p50_ms"] is not None else float("nan") for p in probes], "--",
                    marker="o", ms=3, color=color)
            ax.plot(rates, [float("nan") if y is None else y for y in decided], "-", marker="o", ms=3,
                    color=color, label=f"{target} p99")
            failed = [(p["rate"], y) for p, y in zip(probes, decided) if not p["passed"] and y is not None]
            if failed:
                ax.scatter(*zip(*failed), marker="x", color=color, s=30)
        ax.axhline(bound, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):     # plain numbers; minor-tick labels overlap on short ranges
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("offered rate (requests/s, Poisson)")
        ax.set_ylabel("latency (ms); p99 solid, p50 dashed")
        ax.set_title(f"{encoder} encoder (x = missed p99 <= {bound:g} ms)")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    meta = report.get("meta", {})
    fig.suptitle(f"Routoo bench {meta.get('date_utc', '')} {meta.get('git', {}).get('commit', '')[:10]} "
                 f"({meta.get('machine', {}).get('cpus_usable', '?')} CPUs)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
