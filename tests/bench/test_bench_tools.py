"""The benchmark's own logic on trivial in-process async targets: percentile maths, closed- and open-loop
accounting, the SLO search, Triton statistics deltas, goals, the report and the README table. Nothing here
asserts a timing; the servers are measured by `python -m bench.run`, never by the test suite."""

import asyncio
import json
import math
import os

import pytest

from bench import readme_table, report
from bench.loadgen import RunResult, closed_loop, open_loop, percentile, poisson_schedule
from bench.slo import passes, search_max_rate
from bench.cpu_time import cpu_delta, cpu_seconds_by_role
from bench.server_stats import stats_delta

PROMPTS = [f"prompt {i}" for i in range(10)]


def run(coro):
    return asyncio.run(coro)


# --- percentiles ------------------------------------------------------------------------------------------

def test_nearest_rank_percentiles_of_one_to_a_hundred():
    samples = list(range(100, 0, -1))          # unsorted on purpose
    assert [percentile(samples, q) for q in (0, 1, 50, 95, 99, 100)] == [1, 1, 50, 95, 99, 100]


@pytest.mark.parametrize("n, q, want", [(1, 99, 7.0), (2, 50, 3.0), (2, 51, 7.0), (10, 99, 9.0), (10, 90, 8.0)])
def test_nearest_rank_never_interpolates(n, q, want):
    samples = [3.0, 7.0] if n == 2 else ([7.0] if n == 1 else [float(i) for i in range(10)])
    assert percentile(samples, q) == want


def test_percentile_edge_cases():
    assert percentile([], 50) is None
    assert percentile([1.0, math.inf], 99) == math.inf          # a failure sorts last
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_summary_reports_milliseconds_and_counts_failures_as_infinitely_slow_in_the_slo_percentile():
    result = RunResult("open", offered_rate=100.0, scheduled=100, latencies_s=[0.001 * (i + 1) for i in range(98)],
                       errors=1, dropped=1, elapsed_s=2.0)
    s = result.summary()
    assert (s["completed"], s["errors"], s["dropped"]) == (98, 1, 1)
    assert s["p50_ms"] == pytest.approx(49.0) and s["p99_ms"] == pytest.approx(98.0)
    assert s["max_ms"] == pytest.approx(98.0) and s["throughput_rps"] == pytest.approx(49.0)
    # 100 offered, 2 failed: the 99th of 100 is a failure, so the SLO percentile is infinite -> None in JSON.
    assert s["slo_p99_ms"] is None and not passes(result, 1e9)
    one_failure = RunResult("open", offered_rate=100.0, scheduled=100, latencies_s=[0.001] * 99, dropped=1,
                            elapsed_s=1.0)
    assert one_failure.slo_percentile_ms(99) == pytest.approx(1.0) and passes(one_failure, 1.0)
    json.dumps(s, allow_nan=False)


# --- closed loop --------------------------------------------------------------------------------------------

def test_closed_loop_sends_exactly_max_requests_with_at_most_n_in_flight():
    seen, in_flight, peak = [], 0, 0

    async def target(prompt):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        seen.append(prompt)
        await asyncio.sleep(0)
        in_flight -= 1

    result = run(closed_loop(target, PROMPTS, 4, duration_s=30.0, max_requests=57))
    assert result.completed == 57 and len(seen) == 57 and result.errors == result.timed_out == 0
    assert peak == 4
    assert seen[:10] == PROMPTS                      # prompts are cycled in order
    assert result.summary()["clients"] == 4 and result.throughput > 0


def test_closed_loop_counts_errors_by_kind_and_keeps_going():
    async def target(prompt):
        if prompt.endswith(("3", "7")):
            raise RuntimeError("model unavailable\nsecond line")

    result = run(closed_loop(target, PROMPTS, 2, duration_s=30.0, max_requests=40))
    assert result.completed == 32 and result.errors == 8
    assert result.error_kinds == {"RuntimeError: model unavailable": 8}


def test_grpc_errors_are_counted_by_status_and_details():
    import grpc

    class FakeRpcError(Exception):
        def code(self):
            return grpc.StatusCode.DEADLINE_EXCEEDED

        def details(self):
            return "the predictor did not answer within 2 s"

    async def target(prompt):
        raise FakeRpcError("<AioRpcError of RPC that terminated with:")

    result = run(closed_loop(target, PROMPTS, 1, duration_s=30.0, max_requests=3))
    assert result.error_kinds == {"FakeRpcError: DEADLINE_EXCEEDED: the predictor did not answer within 2 s": 3}


def test_closed_loop_cancels_clients_stuck_past_the_drain_timeout():
    async def never(prompt):
        await asyncio.Event().wait()

    result = run(closed_loop(never, PROMPTS, 3, duration_s=0.01, drain_timeout_s=0.01))
    assert result.completed == 0 and result.timed_out == 3


@pytest.mark.parametrize("bad", [dict(concurrency=0), dict(duration_s=0.0)])
def test_closed_loop_rejects_bad_settings(bad):
    async def target(prompt):
        return None

    kwargs = {"concurrency": 1, "duration_s": 1.0, **bad}
    with pytest.raises(ValueError):
        run(closed_loop(target, PROMPTS, kwargs.pop("concurrency"), **kwargs))


# --- open loop --------------------------------------------------------------------------------------------

def test_poisson_schedule_is_seeded_sorted_bounded_and_at_the_rate():
    a = poisson_schedule(1000.0, 10.0, 100_000, seed=1)
    assert (a == poisson_schedule(1000.0, 10.0, 100_000, seed=1)).all()
    assert (a[1:] >= a[:-1]).all() and a[-1] < 10.0
    assert len(a) == pytest.approx(10_000, rel=0.05)
    assert len(poisson_schedule(1000.0, 10.0, 123)) == 123


def test_open_loop_accounts_for_every_arrival_when_the_target_never_answers():
    async def never(prompt):
        await asyncio.Event().wait()

    result = run(open_loop(never, PROMPTS, 20_000.0, duration_s=0.02, max_requests=60, max_in_flight=3,
                           drain_timeout_s=0.01))
    assert result.scheduled > 3
    assert result.completed == result.errors == 0
    assert result.timed_out == 3 and result.dropped == result.scheduled - 3
    assert result.slo_percentile_ms(99) == math.inf


def test_open_loop_every_arrival_ends_as_exactly_one_outcome():
    calls = 0

    async def flaky(prompt):
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise ValueError("bad prompt")
        await asyncio.sleep(0)

    result = run(open_loop(flaky, PROMPTS, 5_000.0, duration_s=0.05, max_requests=200, max_in_flight=10_000))
    assert result.dropped == result.timed_out == 0
    assert result.completed + result.errors == result.scheduled == calls
    assert result.errors == calls // 3
    assert all(x >= 0 for x in result.latencies_s)


def test_open_loop_late_counts_arrivals_sent_behind_schedule():
    async def blocking(prompt):
        import time
        time.sleep(0.002)              # holds the event loop, as a synchronous in-process call does

    result = run(open_loop(blocking, PROMPTS, 10_000.0, duration_s=0.02, max_requests=50, late_after_s=0.001))
    assert result.late > 0 and result.completed == result.scheduled


# --- SLO search ---------------------------------------------------------------------------------------------

def fake_measure(capacity: float, calls: list):
    """p99 of 10 ms up to `capacity` requests/s, 100 ms above it."""
    async def measure(rate):
        calls.append(rate)
        latency = 0.010 if rate <= capacity else 0.100
        return RunResult("open", offered_rate=rate, scheduled=100, latencies_s=[latency] * 100, elapsed_s=1.0)
    return measure


def test_slo_search_brackets_then_bisects_to_the_capacity():
    calls = []
    slo = run(search_max_rate(fake_measure(430.0, calls), bound_ms=25.0, start_rate=100.0, min_rate=1.0,
                              max_rate=10_000.0, max_probes=12, resolution=1.1))
    assert 430.0 / 1.1 <= slo.max_rate <= 430.0
    assert len(slo.probes) == len(calls) <= 12
    assert all(p.passed == (p.rate <= 430.0) for p in slo.probes)
    d = slo.as_dict()
    assert [p["rate"] for p in d["probes"]] == sorted(p["rate"] for p in d["probes"])


def test_slo_search_reports_none_when_even_the_lowest_rate_misses():
    slo = run(search_max_rate(fake_measure(0.5, []), bound_ms=25.0, start_rate=64.0, min_rate=2.0,
                              max_rate=1000.0, max_probes=20))
    assert slo.max_rate is None and "2/s" in slo.note
    assert min(p.rate for p in slo.probes) == 2.0


def test_slo_search_stops_at_max_rate_when_everything_passes():
    slo = run(search_max_rate(fake_measure(1e9, []), bound_ms=25.0, start_rate=10.0, min_rate=1.0,
                              max_rate=50.0, max_probes=20))
    assert slo.max_rate == 50.0 and "still met" in slo.note


# --- Triton statistics, goals, report, README -------------------------------------------------------------

def snapshot(success, queue_ns, infer_ns, executions, inferences):
    return {"execution_count": executions, "inference_count": inferences,
            "inference_stats": {"success": {"count": success, "ns": success * 3_000_000},
                                "queue": {"count": success, "ns": queue_ns},
                                "compute_infer": {"count": success, "ns": infer_ns},
                                "fail": {"count": 0, "ns": 0}}}


def test_stats_delta_gives_per_request_milliseconds_and_mean_batch_size():
    before = snapshot(10, 5_000_000, 20_000_000, 10, 10)
    after = snapshot(110, 105_000_000, 220_000_000, 35, 110)
    d = stats_delta(before, after)
    assert d["requests"] == 100 and d["executions"] == 25 and d["mean_batch_size"] == 4.0
    assert d["queue_ms"] == 1.0 and d["compute_infer_ms"] == 2.0 and d["server_total_ms"] == 3.0
    assert d["compute_input_ms"] is None


def test_cpu_delta_is_milliseconds_per_request_by_role():
    d = cpu_delta({"loadgen": 1.0, "selector": 2.0}, {"loadgen": 1.5, "selector": 3.0, "tritonserver": 0.5}, 1000)
    assert d == {"loadgen_ms": 0.5, "selector_ms": 1.0, "tritonserver_ms": 0.5, "total_ms": 2.0}
    assert cpu_delta({}, {"loadgen": 1.0}, 0) == {}


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="reads Linux /proc")
def test_cpu_seconds_by_role_sees_this_process_as_the_load_generator():
    roles = cpu_seconds_by_role()
    assert roles["loadgen"] > 0 and set(roles) <= {"loadgen", "other", "tritonserver", "python_stub", "selector"}


def closed(clients, p50, p99, rps):
    return {"clients": clients, "p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "max_ms": p99, "mean_ms": p50,
            "throughput_rps": rps, "errors": 0, "timed_out": 0}


def fake_report():
    r = report.new_report({"slo_ms": 25.0})
    r["encoders"]["static"] = {"targets": {
        "echo_floor": {"closed": [closed(1, 0.8, 1.5, 1200.0), closed(32, 5.0, 9.0, 7000.0)]},
        "predictor_batching": {"closed": [closed(1, 1.0, 2.0, 900.0), closed(32, 7.0, 12.0, 3500.0)],
                               "slo": {"bound_ms": 25.0, "max_rate": 2000.0, "note": "", "probes": []}},
        "selector_route": {"closed": [closed(1, 1.8, 6.0, 500.0)],
                           "slo": {"bound_ms": 25.0, "max_rate": 800.0, "note": "",
                                   "probes": [{"rate": 800.0, "passed": True, "p50_ms": 2.0, "p99_ms": 20.0},
                                              {"rate": 1600.0, "passed": False, "p50_ms": 9.0, "p99_ms": 90.0}]}},
    }, "skipped": {}}
    r["encoders"]["minilm"] = {"targets": {}, "skipped": {"predictor_batching": "no data"}}
    r["micro"]["route_batch_10k_x_32_ms"] = {"median_ms": 30.0, "min_ms": 28.0, "repeats": 5}
    r["goals"] = report.evaluate_goals(r)
    r["breakdown"] = report.breakdown(r)
    return r


def test_goals_compare_the_right_figures_and_say_when_one_is_missing():
    by_text = fake_report()["goals"]
    assert [g["met"] for g in by_text] == [True, False, True, False, False, None, True, None, None, None]
    assert by_text[2]["measured"] == pytest.approx(1.25)     # 1.0 / 0.8
    assert by_text[3]["measured"] == pytest.approx(0.5)      # 3500 / 7000
    assert by_text[4]["measured"] == 800.0


def test_failed_requests_fail_the_latency_goals_and_show_in_the_table():
    r = fake_report()
    route1 = r["encoders"]["static"]["targets"]["selector_route"]["closed"][0]
    route1.update(p99_ms=4.0, errors=50)            # 950 fast answers and 50 failures: p99 alone would pass
    goals = report.evaluate_goals(r)
    assert goals[0]["met"] is False and goals[1]["met"] is False and goals[1]["failed"] == 50
    r["goals"] = goals
    text = readme_table.render(r)
    assert "| 4.00 (50 errors) |" in text and "4.00 ms (50 requests failed) | **no** |" in text


def test_a_synchronous_in_process_target_lets_every_client_in():
    """InProcessTarget runs its predictor on the loop's thread; it must yield first, or the first
    closed-loop client keeps the loop for the whole run and N clients measure one."""
    from bench.targets import InProcessTarget

    class SlowPredictor:
        def predict(self, prompts):
            import time
            time.sleep(0.002)
            return [[0.5]], [[0.0]]
    target = InProcessTarget(SlowPredictor())
    seen = set()

    async def tagged(prompt):
        seen.add(asyncio.current_task().get_name())
        return await target(prompt)
    result = run(closed_loop(tagged, PROMPTS, 8, duration_s=0.2))
    assert len(seen) == 8 and result.completed >= 8


def test_the_interleaved_pair_is_a_goal_of_its_own_and_has_its_table_lines():
    r = fake_report()
    r["encoders"]["static"]["paired_1_client"] = {
        "blocks": 2, "block_s": 0.5, "order": ["echo_floor", "predictor_batching"],
        "echo_floor": {"completed": 900, "p50_ms": 1.0, "p99_ms": 2.0},
        "predictor_batching": {"completed": 700, "p50_ms": 1.6, "p99_ms": 3.0},
        "p50_ratio": 1.6, "block_p50_ratios": [1.55, 1.65]}
    goal = report.evaluate_goals(r)[-1]
    assert "interleaved" in goal["goal"] and goal["measured"] == 1.6 and goal["met"] is False
    text = report.render_table(r)
    assert "p50 ratio 1.600x; per block 1.55x to 1.65x, median 1.60x" in text


def test_breakdown_splits_one_client_latency_and_lists_cpu_per_request():
    r = fake_report()
    r["encoders"]["static"]["targets"]["selector_route"]["closed"].append(
        {**closed(32, 9.0, 20.0, 900.0), "cpu_per_request": {"selector_ms": 1.2, "total_ms": 2.0}})
    b = report.breakdown(r)
    assert b["latency_1_client_ms"]["selector_adds"] == pytest.approx(0.8)      # 1.8 - 1.0
    assert b["cpu_ms_per_request"] == {"selector_route@32": {"selector_ms": 1.2, "total_ms": 2.0}}


def test_cpu_goals_and_coalescing_lines_read_the_32_client_selector_run():
    r = fake_report()
    r["encoders"]["static"]["targets"]["selector_route"]["closed"].append(
        {**closed(32, 9.0, 20.0, 900.0), "cpu_per_request": {"selector_ms": 0.4, "tritonserver_ms": 0.1,
                                                              "python_stub_ms": 0.2, "loadgen_ms": 0.3},
         "server": {"rows_per_request": 11.5, "mean_batch_size": 11.5},
         "selector": {"requests_per_call": 11.5, "rows_per_call": 11.5, "queue_wait_ms": 0.62}})
    goals = {g["goal"].split(",")[0]: g for g in report.evaluate_goals(r)}
    assert goals["selector CPU per routed prompt"]["measured"] == pytest.approx(0.4)
    assert goals["selector CPU per routed prompt"]["met"] is True
    assert goals["server CPU (selector + Triton + stub) per routed prompt"]["measured"] == pytest.approx(0.7)
    line = next(x for x in report.render_table(r).splitlines() if x.startswith("static  selector_route       32")
                and "11.50" in x)
    assert line.split()[3:] == ["11.50", "11.50", "0.620", "11.50", "11.50"]


def test_report_table_json_and_plot(tmp_path):
    r = fake_report()
    text = report.render_table(r)
    assert "selector_route" in text and "MISSED" in text and "skipped: no data" in text
    path = report.write_json(r, tmp_path / "out.json")
    assert json.loads(path.read_text())["meta"]["git"]["commit"]
    assert report.plot(r, tmp_path / "out.png").stat().st_size > 0


def test_readme_table_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Routoo\n\nintro\n\n{readme_table.START}\nold figures\n{readme_table.END}\n\nafter\n")
    r = fake_report()
    (tmp_path / "latest.json").write_text(json.dumps(r))
    assert readme_table.main(["--json", str(tmp_path / "latest.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Routoo\n\nintro\n\n") and text.endswith(f"{readme_table.END}\n\nafter\n")
    assert "old figures" not in text and "selector `Route`, end to end" in text and "| **no** |" in text
    assert readme_table.main(["--json", str(tmp_path / "latest.json"), "--readme", str(readme), "--check"]) == 0


def test_readme_table_refuses_a_readme_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Routoo\n")
    (tmp_path / "latest.json").write_text(json.dumps(fake_report()))
    with pytest.raises(SystemExit, match="bench:start"):
        readme_table.main(["--json", str(tmp_path / "latest.json"), "--readme", str(readme)])
