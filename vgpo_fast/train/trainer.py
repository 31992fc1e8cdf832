"""The trainer: one object holding a run's parts, and one method per phase of an iteration.

    trainer = Trainer(cfg)
    batch = trainer.rollout(it)                      # rollout/collect.py: P x G trajectories, dense rewards
    adv, keep = trainer.advantages(batch)            # the estimator of algorithm.name (train/estimators/)
    stats = trainer.update(batch, adv, keep, it)     # train/update.py: PPO-clip + KL
    record = trainer.record(it, batch, adv, keep, stats, phases)   # train/records.py

`trainer.iteration(it)` runs the four in order; `vgpo_fast.train.run.train` is the run loop around it. Every
random draw of an iteration is seeded by (train.seed, iteration) (`rollout/seeds.py`), so resuming replays it.

Under torchrun (`vgpo_fast.distributed`) each rank rolls out its whole chunks of the batch, the rollouts are
all-gathered, every rank computes the same advantages and plan and trains on its part of every global minibatch;
gradients are synchronised by DDP (LoRA) or FSDP2 (full fine-tuning). The global batch and the update do not
depend on the number of ranks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from vgpo_fast import distributed
from vgpo_fast.models.pipeline import FlowPipeline
from vgpo_fast.rewards.base import RewardModel, finite_group_mask
from vgpo_fast.rewards.registry import build_reward
from vgpo_fast.rollout.collect import RolloutBatch, RolloutProbe, collect
from vgpo_fast.rollout.engine import RewardPipeline
from vgpo_fast.rollout.schedule import reward_steps
from vgpo_fast.rollout.schedule import sigmas as make_sigmas
from vgpo_fast.tasks.registry import Task, get_task
from vgpo_fast.train.components import build_run_reward, load_pipeline, select_device
from vgpo_fast.train.config import Config
from vgpo_fast.train.data import iteration_prompts, prompt_pool
from vgpo_fast.train.estimators import AdvantageResult, get_estimator
from vgpo_fast.train.evaluate import Evaluator
from vgpo_fast.train.policy import Policy
from vgpo_fast.train.records import IterationRecord, Timings
from vgpo_fast.train.update import UpdateStats, step_plan, update

__all__ = ["RolloutBatch", "Trainer"]


class Trainer:
    """Builds the policy, reward, reward pipeline and optimiser from a `Config` and runs iterations.

    `pipeline` / `reward` replace the ones the config names (tests pass tiny ones). The caller decides about
    resuming (see `vgpo_fast.train.run.train`)."""

    def __init__(
        self,
        cfg: Config,
        *,
        pipeline: FlowPipeline | None = None,
        reward: RewardModel | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg, self.log = cfg, log
        self.world = distributed.world()
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.device = select_device(cfg, self.world)
        self.task: Task | None = get_task(cfg.model.task) if cfg.model.task else None
        self.pipe = pipeline if pipeline is not None else load_pipeline(cfg, self.task, self.device)
        self.pipe.to(self.device)
        self.pipe.text_encoder.requires_grad_(False)
        self.policy = Policy(self.pipe, cfg, self.device)
        self.reward = reward if reward is not None else build_run_reward(cfg, self.task)
        self.estimator = get_estimator(cfg.algorithm.name)
        T = cfg.rollout.steps
        self.sigmas = make_sigmas(T, cfg.rollout.shift)
        self.reward_steps = reward_steps(T, cfg.reward.steps) if self.estimator.dense else [T - 1]
        self.reward_pipeline = self.make_reward_pipeline(self.reward_steps, cfg.reward.overlap)
        self._check_sharded_chunks()
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.policy.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps
        )
        self._evaluator: Evaluator | None = None
        self._train_pool: dict[str, tuple[str, ...]] | None = None  # read on first use (a prompt file: once)

    def make_reward_pipeline(self, steps: Any, overlap: bool) -> RewardPipeline:
        """A reward pipeline over this run's reward and decoder scoring `steps` (a `reward.steps` spec)."""
        r = self.cfg.reward
        return RewardPipeline(
            self.reward,
            self.pipe.decode,
            self.cfg.rollout.steps,
            reward_steps=steps,
            overlap=overlap,
            max_in_flight=r.max_in_flight,
            worker_threads=r.worker_threads,
        )

    def _check_sharded_chunks(self) -> None:
        if not distributed.is_sharded(self.policy.train_module):
            return
        n, chunk = (
            self.cfg.rollout.prompts_per_iter * self.cfg.rollout.group_size,
            self.cfg.rollout.chunk_size or self.cfg.rollout.group_size,
        )
        if -(-n // chunk) % self.world.size:
            raise ValueError(
                f"full fine-tuning (FSDP2) on {self.world.size} ranks needs a number of rollout "
                f"chunks that is a multiple of it (every forward is a collective): {n} trajectories "
                f"in chunks of rollout.chunk_size={chunk} make {-(-n // chunk)}"
            )

    # The policy's parts, under the names the run loop, the CLI and the tests use.
    @property
    def model(self) -> torch.nn.Module:
        return self.policy.model

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return self.policy.params

    @property
    def ema(self) -> list[torch.Tensor] | None:
        return self.policy.ema

    # --------------------------------------------------------------------------------------------- phases
    def sample_prompts(self, iteration: int) -> list[str]:
        """The P training prompts of `iteration`."""
        if self._train_pool is None:
            self._train_pool = prompt_pool(self.cfg, self.task, "train")
        return iteration_prompts(self.cfg, self._train_pool, iteration)

    def rollout(
        self, iteration: int, *, reward_pipeline: RewardPipeline | None = None, probe: RolloutProbe | None = None
    ) -> RolloutBatch:
        """P x G trajectories of `iteration` with every evaluated projection scored (`rollout.collect`);
        `reward_pipeline` replaces the trainer's own (the profiler's modes), `probe` stamps every call."""
        G = self.cfg.rollout.group_size
        prompts = [p for p in self.sample_prompts(iteration) for _ in range(G)]
        return collect(
            self.cfg,
            self.policy,
            prompts,
            self.sigmas,
            reward_pipeline if reward_pipeline is not None else self.reward_pipeline,
            iteration=iteration,
            world=self.world,
            device=self.device,
            probe=probe,
        )

    def advantages(
        self, batch: RolloutBatch, estimator_name: str | None = None, steps: list[int] | None = None
    ) -> tuple[AdvantageResult, torch.Tensor]:
        """(advantages of the batch, `[P]` bool mask of groups kept: all rewards of `steps` finite). The
        estimator is `algorithm.name`'s unless named; `steps` default to this run's reward steps."""
        cfg = self.cfg
        P, G, T = cfg.rollout.prompts_per_iter, cfg.rollout.group_size, cfg.rollout.steps
        R = batch.rewards.reshape(P, G, T)
        keep = finite_group_mask(R[..., steps if steps is not None else self.reward_steps])
        if not bool(keep.all()) and cfg.reward.nonfinite == "raise":
            bad = [batch.prompts[int(p) * G] for p in torch.nonzero(~keep).reshape(-1)]
            raise RuntimeError(f"non-finite reward for prompt(s) {bad[:3]}")
        R = torch.where(keep.view(P, 1, 1), R, torch.zeros_like(R))
        estimator = self.estimator if estimator_name is None else get_estimator(estimator_name)
        return estimator.compute(R, cfg.algorithm), keep

    def step_plan(self, batch: RolloutBatch, iteration: int) -> torch.Tensor:
        """`[N, K]` long: the training steps of each trajectory, in the order they are trained."""
        return step_plan(self.cfg, batch.train_mask, batch.latents.shape[1], iteration)

    def update(self, batch: RolloutBatch, adv: AdvantageResult, keep: torch.Tensor, iteration: int) -> UpdateStats:
        """Inner epochs of PPO-clip updates on `batch` (`train.update`)."""
        return update(
            self.policy,
            self.optimizer,
            batch,
            adv.advantages,
            keep,
            self.cfg,
            iteration=iteration,
            world=self.world,
            device=self.device,
        )

    def iteration(self, iteration: int) -> IterationRecord:
        """Rollout, advantages and update of one iteration; returns its record."""
        t0 = time.perf_counter()
        batch = self.rollout(iteration)
        t_rollout = time.perf_counter()
        adv, keep = self.advantages(batch)
        t_adv = time.perf_counter()
        stats = self.update(batch, adv, keep, iteration)
        t_train = time.perf_counter()
        return self.record(
            iteration,
            batch,
            adv,
            keep,
            stats,
            {
                "rollout": t_rollout - t0,
                "advantage": t_adv - t_rollout,
                "train": t_train - t_adv,
                "total": t_train - t0,
            },
        )

    def record(
        self,
        iteration: int,
        batch: RolloutBatch,
        adv: AdvantageResult,
        keep: torch.Tensor,
        stats: UpdateStats,
        phases: dict[str, float],
    ) -> IterationRecord:
        P, G, T = self.cfg.rollout.prompts_per_iter, self.cfg.rollout.group_size, self.cfg.rollout.steps
        R = batch.rewards.reshape(P, G, T)[keep]
        r = R[..., -1]
        group_std = r.std(dim=1, correction=0)
        rt = batch.reward_timings
        # Main-thread phases, disjoint (they add up to `total`); the reward worker's busy time is reported apart,
        # since with overlap it runs concurrently with `transformer` and `sde_op`.
        rollout = phases["rollout"]
        transformer = batch.timings.get("transformer", 0.0)
        encode = batch.timings.get("encode", 0.0)
        gather = batch.timings.get("all_gather", 0.0)
        wait = min(rollout - transformer - gather - encode, rt.get("wait", 0.0))
        timings = Timings(
            transformer=transformer,
            sde_op=max(0.0, rollout - transformer - wait - gather - encode),
            reward_wait=wait,
            advantage=phases["advantage"],
            train=phases["train"],
            total=phases["total"],
            encode=encode,
            all_gather=gather if self.world.enabled else None,
        )
        nan = float("nan")
        return IterationRecord(
            iteration=iteration,
            reward_mean=float(r.mean()) if r.numel() else nan,
            reward_std=float(r.std(correction=0)) if r.numel() else nan,
            group_std_mean=float(group_std.mean()) if r.numel() else nan,
            zero_std_frac=float((group_std < 1e-6).float().mean()) if r.numel() else nan,
            dropped_groups=int((~keep).sum()),
            advantage_mean=float(adv.advantages.mean()),
            advantage_std=float(adv.advantages.std()),
            advantage_abs_mean=float(adv.advantages.abs().mean()),
            q_mean=float(adv.returns.mean()),
            omega_mean=float(adv.omega.mean()),
            omega_min=float(adv.omega.min()),
            omega_max=float(adv.omega.max()),
            omega_fallback_frac=adv.omega_fallback_frac,
            update=stats,
            overlap_frac=float(rt.get("overlap_frac", 0.0)),
            timings=timings,
            reward_worker={"decode": rt.get("decode", 0.0), "reward": rt.get("reward", 0.0)},
            instant_reward=[float(x) for x in R.mean(dim=(0, 1))] if len(self.reward_steps) > 1 else None,
        )

    # ----------------------------------------------------------------------------------------- evaluation
    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            task = self.task
            eval_reward = (
                (lambda: build_reward(task.eval_reward))
                if task is not None and task.eval_reward != task.reward
                else None
            )
            self._evaluator = Evaluator(
                self.cfg, self.policy, self.reward, prompt_pool(self.cfg, task, "held_out"), eval_reward
            )
        return self._evaluator

    def eval_set(self) -> tuple[list[str], list[int]]:
        return self.evaluator.eval_set()

    def sample(
        self, prompts: list[str], seeds: list[int], steps: int | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        return self.evaluator.sample(prompts, seeds, steps, batch_size)

    def evaluate(self, base_images: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
        return self.evaluator.evaluate(base_images)

    # ------------------------------------------------------------------------------------------ state
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return self.policy.trainable_state()

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.policy.load_trainable_state(state)

    def optimizer_state(self) -> dict[str, Any]:
        """The optimiser state_dict as one process would hold it (FSDP2 shards gathered: every rank calls it)."""
        return distributed.full_state(self.optimizer.state_dict())

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(distributed.localize_optimizer_state(state, self.policy.params))

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        return self.policy.ema_state()

    def load_ema_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.policy.load_ema_state(tensors)

    def close(self) -> None:
        self.reward_pipeline.close()
        self.reward.close()
        if self._evaluator is not None:
            self._evaluator.close()
