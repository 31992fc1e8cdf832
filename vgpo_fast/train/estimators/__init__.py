"""Advantage estimators: the registry (`base`) and the built-in entries, one module each."""

from vgpo_fast.train.estimators import flow_grpo, vgpo  # noqa: F401  (importing registers the built-ins)
from vgpo_fast.train.estimators.base import (
    AdvantageResult,
    Estimator,
    estimator_names,
    get_estimator,
    register_estimator,
    unregister_estimator,
)

__all__ = [
    "AdvantageResult",
    "Estimator",
    "estimator_names",
    "get_estimator",
    "register_estimator",
    "unregister_estimator",
]
