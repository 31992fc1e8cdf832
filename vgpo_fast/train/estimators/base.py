"""The advantage-estimator registry: each estimator is one `Estimator` object, registered by name.

    est = get_estimator("vgpo")
    result = est.compute(rewards, cfg.algorithm)      # rewards [P, G, T] -> AdvantageResult
    est.dense                                         # reads instant rewards of intermediate steps?

`algorithm.name` in the config names an estimator; the trainer, the profiler (its reward modes), the cost model
and the experiments read this registry. Adding one is a new module that calls `register_estimator` (see
docs/architecture.md).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the registry itself imports no torch, so that listing estimators (CLI help) stays fast
    import torch

# The config's `algorithm` section (`vgpo_fast.train.config.AlgorithmConfig`; not imported: the config imports
# this registry to check `algorithm.name`).
AlgorithmConfig = Any

__all__ = ["AdvantageResult", "Estimator", "estimator_names", "get_estimator", "register_estimator"]


@dataclass
class AdvantageResult:
    """advantages `[P, G, T]`; returns Q `[P, G, T]` and omega `[P, G, T]` (Flow-GRPO: Q = r, omega = 1);
    group_std `[P, T]`; omega_fallback_frac: share of trajectories whose mean return was <= eps."""

    advantages: torch.Tensor
    returns: torch.Tensor
    omega: torch.Tensor
    group_std: torch.Tensor
    omega_fallback_frac: float


@dataclass(frozen=True)
class Estimator:
    """One advantage estimator.

    name: the `algorithm.name` that selects it; dense: whether it reads the instant rewards of intermediate
    steps (the reward pipeline then scores every `reward.steps` projection, else only the terminal one);
    options: the `algorithm.*` keys it reads; compute(rewards [P, G, T] float32, algorithm config) ->
    AdvantageResult (only `rewards[..., -1]` is meaningful when not dense)."""

    name: str
    description: str
    dense: bool
    options: tuple[str, ...]
    compute: Callable[[torch.Tensor, AlgorithmConfig], AdvantageResult]


_REGISTRY: dict[str, Estimator] = {}


def register_estimator(estimator: Estimator, *, replace: bool = False) -> Estimator:
    """Add `estimator` under its name (an existing name is an error unless `replace`); returns it."""
    if not estimator.name or not estimator.name.replace("_", "").isalnum():
        raise ValueError(f"estimator name must be letters, digits and '_', got {estimator.name!r}")
    if estimator.name in _REGISTRY and not replace:
        raise ValueError(f"estimator {estimator.name!r} is already registered")
    _REGISTRY[estimator.name] = estimator
    return estimator


def unregister_estimator(name: str) -> None:
    """Remove `name` from the registry (tests that register a toy estimator clean up with this)."""
    _REGISTRY.pop(name, None)


def estimator_names() -> list[str]:
    """The registered estimator names, in registration order."""
    return list(_REGISTRY)


def get_estimator(name: str) -> Estimator:
    """The estimator `name`; an unknown name raises ValueError naming the closest one."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown algorithm {name!r}{hint}; registered estimators: {', '.join(_REGISTRY)}")
