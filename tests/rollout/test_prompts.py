"""Generic prompt sampling (`vgpo_fast.rollout.prompts`): category-uniform draws and the fixed evaluation set, the
same functions the shapes task and pretraining re-export."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vgpo_fast.rollout.prompts import as_rng, eval_prompt_set, sample_prompts

POOL = {"big": tuple(f"b{i}" for i in range(90)), "small": ("s0", "s1"), "empty": ()}


def test_sample_prompts_draws_categories_uniformly_and_replays_from_a_seed() -> None:
    drawn = sample_prompts(POOL, 4000, rng=3)
    assert drawn == sample_prompts(POOL, 4000, np.random.default_rng(3))
    counts = Counter(p[0] for p in drawn)
    assert set(counts) == {"b", "s"} and abs(counts["s"] / 4000 - 0.5) < 0.03  # "small" as often as "big"
    assert set(p for p in drawn if p[0] == "s") == {"s0", "s1"}
    assert sample_prompts(POOL, 0) == []


def test_sample_prompts_is_the_documented_draw() -> None:
    """A category index, then a uniform in [0, 1) per prompt, from one generator: the draw the trainer's and
    pretraining's batches depend on (changing it changes every run)."""
    rng = np.random.default_rng(11)
    cats, picks = rng.integers(2, size=5), rng.random(5)
    pools = [POOL["big"], POOL["small"]]
    want = [pools[c][int(u * len(pools[c]))] for c, u in zip(cats, picks, strict=True)]
    assert sample_prompts(POOL, 5, rng=11) == want


def test_sample_prompts_errors() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        sample_prompts(POOL, -1)
    with pytest.raises(ValueError, match="at least one non-empty category"):
        sample_prompts({"a": ()}, 1)
    for bad in (-1, True, 1.5, "0"):
        with pytest.raises(ValueError, match="rng must be a numpy Generator or a non-negative int seed"):
            as_rng(bad)


def test_eval_prompt_set_is_fixed_and_takes_a_pool_or_its_held_out_split() -> None:
    prompts, seeds = eval_prompt_set(POOL, 3, 2)
    assert len(prompts) == len(seeds) == 6
    assert prompts[0::2] == prompts[1::2] == sample_prompts(POOL, 3, np.random.default_rng(1234))
    assert seeds == [10_000, 10_001] * 3
    assert eval_prompt_set(POOL, 3, 2) == (prompts, seeds)

    class WithHeldOut:
        held_out = POOL

    assert eval_prompt_set(WithHeldOut(), 3, 2) == (prompts, seeds)
    assert eval_prompt_set(POOL, 3, 1, seed=5)[0] == sample_prompts(POOL, 3, np.random.default_rng(5))


def test_the_old_import_places_are_the_same_functions() -> None:
    from vgpo_fast.tasks.pretrain import eval_prompt_set as old_eval
    from vgpo_fast.tasks.registry import get_task
    from vgpo_fast.tasks.shapes import sample_prompts as old_sample
    from vgpo_fast.tasks.shapes.scene import as_rng as old_as_rng

    assert old_sample is sample_prompts and old_eval is eval_prompt_set and old_as_rng is as_rng
    task = get_task("shapes")
    assert eval_prompt_set(task, 8, 2) == eval_prompt_set(task.held_out, 8, 2)
