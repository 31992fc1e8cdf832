"""`grpo_advantage`: the Flow-GRPO baseline advantage from terminal rewards (docs/spec.md section 4.6)."""

from __future__ import annotations

from types import ModuleType

import torch

from ._backend import launcher, resolve_backend
from ._validate import check_number, check_tensor, compute_dtype
from .tcrm_adae import check_finite_rewards


def _triton_kernels() -> ModuleType:
    """This op's Triton launchers, kernels/grpo_advantage.py, imported on the first triton call and not with
    this module: it imports triton (optional) and reads TRITON_INTERPRET when defined (see _backend)."""
    from vgpo_fast.kernels import grpo_advantage as kernels

    return kernels


def grpo_advantage_reference(
    rewards: torch.Tensor, eps: float = 1e-4, adv_clip: float = 5.0, global_std: bool = False
) -> torch.Tensor:
    """A = clamp((r - mu_p) / (s + eps), -adv_clip, adv_clip) for rewards `[P, G]`; s per group or global."""
    r = rewards.to(compute_dtype(rewards.dtype))
    mu = r.mean(dim=1, keepdim=True)
    s = r.std(unbiased=False) if global_std else r.std(dim=1, unbiased=False, keepdim=True)
    return ((r - mu) / (s + eps)).clamp(-adv_clip, adv_clip)


def _grpo_advantage_impl(
    rewards: torch.Tensor, eps: float, adv_clip: float, global_std: bool, backend: str
) -> torch.Tensor:
    check_finite_rewards("rewards", rewards)
    if backend == "reference":
        return grpo_advantage_reference(rewards, eps, adv_clip, global_std)
    fwd = launcher(backend, _triton_kernels, "grpo_advantage_fwd")
    return fwd(rewards.float().contiguous(), eps, adv_clip, global_std)


_grpo_advantage_op = torch.library.custom_op("vgpo_fast::grpo_advantage", _grpo_advantage_impl, mutates_args=())


@_grpo_advantage_op.register_fake
def _(rewards, eps, adv_clip, global_std, backend):
    return rewards.new_empty(rewards.shape, dtype=compute_dtype(rewards.dtype))


def grpo_advantage(
    rewards: torch.Tensor,
    *,
    eps: float = 1e-4,
    adv_clip: float = 5.0,
    global_std: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Flow-GRPO advantages `[P, G]` from terminal rewards `[P, G]` (G >= 2), float32."""
    check_tensor("rewards", rewards, ndim=2)
    if rewards.shape[0] < 1 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [P, G] with P >= 1, G >= 2, got {tuple(rewards.shape)}")
    check_number("eps", eps, low=0.0, low_open=True)
    check_number("adv_clip", adv_clip, low=0.0, low_open=True)
    chosen = resolve_backend(backend, rewards.device, rewards.dtype)
    return _dispatch_grpo_advantage(
        rewards.detach().contiguous(), float(eps), float(adv_clip), bool(global_std), chosen
    )


def _dispatch_grpo_advantage(*args):
    """Compiled code sees the registered op; eager calls skip the dispatcher (no autograd here)."""
    if torch.compiler.is_compiling():
        return torch.ops.vgpo_fast.grpo_advantage(*args)
    return _grpo_advantage_impl(*args)
