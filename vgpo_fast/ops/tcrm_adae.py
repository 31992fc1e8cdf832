"""`tcrm_adae`: VGPO's advantages from dense instant rewards (docs/spec.md section 4, paper eqs. 11-14).

rewards R [P, G, T] -> discounted returns Q, temporal weights omega, group statistics, and the ADAE advantage
A = clamp(omega ((Q - mu) / (s + eps) + k Q), -adv_clip, adv_clip), in one fused reduction per prompt group.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch

from ._backend import launcher, resolve_backend
from ._validate import check_number, check_tensor, compute_dtype


def _triton_kernels() -> ModuleType:
    """This op's Triton launchers, kernels/tcrm_adae.py, imported on the first triton call and not with
    this module: it imports triton (optional) and reads TRITON_INTERPRET when defined (see _backend)."""
    from vgpo_fast.kernels import tcrm_adae as kernels

    return kernels


class TCRMOutput(NamedTuple):
    advantages: torch.Tensor  # A [P, G, T]
    returns: torch.Tensor  # Q [P, G, T]
    omega: torch.Tensor  # [P, G, T]; 1 where it fell back or omega is off
    group_mean: torch.Tensor  # mu [P, T]
    group_std: torch.Tensor  # s [P, T] (the batch-wide std in every row with global_std)
    omega_fallback_frac: torch.Tensor  # [] share of trajectories whose mean return <= eps


def tcrm_adae_reference(
    rewards: torch.Tensor,
    gamma: float = 0.9,
    k: float = 0.1,
    eps: float = 1e-4,
    adv_clip: float = 5.0,
    omega: bool = True,
    global_std: bool = False,
) -> TCRMOutput:
    """docs/spec.md section 4 in plain torch. rewards `[P, G, T]` in sampling order (step 0 first)."""
    R = rewards.to(compute_dtype(rewards.dtype))
    Q = torch.empty_like(R)
    running = torch.zeros_like(R[..., 0])
    for j in reversed(range(R.shape[-1])):
        running = R[..., j] + gamma * running
        Q[..., j] = running
    traj_mean = Q.mean(dim=-1, keepdim=True)
    fallback = (traj_mean <= eps) if omega else torch.zeros_like(traj_mean, dtype=torch.bool)
    w = torch.where(fallback, torch.ones_like(Q), Q / traj_mean) if omega else torch.ones_like(Q)
    mu = Q.mean(dim=1)
    if global_std:
        s = Q.std(dim=(0, 1), unbiased=False).expand_as(mu).contiguous()
    else:
        s = Q.std(dim=1, unbiased=False)
    A = w * ((Q - mu[:, None]) / (s[:, None] + eps) + k * Q)
    A = A.clamp(-adv_clip, adv_clip)
    return TCRMOutput(A, Q, w, mu, s, fallback.to(R.dtype).mean())


def check_finite_rewards(name: str, rewards: torch.Tensor) -> None:
    """Non-finite rewards are rejected, naming the first offending prompt group."""
    if bool(rewards.sum().isfinite()):  # the fast path: a finite sum has no NaN or inf term
        return
    bad = ~torch.isfinite(rewards)
    if bool(bad.any()):
        index = [int(i) for i in bad.nonzero()[0]]
        where = ", ".join(f"{axis}={i}" for axis, i in zip("pgt", index, strict=False))
        raise ValueError(
            f"{name}[{where}] is {rewards[tuple(index)].item()} (prompt group {index[0]}): "
            f"non-finite rewards are rejected; drop the group or fix the reward "
            f"({int(bad.sum())} non-finite of {rewards.numel()})"
        )


def _tcrm_adae_impl(
    rewards: torch.Tensor,
    gamma: float,
    k: float,
    eps: float,
    adv_clip: float,
    omega: bool,
    global_std: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_finite_rewards("rewards", rewards)
    if backend == "reference":
        return tuple(tcrm_adae_reference(rewards, gamma, k, eps, adv_clip, omega, global_std))
    fwd = launcher(backend, _triton_kernels, "tcrm_adae_fwd")
    A, Q, w, mu, s, fallback = fwd(rewards.float().contiguous(), gamma, k, eps, adv_clip, omega, global_std)
    return A, Q, w, mu, s, fallback.mean()


_tcrm_adae_op = torch.library.custom_op("vgpo_fast::tcrm_adae", _tcrm_adae_impl, mutates_args=())


@_tcrm_adae_op.register_fake
def _(rewards, gamma, k, eps, adv_clip, omega, global_std, backend):
    cdt = compute_dtype(rewards.dtype)
    full = rewards.new_empty(rewards.shape, dtype=cdt)
    group = rewards.new_empty((rewards.shape[0], rewards.shape[2]), dtype=cdt)
    return (
        full,
        torch.empty_like(full),
        torch.empty_like(full),
        group,
        torch.empty_like(group),
        rewards.new_empty((), dtype=cdt),
    )


def tcrm_adae(
    rewards: torch.Tensor,
    *,
    gamma: float = 0.9,
    k: float = 0.1,
    eps: float = 1e-4,
    adv_clip: float = 5.0,
    omega: bool = True,
    global_std: bool = False,
    backend: str | None = None,
) -> TCRMOutput:
    """VGPO advantages `[P, G, T]` from instant rewards `rewards [P, G, T]` (P prompts, G >= 2 samples, T steps).

    gamma: discount in [0, 1]; k >= 0: weight of the absolute term; eps > 0: std floor and omega's threshold;
    omega=False sets omega to 1 (ablation); global_std uses the batch-wide std of Q_j.
    """
    check_tensor("rewards", rewards, ndim=3)
    P, G, T = rewards.shape
    if P < 1 or T < 1 or G < 2:
        raise ValueError(f"rewards must be [P, G, T] with P >= 1, G >= 2, T >= 1, got {tuple(rewards.shape)}")
    check_number("gamma", gamma, low=0.0, high=1.0)
    check_number("k", k, low=0.0)
    check_number("eps", eps, low=0.0, low_open=True)
    check_number("adv_clip", adv_clip, low=0.0, low_open=True)
    chosen = resolve_backend(backend, rewards.device, rewards.dtype)
    return TCRMOutput(
        *_dispatch_tcrm_adae(
            rewards.detach().contiguous(),
            float(gamma),
            float(k),
            float(eps),
            float(adv_clip),
            bool(omega),
            bool(global_std),
            chosen,
        )
    )


def _dispatch_tcrm_adae(*args):
    """Compiled code sees the registered op; eager calls skip the dispatcher (no autograd here)."""
    if torch.compiler.is_compiling():
        return torch.ops.vgpo_fast.tcrm_adae(*args)
    return _tcrm_adae_impl(*args)
