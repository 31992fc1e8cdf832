"""Prompts of a run: the train / held-out pools (a task's splits, or prompt files) and each iteration's draw."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vgpo_fast.rollout.prompts import sample_prompts
from vgpo_fast.rollout.seeds import Stream, iteration_seed

if TYPE_CHECKING:
    from vgpo_fast.tasks.registry import Task
    from vgpo_fast.train.config import Config

__all__ = ["iteration_prompts", "prompt_pool", "read_prompts"]


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """The non-blank lines of a text file, stripped."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {file} does not exist")
    prompts = tuple(line.strip() for line in file.read_text().splitlines() if line.strip())
    if not prompts:
        raise ValueError(f"prompt file {file} holds no prompt")
    return prompts


def prompt_pool(cfg: Config, task: Task | None, split: str) -> dict[str, tuple[str, ...]]:
    """`{category: prompts}` of 'train' or 'held_out': from `model.train_prompts` / `model.eval_prompts`
    files (one prompt per line) when set, else from the task."""
    path = cfg.model.train_prompts if split == "train" else cfg.model.eval_prompts
    if path is not None:
        return {"file": read_prompts(path)}
    if task is None:
        raise ValueError(
            f"no {split} prompts: set model.task or model.{'train' if split == 'train' else 'eval'}_prompts"
        )
    return task.prompts(split)


def iteration_prompts(cfg: Config, pool: dict[str, tuple[str, ...]], iteration: int) -> list[str]:
    """The P training prompts of `iteration` (category-uniform, with replacement)."""
    rng = np.random.default_rng(iteration_seed(cfg.train.seed, iteration, Stream.PROMPTS))
    return sample_prompts(pool, cfg.rollout.prompts_per_iter, rng)
