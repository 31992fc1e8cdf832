"""Backend selection for the fused ops: reference (plain torch), triton (kernels/), cpu (csrc/ extension).

Auto: CUDA tensors -> triton (reference if triton is missing); CPU tensors -> cpu when `vgpo_fast._C` is built,
else reference. `VGPO_FAST_BACKEND` or an op's `backend=` argument overrides. float64 inputs always run the
reference: the kernels compute in float32 by design (docs/spec.md section 6).

Each op module names its own Triton module with a plain import (`from vgpo_fast.kernels import <op>`) inside a
small function, `_triton_kernels`, that `launcher` calls only when the triton backend runs: the kernel modules
import triton at top level and decide at definition time whether they run under TRITON_INTERPRET, so importing
them when `vgpo_fast.ops` is imported would make triton a hard dependency and freeze that choice too early.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

BACKENDS = ("reference", "triton", "cpu")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def cpu_extension_error() -> str | None:
    """None when the C++ extension imports, else the reason it does not."""
    try:
        import vgpo_fast._C  # noqa: F401  (registers torch.ops.vgpo_fast_C)
    except ImportError as exc:
        return f"the C++ extension vgpo_fast._C is not built ({exc}); reinstall with `pip install -e .`"
    return None


@functools.cache
def triton_error() -> str | None:
    """None when triton imports, else the reason it does not.

    triton is the only dependency of the kernel modules in vgpo_fast.kernels (they are imported on first use, by
    the ops' `_triton_kernels`); checking triton alone keeps this check from defining any @triton.jit function.
    """
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not installed ({exc}); `pip install triton`"
    return None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """The backends that can run tensors on `device` in this process."""
    device = torch.device(device)
    found = ["reference"]
    if triton_error() is None and (device.type == "cuda" or triton_interpreted()):
        found.append("triton")
    if device.type == "cpu" and cpu_extension_error() is None:
        found.append("cpu")
    return found


# A compile-time constant under torch.compile: evaluated once while tracing, never a graph break.
@torch.compiler.assume_constant_result
def resolve_backend(requested: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """The backend an op call runs on. Raises RuntimeError when an explicit request cannot be met."""
    if requested in (None, "auto"):
        requested = os.environ.get("VGPO_FAST_BACKEND") or "auto"
    if requested not in (*BACKENDS, "auto"):
        raise ValueError(f"backend must be one of {('auto', *BACKENDS)}, got {requested!r}")
    if dtype == torch.float64 or requested == "reference":
        return "reference"
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"dtype must be one of float32, bfloat16, float16, float64, got {dtype}")
    if requested == "auto":
        if device.type == "cuda":
            return "triton" if triton_error() is None else "reference"
        if device.type == "cpu" and cpu_extension_error() is None:
            return "cpu"
        return "reference"
    if requested == "triton":
        if triton_error() is not None:
            raise RuntimeError(f"backend 'triton' unavailable: {triton_error()}")
        if device.type != "cuda" and not triton_interpreted():
            raise RuntimeError(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got device {device}")
        return "triton"
    if device.type != "cpu":
        raise RuntimeError(f"backend 'cpu' needs CPU tensors, got device {device}")
    if cpu_extension_error() is not None:
        raise RuntimeError(f"backend 'cpu' unavailable: {cpu_extension_error()}")
    return "cpu"


def cpu_launcher(name: str) -> Any:
    """The C++ launcher `torch.ops.vgpo_fast_C.<name>`."""
    import vgpo_fast._C  # noqa: F401  (registers torch.ops.vgpo_fast_C)

    return getattr(torch.ops.vgpo_fast_C, name)


def launcher(backend: str, triton_kernels: Callable[[], ModuleType], name: str) -> Any:
    """The launcher `name` (docs/ops.md, "Launcher contract") for a kernel backend ('triton' or 'cpu').

    triton_kernels: the op's `_triton_kernels`, which imports and returns its module kernels/<op>.py; called only
    for the triton backend. Both backends implement every launcher under the same name.
    """
    if backend == "triton":
        return getattr(triton_kernels(), name)
    if backend == "cpu":
        return cpu_launcher(name)
    raise ValueError(f"no launcher for backend {backend!r}")
