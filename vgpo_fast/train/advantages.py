"""Advantages per algorithm (SPEC.md section 4) from the instant rewards of one batch.

    vgpo                 tcrm_adae(R, gamma, k)                     dense values Q, omega, absolute anchor k Q
    vgpo, tcrm: false    tcrm_adae(terminal-only R, gamma=1, k, omega off)   A = (r - mu)/s + k r at every step
    vgpo, adae: false    tcrm_adae(R, gamma, k=0)                   omega-weighted relative advantage of Q
    flow_grpo            grpo_advantage(r)                          A = (r - mu)/s at every step
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vgpo_fast.ops import grpo_advantage, tcrm_adae
from vgpo_fast.train.config import AlgorithmConfig

__all__ = ["AdvantageResult", "compute_advantages", "uses_dense_rewards"]


@dataclass
class AdvantageResult:
    """advantages `[P, G, T]`; returns Q `[P, G, T]` and omega `[P, G, T]` (Flow-GRPO: Q = r, omega = 1);
    group_std `[P, T]`; omega_fallback_frac: share of trajectories whose mean return was <= eps."""

    advantages: torch.Tensor
    returns: torch.Tensor
    omega: torch.Tensor
    group_std: torch.Tensor
    omega_fallback_frac: float


def uses_dense_rewards(alg: AlgorithmConfig) -> bool:
    """Whether the algorithm reads instant rewards of intermediate steps (else only the terminal one)."""
    return alg.name == "vgpo" and alg.tcrm


def compute_advantages(rewards: torch.Tensor, alg: AlgorithmConfig) -> AdvantageResult:
    """rewards `[P, G, T]` float32 (instant rewards; only `[..., -1]` is read unless TCRM is on)."""
    P, G, T = rewards.shape
    if alg.name == "flow_grpo":
        r = rewards[..., -1]
        adv = grpo_advantage(r, eps=alg.eps, adv_clip=alg.adv_clip, global_std=alg.global_std)
        std = r.std(dim=1, correction=0) if not alg.global_std else r.std(correction=0).expand(P)
        return AdvantageResult(adv.unsqueeze(-1).expand(P, G, T).contiguous(),
                               r.unsqueeze(-1).expand(P, G, T).contiguous(), torch.ones_like(rewards),
                               std.unsqueeze(-1).expand(P, T).contiguous(), 0.0)
    if alg.tcrm:
        R, gamma, omega = rewards, alg.gamma, alg.omega
    else:  # values from the terminal reward alone: Q_j = r for every j, omega = 1
        R = torch.zeros_like(rewards)
        R[..., -1] = rewards[..., -1]
        gamma, omega = 1.0, False
    k = alg.k if alg.adae else 0.0
    out = tcrm_adae(R, gamma=gamma, k=k, eps=alg.eps, adv_clip=alg.adv_clip, omega=omega, global_std=alg.global_std)
    return AdvantageResult(out.advantages, out.returns, out.omega, out.group_std, float(out.omega_fallback_frac))
