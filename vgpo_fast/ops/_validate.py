"""Input validation shared by the ops: every message names the argument, what was expected and what came."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
SDE_TYPES = {"flow_grpo": 0, "cps": 1}
REDUCES = ("mean", "sum")
KL_FORMS = {"scale": 0, "flow_grpo": 1}


def check_tensor(name: str, t: object, *, ndim: int | None = None, min_ndim: int | None = None) -> torch.Tensor:
    """`t` is a floating-point tensor of the given rank."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16, float16 or float64, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims (batch first), got shape {tuple(t.shape)}")
    return t


def check_like(name: str, t: object, ref_name: str, ref: torch.Tensor, *, dtype: bool = True) -> torch.Tensor:
    """`t` has `ref`'s shape and device (and dtype unless `dtype=False`)."""
    check_tensor(name, t)
    assert isinstance(t, torch.Tensor)
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if dtype and t.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
    return t


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_number(
    name: str, value: float, *, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
    """`value` is a finite real number in [low, high] (or (low, high] with `low_open`)."""
    if isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a Python number, got a tensor")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample(
    name: str, value: float | torch.Tensor, batch: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A scalar or a `[B]`-like tensor (any shape with 1 or B elements) as a contiguous `[B]` tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() not in (1, batch):
            raise ValueError(
                f"{name} must be a scalar or have {batch} elements (one per sample), got shape {tuple(value.shape)}"
            )
        if value.device != device and value.numel() > 1 and value.device.type != "cpu":
            raise ValueError(f"{name} is on {value.device} but the latents are on {device}")
        return value.detach().reshape(-1).to(device=device, dtype=dtype).expand(batch).contiguous()
    if not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    return torch.full((batch,), float(value), device=device, dtype=dtype)


def check_sigmas(sigma: torch.Tensor | float, sigma_next: torch.Tensor | float) -> None:
    """0 < sigma <= 1 and 0 <= sigma_next < sigma, per sample. Python floats, or CPU tensors `[B]` (the check
    reads them as Python floats: cheaper than tensor ops at these sizes); CUDA tensors are skipped (a host sync)."""
    if isinstance(sigma, torch.Tensor) and isinstance(sigma_next, torch.Tensor):
        if sigma.device.type == "cuda" or sigma_next.device.type == "cuda":
            return
        for s, s_next in zip(sigma.reshape(-1).tolist(), sigma_next.reshape(-1).tolist(), strict=True):
            _check_sigma_floats(s, s_next)
    elif isinstance(sigma, (int, float)) and isinstance(sigma_next, (int, float)):
        _check_sigma_floats(float(sigma), float(sigma_next))


def _check_sigma_floats(sigma: float, sigma_next: float) -> None:
    if not (math.isfinite(sigma) and math.isfinite(sigma_next)):
        raise ValueError(f"sigma and sigma_next must be finite, got {sigma}, {sigma_next}")
    if not 0 < sigma <= 1:
        raise ValueError(f"sigma must lie in (0, 1], got {sigma}")
    if not 0 <= sigma_next < sigma:
        raise ValueError(f"sigma_next must lie in [0, sigma), got sigma={sigma}, sigma_next={sigma_next}")


def step_sigmas(
    sigma: float | torch.Tensor, sigma_next: float | torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma, sigma_next) of a step on latents `x [B, ...]` as `[B]` tensors in x's compute dtype.

    Python floats are range-checked here; tensors inside the op, where a check causes no graph break.
    """
    if not isinstance(sigma, torch.Tensor) and not isinstance(sigma_next, torch.Tensor):
        check_sigmas(sigma, sigma_next)
    batch, cdt = x.shape[0], compute_dtype(x.dtype)
    return (
        per_sample("sigma", sigma, batch, x.device, cdt),
        per_sample("sigma_next", sigma_next, batch, x.device, cdt),
    )
