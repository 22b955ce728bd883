"""Where and from what a result was made: the git revision, the machine, the UTC time. Stamped on the eval
JSONs here and, from bench/ and scripts/ (on top of evals/), on the benchmark JSONs and recorded scores.
Standard library only, so that bench/gpu_check.py imports it where torch or triton are absent."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_output(*args: str) -> str | None:
    """Stripped stdout of `git ARGS` run in this checkout; None where git is missing, fails or says nothing
    (a copy of the tree without .git, as on a device machine)."""
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def git_commit() -> str | None:
    """The checked-out commit, or None outside a git checkout."""
    return git_output("rev-parse", "HEAD")


def machine_summary(*details: str) -> str:
    """"x86_64 x86_64" (architecture and processor) followed by the caller's details, e.g. a thread count."""
    return " ".join([platform.machine(), platform.processor() or "", *details]).strip()


def utc_now() -> str:
    """The current UTC time to the second, ISO 8601 (what every result's date field holds)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
