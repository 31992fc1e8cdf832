"""Sampling schedule, the sparse reward-step set S (docs/spec.md section 3) and the SDE window (Flow-GRPO-Fast).

sigmas(T, shift)                 -> [T+1] float32, 1 = sigma_0 > ... > sigma_T = 0 (diffusers' schedule)
timesteps(sigmas)                -> [T] the model's conditioning, sigma_j * 1000
reward_steps(T, spec)            -> sorted list S of evaluated steps, always containing T-1
fill_sparse_rewards(R_eval, S, T) -> [..., T] with R_j := R_{min{m in S : m >= j}}
sde_window(T, window)            -> [T] bool, True where step j is stochastic (SDE), False for ODE steps
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

RewardStepsSpec = str | int | Sequence[int]

NUM_TRAIN_TIMESTEPS = 1000


def _check_steps(name: str, steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"{name} must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return steps


def sigmas(steps: int, shift: float = 3.0) -> torch.Tensor:
    """The `[steps + 1]` float32 sigmas of diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift)` after
    `set_timesteps(steps)`: sigma_0 = 1, strictly decreasing, sigma_T = 0. The model is conditioned on
    `timestep = sigma * 1000` (see `timesteps`)."""
    _check_steps("steps", steps)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    from diffusers import FlowMatchEulerDiscreteScheduler  # lazy: diffusers is slow to import

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=float(shift))
    scheduler.set_timesteps(steps, device="cpu")
    return scheduler.sigmas.detach().to(device="cpu", dtype=torch.float32).clone()


def timesteps(sigma: torch.Tensor) -> torch.Tensor:
    """The model's timestep conditioning `sigma * 1000` for every step: `[T+1] -> [T]` (drops sigma_T = 0)."""
    return sigma[:-1] * NUM_TRAIN_TIMESTEPS


def reward_steps(T: int, spec: RewardStepsSpec = "all") -> list[int]:
    """The sorted set S of steps whose projection x0_hat_j is decoded and scored; S always contains T-1.

    spec: "all" -> every step 0..T-1; an int k >= 1 -> a stride anchored at the end, {T-1, T-1-k, T-1-2k, ...}
    (every evaluated reward then covers k steps; k = 1 is "all"); a sequence of step indices in [0, T) -> those
    steps plus T-1 (the terminal reward is always evaluated), deduplicated and sorted.
    """
    _check_steps("T", T)
    if isinstance(spec, str):
        if spec != "all":
            raise ValueError(f"reward_steps must be 'all', a stride k >= 1 or a list of steps, got {spec!r}")
        return list(range(T))
    if isinstance(spec, bool):
        raise ValueError("reward_steps must be 'all', a stride k >= 1 or a list of steps, got a bool")
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(f"reward_steps stride must be >= 1, got {spec}")
        return list(range((T - 1) % spec, T, spec))
    if isinstance(spec, torch.Tensor):
        spec = spec.tolist()
    if not isinstance(spec, Sequence):
        raise ValueError(f"reward_steps must be 'all', a stride k >= 1 or a list of steps, got {type(spec).__name__}")
    out = {T - 1}
    for m in spec:
        if isinstance(m, bool) or not isinstance(m, int):
            raise ValueError(f"reward_steps entries must be ints, got {m!r}")
        if not 0 <= m < T:
            raise ValueError(f"reward_steps entry {m} is outside [0, {T})")
        out.add(m)
    return sorted(out)


def _segment_index(S: Sequence[int], T: int) -> list[int]:
    """For each step j in [0, T), the position in S of min{m in S : m >= j}."""
    if len(S) == 0 or list(S) != sorted(set(S)) or S[-1] != T - 1 or S[0] < 0:
        raise ValueError(
            f"S must be a strictly increasing list of steps in [0, {T}) ending at T-1 = {T - 1}, "
            f"got {list(S)} (build it with reward_steps)"
        )
    index, pos = [], 0
    for j in range(T):
        while S[pos] < j:
            pos += 1
        index.append(pos)
    return index


def fill_sparse_rewards(R_eval: torch.Tensor, S: Sequence[int], T: int) -> torch.Tensor:
    """Dense instant rewards `[..., T]` from the evaluated ones `R_eval [..., |S|]` (column i is step S[i]):
    `R_j := R_{min{m in S : m >= j}}`, so R is constant on each segment (S[i-1], S[i]]."""
    _check_steps("T", T)
    if not isinstance(R_eval, torch.Tensor) or R_eval.dim() < 1:
        raise ValueError("R_eval must be a tensor [..., |S|]")
    if R_eval.shape[-1] != len(S):
        raise ValueError(f"R_eval's last dim must be |S| = {len(S)}, got shape {tuple(R_eval.shape)}")
    index = torch.tensor(_segment_index(list(S), T), dtype=torch.long, device=R_eval.device)
    return R_eval.index_select(-1, index)


def sde_window(T: int, window: tuple[int, int] | None = None) -> torch.Tensor:
    """`[T]` bool: True where step j is an SDE (stochastic) step. `window=None`: every step; `(start, end)`: the
    half-open range start <= j < end, with 0 <= start < end <= T; every other step is an ODE step (a = 0)."""
    _check_steps("T", T)
    mask = torch.zeros(T, dtype=torch.bool)
    if window is None:
        mask[:] = True
        return mask
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"sde window must be None or a pair (start, end), got {window!r}")
    start, end = window
    if any(isinstance(w, bool) or not isinstance(w, int) for w in (start, end)):
        raise ValueError(f"sde window bounds must be ints, got {window!r}")
    if not 0 <= start < end <= T:
        raise ValueError(f"sde window (start, end) must satisfy 0 <= start < end <= T = {T}, got {window!r}")
    mask[start:end] = True
    return mask
