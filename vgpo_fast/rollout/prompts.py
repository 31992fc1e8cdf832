"""Prompt sampling from a `{category: prompts}` pool: category-uniform draws and the fixed evaluation set.

    rng = np.random.default_rng(seed)
    prompts = sample_prompts(pool, 16, rng)                  # 16 training prompts, categories equally likely
    prompts, seeds = eval_prompt_set(held_out, 64, 2)        # 64 prompts x 2 noise seeds, the same every time

Pure numpy; generic over any pool (a task's splits, or `{"file": prompts}` read from a file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["as_rng", "eval_prompt_set", "sample_prompts"]


def as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    """`rng` itself if a Generator, else a Generator seeded with the non-negative int `rng`."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy Generator or a non-negative int seed, got {rng!r}")


def sample_prompts(prompts: Mapping[str, Sequence[str]], n: int, rng: np.random.Generator | int = 0) -> list[str]:
    """`n` prompts drawn with replacement: a category uniformly (so no category dominates whatever its size),
    then a prompt of it uniformly. `prompts` is `{category: prompts}`, e.g. `split_prompts().train`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    categories = [c for c, ps in prompts.items() if len(ps) > 0]
    if not categories:
        raise ValueError("prompts must hold at least one non-empty category")
    rng = as_rng(rng)
    cats = rng.integers(len(categories), size=n)
    picks = rng.random(n)
    out = []
    for c, u in zip(cats, picks, strict=True):
        pool = prompts[categories[c]]
        out.append(pool[int(u * len(pool))])
    return out


def eval_prompt_set(
    pool: Mapping[str, Sequence[str]] | Any, n_prompts: int, n_seeds: int, seed: int = 1234
) -> tuple[list[str], list[int]]:
    """A fixed evaluation set: `n_prompts` category-uniform prompts of `pool` x `n_seeds` noise seeds.

    `pool`: `{category: prompts}`, or an object with a `held_out` split of that form (a `Task`: its held-out
    prompts). Returns (prompts, seeds), each prompt repeated `n_seeds` times with seeds 10000, 10001, ..."""
    pool = pool if isinstance(pool, Mapping) else pool.held_out
    prompts = sample_prompts(pool, n_prompts, np.random.default_rng(seed))
    return [p for p in prompts for _ in range(n_seeds)], [10_000 + i for _ in prompts for i in range(n_seeds)]
