"""The run's parts built from its config: the device, the pipeline (a task model or a local SD3 directory) and
the reward (the task's or `reward.reward`; in a child process with `reward.worker=process`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vgpo_fast import distributed
from vgpo_fast.rewards.base import RewardModel
from vgpo_fast.rewards.process import ProcessReward
from vgpo_fast.rewards.registry import build_reward, is_server_spec

if TYPE_CHECKING:
    from vgpo_fast.models.pipeline import FlowPipeline
    from vgpo_fast.tasks.registry import Task
    from vgpo_fast.train.config import Config

__all__ = ["build_run_reward", "load_pipeline", "select_device"]


def select_device(cfg: Config, world: distributed.World) -> torch.device:
    """`model.device` ('auto': CUDA when present), the local rank's GPU under torchrun."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if cfg.model.device == "auto" else cfg.model.device)
    if device.type == "cuda" and world.enabled:
        device = torch.device("cuda", world.local_rank)
    return device


def load_pipeline(cfg: Config, task: Task | None, device: torch.device) -> FlowPipeline:
    """`model.path` (default: the task's shipped base model): a task model directory (it holds `pretrain.json`)
    or a local SD3 / SD3.5 pipeline directory."""
    path = cfg.model.path
    if path is None:
        if task is None:
            raise ValueError("model.path is required when model.task is not set")
        path = task.base_model_dir
    if not Path(path).exists():
        raise FileNotFoundError(f"model path {path} does not exist")
    if (Path(path) / "pretrain.json").is_file():
        from vgpo_fast.models.pipeline import load_task_pipeline

        return load_task_pipeline(path, device)
    from vgpo_fast.models.sd3 import load_sd3_pipeline

    return load_sd3_pipeline(path, device, resolution=cfg.model.resolution)


def build_run_reward(cfg: Config, task: Task | None) -> RewardModel:
    """The training reward: `reward.reward` or the task's; `reward.nonfinite` applies to every spec."""
    spec = cfg.reward.reward
    if spec is None:
        if task is None:
            raise ValueError("reward.reward is required when model.task is not set")
        spec = dict(task.reward)
    if isinstance(spec, dict):
        spec = {**spec, "nonfinite": cfg.reward.nonfinite}
    if cfg.reward.worker == "process" and not is_server_spec(spec):
        return ProcessReward(spec, threads=cfg.reward.worker_threads, nonfinite=cfg.reward.nonfinite)
    return build_reward(spec)
