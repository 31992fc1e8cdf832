"""Held-out evaluation: deterministic ODE samples of the policy (EMA weights when kept) on a fixed set of
prompts and noise seeds, scored by the training reward (and the task's evaluation reward where it differs), with
the drift from the base model's samples.

    evaluator = Evaluator(cfg, policy, reward, held_out_pool, eval_reward=None)
    scores, images = evaluator.evaluate(base_images)   # {"heldout_reward", ["heldout_accuracy"], ["heldout_drift"]}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vgpo_fast.rewards.base import RewardModel
from vgpo_fast.rollout.ode import sample_images
from vgpo_fast.rollout.prompts import eval_prompt_set

if TYPE_CHECKING:
    from vgpo_fast.train.config import Config
    from vgpo_fast.train.policy import Policy

__all__ = ["Evaluator", "pixel_drift"]


def pixel_drift(images: torch.Tensor, base_images: torch.Tensor) -> float:
    """Mean absolute change of the 8-bit pixel values a saved image holds, in [0, 1]; both float `[B, 3, H, W]`
    in [0, 1]."""

    def levels(x: torch.Tensor) -> torch.Tensor:
        return x.float().mul(255).round()

    return float((levels(images) - levels(base_images)).abs().mean() / 255)


class Evaluator:
    """`eval_reward`: a builder of the accuracy reward (called on first use), or None when it is the training
    reward."""

    def __init__(
        self,
        cfg: Config,
        policy: Policy,
        reward: RewardModel,
        pool: dict[str, tuple[str, ...]],
        eval_reward: Any = None,
    ) -> None:
        self.cfg, self.policy, self.reward, self.pool = cfg, policy, reward, pool
        self._eval_reward_factory = eval_reward
        self._eval_scorer: RewardModel | None = None

    def eval_set(self) -> tuple[list[str], list[int]]:
        """The fixed held-out evaluation set: `run.eval_prompts` prompts x `run.eval_seeds` noise seeds."""
        return eval_prompt_set(self.pool, self.cfg.run.eval_prompts, self.cfg.run.eval_seeds)

    @torch.no_grad()
    def sample(
        self, prompts: list[str], seeds: list[int], steps: int | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        """Deterministic ODE samples of the current policy (EMA weights when enabled): float `[B, 3, H, W]`
        in [0, 1]; noise i drawn from seed `seeds[i]`."""
        self.policy.forward_model.eval()
        with self.policy.ema_weights():
            return sample_images(
                self.policy.pipe,
                prompts,
                seeds,
                steps or self.cfg.run.eval_steps,
                self.cfg.rollout.guidance_scale,
                self.cfg.rollout.shift,
                batch_size,
            )

    def evaluate(self, base_images: torch.Tensor | None = None) -> tuple[dict[str, float], torch.Tensor]:
        """Held-out scores and the images.

        `heldout_reward`: the training reward (the quantity RL optimises, e.g. shapes partial credit);
        `heldout_accuracy`: the evaluation reward when it differs (shapes: strict, GenEval-like 0/1);
        `heldout_drift` (with `base_images`, the base model's samples of the same prompts and seeds): the mean
        absolute pixel change from them, in [0, 1] — a guard against reward hacking: a reward that rises while
        the images drift far from the base's is suspect.
        """
        prompts, seeds = self.eval_set()
        images = self.sample(prompts, seeds)
        if base_images is not None and base_images.shape != images.shape:
            raise ValueError(
                f"base_images must match the held-out samples {tuple(images.shape)}, got "
                f"{tuple(base_images.shape)} (run.eval_prompts / eval_seeds changed?)"
            )
        if self._eval_scorer is None and self._eval_reward_factory is not None:
            self._eval_scorer = self._eval_reward_factory()
        scores = {"heldout_reward": float(self.reward.score(images, prompts).mean())}
        if self._eval_scorer is not None:
            scores["heldout_accuracy"] = float(self._eval_scorer.score(images, prompts).mean())
        if base_images is not None:
            scores["heldout_drift"] = pixel_drift(images, base_images)
        return scores, images

    def close(self) -> None:
        if self._eval_scorer is not None:
            self._eval_scorer.close()
