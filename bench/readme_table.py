"""Regenerate the README's performance table from the benchmark's JSON; nobody types the figures.

    python -m bench.readme_table                      # bench/results/latest.json -> README.md
    python -m bench.readme_table --check              # exit 1 if README.md is not what the JSON gives

Only the text between the markers below is replaced; the README must contain both, on lines of their own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evals.provenance import REPO

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"
DEFAULT_README = REPO / "README.md"

TARGET_LABELS = {
    "echo_floor": "echo_floor in Triton (the floor)",
    "predictor_batching": "predictor in Triton, dynamic batching",
    "predictor_no_batch": "predictor in Triton, batching off",
    "selector_route": "selector `Route`, end to end",
    "selector_route_stream": "selector `RouteStream`, one stream per client",
    "selector_route_2w": "selector `Route`, 2 workers, 8 connections",
    "in_process": "predictor in process (no RPC)",
}


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _closed(runs: list[dict], clients: int) -> dict:
    return next((r for r in runs if r.get("clients") == clients), {})


def render(report: dict) -> str:
    meta = report.get("meta", {})
    machine = meta.get("machine", {})
    settings = report.get("settings", {})
    high = max(settings.get("clients") or [32])
    bound = settings.get("slo_ms", 25.0)
    commit = meta.get("git", {}).get("commit", "unknown")[:10]
    dirty = " (uncommitted changes)" if meta.get("git", {}).get("dirty") else ""
    lines = [
        f"Measured {meta.get('date_utc', '?')} on {machine.get('cpu', '?')} ({machine.get('cpus_usable', '?')} CPUs), "
        f"commit `{commit}`{dirty}, load average {meta.get('load_average_start')} at the start"
        + (", **quick mode**" if settings.get("quick") else "") + ". Regenerate: `make bench` then "
        "`python -m bench.readme_table`. Latency in ms; compare rows of one run, not across machines.",
        "",
        f"| target | encoder | p50, 1 client | p99, 1 client | req/s, {high} clients | p99, {high} clients "
        f"| max req/s at p99 <= {bound:g} ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for encoder, enc in report.get("encoders", {}).items():
        for target, data in enc.get("targets", {}).items():
            one, many = _closed(data.get("closed", []), 1), _closed(data.get("closed", []), high)
            slo = data.get("slo") or {}
            rate = slo.get("max_rate")
            rate_text = _num(rate, 0) if rate is not None else ("none" if slo else "-")
            # Percentiles are over completed requests: failures are shown beside them, not hidden.
            failed_one = one.get("errors", 0) + one.get("timed_out", 0)
            failed = many.get("errors", 0) + many.get("timed_out", 0)
            rps = _num(many.get("throughput_rps"), 0) + (f" ({failed} errors)" if failed else "")
            p99_one = _num(one.get("p99_ms")) + (f" ({failed_one} errors)" if failed_one else "")
            lines.append(f"| {TARGET_LABELS.get(target, target)} | {encoder} | {_num(one.get('p50_ms'))} "
                         f"| {p99_one} | {rps} | {_num(many.get('p99_ms'))} | {rate_text} |")
        for target, why in enc.get("skipped", {}).items():
            lines.append(f"| {TARGET_LABELS.get(target, target)} | {encoder} | skipped: {why} | | | | |")
    goals = report.get("goals", [])
    if goals:
        lines += ["", "| issue 6 target | measured | met |", "| --- | ---: | :---: |"]
        for g in goals:
            measured = "-" if g.get("measured") is None else f"{_num(float(g['measured']))} {g.get('unit', '')}".strip()
            if g.get("failed"):
                measured += f" ({g['failed']} requests failed)"
            met = {True: "yes", False: "**no**", None: "not measured"}[g.get("met")]
            lines.append(f"| {g['goal']} | {measured} | {met} |")
    return "\n".join(lines)


def replace_block(text: str, block: str, start: str = START, end: str = END, *, where: object = "the README") -> str:
    """`text` with what lies between the markers replaced by `block` (also docs/deploy.md's capacity table,
    bench/capacity.py). ValueError naming `where` unless each marker is there once, start before end."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{where} must hold {start} and {end} once each, in that order, around the table")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    body = block.strip("\n")
    return f"{head}{start}\n{body}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.readme_table", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="default: bench/results/latest.json")
    parser.add_argument("--readme", type=Path, default=DEFAULT_README, help="default: README.md")
    parser.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = parser.parse_args(argv)
    if not args.json.is_file():
        raise SystemExit(f"{args.json}: no benchmark results; run `make bench` first")
    if not args.readme.is_file():
        raise SystemExit(f"{args.readme}: no such README")
    report = json.loads(args.json.read_text())
    old = args.readme.read_text()
    try:
        new = replace_block(old, render(report), where=args.readme)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    if args.check:
        if new != old:
            print(f"{args.readme} is out of date with {args.json}; run `python -m bench.readme_table`")
            return 1
        return 0
    if new != old:
        args.readme.write_text(new)
        print(f"updated the table in {args.readme} from {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
