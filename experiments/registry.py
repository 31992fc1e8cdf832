"""The experiments of docs/results.md: which variants (config overrides), seeds and horizon each one runs.

Every variant starts from the CPU default (`configs/cpu_default.yaml`, the `Config` defaults), so an experiment's
rows differ from each other only in the overrides listed here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from vgpo_fast.train.estimators import estimator_names


@dataclass(frozen=True)
class Experiment:
    """`variants`: label -> overrides (`key.sub=value`); every variant runs once per seed.

    `common`: overrides shared by every run; `reference`: the variant whose final held-out reward the others
    are measured against ("iterations to reach it"); `iterations` / `eval_every`: the horizon and how often the
    held-out set is scored."""

    name: str
    description: str
    variants: dict[str, tuple[str, ...]]
    seeds: tuple[int, ...] = (0, 1, 2)
    iterations: int = 60
    eval_every: int = 10
    common: tuple[str, ...] = field(default_factory=tuple)
    reference: str | None = "flow_grpo"


# The paper's Table 2 ablation: every built-in estimator (flow_grpo, vgpo, vgpo_no_tcrm, vgpo_no_adae), one
# variant each, read from the registry (`vgpo_fast.train.estimators`) when this module is first imported.
_ABLATION = {name: (f"algorithm.name={name}",) for name in estimator_names()}

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment(
            "shapes-ablation",
            "Shapes task: Flow-GRPO, VGPO, VGPO without TCRM, VGPO without ADAE (the paper's Table 2 ablation), "
            "KL on (beta 0.04), the CPU default's 60 iterations",
            _ABLATION,
        ),
        Experiment(
            "text",
            "Text task (OCR reward): Flow-GRPO vs VGPO, 4 prompts x 8 samples per iteration, 30 iterations "
            "(a 16x64 image is 256 tokens, 4x a shapes image: the budget that fits about 10 minutes a run), CFG 3",
            {k: v for k, v in _ABLATION.items() if k in ("flow_grpo", "vgpo")},
            seeds=(0, 1),
            iterations=30,
            common=(
                "model.task=text",
                "rollout.prompts_per_iter=4",
                "run.eval_prompts=34",
                "run.eval_seeds=2",
                "rollout.guidance_scale=3.0",
            ),
        ),
        Experiment(
            "shapes-sweep",
            "Shapes task, VGPO: the anchor weight k (gamma 0.9) and the discount gamma (k 0.1), one at a time",
            {
                **{f"k={k}": ("algorithm.name=vgpo", f"algorithm.k={k}") for k in (0.0, 0.05, 0.2, 0.5)},
                **{f"gamma={g}": ("algorithm.name=vgpo", f"algorithm.gamma={g}") for g in (0.5, 0.8, 1.0)},
            },
            seeds=(0,),
            reference=None,
        ),
    ]
}


def get_experiment(name: str) -> Experiment:
    """The experiment `name`; an unknown name raises ValueError naming the closest one."""
    if name in EXPERIMENTS:
        return EXPERIMENTS[name]
    close = difflib.get_close_matches(name, list(EXPERIMENTS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown experiment {name!r}{hint}; known: {', '.join(EXPERIMENTS)}")
