"""vgpo_fast.compat.flow_grpo.sde_step_with_logprob against an independent implementation of Flow-GRPO's
formula written here (docs/spec.md sections 2.1 and 7)."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from vgpo_fast.compat.flow_grpo import sde_step_with_logprob


def flow_grpo_formula(sched, model_output, timestep, sample, noise_level, prev_sample, generator):
    """Flow-GRPO's SDE step as its paper and code define it, line by line in plain torch."""
    model_output, sample = model_output.float(), sample.float()
    idx = [sched.index_for_timestep(t) for t in timestep]
    sigma = sched.sigmas[idx].view(-1, 1, 1, 1)
    sigma_prev = sched.sigmas[[i + 1 for i in idx]].view(-1, 1, 1, 1)
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sched.sigmas[1], sigma))) * noise_level
    mean = (
        sample * (1 + std_dev_t**2 / (2 * sigma) * dt)
        + model_output * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, dtype=model_output.dtype)
        prev_sample = mean + std_dev_t * torch.sqrt(-dt) * noise
    scale = std_dev_t * torch.sqrt(-dt)
    log_prob = (
        -((prev_sample.detach() - mean) ** 2) / (2 * scale**2) - torch.log(scale) - math.log(math.sqrt(2 * math.pi))
    )
    return prev_sample, log_prob.mean(dim=(1, 2, 3)), mean, std_dev_t


@pytest.fixture
def scheduler():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    return sched


@pytest.mark.parametrize("step", [0, 4, 8, 9])
def test_sampling_matches_flow_grpo(scheduler, step):
    sample, model_output = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = scheduler.timesteps[step].expand(3)
    ours = sde_step_with_logprob(scheduler, model_output, t, sample, generator=torch.Generator().manual_seed(1))
    theirs = flow_grpo_formula(scheduler, model_output, t, sample, 0.7, None, torch.Generator().manual_seed(1))
    for name, a, b in zip(("prev_sample", "log_prob", "prev_sample_mean", "std_dev_t"), ours, theirs, strict=True):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_training_log_prob_and_gradient_match_flow_grpo(scheduler):
    sample, noise_out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = scheduler.timesteps[3].expand(2)
    prev = flow_grpo_formula(scheduler, noise_out, t, sample, 0.7, None, torch.Generator().manual_seed(2))[0]
    mo_ours = (noise_out + 0.01).requires_grad_(True)
    mo_theirs = (noise_out + 0.01).requires_grad_(True)
    _, lp_ours, mean_ours, _ = sde_step_with_logprob(scheduler, mo_ours, t, sample, prev_sample=prev)
    _, lp_theirs, mean_theirs, _ = flow_grpo_formula(scheduler, mo_theirs, t, sample, 0.7, prev, None)
    torch.testing.assert_close(lp_ours, lp_theirs, rtol=1e-5, atol=1e-5)
    (lp_ours.sum() + mean_ours.square().mean()).backward()
    (lp_theirs.sum() + mean_theirs.square().mean()).backward()
    torch.testing.assert_close(mo_ours.grad, mo_theirs.grad, rtol=1e-4, atol=1e-7)


def test_bf16_model_output_is_upcast_like_flow_grpo(scheduler):
    sample, model_output = torch.randn(2, 4, 8, 8).bfloat16(), torch.randn(2, 4, 8, 8).bfloat16()
    out = sde_step_with_logprob(
        scheduler, model_output, scheduler.timesteps[2], sample, generator=torch.Generator().manual_seed(3)
    )
    theirs = flow_grpo_formula(
        scheduler, model_output, scheduler.timesteps[2].expand(2), sample, 0.7, None, torch.Generator().manual_seed(3)
    )
    assert out[0].dtype == torch.float32
    torch.testing.assert_close(out[0], theirs[0], rtol=1e-5, atol=1e-5)


def test_timestep_count_must_match_the_batch(scheduler):
    x = torch.randn(3, 4, 8, 8)
    with pytest.raises(ValueError, match="timestep must have 1 or 3 elements"):
        sde_step_with_logprob(scheduler, x, scheduler.timesteps[:2], x)
