"""The profiler's reward modes, read from the estimator registry (`vgpo_fast.train.estimators`).

An estimator that reads only the terminal reward has one mode, its name (S = {T-1}). A dense estimator has
three: `NAME-serial` (every step scored, the rollout waits for each), `NAME-overlap` (every step, scored while
the next steps run) and `NAME-sparse` (every k-th step, overlapped).

    parse_mode("vgpo-sparse")   # Mode(name="vgpo-sparse", estimator="vgpo", steps="sparse", overlap=True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vgpo_fast.train.estimators import estimator_names, get_estimator

__all__ = ["DEFAULT_MODES", "Mode", "available_modes", "parse_mode"]

# What `vgpo-fast profile` runs unless `--modes` says otherwise: the baseline and VGPO's three reward modes.
DEFAULT_MODES = ("flow_grpo", "vgpo-serial", "vgpo-overlap", "vgpo-sparse")
_DENSE_KINDS = {"serial": False, "overlap": True, "sparse": True}  # kind -> overlap


@dataclass(frozen=True)
class Mode:
    """name; estimator: its registry name; steps: 'terminal', 'all' or 'sparse' (every k-th); overlap."""

    name: str
    estimator: str
    steps: str
    overlap: bool

    def reward_steps(self, T: int, sparse_k: int) -> Any:
        """The `reward.steps` spec of this mode for T steps."""
        return {"terminal": [T - 1], "all": "all", "sparse": sparse_k}[self.steps]


def available_modes() -> list[str]:
    """Every mode of every registered estimator, in registration order."""
    out: list[str] = []
    for name in estimator_names():
        out += [f"{name}-{kind}" for kind in _DENSE_KINDS] if get_estimator(name).dense else [name]
    return out


def parse_mode(name: str) -> Mode:
    """The `Mode` called `name`; an unknown one raises ValueError listing the available modes."""
    estimator, _, kind = name.rpartition("-")
    if estimator and kind in _DENSE_KINDS and estimator in estimator_names() and get_estimator(estimator).dense:
        return Mode(name, estimator, "all" if kind != "sparse" else "sparse", _DENSE_KINDS[kind])
    if name in estimator_names() and not get_estimator(name).dense:
        return Mode(name, name, "terminal", True)
    raise ValueError(f"unknown profiler mode {name!r}; available: {', '.join(available_modes())}")
