"""Keep child processes alive without a hand: see a child exit, say so once, restart it with backoff, and
give up (so that a process manager or Kubernetes takes over) when it keeps dying.

    supervisor = Supervisor([triton], RestartPolicy(), on_give_up=...)   # children already started
    supervisor.watch()            # a thread polls them (and so reaps them: no <defunct> left)
    ...
    supervisor.stop()             # stops every child, whole process group, whatever state it is in

A child is anything with `name`, `start()` (blocks until ready, raises if it cannot get there),
`exit_status()` (None while it runs) and `stop()` (idempotent; stops its whole process group and releases
what it held, e.g. shared memory). `TritonServer` is one; `ProcessChild` wraps any command.

Processes are started in a session of their own (so one signal reaches their helpers: the Python backend's
stubs are tritonserver's children) with a parent-death signal (PR_SET_PDEATHSIG), so that a `routoo serve`
killed with SIGKILL still takes its children down: they get SIGTERM from the kernel when the thread that
started them dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

log = logging.getLogger(__name__)

_SETPRIV = shutil.which("setpriv")                # util-linux; without it, no parent-death signal
_THREAD = threading.local()                        # long_lived: set by the supervisor's watcher thread


class Child(Protocol):
    name: str

    def start(self) -> object: ...

    def exit_status(self) -> int | None: ...

    def stop(self) -> None: ...


# Not an OS exit status (those are 0-255 or minus a signal): a child that still runs but can no longer
# serve reports it from exit_status(), so that it is restarted like one that exited.
UNSERVING = 1000


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode == UNSERVING:
        return "running but unable to serve"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def spawn_group(command: list[str], *, death_signal: str = "TERM", **popen_kwargs) -> subprocess.Popen:
    """Popen in a new session (the child leads its own process group) that gets SIG`death_signal` when the
    starting thread dies. TERM, not KILL: tritonserver then stops its stubs and frees their memory.

    The parent-death signal is set by util-linux's `setpriv --pdeathsig`, which then execs the command (same
    pid): no Python runs between fork and exec, which a preexec_fn would do in this multi-threaded, gRPC-using
    process (with one, a restarted tritonserver was once seen dead of SIGSEGV before it was ready; with
    setpriv, not in the soak runs since). The kernel sends it when the *thread* that forked exits, so only
    the main thread and the supervisor's watcher (both live as long as the children should) arm it; a child
    started from a short-lived worker thread (asyncio.to_thread) would be killed when that thread retires."""
    armed = _SETPRIV is not None and (threading.current_thread() is threading.main_thread()
                                      or getattr(_THREAD, "long_lived", False))
    if armed:
        command = [_SETPRIV, f"--pdeathsig={death_signal}", "--", *command]
    return subprocess.Popen(command, start_new_session=True, **popen_kwargs)


def stop_group(process: subprocess.Popen, *, timeout_s: float, name: str = "child") -> None:
    """SIGTERM to the leader, SIGKILL to it after `timeout_s`, then SIGKILL to whatever is left of its
    process group (helpers the leader started: they outlive a leader killed with SIGKILL). Reaps the leader."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit %.0f s after SIGTERM; killing it", name, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
    # The group id is the leader's pid, which the kernel does not hand out again while the group has members.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass(frozen=True)
class RestartPolicy:
    # A child that dies more than max_restarts times within window_s is given up on: by then restarting is
    # not helping, and a process manager (or Kubernetes) should see the failure. 5 in 120 s lets a child
    # that crashes once a minute (the soak bench's rate) run forever.
    max_restarts: int = 5
    window_s: float = 120.0
    # Wait before restart n (n = restarts within the window): initial * 2**(n-1), at most backoff_max_s.
    # tritonserver takes ~10 s to load its models here, so even the cap adds at most as much again.
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 10.0
    # How often children are checked (and reaped); bounds how long an exit goes unseen.
    poll_s: float = 0.25

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        bad = {k: v for k, v in (("window_s", self.window_s), ("backoff_initial_s", self.backoff_initial_s),
                                 ("backoff_max_s", self.backoff_max_s), ("poll_s", self.poll_s)) if not v > 0}
        if bad:
            raise ValueError(f"these restart settings must be > 0: {bad}")

    def backoff_s(self, restarts_in_window: int) -> float:
        return min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, restarts_in_window - 1))


class Supervisor:
    """Watches started children from one thread; restarts each on exit under `policy`.

    on_give_up(child, reason) is called (from the watcher thread) once, when a child exhausted its restarts;
    the children are then stopped. `gave_up` tells the caller to exit non-zero.
    """

    def __init__(self, children: list[Child], policy: RestartPolicy | None = None, *,
                 on_give_up: Callable[[Child, str], None] | None = None):
        self.children = list(children)
        self.policy = policy or RestartPolicy()
        self.gave_up: str | None = None                 # the reason, once given up
        self.restarts = {child.name: 0 for child in self.children}
        self._on_give_up = on_give_up
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._recent = {child.name: deque() for child in self.children}   # restart times within the window

    def watch(self) -> "Supervisor":
        self._thread = threading.Thread(target=self._run, name="routoo-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops every child (last started first) and the watcher; safe to call more than once."""
        self._stopping.set()
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception:
                log.exception("stopping %s failed", child.name)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30.0)

    def _run(self) -> None:
        _THREAD.long_lived = True
        while not self._stopping.wait(self.policy.poll_s):
            for child in self.children:
                status = child.exit_status()
                if status is not None and not self._stopping.is_set():
                    if not self._revive(child, status):
                        return

    def _revive(self, child: Child, status: int) -> bool:
        """Restarts `child` until it runs; False once it has used up its restarts (after giving up)."""
        reason = describe_exit(status)
        down_since = time.monotonic()
        child.stop()                     # reaped already; kills what is left of its group, frees its memory
        while not self._stopping.is_set():
            recent = self._recent[child.name]
            now = time.monotonic()
            while recent and now - recent[0] > self.policy.window_s:
                recent.popleft()
            if len(recent) >= self.policy.max_restarts:
                self._give_up(child, f"{child.name} stopped ({reason}) after {len(recent)} restarts within "
                                     f"{self.policy.window_s:g} s")
                return False
            recent.append(now)
            self.restarts[child.name] += 1
            delay = self.policy.backoff_s(len(recent))
            log.error("%s exited (%s); restarting it in %.1f s (restart %d of at most %d within %g s)",
                      child.name, reason, delay, len(recent), self.policy.max_restarts, self.policy.window_s)
            if self._stopping.wait(delay):
                return True
            try:
                child.start()
            except Exception as e:        # counted like an exit: the next try waits longer
                error = bounded_error(e)
                reason = f"restart failed: {error.partition(chr(10))[0]}"
                log.error("%s did not come back: %s", child.name, error)
                child.stop()
                continue
            log.warning("%s is back after %.1f s", child.name, time.monotonic() - down_since)
            return True
        return True

    def _give_up(self, child: Child, reason: str) -> None:
        self.gave_up = reason
        log.error("giving up: %s", reason)
        for other in reversed(self.children):
            with contextlib.suppress(Exception):
                other.stop()
        if self._on_give_up is not None:
            self._on_give_up(child, reason)


def bounded_error(error: Exception, *, lines: int = 12, width: int = 300) -> str:
    """A child's error for the log: its first line, then its last `lines` lines, each cut at `width` (its
    type's name where it has no message). A restart that fails in a loop must not fill the log, but the
    lines that say why (a server's last log lines) must reach it."""
    kept = str(error).splitlines() or [type(error).__name__]
    head, tail = kept[:1], kept[1:][-lines:]
    return "\n".join(line[:width] for line in head + tail)


class ProcessChild:
    """Any command as a supervised child: its own process group, output appended to `log_path`, ready
    when `ready()` says so (default: as soon as it runs)."""

    def __init__(self, name: str, command: list[str], *, log_path: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, ready: Callable[[], bool] | None = None,
                 ready_timeout_s: float = 60.0, stop_timeout_s: float = 10.0):
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.env = env
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._ready = ready
        self._process: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> "ProcessChild":
        if self._process is not None and self._process.poll() is None:
            return self
        self._log = open(self.log_path, "ab") if self.log_path is not None else None
        output = self._log if self._log is not None else subprocess.DEVNULL
        self._process = spawn_group(self.command, stdout=output, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.ready_timeout_s
        while self._ready is not None and not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                status = describe_exit(self._process.poll())
                self.stop()
                raise RuntimeError(f"{self.name} did not become ready within {self.ready_timeout_s:g} s "
                                   f"({status})")
            time.sleep(0.1)
        return self

    def exit_status(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop_group(process, timeout_s=self.stop_timeout_s, name=self.name)
        if self._log is not None:
            self._log.close()
            self._log = None
