"""Cheap test-only rewards, importable by a reward-server subprocess as 'helpers_rewards:ClassName' (with
tests/rewards on PYTHONPATH)."""

from __future__ import annotations

import time

import numpy as np

from vgpo_fast.rewards.base import NonFinitePolicy, RewardModel


class Brightness(RewardModel):
    """Mean pixel value / 255 of each image, in [0, 1]; exact for constant images (value v -> v / 255)."""

    name = "brightness"
    low = 0.0
    high = 1.0

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return images.reshape(images.shape[0], -1).mean(axis=1, dtype=np.float64) / 255.0


class Probe(Brightness):
    """Brightness, with behaviour chosen by prompt prefix, to exercise the server's failure paths.

    'nan ...' / 'inf ...' -> that image scores NaN / +inf; 'raise ...' -> the whole call raises ValueError
    naming the prompt; 'sleep:S ...' -> the call sleeps S seconds (once per call: the longest asked for).
    `delay_s` is slept on every call, to make a server busy enough that concurrent requests queue up.
    """

    name = "probe"

    def __init__(self, delay_s: float = 0.0, nonfinite: NonFinitePolicy = "raise") -> None:
        super().__init__(nonfinite)
        self.delay_s = float(delay_s)

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        for p in prompts:
            if p.startswith("raise"):
                raise ValueError(f"probe cannot score prompt {p!r}")
        sleeps = [float(p.split()[0].split(":", 1)[1]) for p in prompts if p.startswith("sleep:")]
        time.sleep(self.delay_s + max(sleeps, default=0.0))
        scores = super()._score(images, prompts)
        for i, p in enumerate(prompts):
            if p.startswith("nan"):
                scores[i] = np.nan
            elif p.startswith("inf"):
                scores[i] = np.inf
        return scores


def constant_images(values: list[int], size: int = 8) -> np.ndarray:
    """uint8 `[len(values), size, size, 3]`, image i filled with `values[i]` (Brightness values[i] / 255)."""
    return np.broadcast_to(np.asarray(values, dtype=np.uint8)[:, None, None, None], (len(values), size, size, 3)).copy()
