"""The VGPO / Flow-GRPO trainer: rollout with pipelined rewards, advantages, PPO-clip updates, checkpoints.

One iteration (DESIGN.md, data flow):
1. P training prompts x G noises, both drawn from generators seeded by (seed, iteration), so an iteration's batch
   depends only on the seed, the iteration and the weights (resuming replays it exactly);
2. rollout: `sample_trajectories` with the CFG velocity; every projection x0_hat_j goes to the reward pipeline,
   which decodes and scores it while the next denoising step runs;
3. advantages `[P, G, T]` (`advantages.compute_advantages`);
4. `inner_epochs` passes over the trajectories in minibatches; each minibatch goes over its training steps: the
   velocity with grad at x_j, `sde_log_prob` (+ KL to the adapter-disabled reference), `clipped_policy_loss`;
   one optimiser step per `grad_accum` minibatches;
5. metrics (JSONL), held-out evaluation, atomic checkpoint.

Under torchrun (`distributed`): each rank rolls out its whole chunks of the batch, the rollouts are all-gathered,
every rank computes the same advantages and plan, and trains on its part of every global minibatch; gradients are
synchronised by DDP (LoRA) or FSDP2 (full fine-tuning). The global batch and the update do not depend on the number
of ranks.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vgpo_fast.models import add_lora, enable_fp8_training, maybe_compile, reference_policy, velocity
from vgpo_fast.models.pipeline import FlowPipeline, load_task_pipeline
from vgpo_fast.ops import clipped_policy_loss, sde_log_prob
from vgpo_fast.rewards.base import RewardError, RewardModel, finite_group_mask
from vgpo_fast.rewards.process import ProcessReward
from vgpo_fast.rewards.registry import build_reward, is_server_spec
from vgpo_fast.rollout.engine import RewardPipeline
from vgpo_fast.rollout.sampler import Trajectory, sample_trajectories
from vgpo_fast.rollout.schedule import reward_steps
from vgpo_fast.rollout.schedule import sigmas as make_sigmas
from vgpo_fast.tasks.registry import Task, get_task
from vgpo_fast.train import distributed
from vgpo_fast.train.advantages import AdvantageResult, compute_advantages, uses_dense_rewards
from vgpo_fast.train.config import Config

__all__ = ["RolloutBatch", "Trainer", "iteration_seed"]


def iteration_seed(seed: int, iteration: int, stream: int, *index: int) -> int:
    """A 63-bit seed for one random stream (0 prompts, 1 initial noise, 2 SDE noise, 3 step order, 4 minibatch
    order) of one iteration, `index` naming a part of it (the rollout chunk of the SDE noise); independent of the
    process count and of anything drawn before."""
    entropy = [seed, iteration, stream, *index]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _sync(device: torch.device) -> None:
    # The main stream only: a device-wide synchronize would also wait for the reward pipeline's side stream at
    # every timed step and undo the overlap of decode with denoising.
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


RolloutProbe = Callable[[str, int, int], contextlib.AbstractContextManager]


def _no_probe(kind: str, chunk: int, step: int) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class _Timer:
    """Accumulates seconds per phase (perf_counter; synchronising CUDA around each measured block)."""

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
    sparse steps filled; NaN only for groups dropped by the nonfinite policy); train_mask `[T]`; sigmas `[T+1]`.
    """

    prompts: list[str]
    latents: torch.Tensor
    logp: torch.Tensor
    rewards: torch.Tensor
    train_mask: torch.Tensor
    sigmas: torch.Tensor
    timings: dict[str, float] = field(default_factory=dict)
    reward_timings: dict[str, Any] = field(default_factory=dict)
    reward_chunks: list[dict[str, Any]] = field(default_factory=list)  # this rank's chunks' engine timings


class Trainer:
    """Builds the policy, reward and optimiser from a `Config` and runs iterations.

    `run_dir=None` uses `cfg.run.output_dir / cfg.run.name`. The caller decides about resuming
    (see `vgpo_fast.train.run.train`).
    """

    def __init__(self, cfg: Config, *, pipeline: FlowPipeline | None = None, reward: RewardModel | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg, self.log = cfg, log
        self.world = distributed.world()
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.model.device == "auto"
                                   else cfg.model.device)
        if self.device.type == "cuda" and self.world.enabled:
            self.device = torch.device("cuda", self.world.local_rank)
        self.task: Task | None = get_task(cfg.model.task) if cfg.model.task else None
        self.pipe = pipeline if pipeline is not None else self._load_pipeline()
        self.pipe.to(self.device)
        self.pipe.text_encoder.requires_grad_(False)
        self._setup_policy()
        self.reward = reward if reward is not None else self._build_reward()
        T, G = cfg.rollout.steps, cfg.rollout.group_size
        self.sigmas = make_sigmas(T, cfg.rollout.shift)
        dense = uses_dense_rewards(cfg.algorithm)
        self.reward_steps = reward_steps(T, cfg.reward.steps) if dense else [T - 1]
        self.reward_pipeline = RewardPipeline(self.reward, self.pipe.decode, T, reward_steps=self.reward_steps,
                                              overlap=cfg.reward.overlap, max_in_flight=cfg.reward.max_in_flight,
                                              worker_threads=cfg.reward.worker_threads)
        if distributed.is_sharded(self.train_module):
            n, chunk = cfg.rollout.prompts_per_iter * cfg.rollout.group_size, cfg.rollout.chunk_size or G
            if -(-n // chunk) % self.world.size:
                raise ValueError(f"full fine-tuning (FSDP2) on {self.world.size} ranks needs a number of rollout "
                                 f"chunks that is a multiple of it (every forward is a collective): {n} trajectories "
                                 f"in chunks of rollout.chunk_size={chunk} make {-(-n // chunk)}")
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                                           eps=o.eps)
        self.ema = [p.detach().clone() for p in self.params] if o.ema else None
        self._eval_scorer: RewardModel | None = None
        self._uncond: tuple[torch.Tensor, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------------------------- setup
    def _load_pipeline(self) -> FlowPipeline:
        path = self.cfg.model.path
        if path is None:
            if self.task is None:
                raise ValueError("model.path is required when model.task is not set")
            path = self.task.base_model_dir
        if not Path(path).exists():
            raise FileNotFoundError(f"model path {path} does not exist")
        if (Path(path) / "pretrain.json").is_file():
            return load_task_pipeline(path, self.device)
        from vgpo_fast.models.sd3 import load_sd3_pipeline

        return load_sd3_pipeline(path, self.device, resolution=self.cfg.model.resolution)

    def _setup_policy(self) -> None:
        m = self.cfg.model
        model = self.pipe.transformer
        model.requires_grad_(not m.lora)
        self.reference: nn.Module | None = None
        if m.lora:  # peft draws lora_A from the global RNG: seed it, so that a run is a function of its config
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(iteration_seed(self.cfg.train.seed, 0, 5))
                add_lora(model, rank=m.lora_rank, alpha=m.lora_alpha, target_modules=m.lora_targets)
        elif self.cfg.algorithm.beta > 0:
            self.reference = copy.deepcopy(model).requires_grad_(False).eval()
        if m.fp8:
            enable_fp8_training(model, device=self.device)
        self.model = model
        # `train_module` synchronises gradients across ranks (DDP / FSDP2; the model itself on one process).
        self.train_module = distributed.wrap_model(model, lora=m.lora, device=self.device,
                                                   extra_sharded=[self.reference] if self.reference else [])
        self.forward_model = maybe_compile(model, "default" if m.compile else None)
        self.train_model = (self.forward_model if self.train_module is model
                            else maybe_compile(self.train_module, "default" if m.compile else None))

    def _build_reward(self) -> RewardModel:
        spec = self.cfg.reward.reward
        if spec is None:
            if self.task is None:
                raise ValueError("reward.reward is required when model.task is not set")
            spec = dict(self.task.reward)
        if isinstance(spec, dict):
            spec = {**spec, "nonfinite": self.cfg.reward.nonfinite}
        if self.cfg.reward.worker == "process" and not is_server_spec(spec):
            return ProcessReward(spec, threads=self.cfg.reward.worker_threads, nonfinite=self.cfg.reward.nonfinite)
        return build_reward(spec)

    # --------------------------------------------------------------------------------------------- helpers
    def autocast(self) -> contextlib.AbstractContextManager:
        mp = self.cfg.train.mixed_precision
        if mp == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if mp == "bf16" else torch.float16)

    def _velocity(self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor],
                  uncond: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        with self.autocast():
            v = velocity(net, x, sigma, cond[0], cond[1], self.cfg.rollout.guidance_scale, uncond)
        return v.float() if x.dtype == torch.float32 else v.to(x.dtype)

    def _conditioning(self, prompts: list[str]) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                          tuple[torch.Tensor, torch.Tensor] | None]:
        """(cond, uncond) for CFG; the empty prompt's encoding is computed once (the text encoder is frozen)."""
        if self.cfg.rollout.guidance_scale != 1.0 and self._uncond is None:
            self._uncond = self.pipe.encode([""])
        return self.pipe.encode(prompts), self._uncond

    def prompt_pool(self, split: str) -> dict[str, tuple[str, ...]]:
        """`{category: prompts}` of 'train' or 'held_out': from `model.train_prompts` / `model.eval_prompts`
        files (one prompt per line) when set, else from the task."""
        path = self.cfg.model.train_prompts if split == "train" else self.cfg.model.eval_prompts
        if path is not None:
            return {"file": _read_prompts(path)}
        if self.task is None:
            raise ValueError(f"no {split} prompts: set model.task or model.{'train' if split == 'train' else 'eval'}"
                             f"_prompts")
        return self.task.prompts(split)

    def sample_prompts(self, iteration: int) -> list[str]:
        """The P training prompts of `iteration` (category-uniform, with replacement)."""
        from vgpo_fast.tasks.shapes import sample_prompts

        rng = np.random.default_rng(iteration_seed(self.cfg.train.seed, iteration, 0))
        return sample_prompts(self.prompt_pool("train"), self.cfg.rollout.prompts_per_iter, rng)

    # --------------------------------------------------------------------------------------------- rollout
    @torch.no_grad()
    def rollout(self, iteration: int, *, reward_pipeline: RewardPipeline | None = None,
                probe: RolloutProbe | None = None) -> RolloutBatch:
        """Roll out P x G trajectories of `iteration` and score every evaluated projection.

        The batch is cut into chunks of `rollout.chunk_size` (default: one prompt group), each with its own SDE
        noise generator; with several ranks each rolls out its chunks and the results are all-gathered, so the
        batch is the same for any number of ranks. `reward_pipeline` replaces the trainer's own (the profiler's
        reward modes); `probe(kind, chunk, step)` wraps every transformer call ("transformer"), reward hand-off
        ("reward_wait") and end-of-chunk reward wait ("reward_finish") in the context manager it returns."""
        cfg = self.cfg
        pipeline = reward_pipeline if reward_pipeline is not None else self.reward_pipeline
        probe = probe if probe is not None else _no_probe
        G, T = cfg.rollout.group_size, cfg.rollout.steps
        prompts = [p for p in self.sample_prompts(iteration) for _ in range(G)]
        N = len(prompts)
        gen_init = torch.Generator().manual_seed(iteration_seed(cfg.train.seed, iteration, 1))
        if cfg.rollout.shared_init_noise:  # one x_T per prompt, repeated over its group
            x_init = torch.randn((N // G, *self.pipe.latent_shape), generator=gen_init).repeat_interleave(G, dim=0)
        else:
            x_init = torch.randn((N, *self.pipe.latent_shape), generator=gen_init)
        chunk = cfg.rollout.chunk_size or G
        timer = _Timer(self.device)
        latents, logps, rewards, rtimes = [], [], [], []
        window = tuple(cfg.rollout.sde_window) if cfg.rollout.sde_window is not None else None
        self.forward_model.eval()
        traj: Trajectory | None = None
        failure: RewardError | None = None
        try:
            for c, lo, hi in distributed.chunk_plan(N, chunk, self.world):
                ps = prompts[lo:hi]
                cond, uncond = self._conditioning(ps)
                step = [0]

                def vfn(x: torch.Tensor, sigma: torch.Tensor, cond=cond, uncond=uncond, c=c,
                        step=step) -> torch.Tensor:
                    with timer("transformer"), probe("transformer", c, step[0]):
                        v = self._velocity(self.forward_model, x, sigma, cond, uncond)
                    step[0] += 1
                    return v

                def on_projection(j: int, x0_hat: torch.Tensor, c=c) -> None:
                    with probe("reward_wait", c, j):
                        pipeline(j, x0_hat)

                gen_sde = torch.Generator(self.device).manual_seed(iteration_seed(cfg.train.seed, iteration, 2, c))
                pipeline.begin(ps)
                with timer("rollout"):
                    traj = sample_trajectories(vfn, x_init[lo:hi].to(self.device), self.sigmas,
                                               a=cfg.rollout.noise_level, sde_type=cfg.rollout.sde_type,
                                               sde_steps=window, generator=gen_sde, on_projection=on_projection,
                                               reduce=cfg.rollout.reduce, train_last_step=cfg.train.train_last_step)
                with timer("reward_finish"), probe("reward_finish", c, T - 1):
                    result = pipeline.finish()
                latents.append(traj.latents)
                logps.append(traj.logp)
                rewards.append(result.rewards)
                rtimes.append({"chunk": c, **result.timings})
        except RewardError as exc:
            failure = exc
        # Every rank learns of a reward failure on any rank, so all stop at the same iteration.
        if distributed.any_rank(failure is not None):
            raise failure or RewardError(f"iteration {iteration}: the reward failed on another rank")
        assert traj is not None
        R = torch.cat(rewards).float()
        R = (R + cfg.reward.offset) * cfg.reward.scale
        lat, logp = torch.cat(latents, dim=1), torch.cat(logps, dim=1).float()
        if self.world.enabled:
            counts = distributed.rows_per_rank(N, chunk, self.world)
            with timer("all_gather"):
                lat = distributed.all_gather_rows(lat, counts, dim=1)
                logp = distributed.all_gather_rows(logp, counts, dim=1)
                R = distributed.all_gather_rows(R, counts, dim=0)
        return RolloutBatch(prompts, lat, logp, R.cpu(), traj.train_mask, self.sigmas, timer.seconds,
                            _merge_reward_timings(rtimes), rtimes)

    # ------------------------------------------------------------------------------------------ advantages
    def advantages(self, batch: RolloutBatch) -> tuple[AdvantageResult, torch.Tensor]:
        """(advantages of the batch, `[P]` bool mask of groups kept: all rewards finite)."""
        P, G, T = self.cfg.rollout.prompts_per_iter, self.cfg.rollout.group_size, self.cfg.rollout.steps
        R = batch.rewards.reshape(P, G, T)
        keep = finite_group_mask(R[..., self.reward_steps])
        if not bool(keep.all()) and self.cfg.reward.nonfinite == "raise":
            bad = [batch.prompts[int(p) * G] for p in torch.nonzero(~keep).reshape(-1)]
            raise RuntimeError(f"non-finite reward for prompt(s) {bad[:3]}")
        R = torch.where(keep.view(P, 1, 1), R, torch.zeros_like(R))
        return compute_advantages(R, self.cfg.algorithm), keep

    # ----------------------------------------------------------------------------------------------- update
    def step_plan(self, batch: RolloutBatch, iteration: int) -> torch.Tensor:
        """`[N, K]` long: the training steps of each trajectory, in the order they are trained."""
        eligible = torch.nonzero(batch.train_mask).reshape(-1)
        if eligible.numel() == 0:
            raise ValueError("no training step: every step is deterministic (check rollout.sde_window / noise_level)")
        N = batch.latents.shape[1]
        K = eligible.numel() if self.cfg.train.steps_per_iter is None else min(self.cfg.train.steps_per_iter,
                                                                                eligible.numel())
        if not self.cfg.train.shuffle:
            return eligible[:K].expand(N, K).clone()
        gen = torch.Generator().manual_seed(iteration_seed(self.cfg.train.seed, iteration, 3))
        order = torch.argsort(torch.rand((N, eligible.numel()), generator=gen), dim=1)[:, :K]
        return eligible[order]

    def update(self, batch: RolloutBatch, adv: AdvantageResult, keep: torch.Tensor, iteration: int) -> dict[str, Any]:
        """Inner epochs of PPO-clip updates on `batch`; returns loss / KL / clip / grad-norm statistics."""
        cfg = self.cfg
        P, G, T = cfg.rollout.prompts_per_iter, cfg.rollout.group_size, cfg.rollout.steps
        A = adv.advantages.reshape(P * G, T).float()
        trajectories = torch.nonzero(keep.repeat_interleave(G)).reshape(-1)
        plan = self.step_plan(batch, iteration)
        sig = batch.sigmas.to(self.device, torch.float32)
        sums: list[list[float]] = []  # per micro-step: rows * (loss, clip_frac, approx_kl, kl), rows
        ratio_dev: list[float] = []  # per micro-step: max |logp - logp_old|
        grad_norms: list[float] = []
        self.train_model.train()
        mb = cfg.train.minibatch_size
        gen = torch.Generator().manual_seed(iteration_seed(cfg.train.seed, iteration, 4))
        for _epoch in range(cfg.train.inner_epochs):
            perm = trajectories[torch.randperm(trajectories.numel(), generator=gen)] if cfg.train.shuffle \
                else trajectories
            minibatches = [perm[i:i + mb] for i in range(0, perm.numel(), mb)]
            for start in range(0, len(minibatches), cfg.train.grad_accum):
                window = minibatches[start:start + cfg.train.grad_accum]
                micro = sum(plan.shape[1] for _ in window)
                self.optimizer.zero_grad(set_to_none=True)
                done = 0
                for minibatch in window:
                    # This rank's rows of the global minibatch; `weight` makes the ranks' gradients add up to the
                    # whole minibatch's (1.0 on one process).
                    idx, weight = distributed.my_rows(minibatch, self.world)
                    rows = idx.numel() if weight > 0 else 0
                    conditioning = self._conditioning([batch.prompts[int(i)] for i in idx])  # once per minibatch
                    for k in range(plan.shape[1]):
                        done += 1
                        with distributed.grad_sync(self.train_module, done == micro):
                            out = self._micro_step(batch, A, idx, plan[idx, k], sig, conditioning)
                            (out["loss_t"] * weight / micro).backward()
                        sums.append([out[key] * rows for key in ("loss", "clip_frac", "approx_kl", "kl")] + [rows])
                        ratio_dev.append(out["ratio_dev"] if rows else 0.0)
                norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.max_grad_norm
                                                      if cfg.optim.max_grad_norm > 0 else float("inf"))
                grad_norms.append(float(distributed.full_tensor(norm)))
                self.optimizer.step()
                self._ema_update()
        self.train_model.eval()
        result = _reduce_update_stats(sums, ratio_dev)
        result["grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
        result["optimizer_steps"] = len(grad_norms)
        return result

    def _micro_step(self, batch: RolloutBatch, A: torch.Tensor, idx: torch.Tensor, steps: torch.Tensor,
                    sig: torch.Tensor, conditioning: tuple[tuple[torch.Tensor, torch.Tensor],
                                                           tuple[torch.Tensor, torch.Tensor] | None]
                    ) -> dict[str, Any]:
        """Loss of trajectories `idx [b]` at their steps `steps [b]` (each its own j); `conditioning` is
        `_conditioning` of their prompts."""
        cfg = self.cfg
        x = batch.latents[steps, idx].to(self.device)
        x_next = batch.latents[steps + 1, idx].to(self.device)
        sigma, sigma_next = sig[steps.to(self.device)], sig[steps.to(self.device) + 1]
        cond, uncond = conditioning
        v = self._velocity(self.train_model, x, sigma, cond, uncond)
        v_ref = None
        if cfg.algorithm.beta > 0:
            with torch.no_grad():
                if self.reference is not None:
                    v_ref = self._velocity(self.reference, x, sigma, cond, uncond)
                else:
                    with reference_policy(self.model):
                        v_ref = self._velocity(self.forward_model, x, sigma, cond, uncond)
        a = cfg.rollout.noise_level
        lp = sde_log_prob(x, v, x_next, sigma, sigma_next, v_ref=v_ref, a=a, sde_type=cfg.rollout.sde_type,
                          reduce=cfg.rollout.reduce, kl_form=cfg.algorithm.kl_form)
        logp_old = batch.logp[steps, idx].to(self.device)
        adv = A[idx, steps].to(self.device)
        out = clipped_policy_loss(lp.logp, logp_old, adv, lp.kl if v_ref is not None else None,
                                  clip=cfg.algorithm.clip_range, beta=cfg.algorithm.beta)
        kl = float(lp.kl.detach().mean()) if v_ref is not None else 0.0
        return {"loss_t": out.loss, "loss": float(out.loss.detach()), "clip_frac": float(out.clip_frac.detach()),
                "approx_kl": float(out.approx_kl.detach()), "kl": kl,
                "ratio_dev": float((lp.logp.detach() - logp_old).abs().max())}

    def _ema_update(self) -> None:
        if self.ema is None:
            return
        d = self.cfg.optim.ema_decay
        with torch.no_grad():
            for e, p in zip(self.ema, self.params, strict=True):
                e.mul_(d).add_(p.detach(), alpha=1 - d)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Within the block the trainable parameters hold their EMA (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema, strict=True):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)

    # ------------------------------------------------------------------------------------------- iteration
    def iteration(self, iteration: int) -> dict[str, Any]:
        """Rollout, advantages and update of one iteration; returns its metrics record."""
        t0 = time.perf_counter()
        batch = self.rollout(iteration)
        t_rollout = time.perf_counter()
        adv, keep = self.advantages(batch)
        t_adv = time.perf_counter()
        upd = self.update(batch, adv, keep, iteration)
        t_train = time.perf_counter()
        return self.record(iteration, batch, adv, keep, upd,
                           {"rollout": t_rollout - t0, "advantage": t_adv - t_rollout, "train": t_train - t_adv,
                            "total": t_train - t0})

    def record(self, iteration: int, batch: RolloutBatch, adv: AdvantageResult, keep: torch.Tensor,
               upd: dict[str, Any], phases: dict[str, float]) -> dict[str, Any]:
        P, G, T = self.cfg.rollout.prompts_per_iter, self.cfg.rollout.group_size, self.cfg.rollout.steps
        R = batch.rewards.reshape(P, G, T)[keep]
        r = R[..., -1]
        group_std = r.std(dim=1, correction=0)
        rt = batch.reward_timings
        # Main-thread phases, disjoint (they add up to `total`); the reward worker's busy time is reported apart,
        # since with overlap it runs concurrently with `transformer` and `sde_op`.
        rollout = phases["rollout"]
        transformer = batch.timings.get("transformer", 0.0)
        gather = batch.timings.get("all_gather", 0.0)
        wait = min(rollout - transformer - gather, rt.get("wait", 0.0))
        timings = {"transformer": transformer, "sde_op": max(0.0, rollout - transformer - wait - gather),
                   "reward_wait": wait, "advantage": phases["advantage"], "train": phases["train"],
                   "total": phases["total"]}
        if self.world.enabled:
            timings["all_gather"] = gather
        rec: dict[str, Any] = {
            "iteration": iteration,
            "reward_mean": float(r.mean()) if r.numel() else float("nan"),
            "reward_std": float(r.std(correction=0)) if r.numel() else float("nan"),
            "group_std_mean": float(group_std.mean()) if r.numel() else float("nan"),
            "zero_std_frac": float((group_std < 1e-6).float().mean()) if r.numel() else float("nan"),
            "dropped_groups": int((~keep).sum()),
            "advantage_mean": float(adv.advantages.mean()), "advantage_std": float(adv.advantages.std()),
            "advantage_abs_mean": float(adv.advantages.abs().mean()),
            "q_mean": float(adv.returns.mean()), "omega_mean": float(adv.omega.mean()),
            "omega_min": float(adv.omega.min()), "omega_max": float(adv.omega.max()),
            "omega_fallback_frac": adv.omega_fallback_frac,
            **upd,
            "overlap_frac": float(rt.get("overlap_frac", 0.0)),
            "timings": timings,
            "reward_worker": {"decode": rt.get("decode", 0.0), "reward": rt.get("reward", 0.0)},
        }
        if len(self.reward_steps) > 1:
            rec["instant_reward"] = [float(x) for x in R.mean(dim=(0, 1))]
        return rec

    # ----------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], steps: int | None = None,
               batch_size: int = 64) -> torch.Tensor:
        """Deterministic ODE samples of the current policy (EMA weights when enabled): float `[B, 3, H, W]`
        in [0, 1]; noise i drawn from seed `seeds[i]`."""
        from vgpo_fast.tasks.pretrain import sample_images

        self.forward_model.eval()
        with self.ema_weights():
            return sample_images(self.pipe, prompts, seeds, steps or self.cfg.run.eval_steps,
                                 self.cfg.rollout.guidance_scale, self.cfg.rollout.shift, batch_size)

    def eval_set(self) -> tuple[list[str], list[int]]:
        """The fixed held-out evaluation set: `run.eval_prompts` prompts x `run.eval_seeds` noise seeds."""
        from vgpo_fast.tasks.pretrain import eval_prompt_set

        return eval_prompt_set(self.prompt_pool("held_out"), self.cfg.run.eval_prompts, self.cfg.run.eval_seeds)

    def evaluate(self, base_images: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
        """Held-out scores of ODE samples on the fixed held-out prompts and seeds, and the images.

        `heldout_reward`: the training reward (the quantity RL optimises, e.g. shapes partial credit);
        `heldout_accuracy`: the task's evaluation reward when it differs (shapes: strict, GenEval-like 0/1);
        `heldout_drift` (with `base_images`, the base model's samples of the same prompts and seeds, float
        `[B, 3, H, W]` in [0, 1]): the mean absolute pixel change from them, in [0, 1] — a guard against reward
        hacking: a reward that rises while the images drift far from the base's is suspect.
        """
        prompts, seeds = self.eval_set()
        images = self.sample(prompts, seeds)
        if base_images is not None and base_images.shape != images.shape:
            raise ValueError(f"base_images must match the held-out samples {tuple(images.shape)}, got "
                             f"{tuple(base_images.shape)} (run.eval_prompts / eval_seeds changed?)")
        if self._eval_scorer is None and self.task is not None and self.task.eval_reward != self.task.reward:
            self._eval_scorer = build_reward(self.task.eval_reward)
        scores = {"heldout_reward": float(self.reward.score(images, prompts).mean())}
        if self._eval_scorer is not None:
            scores["heldout_accuracy"] = float(self._eval_scorer.score(images, prompts).mean())
        if base_images is not None:
            def levels(x: torch.Tensor) -> torch.Tensor:  # the 8-bit pixel values a saved image holds
                return x.float().mul(255).round()

            scores["heldout_drift"] = float((levels(images) - levels(base_images)).abs().mean() / 255)
        return scores, images

    # ------------------------------------------------------------------------------------------ state
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """`{name: full tensor on the CPU}` of the trainable weights (with FSDP2 a collective: call on every rank)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: distributed.full_tensor(p.detach()).cpu().contiguous() for p in self.params}

    def optimizer_state(self) -> dict[str, Any]:
        """The optimiser state_dict as one process would hold it (FSDP2 shards gathered: every rank calls it)."""
        return distributed.full_state(self.optimizer.state_dict())

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(distributed.localize_optimizer_state(state, self.params))

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        if self.ema is None:
            return None
        return {f"ema.{i}": distributed.full_tensor(t).cpu() for i, t in enumerate(self.ema)}

    def load_ema_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for i, e in enumerate(self.ema or []):
            distributed.copy_full_into(e, tensors[f"ema.{i}"])

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        missing = [n for n in (names for names, p in params.items() if p.requires_grad) if n not in state]
        if missing or any(n not in params for n in state):
            raise ValueError(f"checkpoint weights do not match the model: missing {missing[:3]}, "
                             f"unexpected {[n for n in state if n not in params][:3]}")
        for n, t in state.items():
            distributed.copy_full_into(params[n], t)

    def close(self) -> None:
        self.reward_pipeline.close()
        self.reward.close()


def _read_prompts(path: str) -> tuple[str, ...]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {file} does not exist")
    prompts = tuple(line.strip() for line in file.read_text().splitlines() if line.strip())
    if not prompts:
        raise ValueError(f"prompt file {file} holds no prompt")
    return prompts


def _reduce_update_stats(sums: list[list[float]], ratio_dev: list[float]) -> dict[str, float]:
    """Means over micro-steps of each micro-step's minibatch mean (rows summed over the ranks), and of its largest
    |log-ratio|: the numbers one process computes for the same global minibatches."""
    if not sums:
        return {key: 0.0 for key in ("loss", "clip_frac", "approx_kl", "kl", "ratio_dev")}
    total = distributed.all_reduce(torch.tensor(sums, dtype=torch.float64), "sum")
    means = (total[:, :4] / total[:, 4:5]).mean(dim=0)
    dev = distributed.all_reduce(torch.tensor(ratio_dev, dtype=torch.float64), "max")
    out = {key: float(means[i]) for i, key in enumerate(("loss", "clip_frac", "approx_kl", "kl"))}
    out["ratio_dev"] = float(dev.mean())
    return out


def _merge_reward_timings(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, (int, float)) and key not in ("overlap_frac", "chunk"):
                out[key] = out.get(key, 0.0) + float(value)
    busy = out.get("decode", 0.0) + out.get("reward", 0.0)
    out["overlap_frac"] = float(min(1.0, max(0.0, 1.0 - out.get("wait", 0.0) / busy))) if busy > 0 else 0.0
    if not math.isfinite(out["overlap_frac"]):
        out["overlap_frac"] = 0.0
    return out
