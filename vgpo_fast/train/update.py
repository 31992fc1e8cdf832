"""The policy update: inner epochs of PPO-clip + KL over one batch (docs/spec.md, the policy loss).

    stats = update(policy, optimizer, batch, A, keep, cfg, iteration=it, world=world, device=device)

Each inner epoch shuffles the kept trajectories into minibatches of `train.minibatch_size`; each minibatch goes
over its training steps (`step_plan`): the velocity with grad at x_j, `sde_log_prob` (+ KL to the reference),
`clipped_policy_loss`; one optimiser step per `train.grad_accum` minibatches. Under torchrun every rank trains
on its rows of each global minibatch, weighted so that the ranks' gradients add up to the whole minibatch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from vgpo_fast import distributed
from vgpo_fast.ops import clipped_policy_loss, sde_log_prob
from vgpo_fast.rollout.schedule import sde_window
from vgpo_fast.rollout.seeds import Stream, iteration_seed

if TYPE_CHECKING:
    from vgpo_fast.rollout.collect import RolloutBatch
    from vgpo_fast.train.config import Config
    from vgpo_fast.train.policy import Conditioning, Policy

__all__ = ["UpdateStats", "step_plan", "train_steps_per_trajectory", "update"]


@dataclass
class UpdateStats:
    """Means over micro-steps of each micro-step's minibatch mean (rows summed over the ranks): PPO loss, clip
    fraction, approximate KL to the rollout policy, KL to the reference; ratio_dev: mean over micro-steps of the
    largest |logp - logp_old|; grad_norm: mean pre-clip gradient norm; optimizer_steps: how many were taken."""

    loss: float = 0.0
    clip_frac: float = 0.0
    approx_kl: float = 0.0
    kl: float = 0.0
    ratio_dev: float = 0.0
    grad_norm: float = 0.0
    optimizer_steps: int = 0


@dataclass
class _MicroStep:
    loss: torch.Tensor  # the scalar to backpropagate
    stats: tuple[float, float, float, float]  # loss, clip_frac, approx_kl, kl
    ratio_dev: float


def step_plan(cfg: Config, train_mask: torch.Tensor, n: int, iteration: int) -> torch.Tensor:
    """`[n, K]` long: the training steps of each of n trajectories, in the order they are trained (the steps
    of `train_mask [T]`, shuffled per trajectory, `train.steps_per_iter` of them)."""
    eligible = torch.nonzero(train_mask).reshape(-1)
    if eligible.numel() == 0:
        raise ValueError("no training step: every step is deterministic (check rollout.sde_window / noise_level)")
    K = eligible.numel() if cfg.train.steps_per_iter is None else min(cfg.train.steps_per_iter, eligible.numel())
    if not cfg.train.shuffle:
        return eligible[:K].expand(n, K).clone()
    gen = torch.Generator().manual_seed(iteration_seed(cfg.train.seed, iteration, Stream.STEP_ORDER))
    order = torch.argsort(torch.rand((n, eligible.numel()), generator=gen), dim=1)[:, :K]
    return eligible[order]


def train_steps_per_trajectory(cfg: Config) -> int:
    """K: the training steps of one trajectory per inner epoch, from the config alone (the SDE window's steps, the
    last excluded unless `train.train_last_step`, capped by `train.steps_per_iter`): what `step_plan` yields."""
    window = tuple(cfg.rollout.sde_window) if cfg.rollout.sde_window is not None else None
    mask = sde_window(cfg.rollout.steps, window).clone()
    if not cfg.train.train_last_step:
        mask[-1] = False
    k = int(mask.sum())
    return k if cfg.train.steps_per_iter is None else min(k, cfg.train.steps_per_iter)


def _micro_step(
    policy: Policy,
    cfg: Config,
    batch: RolloutBatch,
    A: torch.Tensor,
    idx: torch.Tensor,
    steps: torch.Tensor,
    sig: torch.Tensor,
    conditioning: Conditioning,
    device: torch.device,
) -> _MicroStep:
    """Loss of trajectories `idx [b]` at their steps `steps [b]` (each its own j)."""
    x = batch.latents[steps, idx].to(device)
    x_next = batch.latents[steps + 1, idx].to(device)
    sigma, sigma_next = sig[steps.to(device)], sig[steps.to(device) + 1]
    cond, uncond = conditioning
    v = policy.velocity(policy.train_model, x, sigma, cond, uncond)
    v_ref = policy.reference_velocity(x, sigma, cond, uncond) if cfg.algorithm.beta > 0 else None
    lp = sde_log_prob(
        x,
        v,
        x_next,
        sigma,
        sigma_next,
        v_ref=v_ref,
        a=cfg.rollout.noise_level,
        sde_type=cfg.rollout.sde_type,
        reduce=cfg.rollout.reduce,
        kl_form=cfg.algorithm.kl_form,
    )
    logp_old = batch.logp[steps, idx].to(device)
    adv = A[idx, steps].to(device)
    out = clipped_policy_loss(
        lp.logp,
        logp_old,
        adv,
        lp.kl if v_ref is not None else None,
        clip=cfg.algorithm.clip_range,
        beta=cfg.algorithm.beta,
    )
    kl = float(lp.kl.detach().mean()) if v_ref is not None else 0.0
    stats = (float(out.loss.detach()), float(out.clip_frac.detach()), float(out.approx_kl.detach()), kl)
    return _MicroStep(out.loss, stats, float((lp.logp.detach() - logp_old).abs().max()))


def update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    advantages: torch.Tensor,
    keep: torch.Tensor,
    cfg: Config,
    *,
    iteration: int,
    world: distributed.World,
    device: torch.device,
) -> UpdateStats:
    """Inner epochs of PPO-clip updates on `batch` with `advantages [P, G, T]`, training only the groups of
    `keep [P]`; returns the statistics."""
    P, G, T = cfg.rollout.prompts_per_iter, cfg.rollout.group_size, cfg.rollout.steps
    A = advantages.reshape(P * G, T).float()
    trajectories = torch.nonzero(keep.repeat_interleave(G)).reshape(-1)
    plan = step_plan(cfg, batch.train_mask, batch.latents.shape[1], iteration)
    sig = batch.sigmas.to(device, torch.float32)
    sums: list[list[float]] = []  # per micro-step: rows * (loss, clip_frac, approx_kl, kl), rows
    ratio_dev: list[float] = []  # per micro-step: max |logp - logp_old|
    grad_norms: list[float] = []
    policy.train_model.train()
    mb = cfg.train.minibatch_size
    gen = torch.Generator().manual_seed(iteration_seed(cfg.train.seed, iteration, Stream.MINIBATCH_ORDER))
    for _epoch in range(cfg.train.inner_epochs):
        perm = trajectories[torch.randperm(trajectories.numel(), generator=gen)] if cfg.train.shuffle else trajectories
        minibatches = [perm[i : i + mb] for i in range(0, perm.numel(), mb)]
        for start in range(0, len(minibatches), cfg.train.grad_accum):
            window = minibatches[start : start + cfg.train.grad_accum]
            micro = len(window) * plan.shape[1]
            optimizer.zero_grad(set_to_none=True)
            done = 0
            for minibatch in window:
                # This rank's rows of the global minibatch; `weight` makes the ranks' gradients add up to the
                # whole minibatch's (1.0 on one process).
                idx, weight = distributed.my_rows(minibatch, world)
                rows = idx.numel() if weight > 0 else 0
                conditioning = policy.conditioning([batch.prompts[int(i)] for i in idx])  # once per minibatch
                for k in range(plan.shape[1]):
                    done += 1
                    with distributed.grad_sync(policy.train_module, done == micro):
                        out = _micro_step(policy, cfg, batch, A, idx, plan[idx, k], sig, conditioning, device)
                        (out.loss * weight / micro).backward()
                    sums.append([s * rows for s in out.stats] + [rows])
                    ratio_dev.append(out.ratio_dev if rows else 0.0)
            max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm > 0 else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(policy.params, max_norm)
            grad_norms.append(float(distributed.full_tensor(norm)))
            optimizer.step()
            policy.ema_update()
    policy.train_model.eval()
    stats = _reduce(sums, ratio_dev)
    stats.grad_norm = float(np.mean(grad_norms)) if grad_norms else 0.0
    stats.optimizer_steps = len(grad_norms)
    return stats


def _reduce(sums: list[list[float]], ratio_dev: list[float]) -> UpdateStats:
    """Means over micro-steps of each micro-step's minibatch mean (rows summed over the ranks), and of its largest
    |log-ratio|: the numbers one process computes for the same global minibatches."""
    if not sums:
        return UpdateStats()
    total = distributed.all_reduce(torch.tensor(sums, dtype=torch.float64), "sum")
    means = (total[:, :4] / total[:, 4:5]).mean(dim=0)
    dev = distributed.all_reduce(torch.tensor(ratio_dev, dtype=torch.float64), "max")
    return UpdateStats(float(means[0]), float(means[1]), float(means[2]), float(means[3]), float(dev.mean()))
