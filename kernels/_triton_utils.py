"""Guarded Triton import and the checks every op's dispatcher shares.

Everything here imports on a machine without Triton (vLLM's `triton_utils` pattern): the op modules
decorate their kernels with `triton.jit` at import time, so without Triton they get a placeholder whose
`jit` returns the function unchanged and the dispatchers never pick the kernel.
"""

import contextlib
import importlib.util
import logging
import types

import torch

log = logging.getLogger("routoo.kernels")

HAS_TRITON = importlib.util.find_spec("triton") is not None

if HAS_TRITON:
    import triton
    import triton.language as tl

    # `triton.jit` reads TRITON_INTERPRET when it decorates, i.e. when the op modules import right after
    # this one, so this flag says whether our kernels are the interpreted (CPU) or the compiled (GPU) kind.
    INTERPRET = bool(triton.knobs.runtime.interpret)
else:
    def _jit_placeholder(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

    triton = types.SimpleNamespace(jit=_jit_placeholder)
    # Kernel signatures evaluate `tl.constexpr` annotations at definition time; nothing else is touched.
    tl = types.SimpleNamespace(constexpr=None)
    INTERPRET = False

# The interpreter pays per op, not per element: token tiles 8x wider there cut a 200-token prompt's loop from
# 50 to 7 steps (static_predictor at batch 129: 4.7 s -> 0.6 s) and still leave loops with tails to test.
INTERPRETER_TILE_SCALE = 8 if INTERPRET else 1

IMPLS = ("auto", "triton", "reference")
# tl.dot takes these; float64 and the rest run on the reference only.
KERNEL_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def resolve_impl(op: str, impl: str, device: torch.device, dtypes, shape_ok: bool = True,
                 shape_reason: str = "") -> str:
    """Return "triton" or "reference" for one call of `op`, from explicit capabilities only.

    "auto" takes the kernel only when it can run compiled: Triton importable, tensors on CUDA, not in
    interpreter mode (which would run it on the host), every dtype in KERNEL_FLOAT_DTYPES and the shape
    within the kernel's limits. "triton" demands the kernel and raises ValueError naming what is missing;
    it also accepts CPU tensors under TRITON_INTERPRET=1, which is how the tests run the kernels.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is not one of {IMPLS}")
    if impl == "reference":
        return "reference"
    unsupported = sorted({str(dt) for dt in dtypes if dt not in KERNEL_FLOAT_DTYPES})
    if impl == "auto":
        compiled = HAS_TRITON and device.type == "cuda" and not INTERPRET
        return "triton" if compiled and not unsupported and shape_ok else "reference"
    if not HAS_TRITON:
        raise ValueError(f"{op}: impl='triton' but triton is not importable")
    if device.type != "cuda" and not INTERPRET:
        raise ValueError(f"{op}: impl='triton' needs CUDA tensors (got {device}) or TRITON_INTERPRET=1")
    if unsupported:
        raise ValueError(f"{op}: impl='triton' does not support dtype {', '.join(unsupported)}; "
                         f"supported: {[str(dt) for dt in KERNEL_FLOAT_DTYPES]}")
    if not shape_ok:
        raise ValueError(f"{op}: impl='triton' {shape_reason}")
    return "triton"


def check_tensor(op: str, name: str, tensor, shape, dtypes=None, device=None) -> None:
    """Raise ValueError naming `name` unless `tensor` has `shape` (None = any size there), dtype and device.

    `dtypes` is a tuple of allowed dtypes, or "float" for any floating dtype.
    """
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{op}: {name} has shape {tuple(tensor.shape)}, expected {want}")
    if dtypes == "float" and not tensor.dtype.is_floating_point:
        raise ValueError(f"{op}: {name} has dtype {tensor.dtype}, expected a floating dtype")
    if isinstance(dtypes, tuple) and tensor.dtype not in dtypes:
        raise ValueError(f"{op}: {name} has dtype {tensor.dtype}, expected one of {[str(d) for d in dtypes]}")
    if device is not None and tensor.device != device:
        raise ValueError(f"{op}: {name} is on {tensor.device}, expected {device} like the other inputs")


def on_device(device: torch.device):
    """Launches go to the *current* CUDA device and its stream (triton's launcher asks the driver), not to
    the device holding the tensors: an instance on cuda:1 would launch on cuda:0 with cuda:1 pointers."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# (op, shape key) whose compiled kernel did not fit the GPU: found at its first launch, then skipped.
_DOES_NOT_FIT: set = set()


def run_kernel_or_reference(op: str, impl: str, chosen: str, key: tuple, kernel, reference, *args, **kwargs):
    """kernel(...) where `chosen` is "triton", else reference(...). Under impl="auto" a kernel that needs
    more shared memory than the device has (triton's OutOfResources, raised at the first launch; a head of
    hidden 512 or more than 64 models in fp32 on an H200, by ahead-of-time compilation) falls back to the
    reference for that shape, with one warning, instead of failing every request. impl="triton" raises."""
    if chosen != "triton" or (impl == "auto" and (op, key) in _DOES_NOT_FIT):
        return reference(*args, **kwargs)
    try:
        return kernel(*args, **kwargs)
    except Exception as e:      # noqa: BLE001 - only OutOfResources is handled; the rest is re-raised
        if impl != "auto" or type(e).__name__ != "OutOfResources":
            raise
        _DOES_NOT_FIT.add((op, key))
        log.warning("%s: the compiled kernel does not fit this GPU for shape %s (%s); using the PyTorch "
                    "reference for it", op, key, e)
        return reference(*args, **kwargs)
