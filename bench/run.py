"""Routoo's serving benchmark: what routing adds, measured side by side in one run on one machine.

    python -m bench.run                 # `make bench`: both encoders, ~6-7 min on 2 cores, + ~35 s per encoder
                                        # for selector_route_stream (measured for static)
    python -m bench.run --quick         # `make bench-quick`: static encoder, fewer and shorter runs, < 2 min
    python -m bench.run --encoders minilm --targets predictor_batching,predictor_no_batch

For each encoder, in this order (one set of servers at a time, so idle servers never share the cores with
a measurement): the in-process predictor; then one tritonserver with dynamic batching (echo_floor,
routoo_predictor) plus the selector in a child process (echo_floor, predictor_batching, selector_route);
then a tritonserver with batching off (predictor_no_batch). Each target gets closed-loop runs at each
client count, with Triton's server-side split, then an SLO search (bench/slo.py). Last, the RouteBatch
solver on 10,000 prompts x 32 models. Writes JSON + PNG (bench/results/latest.*) and prints the table.

These machines are shared and noisy: compare figures within one run; the JSON records the load average
at the start and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from bench import report as report_mod
from bench.loadgen import closed_loop, open_loop, percentile
from bench.slo import search_max_rate
from bench.cpu_time import cpu_delta, cpu_seconds_by_role
from bench.inputs import ensure_artifact, load_prompts
from bench.processes import selector_process, triton_server
from bench.server_stats import selector_counters, selector_delta, stats_delta, wait_until_idle
from bench.targets import (ENCODERS, SELECTOR_TARGETS, TARGETS, TRITON_TARGETS, InProcessTarget,
                           SelectorRouteTarget, TargetUnavailable, TritonTarget)
from predictor_service.contract import ECHO_FLOOR_MODEL, PREDICTOR_MODEL

log = logging.getLogger("bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class BenchSettings:
    slo_ms: float = 25.0                    # p99 bound of the SLO search (issue 6)
    clients: tuple[int, ...] = (1, 8, 32)   # closed-loop concurrencies; the targets compare 1 and 32
    warmup_s: float = 1.0                   # unrecorded closed loop at the highest concurrency, per target
    closed_s: float = 4.0                   # per closed-loop run
    slo_probe_s: float = 3.0                # per open-loop probe
    paired_blocks: int = 16                 # even, so ABBA balances; static: echo_floor / predictor, 1 client
    paired_block_s: float = 0.5
    slo_max_probes: int = 6
    slo_min_rate: float = 5.0               # requests/s; below this a target counts as missing the SLO
    open_max_in_flight: int = 256           # outstanding requests before the generator drops arrivals
    encoders: tuple[str, ...] = ENCODERS
    targets: tuple[str, ...] = TARGETS
    n_prompts: int = 2000
    route_batch_prompts: int = 10_000
    route_batch_repeats: int = 15
    quick: bool = False
    device: str = "cpu"                     # "gpu": Triton instances KIND_GPU, in-process predictor on cuda


# --quick: the static encoder, 1 and 32 clients, short runs: 60-100 s on 2 busy cores, ~20 s of it starting
# and stopping the servers.
QUICK = BenchSettings(clients=(1, 32), warmup_s=0.3, closed_s=1.0, slo_probe_s=1.0, slo_max_probes=3,
                      paired_blocks=6, paired_block_s=0.3, encoders=("static",), route_batch_repeats=5, quick=True)


# --- one target -----------------------------------------------------------------------------------------

class Measurer:
    """Runs the closed-loop matrix and the SLO search for one target, with Triton statistics around each run."""

    def __init__(self, settings: BenchSettings, prompts: list[str]):
        self.settings = settings
        self.prompts = prompts

    @staticmethod
    async def settle(stats_source: TritonTarget | None) -> None:
        """Before a run: Triton idle (no queue left by the previous run), and the previous run's statistics
        recorded (Triton records a request after its response has gone out)."""
        if stats_source is not None:
            waited = await wait_until_idle(stats_source)
            if waited > 1.0:
                log.info("waited %.1f s for Triton to finish requests the clients had given up on", waited)
        await asyncio.sleep(0.25)

    async def measure(self, name: str, target, stats_source: TritonTarget | None = None,
                      selector_pid: int | None = None, selector_ports: tuple[int, ...] = ()) -> dict:
        s = self.settings
        out: dict = {"closed": []}
        t0 = time.perf_counter()
        # Warm-up: connections, first calls, every concurrency path; bounded in count, so a slow target
        # (minilm: ~0.1 s a prompt) does not leave seconds of queued work behind.
        await closed_loop(target, self.prompts, max(s.clients), duration_s=s.warmup_s,
                          max_requests=2 * max(s.clients))
        for clients in s.clients:
            await self.settle(stats_source)
            before = await stats_source.statistics() if stats_source else None
            selector_before = selector_counters(selector_ports) if selector_ports else None
            cpu_before = cpu_seconds_by_role(selector_pid)
            result = await closed_loop(target, self.prompts, clients, duration_s=s.closed_s)
            summary = result.summary()
            summary["cpu_per_request"] = cpu_delta(cpu_before, cpu_seconds_by_role(selector_pid), result.completed)
            if selector_ports:
                summary["selector"] = selector_delta(selector_before, selector_counters(selector_ports))
            summary["load_1m"] = (report_mod.load_average() or [None])[0]
            if stats_source:
                summary["server"] = stats_delta(before, await stats_source.statistics())
                summary["server"]["model"] = stats_source.model_name
            out["closed"].append(summary)
            log.info("%-19s %3d clients: p50 %.2f ms p99 %.2f ms, %.0f req/s, %d errors", name, clients,
                     summary["p50_ms"] or math.nan, summary["p99_ms"] or math.nan, summary["throughput_rps"],
                     summary["errors"])
        capacity = max((r["throughput_rps"] for r in out["closed"]), default=0.0)
        if capacity <= 0:
            out["slo"] = None
            return out

        async def probe(rate: float):
            await self.settle(stats_source)
            # At least ~20 arrivals, so that a low rate's p99 is not decided by two or three requests.
            duration = min(max(s.slo_probe_s, 20.0 / rate), 3 * s.slo_probe_s)
            return await open_loop(target, self.prompts, rate, duration_s=duration,
                                   max_requests=int(rate * duration * 1.5) + 50,
                                   max_in_flight=s.open_max_in_flight, late_after_s=0.005,
                                   drain_timeout_s=max(2.0, 4 * s.slo_ms / 1e3))

        # Start below the closed-loop capacity, where the tail usually still holds; never above 3x it.
        slo = await search_max_rate(probe, bound_ms=s.slo_ms, start_rate=0.6 * capacity,
                                    min_rate=min(s.slo_min_rate, capacity), max_rate=3 * capacity,
                                    max_probes=s.slo_max_probes)
        out["slo"] = slo.as_dict()
        log.info("%-19s SLO p99 <= %g ms: %s/s (%d probes, %.0f s in all)", name, s.slo_ms,
                 "none" if slo.max_rate is None else f"{slo.max_rate:.0f}", len(slo.probes),
                 time.perf_counter() - t0)
        return out

    async def paired(self, targets: dict) -> dict:
        """1 client, the targets in alternating blocks (ABBA order; both blocks of a pair start at the same
        prompt), so that every target sees the same machine. These cores are shared: their speed drifts by tens
        of percent over the minute between two targets' closed-loop runs, and a ratio of two such runs carries the
        drift (echo_floor vs predictor p50 read 1.39x to 1.81x over six runs of one commit). Pooled
        percentiles per target, and the ratio of the last target's p50 to the first's per block."""
        s = self.settings
        names = list(targets)
        latencies: dict[str, list[float]] = {name: [] for name in names}
        failed = {name: 0 for name in names}
        block_ratios = []
        for name in names:   # warm-up: the connection and each server's first calls
            await closed_loop(targets[name], self.prompts, 1, duration_s=0.3)
        for block in range(s.paired_blocks):
            shift = (block * 397) % len(self.prompts)
            prompts = self.prompts[shift:] + self.prompts[:shift]
            p50 = {}
            for name in names if block % 2 == 0 else names[::-1]:
                await self.settle(None)
                result = await closed_loop(targets[name], prompts, 1, duration_s=s.paired_block_s)
                latencies[name] += result.latencies_s
                failed[name] += result.errors + result.timed_out
                p50[name] = percentile(result.latencies_s, 50)
            if p50[names[0]] and p50[names[-1]]:
                block_ratios.append(p50[names[-1]] / p50[names[0]])
        out: dict = {"blocks": s.paired_blocks, "block_s": s.paired_block_s, "order": names}
        for name, lat in latencies.items():
            out[name] = {"completed": len(lat), "failed": failed[name],
                         **{f"p{q}_ms": None if not lat else round(percentile(lat, q) * 1e3, 4) for q in (50, 99)}}
        first, last = out[names[0]]["p50_ms"], out[names[-1]]["p50_ms"]
        out["p50_ratio"] = None if not first or last is None else round(last / first, 4)
        out["block_p50_ratios"] = [round(r, 3) for r in block_ratios]
        log.info("paired %s, 1 client: p50 ratio %s (blocks %s..%s)", "/".join(names[::-1]), out["p50_ratio"],
                 min(block_ratios, default=None), max(block_ratios, default=None))
        return out


# --- one encoder ----------------------------------------------------------------------------------------

async def bench_encoder(encoder: str, settings: BenchSettings, prompts: list[str], report: dict) -> None:
    enc: dict = {"targets": {}, "skipped": {}}
    report["encoders"][encoder] = enc
    try:
        artifact = ensure_artifact(encoder)
    except TargetUnavailable as e:
        enc["skipped"] = {t: str(e) for t in settings.targets}
        report["notes"].append(str(e))
        log.warning("%s", e)
        return
    enc["artifact"] = str(artifact)
    measurer = Measurer(settings, prompts)
    wanted = set(settings.targets)

    if "in_process" in wanted:
        target = InProcessTarget.load(artifact, device="cuda" if settings.device == "gpu" else "cpu")
        enc["n_models"] = len(target.predictor.model_names)
        enc["targets"]["in_process"] = await measurer.measure(f"{encoder}/in_process", target)
        del target
        gc.collect()

    on_targets = [t for t in ("echo_floor", "predictor_batching", *SELECTOR_TARGETS) if t in wanted]
    if on_targets:
        models = (PREDICTOR_MODEL, ECHO_FLOOR_MODEL) if "echo_floor" in wanted else (PREDICTOR_MODEL,)
        await _with_triton(encoder, artifact, True, models, on_targets, measurer, enc, report)
    if "predictor_no_batch" in wanted:
        await _with_triton(encoder, artifact, False, (PREDICTOR_MODEL,), ["predictor_no_batch"], measurer,
                           enc, report)


async def _with_triton(encoder, artifact, dynamic_batching, models, names, measurer, enc, report) -> None:
    started = time.perf_counter()
    try:
        kind = "KIND_GPU" if measurer.settings.device == "gpu" else "KIND_CPU"
        with triton_server(artifact, dynamic_batching=dynamic_batching, models=models,
                           instance_kind=kind) as server:
            log.info("%s: tritonserver ready in %.1f s (dynamic batching %s)", encoder,
                     time.perf_counter() - started, "on" if dynamic_batching else "off")
            predictor_stats = TritonTarget(server.grpc_url, PREDICTOR_MODEL)
            report["meta"].setdefault("tritonserver_version", await predictor_stats.server_version())
            try:
                for name in names:
                    if name in SELECTOR_TARGETS:
                        await _measure_selector(encoder, name, server.grpc_url, measurer, predictor_stats, enc)
                        continue
                    target = TritonTarget(server.grpc_url, TRITON_TARGETS[name])
                    try:
                        enc["targets"][name] = await measurer.measure(f"{encoder}/{name}", target, target)
                    finally:
                        await target.close()
                # Last, when both models have served a while (their first minute is slower: a stub's
                # first prompts of a kind, the tokenizer's chunk cache).
                if encoder == "static" and {"echo_floor", "predictor_batching"} <= set(names):
                    pair = {name: TritonTarget(server.grpc_url, TRITON_TARGETS[name])
                            for name in ("echo_floor", "predictor_batching")}
                    try:
                        enc["paired_1_client"] = await measurer.paired(pair)
                    finally:
                        for target in pair.values():
                            await target.close()
            finally:
                await predictor_stats.close()
    except TargetUnavailable as e:
        for name in names:
            if name not in enc["targets"]:
                enc["skipped"][name] = str(e)
        log.warning("%s: %s", encoder, e)
    except Exception as e:     # noqa: BLE001 - a broken server skips its targets, the run goes on
        for name in names:
            if name not in enc["targets"]:           # what was measured before the failure stays measured
                enc["skipped"].setdefault(name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        log.exception("%s: targets %s failed", encoder, names)


async def _measure_selector(encoder, name, triton_url, measurer, predictor_stats, enc) -> None:
    settings, channels, stream = SELECTOR_TARGETS[name]
    try:
        with selector_process(triton_url, settings=settings) as selector:
            target = SelectorRouteTarget(selector.address, channels=channels, stream=stream)
            try:
                # Server-side split: the Triton calls the selector makes, seen from Triton; and the
                # selector's coalescing, from its /metrics.
                enc["targets"][name] = await measurer.measure(f"{encoder}/{name}", target, predictor_stats,
                                                              selector.pid, selector.metrics_ports)
            finally:
                await target.close()
    except TargetUnavailable as e:
        enc["skipped"][name] = str(e)
        log.warning("%s: %s", encoder, e)


# --- RouteBatch solver ----------------------------------------------------------------------------------

def route_batch_case(n_prompts: int, prompts: list[str], *, base_prompts: int = 512, seed: int = 0):
    """(quality, expected_cost_usd, eligible, budget_usd) for n_prompts x the pool, from the static
    predictor's real outputs on `base_prompts` prompts, tiled with small noise; the budget binds (halfway
    between the cheapest and the best assignment)."""
    from predictor_service.artifact import default_artifact_path
    from predictor_service.predictor import Predictor

    predictor = Predictor.load(default_artifact_path(), device="cpu")
    quality, cost = predictor.predict(prompts[:base_prompts])       # (base_prompts, n_models)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(quality), size=n_prompts)
    quality = np.clip(quality[rows] + rng.normal(0, 0.01, (n_prompts, quality.shape[1])), 0, 1)
    cost = cost[rows] * rng.lognormal(0, 0.05, (n_prompts, cost.shape[1]))
    eligible = np.ones_like(quality, dtype=bool)
    budget = 0.5 * (cost.min(axis=1).sum() + cost[np.arange(n_prompts), quality.argmax(axis=1)].sum())
    return quality.astype(np.float32), cost.astype(np.float32), eligible, float(budget)


def time_route_batch(settings: BenchSettings, prompts: list[str]) -> dict:
    from selector.budget import assign_budget

    quality, cost, eligible, budget = route_batch_case(settings.route_batch_prompts, prompts)
    assign_budget(quality, cost, eligible, budget)      # warm-up
    times = []
    for _ in range(settings.route_batch_repeats):
        t = time.perf_counter()
        result = assign_budget(quality, cost, eligible, budget)
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": round(float(np.median(times)), 3), "min_ms": round(min(times), 3),
            "repeats": len(times), "n_prompts": int(quality.shape[0]), "n_models": int(quality.shape[1]),
            "budget_usd": round(budget, 6), "spent_usd": round(result.total_cost_usd, 6)}


# --- main -----------------------------------------------------------------------------------------------

async def run(settings: BenchSettings, prompts_path: Path | None) -> dict:
    prompts = load_prompts(prompts_path, limit=settings.n_prompts)
    report = report_mod.new_report({**asdict(settings), "prompts_path": str(prompts_path or "default"),
                                    "n_prompts_loaded": len(prompts),
                                    "mean_prompt_chars": round(float(np.mean([len(p) for p in prompts])), 1)})
    started = time.perf_counter()
    for encoder in settings.encoders:
        t = time.perf_counter()
        await bench_encoder(encoder, settings, prompts, report)
        log.info("%s encoder done in %.0f s", encoder, time.perf_counter() - t)
    try:
        report["micro"]["route_batch_10k_x_32_ms"] = time_route_batch(settings, prompts)
    except Exception as e:     # noqa: BLE001 - the serving figures stand without it
        report["notes"].append(f"RouteBatch solver not timed: {type(e).__name__}: {e}")
    report["goals"] = report_mod.evaluate_goals(report, high_clients=max(settings.clients))
    report["breakdown"] = report_mod.breakdown(report, high_clients=max(settings.clients))
    report["meta"]["load_average_end"] = report_mod.load_average()
    report["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
    if settings.quick:
        report["notes"].append("quick mode: short runs, static encoder only; the minilm target needs `make bench`")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="static encoder, short runs (< 2 min)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json",
                        help="JSON path; the PNG goes beside it (default: bench/results/latest.json)")
    parser.add_argument("--slo-ms", type=float, default=None, help="p99 bound of the SLO search (default 25)")
    parser.add_argument("--encoders", default=None, help=f"comma-separated subset of {','.join(ENCODERS)}")
    parser.add_argument("--targets", default=None, help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--clients", default=None, help="comma-separated closed-loop concurrencies")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="prompts.jsonl to send (default: ../shared/data/mmlu-pro/dev)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: serve with KIND_GPU instances and run the in-process target on cuda")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> BenchSettings:
    settings = QUICK if args.quick else BenchSettings()
    changes: dict = {"device": args.device}
    if args.slo_ms is not None:
        if not args.slo_ms > 0:
            raise SystemExit(f"--slo-ms must be > 0, got {args.slo_ms}")
        changes["slo_ms"] = args.slo_ms
    for flag, choices in (("encoders", ENCODERS), ("targets", TARGETS)):
        value = getattr(args, flag)
        if value:
            picked = tuple(v.strip() for v in value.split(",") if v.strip())
            unknown = [v for v in picked if v not in choices]
            if unknown:
                raise SystemExit(f"--{flag}: unknown {unknown}; choose from {list(choices)}")
            changes[flag] = picked
    if args.clients:
        try:
            clients = tuple(sorted({int(c) for c in args.clients.split(",")}))
        except ValueError as e:
            raise SystemExit(f"--clients: expected comma-separated integers, got {args.clients!r}") from e
        if not clients or clients[0] < 1:
            raise SystemExit(f"--clients: every count must be >= 1, got {args.clients!r}")
        changes["clients"] = clients
    return replace(settings, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("predictor_service", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = settings_from(args)
    report = asyncio.run(run(settings, args.prompts))
    out = report_mod.write_json(report, args.out)
    png = report_mod.plot(report, args.out.with_suffix(".png"))
    print(report_mod.render_table(report))
    print(f"\nwrote {out}" + (f" and {png}" if png else "") + f" ({report['meta']['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
