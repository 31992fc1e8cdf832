"""The built-in tasks as one description each: image size, prompt splits, ground-truth renderer, rewards, model
sizes, and where the shipped base model lives.

    task = get_task("shapes")
    images = task.render(prompts, seeds)          # uint8 [B, H, W, 3] ground truth for pretraining
    reward = build_reward(task.reward)            # the RL reward; task.eval_reward for held-out evaluation

Importing this module registers the tasks' rewards with `vgpo_fast.rewards.registry` (`TASK_REWARDS`: "shapes",
"compositional"), so `build_reward({"name": "shapes", ...})` works in any process that imported it; the rewards
package itself knows no task (docs/architecture.md, layering).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from vgpo_fast.rewards.registry import register_reward

__all__ = ["TASKS", "TASK_REWARDS", "Task", "get_task"]

# Reward name -> "module:attribute", registered on import (the reward specs of `Task.reward` name these).
TASK_REWARDS: dict[str, str] = {
    "shapes": "vgpo_fast.tasks.shapes.reward:CompositionalReward",
    "compositional": "vgpo_fast.tasks.shapes.reward:CompositionalReward",
}
for _name, _target in TASK_REWARDS.items():
    register_reward(_name, _target)

_TASK_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Task:
    """A built-in task.

    image_size:  (H, W) pixels of the pixel-space images the tiny model generates (channels = 3).
    train / held_out: `{category: prompts}`; held-out prompts are never seen in pretraining or RL.
    render(prompts, seeds) -> uint8 `[B, H, W, 3]`: one ground-truth image per (prompt, seed), deterministic.
    reward / eval_reward: `build_reward` specs; RL trains on `reward`, held-out numbers use `eval_reward`.
    text_level / max_length: the task text encoder's tokenizer; vocab: every token of every prompt.
    model: `tiny_transformer_config` keyword arguments (without image_size).
    miscaption(prompt, rng) -> the prompt of a scene that `prompt` describes with one mistake (pretraining's
    `caption_noise`: a noisy caption); None when the task has none.
    data_version: changes whenever the prompts, split or renderer output change.
    """

    name: str
    image_size: tuple[int, int]
    train: dict[str, tuple[str, ...]]
    held_out: dict[str, tuple[str, ...]]
    render: Callable[[Sequence[str], Sequence[int]], np.ndarray]
    reward: dict[str, Any]
    eval_reward: dict[str, Any]
    text_level: str
    max_length: int
    model: dict[str, Any] = field(default_factory=dict)
    miscaption: Callable[[str, np.random.Generator], str] | None = None

    @property
    def base_model_dir(self) -> Path:
        """The shipped base model: `transformer/` + `text_encoder/` + `pretrain.json`."""
        return _TASK_DIR / self.name / "base_model"

    @property
    def vocab(self) -> list[str]:
        from vgpo_fast.models.text_encoder import build_vocab

        texts = [p for split in (self.train, self.held_out) for ps in split.values() for p in ps]
        return build_vocab(texts, self.text_level)

    def prompts(self, split: str) -> dict[str, tuple[str, ...]]:
        """`{category: prompts}` of split 'train' or 'held_out'."""
        if split not in ("train", "held_out"):
            raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
        return self.train if split == "train" else self.held_out

    @property
    def data_version(self) -> str:
        """A short hash of the prompts of both splits and of a fixed set of rendered ground-truth images."""
        h = hashlib.sha256()
        for split in (self.train, self.held_out):
            for cat in sorted(split):
                h.update(cat.encode())
                for p in split[cat]:
                    h.update(p.encode())
        probe = [ps[0] for ps in self.train.values() if ps]
        h.update(np.ascontiguousarray(self.render(probe, list(range(len(probe))))).tobytes())
        return h.hexdigest()[:16]


def _shapes() -> Task:
    from vgpo_fast.tasks.shapes import miscaptioned, render_prompts, split_prompts

    split = split_prompts()
    size = 16
    return Task(
        name="shapes",
        image_size=(size, size),
        train=split.train,
        held_out=split.held_out,
        render=lambda prompts, seeds: render_prompts(prompts, seeds, image_size=size),
        reward={"name": "shapes", "mode": "partial"},
        eval_reward={"name": "shapes", "mode": "strict"},
        text_level="word",
        max_length=16,
        model={"patch_size": 2, "width": 128, "layers": 6, "heads": 2, "text_dim": 128, "pooled_dim": 128},
        miscaption=miscaptioned,
    )


def _text() -> Task:
    from vgpo_fast.tasks.text import make_prompt, render_batch, words

    size = (16, 64)
    cells = max(len(w) for w in words("all"))  # 8: one 8 px cell per character, fixed pitch
    train = {"words": tuple(make_prompt(w) for w in words("train"))}
    held_out = {"words": tuple(make_prompt(w) for w in words("heldout"))}

    def render(prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        from vgpo_fast.tasks.text import target_text

        del seeds  # one rendering per word: the text task's ground truth has no layout randomness
        return render_batch([target_text(p) for p in prompts], size=size, cells=cells)

    return Task(
        name="text",
        image_size=size,
        train=train,
        held_out=held_out,
        render=render,
        reward={"name": "ocr", "mode": "rec"},
        eval_reward={"name": "ocr", "mode": "rec"},
        text_level="char",
        max_length=40,
        model={"patch_size": 2, "width": 128, "layers": 6, "heads": 2, "text_dim": 128, "pooled_dim": 128},
    )


TASKS: dict[str, Callable[[], Task]] = {"shapes": _shapes, "text": _text}


@cache
def get_task(name: str) -> Task:
    """The built-in task `name` ('shapes' or 'text'); an unknown name raises ValueError with a suggestion."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; built-in tasks: {sorted(TASKS)}")
    return TASKS[name]()
