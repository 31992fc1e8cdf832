"""The reward-loop profiler: the trainer's rollout (and optionally its update) under four reward modes, timed
per step on two lanes.

    trainer = Trainer(cfg)
    prof = Profiler(trainer, sparse_k=2)
    report = prof.profile(iters=3, warmup=1, train=True)     # a JSON-ready dict (`summarise`)
    prof.close()

Modes (one `RewardPipeline` each, over the trainer's own reward, decoder, transformer and schedule) come from the
estimator registry (`modes.py`); the default ones:
- `flow_grpo`:     the terminal reward only (S = {T-1}), GRPO advantages;
- `vgpo-serial`:   dense rewards (S = all steps), the rollout waits for each one (overlap off);
- `vgpo-overlap`:  dense rewards decoded and scored by the worker while the next steps run;
- `vgpo-sparse`:   rewards every k steps (S = `reward_steps(T, k)`), overlapped.
Every mode runs the trainer's own rollout, advantages (its mode's estimator) and update.

Each iteration is a partition of its wall time into contiguous segments of the main lane: `setup` (prompts,
noise, prompt encoding, gathering results), per step j `transformer` (the CFG velocity), `sde_op` (sde_step and
the loop), `reward_wait` (the hand-off of a projection to the reward pipeline: the clone, and with overlap off or a
full queue the wait for the reward), `reward_finish` (waiting for the last rewards after the loop), `advantage`,
`train`. The reward lane holds the worker's `decode` and `reward` intervals (engine stamps). Measures:

- reward overhead: mean iteration time of a mode / that of `flow_grpo` (the same config and iterations);
- overlap efficiency: the share of the reward lane's busy time that falls outside the main lane's reward waits,
  i.e. was hidden behind denoising; in [0, 1]. The terminal reward starts after the last step, so with |S|
  equal jobs the ceiling is 1 - 1/|S| (`efficiency_ceiling`; per rollout chunk: each chunk's last reward is
  waited for before the next chunk starts).

Modes run round-robin, the order reversed every round, so a change in the machine's load hits all modes alike.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from vgpo_fast.rollout.collect import RolloutBatch
from vgpo_fast.rollout.engine import RewardPipeline
from vgpo_fast.train.estimators import AdvantageResult
from vgpo_fast.train.trainer import Trainer
from vgpo_fast.train.update import train_steps_per_trajectory

from .clock import Clock
from .modes import DEFAULT_MODES, Mode, available_modes, parse_mode

__all__ = ["DEFAULT_MODES", "MAIN_PHASES", "MODES", "Profiler", "available_modes", "interval_overlap", "summarise"]

MODES = DEFAULT_MODES  # the name of earlier versions
MAIN_PHASES = ("setup", "transformer", "sde_op", "reward_wait", "reward_finish", "advantage", "train")


def _label(name: str) -> contextlib.AbstractContextManager:
    return torch.profiler.record_function(f"vgpo.{name}")


def interval_overlap(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> float:
    """Length of (union of intervals a) intersected with (union of intervals b), seconds."""

    def union(xs: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for s, e in sorted((s, e) for s, e in xs if e > s):
            if out and s <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], e))
            else:
                out.append((s, e))
        return out

    ua, ub = union(a), union(b)
    total, i, k = 0.0, 0, 0
    while i < len(ua) and k < len(ub):
        lo, hi = max(ua[i][0], ub[k][0]), min(ua[i][1], ub[k][1])
        total += max(0.0, hi - lo)
        if ua[i][1] < ub[k][1]:
            i += 1
        else:
            k += 1
    return total


class Profiler:
    """Instrumented iterations of `trainer` under the reward modes (module docstring).

    sparse_k: the stride of `vgpo-sparse`; modes: which modes get a pipeline. The trainer's own
    `reward_pipeline` is left alone; `update` (train=True) moves the trainer's weights as training does.
    """

    def __init__(self, trainer: Trainer, sparse_k: int = 2, modes: Sequence[str] = DEFAULT_MODES) -> None:
        bad = [m for m in modes if m not in available_modes()]
        if bad or not modes:
            raise ValueError(f"modes must be a non-empty list of {available_modes()}, got {list(modes)}")
        if isinstance(sparse_k, bool) or not isinstance(sparse_k, int) or sparse_k < 1:
            raise ValueError(f"sparse_k must be an int >= 1, got {sparse_k!r}")
        self.trainer, self.sparse_k = trainer, sparse_k
        self.mode_of: dict[str, Mode] = {m: parse_mode(m) for m in modes}
        self.modes = tuple(self.mode_of)
        self.T = trainer.cfg.rollout.steps
        self.pipelines: dict[str, RewardPipeline] = {
            name: trainer.make_reward_pipeline(mode.reward_steps(self.T, sparse_k), mode.overlap)
            for name, mode in self.mode_of.items()
        }
        self.clock = Clock(trainer.device)

    # ------------------------------------------------------------------------------------------ one iteration
    def _rollout(self, mode: str, iteration: int, marks: list) -> tuple[RolloutBatch, list[dict]]:
        """The trainer's own rollout with this mode's reward pipeline, every transformer call, reward hand-off
        and end-of-chunk wait stamped into `marks` as (kind, chunk, step, start mark, end mark)."""
        clock = self.clock

        @contextlib.contextmanager
        def probe(kind: str, chunk: int, step: int) -> Iterator[None]:
            m0 = clock.mark()
            with _label({"reward_wait": "reward_handoff"}.get(kind, kind)):
                yield
            marks.append((kind, chunk, step, m0, clock.mark()))

        batch = self.trainer.rollout(iteration, reward_pipeline=self.pipelines[mode], probe=probe)
        return batch, batch.reward_chunks

    def _advantages(self, mode: str, batch: RolloutBatch) -> tuple[AdvantageResult, torch.Tensor]:
        return self.trainer.advantages(batch, self.mode_of[mode].estimator, steps=self.pipelines[mode].steps)

    def iteration(self, mode: str, iteration: int, train: bool = False) -> dict[str, Any]:
        """One instrumented iteration; returns its record (times in seconds from the iteration's start)."""
        if mode not in self.pipelines:
            raise ValueError(f"mode must be one of {list(self.pipelines)}, got {mode!r}")
        clock = self.clock
        marks: list = []
        t_start = clock.start()
        batch, reward_timings = self._rollout(mode, iteration, marks)
        m_rollout = clock.mark()
        if train:
            with _label("advantage"):
                adv, keep = self._advantages(mode, batch)
            m_adv = clock.mark()
            with _label("train"):
                self.trainer.update(batch, adv, keep, iteration)
            m_train = clock.mark()
        clock.sync()
        t_end = time.perf_counter()
        total = t_end - t_start
        # Resolve the stamps into contiguous main-lane segments.
        events = [(kind, c, j, clock.resolve(a) - t_start, clock.resolve(b) - t_start) for kind, c, j, a, b in marks]
        events.sort(key=lambda e: e[3])
        segments: list[tuple[str, int, float, float]] = []  # (phase, step or -1, start, end)
        cursor, prev_kind, prev_step = 0.0, "setup", -1
        for kind, _c, j, s, e in events:
            gap_kind = "sde_op" if prev_kind in ("transformer", "reward_wait") else "setup"
            if s > cursor:
                segments.append((gap_kind, prev_step if gap_kind == "sde_op" else -1, cursor, s))
            segments.append((kind, j, s, e))
            cursor, prev_kind, prev_step = e, kind, j
            if kind == "reward_finish":
                prev_kind = "setup"
        r_end = clock.resolve(m_rollout) - t_start
        segments.append(("setup", -1, cursor, r_end))
        if train:
            a_end = clock.resolve(m_adv) - t_start
            segments += [("advantage", -1, r_end, a_end), ("train", -1, a_end, clock.resolve(m_train) - t_start)]
        phases = {p: 0.0 for p in MAIN_PHASES}
        per_step = {k: [0.0] * self.T for k in ("transformer", "sde_op", "reward_wait")}
        for phase, j, s, e in segments:
            phases[phase] += e - s
            if phase in per_step and 0 <= j < self.T:
                per_step[phase][j] += e - s
        phases["other"] = total - sum(phases.values())
        # The reward lane: the worker's stamps (perf_counter) relative to the iteration's start.
        reward_lane: list[tuple[str, int, float, float]] = []
        rstep = {k: [0.0] * self.T for k in ("decode", "reward")}
        for rt in reward_timings:
            ps = rt["per_step"]
            for i, j in enumerate(ps["steps"]):
                s, d, e = ps["start"][i] - t_start, ps["decode_end"][i] - t_start, ps["end"][i] - t_start
                reward_lane += [("decode", j, s, d), ("reward", j, d, e)]
                rstep["decode"][j] += ps["decode"][i]
                rstep["reward"][j] += ps["reward"][i]
        busy = [(s, e) for _, _, s, e in reward_lane]
        busy_s = interval_overlap(busy, busy)
        waits = [(s, e) for p, _, s, e in segments if p in ("reward_wait", "reward_finish")]
        exposed = interval_overlap(busy, waits)
        # Each chunk's terminal reward starts after its last step and is waited for before the next chunk starts.
        n_jobs, n_chunks = len(reward_lane) // 2, sum(1 for rt in reward_timings if rt["per_step"]["steps"])
        return {
            "mode": mode,
            "iteration": iteration,
            "train": train,
            "total": total,
            "phases": phases,
            "reward_busy": busy_s,
            "reward_exposed": exposed,
            "overlap_efficiency": (1.0 - exposed / busy_s) if busy_s > 0 else 0.0,
            "efficiency_ceiling": (1.0 - n_chunks / n_jobs) if n_jobs else 0.0,
            "per_step": {**per_step, **rstep, "evaluated": sorted({j for _, j, _, _ in reward_lane})},
            "engine": [{k: v for k, v in rt.items() if k != "per_step"} for rt in reward_timings],
            "lanes": {"main": [list(s) for s in segments], "reward": [list(s) for s in reward_lane]},
        }

    # ------------------------------------------------------------------------------------------ many
    def profile(self, iters: int = 3, warmup: int = 1, train: bool = False, progress=None) -> dict[str, Any]:
        """`warmup` + `iters` rounds over the modes (order reversed every other round); warm-up rounds are
        dropped. Returns `summarise(records)` plus the records."""
        if iters < 1 or warmup < 0:
            raise ValueError(f"iters must be >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
        records = []
        for r in range(warmup + iters):
            order = self.modes if r % 2 == 0 else self.modes[::-1]
            for mode in order:
                rec = self.iteration(mode, r, train)
                if progress is not None:
                    progress(f"round {r}{' (warm-up)' if r < warmup else ''} {mode}: {rec['total']:.3f} s")
                if r >= warmup:
                    records.append(rec)
        return summarise(records, self.describe(train))

    def describe(self, train: bool) -> dict[str, Any]:
        cfg = self.trainer.cfg
        device = self.trainer.device
        return {
            "device": str(device),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "torch_threads": torch.get_num_threads(),
            "timer": "cuda events" if device.type == "cuda" else "perf_counter",
            "T": self.T,
            "P": cfg.rollout.prompts_per_iter,
            "G": cfg.rollout.group_size,
            "chunk_size": cfg.rollout.chunk_size,
            "guidance_scale": cfg.rollout.guidance_scale,
            "sparse_k": self.sparse_k,
            "max_in_flight": cfg.reward.max_in_flight,
            "worker_threads": cfg.reward.worker_threads,
            "train": train,
            "train_steps_per_trajectory": train_steps_per_trajectory(cfg),
            "minibatch_size": cfg.train.minibatch_size,
            "grad_accum": cfg.train.grad_accum,
            "inner_epochs": cfg.train.inner_epochs,
            "reward_steps": {m: self.pipelines[m].steps for m in self.modes},
        }

    @contextlib.contextmanager
    def chrome_trace(self, path: str) -> Iterator[None]:
        """torch.profiler over the block (CPU, + CUDA on a GPU), exported as a Chrome trace to `path`."""
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.trainer.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            yield
        prof.export_chrome_trace(str(path))

    def close(self) -> None:
        for p in self.pipelines.values():
            p.close()


def _mean(xs: Sequence[float]) -> float:
    return float(statistics.fmean(xs)) if xs else float("nan")


def summarise(records: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per mode: mean / median / min iteration time, mean phases, overlap efficiency, mean per-step breakdown,
    and the reward overhead against `flow_grpo` (mean over mean, when flow_grpo ran)."""
    modes: dict[str, dict[str, Any]] = {}
    for mode in dict.fromkeys(r["mode"] for r in records):
        rs = [r for r in records if r["mode"] == mode]
        totals = [r["total"] for r in rs]
        T = len(rs[0]["per_step"]["transformer"])
        modes[mode] = {
            "iterations": len(rs),
            "total_mean": _mean(totals),
            "total_median": float(statistics.median(totals)),
            "total_min": min(totals),
            "phases": {p: _mean([r["phases"][p] for r in rs]) for p in rs[0]["phases"]},
            "reward_busy": _mean([r["reward_busy"] for r in rs]),
            "reward_wait_total": _mean([r["phases"]["reward_wait"] + r["phases"]["reward_finish"] for r in rs]),
            "overlap_efficiency": _mean([r["overlap_efficiency"] for r in rs]),
            "efficiency_ceiling": rs[0]["efficiency_ceiling"],
            "per_step": {
                k: [_mean([r["per_step"][k][j] for r in rs]) for j in range(T)]
                for k in ("transformer", "sde_op", "reward_wait", "decode", "reward")
            },
            "evaluated_steps": rs[0]["per_step"]["evaluated"],
        }
    base = modes.get("flow_grpo")
    for m in modes.values():
        m["reward_overhead"] = m["total_mean"] / base["total_mean"] if base else None
    out = {"meta": meta or {}, "modes": modes, "records": records}
    bad = [r for r in records if not math.isfinite(r["total"])]
    if bad:
        raise ValueError(f"non-finite iteration time in {len(bad)} record(s)")
    return out
