"""Which autocast precision a run uses: `auto` picks per device, an explicit choice is honoured with a warning
where it is known to be slow or emulated.

    p = resolve_precision("auto", torch.device("cpu"))
    p.dtype            # torch.bfloat16 / torch.float16 / None (float32, no autocast)
    p.summary          # "auto -> float32: this CPU has no native bf16 (...)": the run log and the saved config

Why `auto` is not always bf16: on a CPU without native bf16 instructions (AVX2-only x86, the common cloud and
laptop kind) a bf16 matmul is emulated and about 70x slower than float32; with AVX512-BF16 or AMX it is faster
(docs/measurements.md has both, measured side by side).
"""

from __future__ import annotations

import functools
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Precision", "cpu_has_native_bf16", "resolve_precision"]

PRECISIONS = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """name: 'bf16', 'fp16' or 'no' (float32); dtype: the autocast dtype (None for float32); requested: the
    config's value; reason: why."""

    name: str
    dtype: torch.dtype | None
    requested: str
    reason: str

    @property
    def summary(self) -> str:
        kind = {"bf16": "bfloat16 autocast", "fp16": "float16 autocast", "no": "float32"}[self.name]
        return f"{self.requested} -> {kind}: {self.reason}"


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU executes bf16 matmuls natively: x86 AVX512-BF16 or AMX-BF16, Arm's BF16 extension
    (Linux /proc/cpuinfo flags). Unknown platforms answer False (float32 is never the slow choice).
    `VGPO_FAST_CPU_BF16=0` / `=1` overrides the detection (e.g. to run the float32 path on a bf16 CPU)."""
    forced = os.environ.get("VGPO_FAST_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def resolve_precision(requested: str, device: torch.device, *, native_bf16: bool | None = None) -> Precision:
    """The precision for `requested` ('auto' | 'no' | 'bf16' | 'fp16') on `device`.

    auto: bf16 on CUDA; on a CPU bf16 where it has native bf16 (`native_bf16`, default `cpu_has_native_bf16()`),
    else float32. An explicit bf16 on a CPU without native bf16 warns (once per call) that it is emulated."""
    if requested not in PRECISIONS:
        raise ValueError(f"train.mixed_precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    cpu = device.type == "cpu"
    native = (cpu_has_native_bf16() if native_bf16 is None else native_bf16) if cpu else True
    if requested == "auto":
        if not cpu:
            return Precision("bf16", torch.bfloat16, requested, f"bf16 on {device.type}")
        if native:
            return Precision("bf16", torch.bfloat16, requested, "this CPU has native bf16 (AVX512-BF16 / AMX)")
        return Precision(
            "no", None, requested, "this CPU has no native bf16 (bf16 matmuls would be emulated, ~70x slower)"
        )
    if requested == "no":
        return Precision("no", None, requested, "as configured")
    dtype = torch.bfloat16 if requested == "bf16" else torch.float16
    if cpu and requested == "bf16" and not native:
        warnings.warn(
            "train.mixed_precision=bf16 on a CPU without native bf16: every matmul is emulated "
            "(~70x slower than float32); use train.mixed_precision=auto or no",
            stacklevel=2,
        )
    return Precision(requested, dtype, requested, "as configured")
