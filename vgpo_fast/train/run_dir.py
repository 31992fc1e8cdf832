"""A run directory `run.output_dir/run.name/`: choosing it (never over another run), the resume check against
its saved config, writing the config, and the base model's held-out samples kept for the drift score.

Layout: `config.yaml`, `metrics.jsonl`, `checkpoints/step_NNNNNN/`, `heldout_base.npy`, `samples_before.png`,
`samples_after.png`, `summary.json`, `report.html`, `report.md`, plots. Checkpoint step = iterations done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from vgpo_fast.train.checkpoint import latest_checkpoint
from vgpo_fast.train.config import Config, load
from vgpo_fast.train.config_io import to_dict

__all__ = [
    "BASE_IMAGES",
    "check_resume_config",
    "choose_run_dir",
    "load_images",
    "run_dir_of",
    "save_images",
    "write_config",
]

BASE_IMAGES = "heldout_base.npy"  # the base model's held-out samples, uint8 [B, 3, H, W], for heldout_drift

# Changing these on --resume does not change what the run computes (or only where it must: a moved server).
RESUME_MAY_CHANGE = {
    "train": ("iterations",),
    "reward": ("reward", "overlap", "max_in_flight", "worker_threads", "worker"),
    "model": ("device",),
}


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def choose_run_dir(cfg: Config, resume: bool, log: Callable[[str], None]) -> tuple[Path, bool]:
    """(the run directory, whether it holds a checkpoint to resume). Without `resume` an existing run is never
    overwritten: this run takes the next free name (`run.name` is changed in `cfg`)."""
    run_dir = run_dir_of(cfg)
    has_ckpt = latest_checkpoint(run_dir) is not None
    if has_ckpt and not resume:
        base, n = cfg.run.name, 2
        while latest_checkpoint(run_dir_of(cfg)) is not None or (run_dir_of(cfg) / "config.yaml").exists():
            cfg.run.name = f"{base}-{n}"
            n += 1
        log(f"{run_dir} already holds a run (continue it with --resume); this run is {run_dir_of(cfg)}")
        run_dir, has_ckpt = run_dir_of(cfg), False
    return run_dir, has_ckpt


def _comparable(cfg: Config) -> dict:
    d = to_dict(cfg)
    d.pop("run", None)
    for section, keys in RESUME_MAY_CHANGE.items():
        for key in keys:
            d.get(section, {}).pop(key, None)
    return d


def check_resume_config(run_dir: Path, cfg: Config) -> None:
    """Raise ValueError when `cfg` differs from the run's saved config in a key that changes what the run
    computes. The saved file is read through the config loader, so runs of earlier versions compare in
    today's spelling."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old, new = _comparable(load(saved)), _comparable(cfg)
    diffs = [f"{s}.{k}" for s in new for k in new[s] if old.get(s, {}).get(k) != new[s][k]]
    if diffs:
        raise ValueError(
            f"--resume with a config that differs from {saved} in {diffs[:5]}: resume with the same "
            f"config (train.iterations may grow, the reward server may move) or start a new run.name"
        )


def write_config(run_dir: Path, cfg: Config, notes: list[str] = ()) -> None:
    """`config.yaml`, atomically; `notes` become comment lines at its top (e.g. what `auto` settings chose)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"
    header = "".join(f"# {line}\n" for line in notes)
    tmp.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, run_dir / "config.yaml")


def save_images(images: torch.Tensor, path: Path) -> None:
    """float `[B, 3, H, W]` in [0, 1] -> uint8 .npy, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, images.mul(255).round().clamp(0, 255).to(torch.uint8).numpy())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_images(path: Path) -> torch.Tensor | None:
    """The saved base samples as float [0, 1] (None when absent, e.g. a run from before they were saved)."""
    return torch.from_numpy(np.load(path)).float().div(255) if path.is_file() else None
