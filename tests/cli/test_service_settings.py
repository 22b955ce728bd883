"""Bad service settings fail at start, before any predictor is waited for or started, with one line naming
the file or flag: `python -m selector.server` (how the Kubernetes manifests start the selector) and
`routoo serve`, run as the real commands."""

import subprocess
import sys

import pytest

from predictor_service.triton_server import PROJECT_ROOT

POOL = "[[models]]\nname = 'a'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\np95_latency_ms = 5\n"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*argv], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("body, flags, message", [
    (POOL + "[[modles]]\nname = 'b'\n", [], "unknown top-level keys ['modles']"),
    (POOL + "enabled = false\n" + POOL.replace("'a'", "'b'"), ["--fallback-model", "a"],
     "fallback_model 'a' is disabled in the pool file"),
    (POOL + "enabled = false\n", [], "is disabled (enabled = false): no request could be routed"),
    (POOL, ["--fallback-model", "nosuch"], "fallback_model 'nosuch' is not in the pool"),
    (POOL, ["--max-in-flight-mib", "inf"], "--max-in-flight-mib: must be a number of MiB > 0"),
    (POOL, ["--metrics-port", "70000"], "metrics_port must be in [0, 65535]"),
    (POOL, ["--startup-timeout-s", "inf"], "must be finite numbers > 0: {'startup_timeout_s': inf}"),
])
def test_bad_settings_fail_at_once_with_one_line(tmp_path, body, flags, message):
    pool = tmp_path / "pool.toml"
    pool.write_text(body)
    commands = [[sys.executable, "-m", "selector.server", "--pool", str(pool), *flags],
                [sys.executable, "-m", "cli.main", "serve", "--no-gateway", "--pool", str(pool), *flags]]
    for command in commands:
        done = _run(*command)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert "starting the predictor" not in done.stdout          # nothing was started


@pytest.mark.parametrize("argv, message", [
    (["route", "--timeout-s", "inf", "hi"], "--timeout-s: must be a finite number of seconds > 0"),
    (["serve-predictor", "--stop-timeout", "nan"], "--stop-timeout: must be a finite number of seconds > 0"),
    (["serve-predictor", "--grpc-port", "70000"], "--grpc-port: must be a port in [0, 65535]"),
    (["serve-predictor", "--instance-count", "0"], "--instance-count: must be >= 1"),
    (["serve", "--triton-http-port", "-1"], "--triton-http-port: must be a port in [0, 65535]"),
    (["train", "--data", "x", "--out", "y", "--hidden", "0"], "--hidden: must be >= 1"),
    (["eval-add-model", "--train", "x", "--test", "y", "--model", "m", "--repeats", "0"], "--repeats: must be >= 1"),
    (["gateway", "--upstream-timeout-s", "inf"], "must be finite numbers > 0: {'upstream_timeout_s': inf}"),
])
def test_out_of_range_flags_are_refused_by_name(argv, message):
    done = _run(sys.executable, "-m", "cli.main", *argv)
    assert done.returncode in (1, 2), (done.stdout, done.stderr)     # 2 from argparse, 1 from a config check
    assert message in done.stderr and "Traceback" not in done.stderr
