"""Test-only pieces for the trainer tests, importable by subprocesses as 'helpers_train:...' (with tests/train on
PYTHONPATH): a cheap pixel reward that varies on an untrained model's samples, and a tiny task model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vgpo_fast.models.pipeline import FlowPipeline
from vgpo_fast.models.text_encoder import TextEncoder, TextEncoderConfig
from vgpo_fast.models.transformer import build_transformer, tiny_transformer_config
from vgpo_fast.rewards.base import RewardModel
from vgpo_fast.tasks.pretrain import save_task_model
from vgpo_fast.tasks.registry import get_task


class Redness(RewardModel):
    """Mean over pixels of max(0, R - (G + B) / 2) / 255, in [0, 1]: a smooth reward any sample gets some of."""

    name = "redness"
    low = 0.0
    high = 1.0

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        x = images.astype(np.float64)
        red = np.maximum(0.0, x[..., 0] - 0.5 * (x[..., 1] + x[..., 2])) / 255.0
        return red.reshape(images.shape[0], -1).mean(axis=1)


def tiny_pipeline(seed: int = 0) -> FlowPipeline:
    """A small random shapes-task pipeline (16x16, width 32, 1 layer): seconds per iteration on a CPU."""
    task = get_task("shapes")
    torch.manual_seed(seed)
    transformer = build_transformer(
        tiny_transformer_config(16, patch_size=4, width=32, layers=1, heads=1, text_dim=32, pooled_dim=32)
    )
    encoder = TextEncoder(TextEncoderConfig(vocab=task.vocab, text_dim=32, pooled_dim=32, layers=1, heads=1))
    with torch.no_grad():  # a random non-zero output layer, so samples differ across noises and prompts
        for p in transformer.proj_out.parameters():
            p.normal_(0.0, 0.05)
    return FlowPipeline(transformer, encoder, (3, 16, 16))


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    save_task_model(tiny_pipeline(seed), get_task("shapes"), path, {"task": "shapes", "image_size": [16, 16]})
    return path


TINY_OVERRIDES = [
    "rollout.prompts_per_iter=2",
    "rollout.group_size=4",
    "rollout.steps=4",
    "train.minibatch_size=4",
    "train.grad_accum=1",
    "run.eval_prompts=4",
    "run.eval_seeds=1",
    "run.eval_steps=4",
    "run.progress=false",
    "reward.reward=helpers_train:Redness",
    "optim.lr=1e-3",
    "algorithm.clip_range=0.2",
    "run.threads=1",
    "model.lora=true",
    "rollout.sde_window=null",
    "rollout.chunk_size=null",
    "train.steps_per_iter=null",
    "reward.worker=thread",
]
