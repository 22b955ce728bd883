"""CPU time by process role (load generator, tritonserver, Python stub, selector), from Linux /proc."""

from __future__ import annotations

import os
from pathlib import Path


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, comm, user + system clock ticks) for every process we can read (Linux /proc)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1: raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        # After the comm: state, ppid, ..., utime (11), stime (12); see proc(5).
        table[int(entry.name)] = (int(fields[1]), comm, int(fields[11]) + int(fields[12]))
    return table


def cpu_seconds_by_role(selector_pid: int | None = None) -> dict[str, float]:
    """CPU seconds used so far by this process and its descendants, by role: `loadgen` (this process),
    `tritonserver`, `python_stub` (Triton's Python-backend model processes), `selector`, `other`.

    On 2 cores the roles compete for the same CPUs: CPU-ms per request per role says where the throughput
    goes. Empty where /proc is missing.
    """
    if not Path("/proc/self/stat").is_file():
        return {}
    table = _proc_table()
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    me = os.getpid()
    out: dict[str, float] = {}
    stack = [(me, "loadgen")]
    while stack:
        pid, inherited = stack.pop()
        if pid not in table:
            continue
        comm = table[pid][1]
        if pid == selector_pid:
            role = "selector"
        elif comm.startswith("tritonserver"):
            role = "tritonserver"
        elif comm.startswith("triton_python"):
            role = "python_stub"
        else:
            role = inherited if pid == me or inherited in ("selector", "python_stub") else "other"
        out[role] = out.get(role, 0.0) + table[pid][2] / ticks
        stack.extend((child, role) for child in children.get(pid, []))
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float], requests: int) -> dict:
    """CPU ms per completed request by role, between two cpu_seconds_by_role snapshots."""
    if not after or requests <= 0:
        return {}
    used = {role: after[role] - before.get(role, 0.0) for role in after}
    out = {f"{role}_ms": round(1e3 * value / requests, 4) for role, value in sorted(used.items()) if value > 0}
    out["total_ms"] = round(1e3 * sum(v for v in used.values() if v > 0) / requests, 4)
    return out
