"""Flow-GRPO's `sde_step_with_logprob`, computed by the fused ops (docs/spec.md section 7).

Switch a Flow-GRPO codebase by changing one import:
    from vgpo_fast.compat.flow_grpo import sde_step_with_logprob
Same arguments and outputs `(prev_sample, log_prob, prev_sample_mean, std_dev_t)`, float32 as Flow-GRPO's,
log_prob mean-reduced, noise drawn with the same generator calls so the samples are bit-identical.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..ops._sde_math import sde_terms
from ..ops.sde_log_prob import sde_log_prob
from ..ops.sde_step import sde_step


def _step_sigmas(
    scheduler, timestep: torch.Tensor | float, batch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (sigma, sigma_next) `[B]` float32 of the scheduler steps that `timestep` names."""
    ts = torch.as_tensor(timestep).reshape(-1)
    if ts.numel() == 1:
        ts = ts.expand(batch)
    if ts.numel() != batch:
        raise ValueError(f"timestep must have 1 or {batch} elements (one per sample), got {ts.numel()}")
    sigmas = scheduler.sigmas
    index = [scheduler.index_for_timestep(t.to(scheduler.timesteps.device)) for t in ts]
    if max(index) + 1 >= len(sigmas):
        raise ValueError(f"timestep {ts.tolist()} has no next sigma in a schedule of {len(sigmas)} sigmas")
    sigma = sigmas[index].to(device=device, dtype=torch.float32)
    sigma_next = sigmas[[i + 1 for i in index]].to(device=device, dtype=torch.float32)
    return sigma, sigma_next


def sde_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timestep: torch.Tensor | float,
    sample: torch.Tensor,
    noise_level: float = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One flow_grpo SDE step of a `FlowMatchEulerDiscreteScheduler`, as Flow-GRPO defines it.

    model_output, sample, prev_sample: `[B, C, H, W]`; timestep: scalar or `[B]` scheduler timesteps.
    Returns prev_sample `[B, C, H, W]` f32, log_prob `[B]` f32 (mean over C, H, W; differentiable in
    model_output), prev_sample_mean `[B, C, H, W]` f32 (differentiable), std_dev_t `[B, 1, 1, 1]` f32.
    """
    model_output, sample = model_output.float(), sample.float()
    batch = sample.shape[0]
    sigma, sigma_next = _step_sigmas(scheduler, timestep, batch, sample.device)
    log_prob = None
    if prev_sample is None:
        noise = randn_tensor(
            model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
        )
        step = sde_step(sample.detach(), model_output.detach(), sigma, sigma_next, noise=noise, a=noise_level)
        prev_sample, log_prob = step.x_next, step.logp
    prev_sample = prev_sample.float()
    if log_prob is None or model_output.requires_grad:
        log_prob = sde_log_prob(
            sample.detach(), model_output, prev_sample.detach(), sigma, sigma_next, a=noise_level
        ).logp
    view = (-1,) + (1,) * (sample.dim() - 1)
    prev_sample_mean, std_dev_t, _ = sde_terms(
        sample, model_output, sigma.reshape(view), sigma_next.reshape(view), noise_level, "flow_grpo"
    )
    return prev_sample, log_prob, prev_sample_mean, std_dev_t
