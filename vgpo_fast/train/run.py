"""`vgpo-fast train`: the run loop, as a recipe that reads top to bottom — setup (run directory, trainer,
resume), the base model's held-out evaluation, the iterations (metrics, evaluations, atomic checkpoints), and
the end (samples, summary, report).

Under torchrun every rank runs `train` (see `vgpo_fast.distributed`); rank 0 alone writes the run directory
(config, metrics, checkpoints, samples, report), every rank loads the checkpoint on resume. Checkpoints hold the
full, one-process state, so a run resumes on any number of ranks. A rank that dies or hangs makes the others fail
their next collective with `TrainingInterrupted` naming the last checkpoint; nothing after it is kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from vgpo_fast import distributed
from vgpo_fast.rewards.base import RewardError
from vgpo_fast.train.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from vgpo_fast.train.config import Config
from vgpo_fast.train.config_io import to_dict
from vgpo_fast.train.metrics import MetricsWriter, read_metrics
from vgpo_fast.train.records import BaseEvalRecord
from vgpo_fast.train.run_dir import (
    BASE_IMAGES,
    check_resume_config,
    choose_run_dir,
    load_images,
    run_dir_of,
    save_images,
    write_config,
)
from vgpo_fast.train.trainer import Trainer

__all__ = ["TrainingInterrupted", "load_weights", "run_dir_of", "train"]


class TrainingInterrupted(RuntimeError):
    """Training stopped early on an error it could not retry past (e.g. the reward server died); the last
    completed iteration is checkpointed and `--resume` continues from it."""


def train(cfg: Config, *, resume: bool = False, trainer: Trainer | None = None, log=print) -> dict[str, Any]:
    """Run `cfg` to `cfg.train.iterations`; returns the summary (also written to `summary.json`; on ranks other than
    0 under torchrun, `{"rank": r}`)."""
    # ---- setup
    world = distributed.init(cfg.run.dist_timeout_s, cfg.model.device)
    main = world.is_main
    log = log if main else _quiet
    run_dir, has_ckpt = choose_run_dir(cfg, resume, log)
    distributed.barrier("the run directory choice")  # every rank names the directory before rank 0 creates it
    if resume and has_ckpt:
        check_resume_config(run_dir, cfg)  # every rank reads the saved config before rank 0 replaces it
        distributed.barrier("the config check")
    trainer = trainer or Trainer(cfg, log=log)
    if main:
        write_config(run_dir, cfg, [f"train.mixed_precision: {trainer.policy.precision.summary}"])
    distributed.barrier("the start barrier")
    log(f"precision: {trainer.policy.precision.summary}")
    if world.enabled:
        log(
            f"{world.size} ranks ({world.backend}); rollout chunks of "
            f"{cfg.rollout.chunk_size or cfg.rollout.group_size} trajectories"
        )
    start, user = 0, {}
    if resume and has_ckpt:
        path = latest_checkpoint(run_dir)
        start, user = _restore(trainer, path)
        log(f"resumed from {path} (iteration {start})")
    elif resume:
        log(f"--resume: no checkpoint in {run_dir}, starting from iteration 0")
    metrics = (
        MetricsWriter(
            run_dir / "metrics.jsonl",
            tensorboard_dir=run_dir / "tb" if cfg.run.tensorboard else None,
            resume_from_iteration=start - 1 if resume else None,
        )
        if main
        else _NoMetrics()
    )
    t_run = time.perf_counter()
    do_eval = cfg.run.eval_every > 0 and trainer.task is not None
    it = start
    try:
        # ---- the base model's held-out evaluation (its own phase on screen, before the training bar)
        base_images = None
        if do_eval and "heldout_before" not in user:
            base_images = _evaluate_base(trainer, run_dir, metrics, user, log, main)
        if do_eval and base_images is None:
            base_images = load_images(run_dir / BASE_IMAGES)
        # ---- the iterations
        bar = _progress(cfg, start, cfg.train.iterations) if main else None
        postfix: dict[str, str] = {}
        if "heldout_reward" in user.get("heldout_before", {}):
            postfix["heldout"] = f"{user['heldout_before']['heldout_reward']:.3f}"
        for it in range(start, cfg.train.iterations):
            try:
                rec = trainer.iteration(it)
            except RewardError as exc:
                _save(trainer, run_dir, it, user)
                raise TrainingInterrupted(
                    f"iteration {it}: {exc}; checkpoint of iteration {it} saved in {run_dir} "
                    f"— fix the reward and run again with --resume"
                ) from exc
            if do_eval and ((it + 1) % cfg.run.eval_every == 0 or it + 1 == cfg.train.iterations):
                t0 = time.perf_counter()
                rec.heldout, _ = trainer.evaluate(base_images)
                rec.timings.eval = time.perf_counter() - t0
                exclude_from_rate(bar, rec.timings.eval)
            metrics.write(rec.to_json())
            if bar is not None:
                postfix["reward"] = f"{rec.reward_mean:.3f}"
                if "heldout_reward" in rec.heldout:
                    postfix["heldout"] = f"{rec.heldout['heldout_reward']:.3f}"
                bar.set_postfix(postfix)
                bar.update(1)
            if (it + 1) % cfg.run.checkpoint_every == 0 or it + 1 == cfg.train.iterations:
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
    # ---- the end: samples after, summary, report
    if not main:
        if do_eval:  # the samples' forwards are collectives with FSDP2: every rank runs them
            trainer.sample(*trainer.eval_set())
        return {"rank": world.rank}
    return _finish(cfg, trainer, run_dir, user, time.perf_counter() - t_run, do_eval, log)


# -------------------------------------------------------------------------------------------------- setup
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


def _evaluate_base(trainer: Trainer, run_dir: Path, metrics, user: dict[str, Any], log, main: bool):
    """Held-out scores and samples of the base model (record iteration -1: the held-out reward of record i is
    measured after iteration i's update); returns the samples."""
    cfg = trainer.cfg
    log(f"held-out evaluation of the base model ({cfg.run.eval_prompts} prompts x {cfg.run.eval_seeds} seeds) ...")
    t0 = time.perf_counter()
    scores, base_images = trainer.evaluate()
    user["heldout_before"] = scores
    if main:
        _grid(base_images, trainer, run_dir / "samples_before.png")
        save_images(base_images, run_dir / BASE_IMAGES)
    seconds = time.perf_counter() - t0
    metrics.write(BaseEvalRecord(scores, seconds).to_json())
    log("  " + ", ".join(f"{k.removeprefix('heldout_')} {v:.3f}" for k, v in scores.items()) + f" ({seconds:.1f} s)")
    return base_images


def _progress(cfg: Config, start: int, total: int):
    if not cfg.run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=cfg.run.name, unit="it", dynamic_ncols=True)


def exclude_from_rate(bar, seconds: float) -> None:
    """Leave `seconds` (a held-out evaluation between two iterations) out of the bar's elapsed time, rate and
    ETA, which then count training iterations only. tqdm measures from `start_t` and, for its smoothed rate,
    from `last_print_t`; moving both forward removes the interval."""
    if bar is None or seconds <= 0:
        return
    bar.start_t += seconds
    bar.last_print_t += seconds


# --------------------------------------------------------------------------------------------------- save
def _save(trainer: Trainer, run_dir: Path, step: int, extra: dict[str, Any]) -> Path | None:
    """Every rank gathers the state (a collective with FSDP2); rank 0 writes it. Returns the path on rank 0."""
    cfg = trainer.cfg
    trainable, optimizer_state, ema = trainer.trainable_state(), trainer.optimizer_state(), trainer.ema_state()
    if not trainer.world.is_main:
        return None
    return save_checkpoint(
        run_dir,
        step,
        trainable=trainable,
        optimizer_state=optimizer_state,
        config=to_dict(cfg),
        user=extra,
        extra_tensors=ema,
        keep=cfg.run.keep_checkpoints,
    )


def _lost_rank(exc: RuntimeError, run_dir: Path, it: int) -> TrainingInterrupted:
    last = latest_checkpoint(run_dir)
    where = (
        f"the last checkpoint is {last} ({int(last.name.split('_')[-1])} iterations done)"
        if last is not None
        else f"no checkpoint was written in {run_dir}"
    )
    return TrainingInterrupted(
        f"{exc} during iteration {it}; the job stops: {where}; nothing after it is kept — "
        f"run again with --resume (on any number of processes)"
    )


def _grid(images: torch.Tensor, trainer: Trainer, path: Path) -> None:
    from vgpo_fast.train.report import save_image_grid

    seeds = trainer.cfg.run.eval_seeds
    n = min(images.shape[0], 16 * seeds)
    save_image_grid(images[:n], path, nrow=seeds * 4, scale=4)


# ---------------------------------------------------------------------------------------------------- end
def _finish(
    cfg: Config, trainer: Trainer, run_dir: Path, user: dict[str, Any], seconds: float, do_eval: bool, log
) -> dict[str, Any]:
    records = read_metrics(run_dir / "metrics.jsonl")
    summary = _summary(cfg, records, user, seconds, trainer.policy.precision.name)
    if do_eval:
        prompts, seeds = trainer.eval_set()
        _grid(trainer.sample(prompts, seeds), trainer, run_dir / "samples_after.png")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if cfg.run.report:
        from vgpo_fast.train.report import write_report

        grids = {
            k: run_dir / f"samples_{k}.png" for k in ("before", "after") if (run_dir / f"samples_{k}.png").is_file()
        }
        summary["report"] = str(
            write_report(
                run_dir,
                records,
                title=f"{cfg.run.name}: {cfg.algorithm.name}",
                summary=summary,
                grids=grids,
                config=to_dict(cfg),
            )
        )
    for key in ("heldout_reward", "heldout_accuracy"):
        if f"{key}_before" in summary:
            after = summary.get(f"{key}_after", float("nan"))
            log(f"{key.replace('_', ' ')}: before {summary[f'{key}_before']:.3f} -> after {after:.3f}  ({run_dir})")
    return summary


def _summary(
    cfg: Config, records: list[dict[str, Any]], user: dict[str, Any], seconds: float, precision: str
) -> dict[str, Any]:
    """`precision`: the autocast the run resolved ('bf16', 'fp16' or 'no')."""
    evals = [r for r in records if r.get("heldout_reward") is not None and r["iteration"] >= 0]
    records = [r for r in records if r["iteration"] >= 0]
    out: dict[str, Any] = {
        "algorithm": cfg.algorithm.name,
        "precision": precision,
        "iterations": len(records),
        "wall_seconds_this_session": round(seconds, 1),
    }
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


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    pass


class _NoMetrics:
    """The metrics writer of ranks other than 0: writes nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
