"""`vgpo-fast train`: a whole run — run directory, resume, iterations with a progress bar, held-out evaluations,
atomic checkpoints, metrics JSONL, and the final report.

Run directory `run.output_dir/run.name/`: `config.yaml`, `metrics.jsonl`, `checkpoints/step_NNNNNN/`,
`samples_before.png`, `samples_after.png`, `report.html`, `report.md`, plots. Checkpoint step = iterations done.

Under torchrun every rank runs `train` (see `distributed`); rank 0 alone writes the run directory (config, metrics,
checkpoints, samples, report), every rank loads the checkpoint on resume. Checkpoints hold the full, one-process
state, so a run resumes on any number of ranks. A rank that dies or hangs makes the others fail their next
collective with `TrainingInterrupted` naming the last checkpoint; nothing after it is kept.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from vgpo_fast.rewards.base import RewardError
from vgpo_fast.train import distributed
from vgpo_fast.train.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from vgpo_fast.train.config import Config
from vgpo_fast.train.config_io import to_dict
from vgpo_fast.train.metrics import MetricsWriter, read_metrics
from vgpo_fast.train.trainer import Trainer

__all__ = ["TrainingInterrupted", "load_weights", "run_dir_of", "train"]


class TrainingInterrupted(RuntimeError):
    """Training stopped early on an error it could not retry past (e.g. the reward server died); the last
    completed iteration is checkpointed and `--resume` continues from it."""


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def _save(trainer: Trainer, run_dir: Path, step: int, extra: dict[str, Any]) -> Path | None:
    """Every rank gathers the state (a collective with FSDP2); rank 0 writes it. Returns the path on rank 0."""
    cfg = trainer.cfg
    trainable, optimizer_state, ema = trainer.trainable_state(), trainer.optimizer_state(), trainer.ema_state()
    if not trainer.world.is_main:
        return None
    return save_checkpoint(run_dir, step, trainable=trainable, optimizer_state=optimizer_state, config=to_dict(cfg),
                           user=extra, extra_tensors=ema, keep=cfg.run.keep_checkpoints)


def load_weights(trainer: Trainer, ckpt: Checkpoint) -> None:
    """The checkpoint's trainable weights (and EMA, when the trainer keeps one) into `trainer`."""
    trainer.load_trainable_state(ckpt.trainable)
    if trainer.ema is not None:
        if not ckpt.extra_tensors:
            raise ValueError(f"checkpoint {ckpt.path} has no EMA weights but optim.ema is on")
        trainer.load_ema_state(ckpt.extra_tensors)


def _restore(trainer: Trainer, path: Path) -> tuple[int, dict[str, Any]]:
    ckpt = load_checkpoint(path)
    load_weights(trainer, ckpt)
    trainer.load_optimizer_state(ckpt.optimizer_state)
    return ckpt.step, dict(ckpt.user or {})


def _lost_rank(exc: RuntimeError, run_dir: Path, it: int) -> TrainingInterrupted:
    last = latest_checkpoint(run_dir)
    where = f"the last checkpoint is {last} ({int(last.name.split('_')[-1])} iterations done)" if last is not None \
        else f"no checkpoint was written in {run_dir}"
    return TrainingInterrupted(f"{exc} during iteration {it}; the job stops: {where}; nothing after it is kept — "
                               f"run again with --resume (on any number of processes)")


# Changing these on --resume does not change what the run computes (or only where it must: a moved server).
_RESUME_MAY_CHANGE = {"train": ("iterations",),
                      "reward": ("reward", "overlap", "max_in_flight", "worker_threads", "worker"),
                      "model": ("device",)}


def _check_resume_config(run_dir: Path, cfg: Config) -> None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    old = yaml.safe_load(saved.read_text())
    new = to_dict(cfg)
    for d in (old, new):
        d.pop("run", None)
        for section, keys in _RESUME_MAY_CHANGE.items():
            for key in keys:
                d.get(section, {}).pop(key, None)
    diffs = [f"{s}.{k}" for s in new for k in new[s] if old.get(s, {}).get(k) != new[s][k]]
    if diffs:
        raise ValueError(f"--resume with a config that differs from {saved} in {diffs[:5]}: resume with the same "
                         f"config (train.iterations may grow, the reward server may move) or start a new run.name")


def train(cfg: Config, *, resume: bool = False, trainer: Trainer | None = None, log=print) -> dict[str, Any]:
    """Run `cfg` to `cfg.train.iterations`; returns the summary (also written to `summary.json`; on ranks other than
    0 under torchrun, `{"rank": r}`)."""
    world = distributed.init(cfg.run.dist_timeout_s, cfg.model.device)
    main = world.is_main
    if not main:
        log = _quiet
    run_dir = run_dir_of(cfg)
    has_ckpt = latest_checkpoint(run_dir) is not None
    if has_ckpt and not resume:  # never overwrite a run: a new run takes the next free name
        base, n = cfg.run.name, 2
        while latest_checkpoint(run_dir_of(cfg)) is not None or (run_dir_of(cfg) / "config.yaml").exists():
            cfg.run.name = f"{base}-{n}"
            n += 1
        log(f"{run_dir} already holds a run (continue it with --resume); this run is {run_dir_of(cfg)}")
        run_dir, has_ckpt = run_dir_of(cfg), False
    distributed.barrier("the run directory choice")  # every rank names the directory before rank 0 creates it
    if resume and has_ckpt:
        _check_resume_config(run_dir, cfg)  # every rank reads the saved config before rank 0 replaces it
        distributed.barrier("the config check")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        os.replace(tmp, run_dir / "config.yaml")
    distributed.barrier("the start barrier")
    trainer = trainer or Trainer(cfg, log=log)
    if world.enabled:
        log(f"{world.size} ranks ({world.backend}); rollout chunks of "
            f"{cfg.rollout.chunk_size or cfg.rollout.group_size} trajectories")
    start, user = 0, {}
    if resume and has_ckpt:
        path = latest_checkpoint(run_dir)
        start, user = _restore(trainer, path)
        log(f"resumed from {path} (iteration {start})")
    elif resume:
        log(f"--resume: no checkpoint in {run_dir}, starting from iteration 0")
    metrics = (MetricsWriter(run_dir / "metrics.jsonl", tensorboard_dir=run_dir / "tb" if cfg.run.tensorboard else None,
                             resume_from_iteration=start - 1 if resume else None) if main else _NoMetrics())
    t_run = time.perf_counter()
    do_eval = cfg.run.eval_every > 0 and trainer.task is not None
    it = start
    try:
        base_images = None
        if do_eval and "heldout_before" not in user:
            t0 = time.perf_counter()
            scores, base_images = trainer.evaluate()
            user["heldout_before"] = scores
            if main:
                _grid(base_images, trainer, run_dir / "samples_before.png")
                _save_images(base_images, run_dir / BASE_IMAGES)
            # Held-out reward in record i is measured after iteration i's update: the base model is "iteration -1".
            metrics.write({"iteration": -1, **scores, "timings": {"eval": time.perf_counter() - t0}})
        if do_eval and base_images is None:
            base_images = _load_images(run_dir / BASE_IMAGES)
        iterations = cfg.train.iterations
        bar = _progress(cfg, start, iterations) if main else None
        postfix: dict[str, str] = {}
        if "heldout_reward" in user.get("heldout_before", {}):
            postfix["heldout"] = f"{user['heldout_before']['heldout_reward']:.3f}"
        for it in range(start, iterations):
            try:
                rec = trainer.iteration(it)
            except RewardError as exc:
                _save(trainer, run_dir, it, user)
                raise TrainingInterrupted(f"iteration {it}: {exc}; checkpoint of iteration {it} saved in {run_dir} "
                                          f"— fix the reward and run again with --resume") from exc
            if do_eval and ((it + 1) % cfg.run.eval_every == 0 or it + 1 == iterations):
                t0 = time.perf_counter()
                scores, _ = trainer.evaluate(base_images)
                rec.update(scores)
                rec["timings"]["eval"] = time.perf_counter() - t0
            metrics.write(rec)
            if bar is not None:
                postfix["reward"] = f"{rec['reward_mean']:.3f}"
                if "heldout_reward" in rec:
                    postfix["heldout"] = f"{rec['heldout_reward']:.3f}"
                bar.set_postfix(postfix)
                bar.update(1)
            if (it + 1) % cfg.run.checkpoint_every == 0 or it + 1 == iterations:
                _save(trainer, run_dir, it + 1, user)
        if bar is not None:
            bar.close()
    except RuntimeError as exc:
        failure = distributed.as_rank_failure(exc, "training")
        if failure is None:
            raise
        raise _lost_rank(failure, run_dir, it) from exc
    finally:
        metrics.close()
        trainer.close()
    if not main:
        if do_eval:  # the samples' forwards are collectives with FSDP2: every rank runs them
            trainer.sample(*trainer.eval_set())
        return {"rank": world.rank}
    records = read_metrics(run_dir / "metrics.jsonl")
    summary = _summary(cfg, records, user, time.perf_counter() - t_run)
    if do_eval:
        prompts, seeds = trainer.eval_set()
        _grid(trainer.sample(prompts, seeds), trainer, run_dir / "samples_after.png")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if cfg.run.report:
        from vgpo_fast.train.report import write_report

        grids = {k: run_dir / f"samples_{k}.png" for k in ("before", "after")
                 if (run_dir / f"samples_{k}.png").is_file()}
        summary["report"] = str(write_report(run_dir, records, title=f"{cfg.run.name}: {cfg.algorithm.name}",
                                             summary=summary, grids=grids, config=to_dict(cfg)))
    for key in ("heldout_reward", "heldout_accuracy"):
        if f"{key}_before" in summary:
            after = summary.get(f"{key}_after", float("nan"))
            log(f"{key.replace('_', ' ')}: before {summary[f'{key}_before']:.3f} -> after {after:.3f}  ({run_dir})")
    return summary


BASE_IMAGES = "heldout_base.npy"  # the base model's held-out samples, uint8 [B, 3, H, W], for heldout_drift


def _save_images(images: torch.Tensor, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, images.mul(255).round().clamp(0, 255).to(torch.uint8).numpy())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_images(path: Path) -> torch.Tensor | None:
    """The saved base samples as float [0, 1] (None when absent, e.g. a run from before they were saved)."""
    return torch.from_numpy(np.load(path)).float().div(255) if path.is_file() else None


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    pass


class _NoMetrics:
    """The metrics writer of ranks other than 0: writes nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _grid(images, trainer: Trainer, path: Path) -> None:
    from vgpo_fast.train.report import save_image_grid

    seeds = trainer.cfg.run.eval_seeds
    n = min(images.shape[0], 16 * seeds)
    save_image_grid(images[:n], path, nrow=seeds * 4, scale=4)


def _progress(cfg: Config, start: int, total: int):
    if not cfg.run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=cfg.run.name, unit="it", dynamic_ncols=True)


def _summary(cfg: Config, records: list[dict[str, Any]], user: dict[str, Any], seconds: float) -> dict[str, Any]:
    evals = [r for r in records if r.get("heldout_reward") is not None and r["iteration"] >= 0]
    records = [r for r in records if r["iteration"] >= 0]
    out: dict[str, Any] = {"algorithm": cfg.algorithm.name, "tcrm": cfg.algorithm.tcrm, "adae": cfg.algorithm.adae,
                           "iterations": len(records), "wall_seconds_this_session": round(seconds, 1)}
    for key, value in user.get("heldout_before", {}).items():
        out[f"{key}_before"] = value
        if evals and key in evals[-1]:
            out[f"{key}_after"] = evals[-1][key]
    if evals and "heldout_drift" in evals[-1]:
        out["heldout_drift_after"] = evals[-1]["heldout_drift"]
    if records:
        out["train_reward_first"] = records[0].get("reward_mean")
        out["train_reward_last"] = records[-1].get("reward_mean")
    return out
