"""`vgpo-fast pretrain`: flow-matching pretraining of a task's tiny MMDiT and text encoder on the CPU.

docs/spec.md (pretraining): x_t = (1 - t) x_0 + t x_1, target v = x_1 - x_0, timestep = t * 1000; t is logit-normal
(SD3's choice); a fraction of prompts is replaced by the empty prompt so that CFG works. Ground truth comes from
the task's renderer over the *training* prompts only (category-uniform draws); held-out prompts stay unseen.

The result is a task model directory: `transformer/` (bf16 safetensors), `text_encoder/`, `pretrain.json` (the
command, seed, data version, loss curve, held-out reward). Same config and seed -> the same batches; the weights
match to float rounding on the same machine and thread count.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from vgpo_fast.models.pipeline import FlowPipeline, load_task_pipeline, pixels_to_unit
from vgpo_fast.models.text_encoder import TextEncoder, TextEncoderConfig
from vgpo_fast.models.transformer import build_transformer, save_transformer, tiny_transformer_config
from vgpo_fast.precision import resolve_precision
from vgpo_fast.rollout.ode import sample_images
from vgpo_fast.rollout.prompts import eval_prompt_set, sample_prompts
from vgpo_fast.tasks.pretrain_config import PretrainConfig
from vgpo_fast.tasks.registry import Task, get_task

# sample_images and eval_prompt_set live in vgpo_fast.rollout (ode, prompts); re-exported here for old callers.
__all__ = ["PretrainConfig", "eval_prompt_set", "heldout_reward", "pretrain", "sample_images"]


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


def build_models(task: Task, seed: int) -> FlowPipeline:
    """Freshly initialised (seeded) transformer and text encoder for `task`."""
    torch.manual_seed(seed)
    cfg = tiny_transformer_config(task.image_size, **task.model)
    transformer = build_transformer(cfg)
    enc_cfg = TextEncoderConfig(
        vocab=task.vocab,
        level=task.text_level,
        max_length=task.max_length,
        text_dim=task.model.get("text_dim", 128),
        pooled_dim=task.model.get("pooled_dim", 128),
    )
    return FlowPipeline(transformer, TextEncoder(enc_cfg), (3, *task.image_size))


def _batch(task: Task, cfg: PretrainConfig, rng: np.random.Generator) -> tuple[list[str], torch.Tensor]:
    prompts = sample_prompts(task.train, cfg.batch_size, rng)
    seeds = rng.integers(0, 2**31 - 1, size=cfg.batch_size).tolist()
    drawn = prompts
    if cfg.caption_noise > 0:  # draws nothing from rng when off, so earlier models' batches replay exactly
        noisy = rng.random(cfg.batch_size) < cfg.caption_noise
        drawn = [task.miscaption(p, rng) if n else p for p, n in zip(prompts, noisy, strict=True)]
    x0 = pixels_to_unit(torch.from_numpy(task.render(drawn, seeds)))
    drop = rng.random(cfg.batch_size) < cfg.prompt_dropout
    return [("" if d else p) for p, d in zip(prompts, drop, strict=True)], x0


def train_steps(pipe: FlowPipeline, task: Task, cfg: PretrainConfig, log=print) -> list[dict]:
    """Run `cfg.steps` optimiser steps in place; returns the logged loss curve."""
    params = list(pipe.transformer.parameters()) + list(pipe.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    curve, running, t0 = [], [], time.perf_counter()
    pipe.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        prompts, x0 = _batch(task, cfg, rng)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
        tb = t.view(-1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            ehs, pooled = pipe.text_encoder.encode(prompts)
            v = pipe.transformer(
                hidden_states=xt,
                encoder_hidden_states=ehs,
                pooled_projections=pooled,
                timestep=t * 1000,
                return_dict=False,
            )[0]
        loss = torch.nn.functional.mse_loss(v.float(), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            entry = {
                "step": step + 1,
                "loss": float(np.mean(running)),
                "lr": _lr_at(step, cfg),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            curve.append(entry)
            running = []
            log(
                f"pretrain {task.name}: step {entry['step']}/{cfg.steps} loss {entry['loss']:.4f} "
                f"({entry['seconds']:.0f} s)"
            )
    pipe.eval()
    return curve


def heldout_reward(
    pipe: FlowPipeline, task: Task, n_prompts: int = 64, n_seeds: int = 2, steps: int = 10, guidance_scale: float = 3.0
) -> dict[str, float]:
    """Mean held-out `task.eval_reward` of ODE samples, overall and per category."""
    from vgpo_fast.rewards.registry import build_reward
    from vgpo_fast.tasks.shapes import category_of, parse_prompt

    prompts, seeds = eval_prompt_set(task, n_prompts, n_seeds)
    images = sample_images(pipe, prompts, seeds, steps, guidance_scale)
    scores = build_reward(task.eval_reward).score(images, prompts).numpy()
    result = {"mean": float(scores.mean())}
    if task.name == "shapes":
        cats = [category_of(parse_prompt(p)) for p in prompts]
        for c in sorted(set(cats)):
            result[c] = float(np.mean([s for s, k in zip(scores, cats, strict=True) if k == c]))
    return result


def save_task_model(pipe: FlowPipeline, task: Task, out: Path, meta: dict) -> None:
    """Write the task model directory atomically (a temporary sibling directory, then a rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_transformer(pipe.transformer.to(torch.bfloat16), tmp / "transformer")
        pipe.transformer.float()
        pipe.text_encoder.save(tmp / "text_encoder")
        (tmp / "pretrain.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


_LOG = partial(print, flush=True)


def pretrain(cfg: PretrainConfig, out: Path | None = None, log=_LOG) -> dict:
    """Pretrain `cfg.task`'s base model and write it to `out` (default: the task's shipped directory)."""
    task = get_task(cfg.task)
    if cfg.bf16 is None:  # auto: bf16 only where the CPU runs it natively (vgpo_fast.precision)
        choice = resolve_precision("auto", torch.device("cpu"))
        cfg = replace(cfg, bf16=choice.dtype is not None)
        log(f"precision: {choice.summary}")
    if not 0 <= cfg.caption_noise < 1:
        raise ValueError(f"caption_noise must be in [0, 1), got {cfg.caption_noise}")
    if cfg.caption_noise > 0 and task.miscaption is None:
        raise ValueError(f"caption_noise > 0 needs a task that can miscaption its prompts; {task.name!r} cannot")
    out = task.base_model_dir if out is None else Path(out)
    t0 = time.perf_counter()
    init_meta = None
    if cfg.init is not None:
        pipe = load_task_pipeline(cfg.init)
        pipe.transformer.float()  # the directory holds bf16 weights; train fp32 master weights
        init_meta = json.loads((Path(cfg.init) / "pretrain.json").read_text())
        if init_meta.get("task") != task.name:
            raise ValueError(f"--init {cfg.init} is a {init_meta.get('task')!r} model, not {task.name!r}")
        if init_meta.get("config", {}).get("seed") == cfg.seed and init_meta.get("config", {}).get("init") is None:
            log(
                f"note: --seed {cfg.seed} replays the batches the init model was trained on; another seed draws "
                "new ones"
            )
    else:
        pipe = build_models(task, cfg.seed)
    curve = train_steps(pipe, task, cfg, log)
    train_s = time.perf_counter() - t0
    meta = {
        "task": task.name,
        "image_size": list(task.image_size),
        "config": asdict(cfg),
        "command": "vgpo-fast pretrain " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["pretrain"] else None,
        "data_version": task.data_version,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "train_seconds": round(train_s, 1),
        "loss_curve": curve,
        **({"init_meta": {k: v for k, v in init_meta.items() if k != "loss_curve"}} if init_meta else {}),
    }
    if cfg.eval_prompts > 0:
        meta["heldout_reward"] = heldout_reward(
            pipe, task, cfg.eval_prompts, cfg.eval_seeds, cfg.eval_steps, cfg.eval_guidance
        )
        log(f"pretrain {task.name}: held-out {task.eval_reward} = {meta['heldout_reward']}")
    save_task_model(pipe, task, out, meta)
    log(f"pretrain {task.name}: wrote {out} in {time.perf_counter() - t0:.0f} s")
    return meta
