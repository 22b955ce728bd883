"""The compiled functions' on-disk cache must follow edits to the compiled functions they call in other files."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CALLEE = """
from kernels.cpu_jit import compiled

@compiled()
def callee(x):
    return x + {step}
"""

CALLER = """
import callee_mod
from callee_mod import callee
from kernels.cpu_jit import compiled

@compiled(depends_on=(callee_mod,))
def caller(x):
    return callee(x) * 2
"""

RUN = "import caller_mod; print(caller_mod.caller(1), sum(caller_mod.caller.stats.cache_hits.values()))"


def _run(folder: Path) -> tuple[int, int]:
    env = {"PYTHONPATH": f"{folder}:{REPO}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", RUN], cwd=folder, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_a_cached_caller_recompiles_when_a_callee_in_another_file_changes(tmp_path):
    (tmp_path / "callee_mod.py").write_text(CALLEE.format(step=1))
    (tmp_path / "caller_mod.py").write_text(CALLER)
    assert _run(tmp_path)[0] == 4                       # compiled and cached: (1 + 1) * 2
    value, hits = _run(tmp_path)
    assert value == 4 and hits >= 1                      # loaded from the cache
    (tmp_path / "callee_mod.py").write_text(CALLEE.format(step=100))
    assert _run(tmp_path)[0] == 202                      # numba alone would still answer 4
