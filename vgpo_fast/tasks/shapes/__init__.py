"""The shapes task: GenEval-like prompts about coloured shapes, ground-truth scenes, and their renderer.

- `scene`: palette, shapes, sizes; `Requirements` (what a prompt asks), `Scene`, layout sampler, near misses.
- `prompts`: the grammar, six benchmark categories, the train / held-out split, parsing.
- `render`: deterministic hard-edged rasterisation to uint8 `[H, W, 3]`.
- `verifier`: the compositional verifier, pixels -> detections -> `Verdict` (numpy only).
- `reward`: `CompositionalReward`, the verifier as a `RewardModel` (registered as "shapes" and "compositional" by
  `vgpo_fast.tasks.registry`); not imported here, so that the task's data needs no torch.
`sample_prompts` (category-uniform draws) is the generic `vgpo_fast.rollout.prompts.sample_prompts`.
"""

from .prompts import (
    CATEGORIES,
    PromptSplit,
    all_prompts,
    category_of,
    category_prompts,
    format_prompt,
    miscaptioned,
    parse_prompt,
    sample_prompts,
    split_prompts,
)
from .render import render, render_batch, render_prompts, sample_prompt_scene
from .scene import (
    COLORS,
    DEFAULT_IMAGE_SIZE,
    PALETTE,
    SHAPES,
    ObjectSpec,
    Requirements,
    Scene,
    SceneObject,
    near_miss,
    near_miss_kinds,
    sample_scene,
)

__all__ = [
    "CATEGORIES",
    "COLORS",
    "DEFAULT_IMAGE_SIZE",
    "PALETTE",
    "SHAPES",
    "ObjectSpec",
    "PromptSplit",
    "Requirements",
    "Scene",
    "SceneObject",
    "all_prompts",
    "category_of",
    "category_prompts",
    "format_prompt",
    "miscaptioned",
    "near_miss",
    "near_miss_kinds",
    "parse_prompt",
    "render",
    "render_batch",
    "render_prompts",
    "sample_prompt_scene",
    "sample_prompts",
    "sample_scene",
    "split_prompts",
]
