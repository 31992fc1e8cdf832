"""Deterministic ODE samples of a flow pipeline (a = 0: no SDE noise), for evaluation and held-out scores.

    images = sample_images(pipe, prompts, seeds, steps=10)   # float32 [B, 3, H, W] in [0, 1]

Noise i is drawn from its own generator seeded with `seeds[i]`, so an image depends on its (prompt, seed) only,
not on the batch it was sampled in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .sampler import sample_trajectories
from .schedule import sigmas as make_sigmas

if TYPE_CHECKING:
    from vgpo_fast.models.pipeline import FlowPipeline

__all__ = ["sample_images"]


@torch.no_grad()
def sample_images(
    pipe: FlowPipeline,
    prompts: list[str],
    seeds: list[int],
    steps: int = 10,
    guidance_scale: float = 3.0,
    shift: float = 3.0,
    batch_size: int = 64,
) -> torch.Tensor:
    """Deterministic ODE samples: float32 `[B, 3, H, W]` in [0, 1]; noise i is drawn from seed `seeds[i]`.

    `pipe`: a `FlowPipeline` (`latent_shape`, `device`, `velocity_fn(prompts, guidance_scale)`, `decode`)."""
    out = []
    sig = make_sigmas(steps, shift)
    for lo in range(0, len(prompts), batch_size):
        ps, ss = prompts[lo : lo + batch_size], seeds[lo : lo + batch_size]
        noise = torch.stack(
            [torch.randn(pipe.latent_shape, generator=torch.Generator().manual_seed(s)) for s in ss]
        ).to(pipe.device)
        traj = sample_trajectories(pipe.velocity_fn(ps, guidance_scale), noise, sig, a=0.0)
        out.append(pipe.decode(traj.final))
    return torch.cat(out)
