"""The training config: one dataclass per concern, loaded from YAML with `key.sub=value` overrides.

`Config()` is the CPU default (VGPO on the built-in shapes task from its shipped base model);
`configs/sd35m_*.yaml` hold the SD3.5-M recipes with Flow-GRPO's published hyper-parameters.
Unknown keys, wrong types and incompatible options are errors naming the key (`config_io.ConfigError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vgpo_fast.train.config_io import ConfigError, load_config
from vgpo_fast.train.estimators import get_estimator

__all__ = [
    "AlgorithmConfig",
    "Config",
    "ModelConfig",
    "OptimConfig",
    "RewardConfig",
    "RolloutConfig",
    "RunConfig",
    "TrainLoopConfig",
    "load",
    "validate",
]

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


@dataclass
class ModelConfig:
    """What to train. `task` names a built-in task (prompts, rewards, shipped base model); `path` overrides the
    model: a task model directory (`vgpo-fast pretrain`) or a local SD3/SD3.5 pipeline directory.
    `train_prompts` / `eval_prompts`: text files, one prompt per line, replacing the task's splits.
    `resolution`: image side in pixels for SD3 pipelines (default: the transformer's native size)."""

    task: str | None = "shapes"
    path: str | None = None
    train_prompts: str | None = None
    eval_prompts: str | None = None
    resolution: int | None = None
    device: str = "auto"
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    compile: bool = False
    fp8: bool = False


@dataclass
class RolloutConfig:
    """The sampler: T steps of the shifted schedule, CFG, the SDE (on all steps or a window).
    `shared_init_noise`: the G samples of a prompt start from one initial noise (DanceGRPO's choice), so that
    within a group the rewards differ only through the SDE noise the policy is trained on."""

    steps: int = 10
    shift: float = 3.0
    noise_level: float = 0.7
    sde_type: Literal["flow_grpo", "cps"] = "flow_grpo"
    sde_window: list[int] | None = field(default_factory=lambda: [0, 5])
    guidance_scale: float = 1.0
    prompts_per_iter: int = 8
    group_size: int = 8
    chunk_size: int | None = 64
    reduce: Literal["mean", "sum"] = "mean"
    shared_init_noise: bool = False


@dataclass
class RewardConfig:
    """The reward model and how it runs. `reward` None means the task's reward; `steps` the evaluated steps S
    (docs/spec.md section 3): 'all', a stride k or a list; `offset` and `scale` map raw r to (r + offset) * scale.
    `worker`: score an in-process reward on the engine's worker thread ("thread") or in a child process
    ("process", `vgpo_fast.rewards.process`: no GIL shared with the rollout, `worker_threads` threads there, ~2 s
    to start; for rewards with much Python work). A reward server (`reward` an http URL) is used directly."""

    reward: str | dict[str, Any] | None = None
    steps: str | int | list[int] = "all"
    overlap: bool = True
    max_in_flight: int = 2
    worker_threads: int = 1
    worker: Literal["thread", "process"] = "thread"
    offset: float = 0.0
    scale: float = 1.0
    nonfinite: Literal["raise", "drop"] = "raise"


@dataclass
class AlgorithmConfig:
    """`name`: a registered advantage estimator (`vgpo_fast.train.estimators`): `vgpo` (TCRM + ADAE,
    docs/spec.md), its ablations `vgpo_no_tcrm` / `vgpo_no_adae`, `flow_grpo`, or one a user registered. The
    other keys are the estimators' options and the policy loss's (clip, KL)."""

    name: str = "vgpo"
    gamma: float = 0.9
    k: float = 0.1
    omega: bool = True
    eps: float = 1e-4
    adv_clip: float = 5.0
    global_std: bool = False
    clip_range: float = 1e-4
    beta: float = 0.04
    kl_form: Literal["scale", "flow_grpo"] = "scale"


@dataclass
class OptimConfig:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    ema: bool = False
    ema_decay: float = 0.95


@dataclass
class TrainLoopConfig:
    """The update: inner epochs over the batch in minibatches of trajectories, each over its training steps
    (all stochastic steps but the last, shuffled; `steps_per_iter` samples that many of them per iteration),
    one optimiser step per `grad_accum` minibatches. `mixed_precision`: autocast dtype; `auto` is bf16 on CUDA
    and on CPUs with native bf16, float32 elsewhere (`vgpo_fast.precision`)."""

    iterations: int = 60
    inner_epochs: int = 1
    minibatch_size: int = 16
    grad_accum: int = 1
    steps_per_iter: int | None = 3
    train_last_step: bool = False
    shuffle: bool = True
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    seed: int = 0


@dataclass
class RunConfig:
    """Outputs: `output_dir/name/` holds config.yaml, metrics.jsonl, checkpoints/, report.html, samples.
    `dist_timeout_s`: under torchrun, how long a collective waits for the other ranks before the job fails."""

    name: str = "shapes-vgpo"
    output_dir: str = "runs"
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    eval_every: int = 20
    eval_prompts: int = 64
    eval_seeds: int = 4
    eval_steps: int = 10
    report: bool = True
    progress: bool = True
    tensorboard: bool = False
    threads: int | None = None
    dist_timeout_s: float = 1800.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _positive(errors: list[str], key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        errors.append(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(cfg: Config) -> Config:
    """Range checks and incompatible options; raises ConfigError listing every problem found."""
    errors: list[str] = []
    r, a, t = cfg.rollout, cfg.algorithm, cfg.train
    for key, value in (
        ("rollout.steps", r.steps),
        ("rollout.prompts_per_iter", r.prompts_per_iter),
        ("train.iterations", t.iterations),
        ("train.inner_epochs", t.inner_epochs),
        ("train.minibatch_size", t.minibatch_size),
        ("train.grad_accum", t.grad_accum),
        ("optim.lr", cfg.optim.lr),
        ("reward.max_in_flight", cfg.reward.max_in_flight),
        ("model.lora_rank", cfg.model.lora_rank),
    ):
        _positive(errors, key, value)
    for key, value in (
        ("algorithm.beta", a.beta),
        ("algorithm.k", a.k),
        ("optim.max_grad_norm", cfg.optim.max_grad_norm),
    ):
        _positive(errors, key, value, allow_zero=True)
    if r.group_size < 2:
        errors.append(f"rollout.group_size must be >= 2 (advantages compare samples of a prompt), got {r.group_size}")
    if r.noise_level <= 0:
        errors.append(f"rollout.noise_level must be > 0 (an ODE rollout has no log-probability), got {r.noise_level}")
    if r.sde_type == "cps" and r.noise_level > 1:
        errors.append(f"rollout.noise_level must be <= 1 with sde_type 'cps', got {r.noise_level}")
    if r.sde_window is not None and (len(r.sde_window) != 2 or not 0 <= r.sde_window[0] < r.sde_window[1] <= r.steps):
        errors.append(
            f"rollout.sde_window must be [start, end] with 0 <= start < end <= rollout.steps={r.steps}, "
            f"got {r.sde_window}"
        )
    if not 0 <= a.gamma <= 1:
        errors.append(f"algorithm.gamma must be in [0, 1], got {a.gamma}")
    if a.clip_range <= 0:
        errors.append(f"algorithm.clip_range must be > 0, got {a.clip_range}")
    try:
        get_estimator(a.name)
    except ValueError as exc:
        errors.append(f"algorithm.name: {exc}")
    if a.beta > 0 and not cfg.model.lora and cfg.model.fp8:
        errors.append(
            "algorithm.beta > 0 with full fine-tuning and fp8 would need a second FP8 model copy for the "
            "reference: use model.lora or beta 0"
        )
    if cfg.optim.ema and not 0 < cfg.optim.ema_decay < 1:
        errors.append(f"optim.ema_decay must be in (0, 1), got {cfg.optim.ema_decay}")
    if not cfg.reward.scale > 0:
        errors.append(f"reward.scale must be > 0, got {cfg.reward.scale}")
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg


# Keys of earlier versions, still accepted: `migrate` rewrites them into today's spelling.
LEGACY_KEYS = ("algorithm.tcrm", "algorithm.adae")
_ABLATIONS = {(False, True): "vgpo_no_tcrm", (True, False): "vgpo_no_adae"}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Earlier spellings -> today's, in a raw config dict (in place): `algorithm.tcrm: false` / `adae: false`
    with `name: vgpo` are the estimators `vgpo_no_tcrm` / `vgpo_no_adae` (saved run configs of earlier versions
    hold both keys, true for every other algorithm)."""
    alg = data.get("algorithm")
    if not isinstance(alg, dict) or not ({"tcrm", "adae"} & set(alg)):
        return data
    tcrm, adae = alg.pop("tcrm", True), alg.pop("adae", True)
    name = alg.get("name", "vgpo")
    if not isinstance(tcrm, bool) or not isinstance(adae, bool):
        raise ConfigError(f"algorithm.tcrm / algorithm.adae must be true or false, got {tcrm!r} / {adae!r}")
    if (tcrm, adae) == (True, True):
        return data
    if name != "vgpo":
        raise ConfigError(
            "algorithm.tcrm / algorithm.adae are VGPO ablations: they need algorithm.name 'vgpo' "
            "(today's spelling: algorithm.name=vgpo_no_tcrm / vgpo_no_adae)"
        )
    if (tcrm, adae) not in _ABLATIONS:
        raise ConfigError(
            "algorithm.tcrm=false with algorithm.adae=false is GRPO on the terminal reward: use "
            "algorithm.name=flow_grpo (the ablations are algorithm.name=vgpo_no_tcrm / vgpo_no_adae)"
        )
    alg["name"] = _ABLATIONS[(tcrm, adae)]
    return data


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """YAML file (None: the defaults) + `key.sub=value` overrides -> a validated Config."""
    return validate(load_config(Config, path, overrides, legacy_keys=LEGACY_KEYS, migrate=migrate))
