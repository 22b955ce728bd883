"""What the servers say about a measured run: Triton's statistics extension (queue, compute, batch sizes)
and the selector's coalescing counters from its /metrics, as deltas between two snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import time

from bench.targets import TritonTarget


async def wait_until_idle(predictor: "TritonTarget", *, timeout_s: float = 60.0) -> float:
    """Waits until Triton has worked off every request queued for the model; returns the seconds waited.

    Requests a client gave up on (the selector's deadline, a probe's time-out) stay in Triton's queue and
    still run, and would slow the next measurement down. One request of our own is a barrier: the queue is
    first in, first out and there is one instance, so when it returns, everything queued before it is done.
    """
    start = time.perf_counter()
    with contextlib.suppress(Exception):    # a failed barrier is no reason to stop the benchmark
        await asyncio.wait_for(predictor("barrier"), timeout_s)
    return time.perf_counter() - start


def stats_delta(before: dict, after: dict) -> dict:
    """Server-side split of one measured run from two Triton statistics snapshots, per request in ms.

    Triton reports cumulative counts and nanoseconds; `queue` is the time a request waited for the
    dynamic batcher and a free instance, `compute_*` the model's input, execution and output phases
    (per request: an execution's time is charged to every request in its batch).
    """
    def total(snapshot: dict, phase: str) -> tuple[int, int]:
        entry = snapshot.get("inference_stats", {}).get(phase, {})
        return int(entry.get("count", 0)), int(entry.get("ns", 0))

    out: dict = {}
    n_success, _ = total(after, "success")
    n_success -= total(before, "success")[0]
    out["requests"] = n_success
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        count = total(after, phase)[0] - total(before, phase)[0]
        ns = total(after, phase)[1] - total(before, phase)[1]
        key = "server_total_ms" if phase == "success" else f"{phase}_ms"
        out[key] = round(ns / count / 1e6, 4) if count > 0 else None
    fails = total(after, "fail")[0] - total(before, "fail")[0]
    out["failed"] = fails
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    out["executions"] = executions
    out["mean_batch_size"] = round(inferences / executions, 3) if executions > 0 else None
    # Rows per ModelInfer as Triton received them: 1 for single-prompt clients, more where the selector
    # coalesced. mean_batch_size is what Triton's dynamic batcher then made of them.
    out["rows_per_request"] = round(inferences / n_success, 3) if n_success > 0 else None
    return out


# --- the selector's own coalescing figures ----------------------------------------------------------------

_SELECTOR_SERIES = ("routoo_selector_coalesced_rows_sum", "routoo_selector_coalesced_rows_count",
                    "routoo_selector_coalesced_requests_sum", "routoo_selector_queue_wait_seconds_sum",
                    "routoo_selector_queue_wait_seconds_count")


def selector_counters(ports: tuple[int, ...]) -> dict[str, float]:
    """The coalescing histograms' sums and counts from each worker's /metrics, summed over the workers."""
    import urllib.request

    out = dict.fromkeys(_SELECTOR_SERIES, 0.0)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            for line in page.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in out:
                    out[name] += float(value)
    return out


def selector_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    """Per coalesced Triton call of one run: prompts (rows) and requests it carried; per request, the mean
    wait for a call slot (ms)."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    calls, waits = d["routoo_selector_coalesced_rows_count"], d["routoo_selector_queue_wait_seconds_count"]
    return {"coalesced_calls": int(calls),
            "rows_per_call": round(d["routoo_selector_coalesced_rows_sum"] / calls, 3) if calls else None,
            "requests_per_call": round(d["routoo_selector_coalesced_requests_sum"] / calls, 3) if calls else None,
            "queue_wait_ms": round(1e3 * d["routoo_selector_queue_wait_seconds_sum"] / waits, 4) if waits else None}
