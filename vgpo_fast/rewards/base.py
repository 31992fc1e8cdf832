"""The reward interface: a batched, asynchronous scorer of images against prompts.

Every reward (in-process model, weighted combination, HTTP client of a reward server) is a `RewardModel`:
`score(images, prompts) -> float32 [B]` synchronously, `submit(...) -> Future` asynchronously. Images arrive as
uint8 `[B, H, W, 3]` / float `[B, 3, H, W]` in [0, 1] tensors or arrays, or a list of PIL images; subclasses see
one canonical form, a uint8 numpy array `[B, H, W, 3]`.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

NonFinitePolicy = Literal["raise", "drop"]


class RewardError(RuntimeError):
    """A reward could not be computed (non-finite score, unreachable server, bad reply)."""


def to_uint8_images(images: Any) -> np.ndarray:
    """Canonical image batch: uint8 numpy `[B, H, W, 3]`.

    Accepts a uint8 tensor/array `[B, H, W, 3]`, a float tensor/array `[B, 3, H, W]` with values in [0, 1],
    or a sequence of PIL images (converted to RGB; all of one size).
    """
    if isinstance(images, Sequence) and not isinstance(images, (np.ndarray, torch.Tensor)):
        if len(images) == 0:
            raise ValueError("images is an empty sequence")
        not_pil = [im for im in images if not hasattr(im, "convert")]
        if not_pil:
            raise ValueError(
                f"images must be a tensor, an array or a list of PIL images, got a list holding "
                f"{type(not_pil[0]).__name__}"
            )
        arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"images must all have one size, got {sorted({a.shape for a in arrays})}")
        return np.stack(arrays)
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu()
        images = images.float().numpy() if images.is_floating_point() else images.numpy()
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a tensor, an array or a list of PIL images, got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D ([B, H, W, 3] uint8 or [B, 3, H, W] float), got shape {images.shape}")
    if images.dtype == np.uint8:
        if images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be [B, H, W, 3], got shape {images.shape}")
        return np.ascontiguousarray(images)
    if np.issubdtype(images.dtype, np.floating):
        if images.shape[1] != 3:
            raise ValueError(f"float images must be [B, 3, H, W] in [0, 1], got shape {images.shape}")
        if not np.isfinite(images).all():
            raise ValueError("float images contain NaN or inf")
        scaled = np.clip(images, 0.0, 1.0) * 255.0
        return np.ascontiguousarray(np.rint(scaled).astype(np.uint8).transpose(0, 2, 3, 1))
    raise ValueError(f"images must be uint8 or floating point, got dtype {images.dtype}")


def _prompt_list(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        # list("a cat") would silently pair each image with one character.
        raise ValueError(f"prompts must be a sequence of strings, one per image, got a str: {prompts!r}")
    return list(prompts)


class RewardModel(ABC):
    """A batched scorer with a declared range `[low, high]` and a name.

    Subclasses implement `_score(images uint8 [B, H, W, 3], prompts) -> float array [B]`. Non-finite scores are
    never passed on silently: `nonfinite="raise"` raises `RewardError` naming the prompt; `"drop"` returns NaN
    in their place, and the caller drops every prompt group that holds one (`finite_group_mask`).
    """

    name: str = "reward"
    low: float = 0.0
    high: float = 1.0

    def __init__(self, nonfinite: NonFinitePolicy = "raise") -> None:
        if nonfinite not in ("raise", "drop"):
            raise ValueError(f"nonfinite must be 'raise' or 'drop', got {nonfinite!r}")
        self.nonfinite = nonfinite
        self._executor: cf.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    @abstractmethod
    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """Scores of uint8 images `[B, H, W, 3]` against `prompts`, float array `[B]`."""

    def score(self, images: Any, prompts: Sequence[str]) -> torch.Tensor:
        """Scores `[B]` float32 of a batch of images against their prompts (one prompt per image)."""
        batch = to_uint8_images(images)
        prompts = _prompt_list(prompts)
        if len(prompts) != batch.shape[0]:
            raise ValueError(f"prompts must have one entry per image: {batch.shape[0]} images, {len(prompts)} prompts")
        scores = np.asarray(self._score(batch, prompts), dtype=np.float64).reshape(-1)
        if scores.shape[0] != batch.shape[0]:
            raise RewardError(f"reward {self.name!r} returned {scores.shape[0]} scores for {batch.shape[0]} images")
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size and self.nonfinite == "raise":
            i = int(bad[0])
            raise RewardError(
                f"reward {self.name!r} returned {scores[i]} for prompt {prompts[i]!r} (image {i}); "
                f"{bad.size} non-finite of {scores.size}"
            )
        scores[bad] = np.nan  # "drop": one marker (NaN) for every non-finite score, for finite_group_mask
        return torch.from_numpy(scores.astype(np.float32))

    def submit(self, images: Any, prompts: Sequence[str]) -> cf.Future:
        """Scores asynchronously; the future resolves to what `score` returns (or raises what it raises).

        The images are converted and copied here, in the caller's thread, so the caller may reuse or change its
        buffers (e.g. the next denoising step's latents) as soon as this returns.
        """
        batch = to_uint8_images(images).copy()
        with self._executor_lock:
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"reward-{self.name}")
        return self._executor.submit(self.score, batch, _prompt_list(prompts))

    def close(self) -> None:
        """Releases the worker thread (and, in subclasses, connections or sessions)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> RewardModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WeightedSum(RewardModel):
    """`sum_i w_i * reward_i`; its range is the weighted sum of the parts' ranges."""

    def __init__(self, parts: Sequence[tuple[RewardModel, float]], nonfinite: NonFinitePolicy = "raise") -> None:
        super().__init__(nonfinite)
        if not parts:
            raise ValueError("WeightedSum needs at least one (reward, weight) pair")
        self.parts = list(parts)
        self.name = "+".join(f"{w:g}*{r.name}" for r, w in self.parts)
        self.low = sum(min(w * r.low, w * r.high) for r, w in self.parts)
        self.high = sum(max(w * r.low, w * r.high) for r, w in self.parts)

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        total = np.zeros(images.shape[0], dtype=np.float64)
        for reward, weight in self.parts:
            total += weight * reward.score(images, prompts).double().numpy()
        return total

    def close(self) -> None:
        for reward, _ in self.parts:
            reward.close()
        super().close()


def finite_group_mask(rewards: torch.Tensor) -> torch.Tensor:
    """`[P]` bool: True for the prompt groups of `rewards [P, G, ...]` whose every score is finite."""
    if rewards.dim() < 2:
        raise ValueError(f"rewards must be [P, G, ...], got shape {tuple(rewards.shape)}")
    return torch.isfinite(rewards.reshape(rewards.shape[0], -1)).all(dim=1)
