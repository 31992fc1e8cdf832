"""Rollout: the sampling schedule, the sparse reward-step set, the trajectory sampler, deterministic ODE samples and
prompt sampling (docs/architecture.md: data flow).

Exports load on first use, so that `vgpo_fast.rollout.prompts` (numpy only) can be imported without torch and the
ops; `from vgpo_fast.rollout import sample_trajectories` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ode import sample_images
    from .prompts import eval_prompt_set, sample_prompts
    from .sampler import ProjectionFn, Trajectory, VelocityFn, sample_trajectories
    from .schedule import fill_sparse_rewards, reward_steps, sde_window, sigmas, timesteps

# export -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "ProjectionFn": "sampler",
    "Trajectory": "sampler",
    "VelocityFn": "sampler",
    "eval_prompt_set": "prompts",
    "fill_sparse_rewards": "schedule",
    "reward_steps": "schedule",
    "sample_images": "ode",
    "sample_prompts": "prompts",
    "sample_trajectories": "sampler",
    "sde_window": "schedule",
    "sigmas": "schedule",
    "timesteps": "schedule",
}

__all__ = [
    "ProjectionFn",
    "Trajectory",
    "VelocityFn",
    "eval_prompt_set",
    "fill_sparse_rewards",
    "reward_steps",
    "sample_images",
    "sample_prompts",
    "sample_trajectories",
    "sde_window",
    "sigmas",
    "timesteps",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif not name.startswith("_"):  # a submodule, as `import vgpo_fast.rollout` used to load them all
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
