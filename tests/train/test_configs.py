"""The shipped configs load and validate; the CPU default file equals the dataclass defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from vgpo_fast.train.config import Config, load

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_cpu_default_file_is_the_default() -> None:
    assert load(CONFIGS / "cpu_default.yaml") == Config()


@pytest.mark.parametrize("name", ["sd35m_vgpo.yaml", "sd35m_flow_grpo.yaml"])
def test_sd35m_recipes_carry_flow_grpos_published_hyperparameters(name: str) -> None:
    cfg = load(CONFIGS / name)
    assert (cfg.rollout.steps, cfg.rollout.noise_level, cfg.rollout.group_size) == (10, 0.7, 24)
    assert (cfg.algorithm.clip_range, cfg.algorithm.beta, cfg.optim.lr) == (1e-4, 0.04, 3e-4)
    assert (cfg.model.lora, cfg.model.lora_rank, cfg.model.lora_alpha) == (True, 32, 64.0)
    assert (cfg.rollout.guidance_scale, cfg.model.resolution) == (4.5, 512)
    assert cfg.rollout.sde_window is None and cfg.train.steps_per_iter is None
    assert cfg.algorithm.name == ("flow_grpo" if "flow_grpo" in name else "vgpo")
