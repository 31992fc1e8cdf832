"""The shapes task's reward: its compositional verifier (`verifier`) as a `RewardModel`.

    build_reward({"name": "shapes", "mode": "partial"})   # once vgpo_fast.tasks.registry is imported
    build_reward("vgpo_fast.tasks.shapes.reward:CompositionalReward?mode=partial")   # in any process

"shapes" and "compositional" are registered names of this class (`vgpo_fast.tasks.registry`); the explicit
target form above is what `resolve_spec` turns them into for a process that has not imported the task registry
(a `ProcessReward` child, a reward server started as `python -m vgpo_fast.rewards.server`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from vgpo_fast.rewards.base import NonFinitePolicy, RewardModel, to_uint8_images

from .prompts import parse_prompt
from .scene import Requirements, min_palette_distance
from .verifier import Verdict, default_max_color_dist, detect_objects, evaluate_detections, soft_partial

__all__ = ["CompositionalReward"]


class CompositionalReward(RewardModel):
    """Shapes-task verifier as a reward: `mode="strict"` gives 0/1, `"partial"` partial credit in [0, 1],
    `"soft"` partial credit with graded shape scores (`soft_partial`; 1 exactly when strict passes).

    Images uint8 `[B, H, W, 3]`, square, 16-128 px; prompts in the shapes grammar (a prompt outside it raises
    ValueError naming it). Deterministic; ~0.3 ms per 24 px image in batches of 64 (one CPU core).
    """

    low = 0.0
    high = 1.0

    def __init__(
        self,
        mode: Literal["strict", "partial", "soft"] = "strict",
        attribute_credit: float = 0.25,
        max_color_dist: float | None = None,
        nonfinite: NonFinitePolicy = "raise",
    ) -> None:
        super().__init__(nonfinite)
        if mode not in ("strict", "partial", "soft"):
            raise ValueError(f"mode must be 'strict', 'partial' or 'soft', got {mode!r}")
        if not 0.0 <= attribute_credit <= 0.5:
            raise ValueError(
                f"attribute_credit must be in [0, 0.5] (an exact match must outweigh two "
                f"partial ones), got {attribute_credit}"
            )
        if max_color_dist is not None and not 0.0 < max_color_dist <= 0.5 * min_palette_distance():
            raise ValueError(
                f"max_color_dist must be in (0, {0.5 * min_palette_distance():.1f}] so that "
                f"colours cannot be confused, got {max_color_dist}"
            )
        self.mode = mode
        self.attribute_credit = float(attribute_credit)
        self.max_color_dist = default_max_color_dist() if max_color_dist is None else float(max_color_dist)
        self.name = f"compositional_{mode}"

    def evaluate(self, images: Any, prompts: Sequence[str]) -> list[Verdict]:
        """Full verdicts of `images` (any form `score` takes, e.g. uint8 `[B, H, W, 3]`) against `prompts`
        (one per image)."""
        images = to_uint8_images(images)
        prompts = list(prompts)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"prompts must have one entry per image: {images.shape[0]} images, {len(prompts)} prompts")
        return self._verdicts(images, [parse_prompt(p) for p in prompts])

    def _verdicts(self, images: np.ndarray, requirements: list[Requirements]) -> list[Verdict]:
        detections = detect_objects(images, self.max_color_dist)
        size = images.shape[1]
        return [
            evaluate_detections(r, d, size, self.attribute_credit)
            for r, d in zip(requirements, detections, strict=True)
        ]

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        requirements = [parse_prompt(p) for p in prompts]
        verdicts = self._verdicts(images, requirements)
        if self.mode == "strict":
            return np.array([float(v.strict) for v in verdicts])
        if self.mode == "soft":
            size = images.shape[1]
            return np.array(
                [
                    1.0 if v.strict else soft_partial(r, list(v.detections), size, self.attribute_credit)
                    for v, r in zip(verdicts, requirements, strict=True)
                ]
            )
        return np.array([v.partial for v in verdicts])
