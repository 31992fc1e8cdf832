"""Flow-GRPO: the group-normalised terminal reward, A = (r - mu) / s, the same at every step (docs/spec.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vgpo_fast.train.estimators.base import AdvantageResult, Estimator, register_estimator

if TYPE_CHECKING:
    import torch


def flow_grpo_advantages(rewards: torch.Tensor, alg) -> AdvantageResult:
    """rewards `[P, G, T]` (only the terminal `[..., -1]` is read)."""
    import torch

    from vgpo_fast.ops import grpo_advantage

    P, G, T = rewards.shape
    r = rewards[..., -1]
    adv = grpo_advantage(r, eps=alg.eps, adv_clip=alg.adv_clip, global_std=alg.global_std)
    std = r.std(dim=1, correction=0) if not alg.global_std else r.std(correction=0).expand(P)
    return AdvantageResult(
        adv.unsqueeze(-1).expand(P, G, T).contiguous(),
        r.unsqueeze(-1).expand(P, G, T).contiguous(),
        torch.ones_like(rewards),
        std.unsqueeze(-1).expand(P, T).contiguous(),
        0.0,
    )


FLOW_GRPO = register_estimator(
    Estimator(
        "flow_grpo",
        "Flow-GRPO: group-normalised terminal reward at every step",
        dense=False,
        options=("eps", "adv_clip", "global_std"),
        compute=flow_grpo_advantages,
    )
)
