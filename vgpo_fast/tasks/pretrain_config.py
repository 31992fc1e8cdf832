"""`PretrainConfig`, the settings of `vgpo-fast pretrain` (`vgpo_fast.tasks.pretrain`).

A module of its own, importing nothing but the standard library, so that the CLI can show the defaults in
`vgpo-fast pretrain --help` without importing torch, diffusers and the models.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PretrainConfig"]


@dataclass
class PretrainConfig:
    """Pretraining settings; the defaults produced the shipped shapes base model."""

    task: str = "shapes"
    steps: int = 1500
    batch_size: int = 128
    lr: float = 6e-4
    warmup: int = 100
    min_lr_frac: float = 0.05
    weight_decay: float = 0.01
    prompt_dropout: float = 0.1
    caption_noise: float = 0.0  # fraction of images drawn from a miscaptioned prompt (`Task.miscaption`)
    bf16: bool | None = None  # bf16 autocast; None: auto, as training's `mixed_precision: auto` decides
    seed: int = 0
    eval_prompts: int = 64
    eval_seeds: int = 2
    eval_steps: int = 10
    eval_guidance: float = 3.0
    log_every: int = 50
    init: str | None = None  # a task model directory to continue from (its pretrain.json is kept as "init_meta")
