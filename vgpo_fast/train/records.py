"""Typed metric records: one `IterationRecord` per training iteration, one `BaseEvalRecord` for the held-out
scores of the base model. Each is one JSON object per line of `metrics.jsonl` (`to_json` / `from_json`; the line
format is that of earlier versions, so their runs still resume and load in the report and the experiments).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vgpo_fast.train.update import UpdateStats

__all__ = ["BaseEvalRecord", "IterationRecord", "Timings", "from_json"]

BASE_ITERATION = -1  # the base model's held-out scores come before iteration 0


@dataclass
class Timings:
    """Main-thread seconds of one iteration, disjoint (they add up to `total`, evaluation aside): prompt
    `encode`, `transformer` calls, `sde_op` (the sampler's own work: the fused step and the loop), `reward_wait`
    (waiting for the reward pipeline), `advantage`, `train` (the update); `all_gather` under torchrun; `eval`
    (held-out evaluation after the iteration, not in `total`)."""

    transformer: float
    sde_op: float
    reward_wait: float
    advantage: float
    train: float
    total: float
    encode: float | None = None
    all_gather: float | None = None
    eval: float | None = None

    def to_json(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class IterationRecord:
    """One iteration: terminal-reward statistics (groups kept), advantage and TCRM statistics, the update's,
    the reward overlap, timings; `instant_reward [T]` with dense rewards; `heldout` scores after an evaluation
    (`heldout_reward`, `heldout_accuracy`, `heldout_drift`, written at the top level of the JSON line)."""

    iteration: int
    reward_mean: float
    reward_std: float
    group_std_mean: float
    zero_std_frac: float
    dropped_groups: int
    advantage_mean: float
    advantage_std: float
    advantage_abs_mean: float
    q_mean: float
    omega_mean: float
    omega_min: float
    omega_max: float
    omega_fallback_frac: float
    update: UpdateStats
    overlap_frac: float
    timings: Timings
    reward_worker: dict[str, float]
    instant_reward: list[float] | None = None
    heldout: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "update":
                out.update(asdict(value))
            elif f.name == "timings":
                out["timings"] = value.to_json()
            elif f.name == "heldout":
                out.update(value)
            elif f.name != "instant_reward" or value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IterationRecord:
        upd = {f.name: data[f.name] for f in fields(UpdateStats) if f.name in data}
        simple = {f.name: data.get(f.name) for f in fields(cls) if f.name not in ("update", "timings", "heldout")}
        known = {f.name for f in fields(Timings)}
        timings = Timings(**{k: v for k, v in data.get("timings", {}).items() if k in known})
        heldout = {k: v for k, v in data.items() if k.startswith("heldout_")}
        return cls(**simple, update=UpdateStats(**upd), timings=timings, heldout=heldout)


@dataclass
class BaseEvalRecord:
    """The base model's held-out scores (iteration -1) and the seconds the evaluation took."""

    scores: dict[str, float]
    eval_seconds: float
    iteration: int = BASE_ITERATION

    def to_json(self) -> dict[str, Any]:
        return {"iteration": self.iteration, **self.scores, "timings": {"eval": self.eval_seconds}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BaseEvalRecord:
        scores = {k: v for k, v in data.items() if k.startswith("heldout_")}
        return cls(scores, float(data.get("timings", {}).get("eval", 0.0)), int(data["iteration"]))


def from_json(data: dict[str, Any]) -> IterationRecord | BaseEvalRecord:
    """The typed record of one `metrics.jsonl` line."""
    if data.get("iteration", 0) < 0:
        return BaseEvalRecord.from_json(data)
    return IterationRecord.from_json(data)
