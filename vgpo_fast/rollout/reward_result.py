"""What the reward pipeline returns for one rollout batch (`RewardResult`), and its overlap arithmetic."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RewardResult", "merge_timings", "overlap_fraction"]


@dataclass
class RewardResult:
    """The rewards of one rollout batch.

    rewards:   [B, T] float32, dense instant rewards R_j (steps outside S filled per `fill_sparse_rewards`).
    evaluated: [B, |S|] float32, the raw rewards of the evaluated steps; column i is step steps[i].
    steps:     S, sorted, always ending at T-1.
    timings:   seconds. decode / reward: busy time of the worker (for an async-submit reward, `reward` is the
               sum of request latencies, which overlap one another); wait: time the main thread was blocked
               (in `__call__` while `max_in_flight` jobs were pending, in `finish`, and with overlap=False the
               whole of each job); enqueue: main-thread time in `__call__` outside the wait (the clone);
               per_step: {"steps", "decode", "reward", "wait"} lists aligned with `steps`, and the worker's
               absolute `time.perf_counter()` stamps of each job: "start" (decode begins), "decode_end",
               "end" (scores back; for an async-submit reward, the request's completion) — the reward lane
               of a timeline (`vgpo_fast.profiling`);
               overlap_frac: 1 - wait / (decode + reward), clipped to [0, 1]; max_pending: most jobs pending
               at once; mode: "serial" | "worker" | "async-submit".
    """

    rewards: torch.Tensor
    evaluated: torch.Tensor
    steps: list[int]
    timings: dict


def overlap_fraction(wait: float, busy: float) -> float:
    """The share of the reward work (`busy`: decode + reward seconds) that the rollout did not wait for
    (`wait` seconds): 1 - wait / busy, clipped to [0, 1]; 0 when there was no reward work."""
    frac = 1.0 - wait / busy if busy > 0 else 0.0
    return float(min(1.0, max(0.0, frac))) if math.isfinite(frac) else 0.0


def merge_timings(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One batch's engine timings from its chunks' (`RewardResult.timings`): seconds summed, and the overlap
    fraction of the sums."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, (int, float)) and key not in ("overlap_frac", "chunk"):
                out[key] = out.get(key, 0.0) + float(value)
    out["overlap_frac"] = overlap_fraction(out.get("wait", 0.0), out.get("decode", 0.0) + out.get("reward", 0.0))
    return out
