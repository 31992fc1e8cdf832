"""torch.compile and FP8 training (torchao float8) for the transformer.

torchao is imported only when FP8 is asked for (`fp8_supported`, `enable_fp8_training`): importing it loads
kernels and registers types, which costs time and, on CPU-only torch builds, logs harmless load failures.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["enable_fp8_training", "fp8_supported", "maybe_compile"]


def maybe_compile(
    model: nn.Module,
    mode: str | None = "default",
    backend: str = "inductor",
    fullgraph: bool = False,
    dynamic: bool | None = False,
) -> nn.Module:
    """`torch.compile(model)` unless `mode` is None or "none" (then `model` itself). Works with LoRA injected.

    Call after `add_lora` / `enable_fp8_training`: they rewrite modules. Parameters are shared with `model`.
    """
    if mode is None or mode == "none":
        return model
    kwargs = {} if mode == "default" else {"mode": mode}
    return torch.compile(_unwrap(model), backend=backend, fullgraph=fullgraph, dynamic=dynamic, **kwargs)


def fp8_supported(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether float8 training can run on `device` (default: CUDA if available, else CPU), and why not."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if not hasattr(torch, "float8_e4m3fn"):
        return False, f"torch {torch.__version__} has no float8 dtypes"
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < (8, 9):
            return False, f"float8 matmuls need CUDA compute capability >= 8.9 (Ada/Hopper), got {cap[0]}.{cap[1]}"
    elif device.type != "cpu":
        return False, f"float8 training is not supported on device type {device.type!r}"
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        return False, f"torchao is not installed ({e}); pip install torchao"
    return True, ""


def _unwrap(model: nn.Module) -> nn.Module:
    """`transformer.unwrap`, without importing diffusers (which `vgpo_fast.models.transformer` does) until needed."""
    from vgpo_fast.models.transformer import unwrap

    return unwrap(model)


def _default_filter(module: nn.Module, fqn: str) -> bool:
    # float8 matmuls need both dims divisible by 16; adapters stay in high precision (they are tiny).
    return (
        isinstance(module, nn.Linear)
        and "lora_" not in fqn
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def enable_fp8_training(
    model: nn.Module,
    module_filter_fn: Callable[[nn.Module, str], bool] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Swap eligible `nn.Linear`s for torchao `Float8Linear` (dynamic tensorwise scaling), in place.

    Default filter: linears with both dims divisible by 16, LoRA layers excluded. `device` defaults to the model's.
    Raises RuntimeError where the hardware or install cannot run float8 training.
    """
    base = _unwrap(model)
    if device is None:
        first = next(base.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    ok, why = fp8_supported(device)
    if not ok:
        raise RuntimeError(f"enable_fp8_training: {why}")
    from torchao.float8 import convert_to_float8_training

    convert_to_float8_training(base, module_filter_fn=module_filter_fn or _default_filter)
    return model
