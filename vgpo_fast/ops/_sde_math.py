"""docs/spec.md section 2 in plain torch: the SDE step's mean, std and scale; shared by the reference ops."""

from __future__ import annotations

import math

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def sde_terms(
    x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, a: float, sde_type: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(mean, std, scale)` of the step sigma -> sigma_next.

    x, v: `[B, ...]` in the compute dtype; sigma, sigma_next: `[B, 1, ...]` broadcastable. Returns mean like x,
    std and scale like sigma.
    """
    dt = sigma_next - sigma
    if sde_type == "flow_grpo":
        s = torch.where(sigma == 1, sigma_next, sigma)
        std = a * torch.sqrt(sigma / (1 - s))
        mean = x * (1 + std**2 * dt / (2 * sigma)) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
        scale = std * torch.sqrt(-dt)
    elif sde_type == "cps":
        std = sigma_next * math.sin(a * math.pi / 2)
        x0 = x - sigma * v
        x1 = x + (1 - sigma) * v
        mean = x0 * (1 - sigma_next) + x1 * torch.sqrt((sigma_next**2 - std**2).clamp_min(0))
        scale = std
    else:
        raise ValueError(f"sde_type must be 'flow_grpo' or 'cps', got {sde_type!r}")
    return mean, std, scale


def reduce_rows(t: torch.Tensor, reduce: str) -> torch.Tensor:
    """Mean or sum over all non-batch elements: `[B, ...] -> [B]`."""
    flat = t.reshape(t.shape[0], -1)
    return flat.mean(dim=1) if reduce == "mean" else flat.sum(dim=1)


def gaussian_logp(x_next: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, reduce: str) -> torch.Tensor:
    """Reduced log N(x_next; mean, scale^2) per sample, `[B]`; 0 for rows with scale == 0 (deterministic)."""
    live = scale > 0
    safe = torch.where(live, scale, torch.ones_like(scale))
    elem = -((x_next - mean) ** 2) / (2 * safe**2) - torch.log(safe) - LOG_SQRT_2PI
    logp = reduce_rows(elem, reduce)
    return torch.where(live.reshape(-1), logp, torch.zeros_like(logp))


def mean_slope(sigma: torch.Tensor, sigma_next: torch.Tensor, std: torch.Tensor, sde_type: str) -> torch.Tensor:
    """d mean / d v per sample (docs/spec.md sections 2.3, 5.4), like sigma."""
    if sde_type == "flow_grpo":
        return (1 + std**2 * (1 - sigma) / (2 * sigma)) * (sigma_next - sigma)
    return -sigma * (1 - sigma_next) + torch.sqrt((sigma_next**2 - std**2).clamp_min(0)) * (1 - sigma)
