"""A cost model of one iteration: per-op costs (measured by the profiler, or given, e.g. H100 numbers) ->
predicted iteration time for each reward mode, T, G, P (prompts per iteration) and number of GPUs.

    costs = OpCosts.from_profile(report, mode="vgpo-serial")      # or OpCosts(transformer_step=..., ...)
    predict(costs, Workload("vgpo-overlap", T=10, P=8, G=8)).total

Per GPU, n = ceil(P * G / gpus) samples (data parallel). Costs are seconds per sample:
- rollout step j: n (transformer_step + sde_step), then the hand-off of x0_hat_{j-1} (when j-1 is evaluated):
  n handoff on the main thread;
- one reward job (an evaluated step): n (decode + reward) on the reward worker, FIFO, at most `max_in_flight`
  jobs pending: the main thread blocks at a hand-off while the bound is reached (as `RewardPipeline` does);
  overlap off: the main thread waits for each job at its hand-off;
- after the loop the terminal job x0_hat_{T-1}, then the wait for every job;
- train: n K train_step per inner epoch (K training steps per trajectory), plus per optimiser step
  `optimizer_step` (+ `allreduce` when gpus > 1); `setup` once per iteration (prompts, encoding, advantages).

The rollout is simulated event by event, so the prediction of a synthetic case is exact (tested). It assumes the
reward worker and the transformer do not slow each other (a free core or a separate stream/GPU/server).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vgpo_fast.rollout.schedule import reward_steps

from .modes import DEFAULT_MODES, available_modes, parse_mode

__all__ = ["OpCosts", "Prediction", "Workload", "evaluated_steps", "predict", "prediction_table"]

MODES = DEFAULT_MODES  # the name of earlier versions


@dataclass
class OpCosts:
    """Seconds per sample of each op (setup, optimizer_step, allreduce: seconds per occurrence)."""

    transformer_step: float
    decode: float
    reward: float
    train_step: float = 0.0
    sde_step: float = 0.0
    handoff: float = 0.0
    setup: float = 0.0
    optimizer_step: float = 0.0
    allreduce: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"OpCosts.{f.name} must be a finite number >= 0 (seconds), got {value!r}")

    @classmethod
    def parse(cls, items: dict[str, Any]) -> OpCosts:
        """From a dict (e.g. a JSON file or `key=value` pairs); unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(items) - known)
        if unknown:
            raise ValueError(f"unknown op cost(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in items.items()})

    @classmethod
    def from_profile(cls, report: dict[str, Any], mode: str = "vgpo-serial") -> OpCosts:
        """Per-sample costs from a profiler report (`Profiler.profile`): the mean of `mode`'s iterations.
        The serial mode measures each op alone (nothing overlaps), which is what the model composes."""
        if mode not in report["modes"]:
            raise ValueError(f"the profile has no {mode!r} iterations (modes: {list(report['modes'])})")
        meta, m = report["meta"], report["modes"][mode]
        n = meta["P"] * meta["G"]
        T = meta["T"]
        S = len(m["evaluated_steps"])
        ph = m["phases"]
        busy_decode, busy_reward = sum(m["per_step"]["decode"]), sum(m["per_step"]["reward"])
        train = 0.0
        if meta.get("train"):
            k = meta["train_steps_per_trajectory"] * meta["inner_epochs"]
            train = ph["train"] / (n * k) if k else 0.0
        # With overlap off the hand-off holds the whole job: only its excess over the job is the hand-off itself.
        handoff = (
            max(0.0, ph["reward_wait"] + ph["reward_finish"] - busy_decode - busy_reward) / (n * S)
            if mode == "vgpo-serial"
            else 0.0
        )
        return cls(
            transformer_step=ph["transformer"] / (n * T),
            sde_step=ph["sde_op"] / (n * T),
            decode=busy_decode / (n * S),
            reward=busy_reward / (n * S),
            train_step=train,
            handoff=handoff,
            setup=ph["setup"] + ph.get("advantage", 0.0) + max(0.0, ph.get("other", 0.0)),
        )


@dataclass
class Workload:
    """One configuration to predict. P: prompts per iteration (the batch); G: group size; gpus: data parallel;
    train_steps: K per trajectory (None: T - 1); train=False predicts the rollout alone."""

    mode: str
    T: int = 10
    P: int = 8
    G: int = 8
    gpus: int = 1
    sparse_k: int = 2
    max_in_flight: int = 2
    train: bool = True
    train_steps: int | None = None
    inner_epochs: int = 1
    minibatch_size: int = 16
    grad_accum: int = 4

    def __post_init__(self) -> None:
        if self.mode not in available_modes():
            raise ValueError(f"Workload.mode must be one of {available_modes()}, got {self.mode!r}")
        for name in (
            "T",
            "P",
            "G",
            "gpus",
            "sparse_k",
            "max_in_flight",
            "inner_epochs",
            "minibatch_size",
            "grad_accum",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"Workload.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class Prediction:
    """Seconds per iteration, per GPU: rollout (main thread: steps + hand-offs + final wait), of it
    reward_wait (main-thread time blocked on rewards), train, setup, total."""

    rollout: float
    reward_wait: float
    train: float
    setup: float
    total: float


def evaluated_steps(mode: str, T: int, sparse_k: int = 2) -> list[int]:
    """S of a mode: [T-1] for terminal-reward estimators, every step for the dense modes, every k-th ending at
    T-1 for sparse (the trainer's `reward_steps`)."""
    return reward_steps(T, parse_mode(mode).reward_steps(T, sparse_k))


def predict(costs: OpCosts, w: Workload) -> Prediction:
    """The iteration time of workload `w` under `costs` (module docstring)."""
    n = math.ceil(w.P * w.G / w.gpus)
    S = set(evaluated_steps(w.mode, w.T, w.sparse_k))
    step = n * (costs.transformer_step + costs.sde_step)
    job = n * (costs.decode + costs.reward)
    overlap = parse_mode(w.mode).overlap
    t = 0.0  # the main thread's clock
    worker_free = 0.0
    completions: list[float] = []
    waited = 0.0

    def hand_off(now: float) -> float:
        nonlocal worker_free, waited
        if overlap:
            pending = sorted(c for c in completions if c > now)
            while len(pending) >= w.max_in_flight:  # blocked until the oldest pending job completes
                waited += pending[0] - now
                now = pending.pop(0)
        now += n * costs.handoff
        start = max(now, worker_free)
        worker_free = start + job
        completions.append(worker_free)
        if not overlap:
            waited += worker_free - now
            now = worker_free
        return now

    for j in range(w.T):
        t += step
        if j >= 1 and (j - 1) in S:
            t = hand_off(t)
    if (w.T - 1) in S:
        t = hand_off(t)
    end = max([t, *completions])
    waited += end - t
    rollout = end
    train = 0.0
    if w.train:
        k = (w.T - 1) if w.train_steps is None else w.train_steps
        opt_steps = w.inner_epochs * math.ceil(math.ceil(n / w.minibatch_size) / w.grad_accum)
        train = w.inner_epochs * n * k * costs.train_step + opt_steps * (
            costs.optimizer_step + (costs.allreduce if w.gpus > 1 else 0.0)
        )
    return Prediction(
        rollout=rollout, reward_wait=waited, train=train, setup=costs.setup, total=rollout + train + costs.setup
    )


def prediction_table(
    costs: OpCosts,
    base: Workload,
    Ts: list[int],
    Gs: list[int],
    Ps: list[int],
    gpus: list[int],
    modes: tuple[str, ...] = DEFAULT_MODES,
) -> list[dict[str, Any]]:
    """Rows {mode, T, G, P, gpus, rollout, reward_wait, train, total, overhead (total / flow_grpo's)} over the
    grid (base supplies the other settings)."""
    rows = []
    for T in Ts:
        for G in Gs:
            for P in Ps:
                for g in gpus:
                    ref = predict(costs, replace(base, mode="flow_grpo", T=T, G=G, P=P, gpus=g))
                    for mode in modes:
                        pr = predict(costs, replace(base, mode=mode, T=T, G=G, P=P, gpus=g))
                        rows.append(
                            {
                                "mode": mode,
                                "T": T,
                                "G": G,
                                "P": P,
                                "gpus": g,
                                **asdict(pr),
                                "overhead": pr.total / ref.total if ref.total > 0 else float("nan"),
                            }
                        )
    return rows
