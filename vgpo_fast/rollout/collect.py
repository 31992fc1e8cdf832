"""Collection of one iteration's batch: P prompts x G noises rolled out in chunks, every evaluated projection
scored by the reward pipeline while denoising goes on, and (under torchrun) the ranks' chunks all-gathered.

    batch = collect(cfg, policy, prompts, sigmas, pipeline, iteration=it, world=world, device=device)

The batch is cut into chunks of `rollout.chunk_size` (default: one prompt group), each with its own SDE noise
generator seeded by (seed, iteration, chunk); each rank rolls out its chunks, so the batch is the same for any
number of ranks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from vgpo_fast import distributed
from vgpo_fast.rewards.base import RewardError
from vgpo_fast.rollout.engine import RewardPipeline
from vgpo_fast.rollout.reward_result import merge_timings
from vgpo_fast.rollout.sampler import Trajectory, sample_trajectories
from vgpo_fast.rollout.seeds import Stream, iteration_seed

if TYPE_CHECKING:
    from torch import nn

# The run's config (`vgpo_fast.train.config.Config`; its rollout.*, train.seed, train.train_last_step and
# reward.offset / scale are read). Not imported: rollout/ sits below train/.
Config = Any


class Policy(Protocol):
    """What collection needs of the policy (`vgpo_fast.train.policy.Policy` is one)."""

    pipe: Any  # a FlowPipeline: `latent_shape`
    forward_model: nn.Module

    def velocity(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Any, uncond: Any) -> torch.Tensor:
        """The CFG velocity of `net` at x `[B, ...]`, sigma `[B]`."""

    def conditioning(self, prompts: list[str]) -> tuple[Any, Any]:
        """(cond, uncond) embeddings of `prompts`."""


__all__ = ["PhaseTimer", "RolloutBatch", "RolloutProbe", "collect"]

# probe(kind, chunk, step) -> a context manager wrapped around every transformer call ("transformer"), reward
# hand-off ("reward_wait") and end-of-chunk reward wait ("reward_finish"): the profiler's stamps.
RolloutProbe = Callable[[str, int, int], contextlib.AbstractContextManager]


def _no_probe(kind: str, chunk: int, step: int) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    # The main stream only: a device-wide synchronize would also wait for the reward pipeline's side stream at
    # every timed step and undo the overlap of decode with denoising.
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class PhaseTimer:
    """Accumulates seconds per phase (perf_counter; synchronising the main CUDA stream around each block)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class RolloutBatch:
    """One iteration's rollouts, N = P * G trajectories (prompt-major: trajectory i belongs to prompt i // G).

    prompts: N strings; latents `[T+1, N, C, H, W]`; logp `[T, N]` float32; rewards `[N, T]` float32 (dense,
    sparse steps filled; NaN only for groups dropped by the nonfinite policy); train_mask `[T]`; sigmas `[T+1]`;
    timings: main-thread seconds per phase; reward_timings: the engine's, summed over chunks; reward_chunks:
    this rank's chunks' engine timings.
    """

    prompts: list[str]
    latents: torch.Tensor
    logp: torch.Tensor
    rewards: torch.Tensor
    train_mask: torch.Tensor
    sigmas: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    reward_timings: dict[str, Any] = field(default_factory=dict)
    reward_chunks: list[dict[str, Any]] = field(default_factory=list)


def initial_noise(cfg: Config, latent_shape: tuple[int, ...], n: int, iteration: int) -> torch.Tensor:
    """x_T `[n, *latent_shape]` float32 of `iteration` (one per trajectory, or one per group with
    `rollout.shared_init_noise`)."""
    G = cfg.rollout.group_size
    gen = torch.Generator().manual_seed(iteration_seed(cfg.train.seed, iteration, Stream.INIT_NOISE))
    if cfg.rollout.shared_init_noise:  # one x_T per prompt, repeated over its group
        return torch.randn((n // G, *latent_shape), generator=gen).repeat_interleave(G, dim=0)
    return torch.randn((n, *latent_shape), generator=gen)


@torch.no_grad()
def collect(
    cfg: Config,
    policy: Policy,
    prompts: list[str],
    sigmas: torch.Tensor,
    pipeline: RewardPipeline,
    *,
    iteration: int,
    world: distributed.World,
    device: torch.device,
    probe: RolloutProbe | None = None,
) -> RolloutBatch:
    """Roll out the trajectories of `prompts` (N strings, each prompt repeated G times) and score every
    evaluated projection with `pipeline`; rewards are mapped to `(r + reward.offset) * reward.scale`."""
    probe = probe if probe is not None else _no_probe
    T = cfg.rollout.steps
    N = len(prompts)
    x_init = initial_noise(cfg, policy.pipe.latent_shape, N, iteration)
    chunk = cfg.rollout.chunk_size or cfg.rollout.group_size
    timer = PhaseTimer(device)
    latents, logps, rewards, chunk_timings = [], [], [], []
    window = tuple(cfg.rollout.sde_window) if cfg.rollout.sde_window is not None else None
    policy.forward_model.eval()
    traj: Trajectory | None = None
    failure: RewardError | None = None
    try:
        for c, lo, hi in distributed.chunk_plan(N, chunk, world):
            ps = prompts[lo:hi]
            with timer("encode"):
                cond, uncond = policy.conditioning(ps)
            step = [0]

            def vfn(x: torch.Tensor, sigma: torch.Tensor, cond=cond, uncond=uncond, c=c, step=step) -> torch.Tensor:
                with timer("transformer"), probe("transformer", c, step[0]):
                    v = policy.velocity(policy.forward_model, x, sigma, cond, uncond)
                step[0] += 1
                return v

            def on_projection(j: int, x0_hat: torch.Tensor, c=c) -> None:
                with probe("reward_wait", c, j):
                    pipeline(j, x0_hat)

            gen_sde = torch.Generator(device).manual_seed(
                iteration_seed(cfg.train.seed, iteration, Stream.SDE_NOISE, c)
            )
            pipeline.begin(ps)
            with timer("rollout"):
                traj = sample_trajectories(
                    vfn,
                    x_init[lo:hi].to(device),
                    sigmas,
                    a=cfg.rollout.noise_level,
                    sde_type=cfg.rollout.sde_type,
                    sde_steps=window,
                    generator=gen_sde,
                    on_projection=on_projection,
                    reduce=cfg.rollout.reduce,
                    train_last_step=cfg.train.train_last_step,
                )
            with timer("reward_finish"), probe("reward_finish", c, T - 1):
                result = pipeline.finish()
            latents.append(traj.latents)
            logps.append(traj.logp)
            rewards.append(result.rewards)
            chunk_timings.append({"chunk": c, **result.timings})
    except RewardError as exc:
        failure = exc
    # Every rank learns of a reward failure on any rank, so all stop at the same iteration.
    if distributed.any_rank(failure is not None):
        raise failure or RewardError(f"iteration {iteration}: the reward failed on another rank")
    assert traj is not None
    R = (torch.cat(rewards).float() + cfg.reward.offset) * cfg.reward.scale
    lat, logp = torch.cat(latents, dim=1), torch.cat(logps, dim=1).float()
    if world.enabled:
        counts = distributed.rows_per_rank(N, chunk, world)
        with timer("all_gather"):
            lat = distributed.all_gather_rows(lat, counts, dim=1)
            logp = distributed.all_gather_rows(logp, counts, dim=1)
            R = distributed.all_gather_rows(R, counts, dim=0)
    return RolloutBatch(
        prompts, lat, logp, R.cpu(), traj.train_mask, sigmas, timer.seconds, merge_timings(chunk_timings), chunk_timings
    )
