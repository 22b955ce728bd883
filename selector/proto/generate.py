"""Regenerates the committed Python modules of selector.proto.

The generated `selector_pb2*.py` files are committed, as grpc's own examples do, so a clean clone imports
without a build step; `tests/selector/server/test_rpcs.py` checks they match this script's output. Run
`python -m selector.proto.generate` after editing the .proto.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parents[1]
PROTO_FILE = PROTO_DIR / "selector.proto"
GENERATED = ("selector_pb2.py", "selector_pb2.pyi", "selector_pb2_grpc.py")


def generate(out_root: Path = REPO_ROOT) -> list[Path]:
    """Writes the modules under `out_root/selector/proto/` and returns their paths.

    The include root is the repository root, so the service module imports `selector.proto.selector_pb2`
    (a package path) rather than a top-level `selector_pb2`.
    """
    from grpc_tools import protoc

    out_root = Path(out_root)
    (out_root / "selector" / "proto").mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = ["grpc_tools.protoc", f"-I{REPO_ROOT}", f"-I{well_known}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", str(PROTO_FILE.relative_to(REPO_ROOT))]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILE}")
    return [out_root / "selector" / "proto" / name for name in GENERATED]


def main() -> None:
    for path in generate():
        print(path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    sys.exit(main())
