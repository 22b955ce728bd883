"""The Python-backend stub processes of a running tritonserver, read from /proc.

Why: each model instance of the Python backend runs in a stub process, the largest process of the
predictor (~570 MiB), so the first one the OOM killer picks. When a stub dies, this Triton (2.51, the
nvidia-pytriton wheel) neither starts it again nor exits: the server and the model still read ready, and
every request to that model is answered INTERNAL "Stub process '...' is not healthy." From outside, only
the process table tells; supervision restarts the server when a stub it started with is gone.
"""

from __future__ import annotations

from pathlib import Path

STUB_NAME = "triton_python_backend_stub"
_COMM = STUB_NAME[:15]           # the kernel keeps the first 15 bytes of a process name


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(name, state, parent pid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The name is in parentheses and may itself hold spaces or ")": the fields after the last ")".
    name = text[text.index("(") + 1:text.rindex(")")]
    state, ppid = text[text.rindex(")") + 2:].split()[:2]
    return name, state, int(ppid)


def _is_live_stub(pid: int, server_pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] == _COMM and stat[1] not in ("Z", "X") and stat[2] == server_pid


def stub_pids(server_pid: int) -> frozenset[int]:
    """The live stub processes whose parent is `server_pid`; empty where there is no /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return frozenset()
    pids = (int(p.name) for p in proc.iterdir() if p.name.isdigit())
    return frozenset(pid for pid in pids if _is_live_stub(pid, server_pid))


def stubs_gone(server_pid: int, stubs: frozenset[int]) -> frozenset[int]:
    """Which of `stubs` (stub_pids at start) have died or left the server: a few reads of /proc."""
    return frozenset(pid for pid in stubs if not _is_live_stub(pid, server_pid))
