"""`pretrain` lowers the flow-matching loss; the shipped base model loads, matches the task's data version, and
samples images of the task's size."""

from __future__ import annotations

import json

import pytest
import torch

from vgpo_fast.models.pipeline import load_task_pipeline
from vgpo_fast.tasks.pretrain import PretrainConfig, build_models, sample_images, save_task_model, train_steps
from vgpo_fast.tasks.registry import get_task


@pytest.mark.parametrize("task_name", ["shapes", "text"])
def test_a_few_pretraining_steps_lower_the_loss(task_name: str) -> None:
    task = get_task(task_name)
    cfg = PretrainConfig(
        task=task_name, steps=24, batch_size=16, warmup=4, lr=1e-3, log_every=4, eval_prompts=0, bf16=False
    )
    torch.set_num_threads(1)
    pipe = build_models(task, seed=0)
    curve = train_steps(pipe, task, cfg, log=lambda *_: None)
    assert len(curve) == 6
    assert curve[-1]["loss"] < 0.8 * curve[0]["loss"], curve


def test_pretrain_batches_depend_only_on_the_seed() -> None:
    task = get_task("shapes")
    cfg = PretrainConfig(steps=2, batch_size=4, eval_prompts=0, bf16=False, log_every=1)
    losses = []
    for _ in range(2):
        pipe = build_models(task, seed=3)
        losses.append([e["loss"] for e in train_steps(pipe, task, cfg, log=lambda *_: None)])
    assert losses[0] == losses[1]


def test_caption_noise_redraws_only_the_noisy_images() -> None:
    """With caption noise the prompts (the conditioning) are those of the clean batch and about the requested
    fraction of its images is redrawn from another scene. A task without miscaptions, or a fraction outside
    [0, 1), is refused."""
    import numpy as np

    from vgpo_fast.tasks.pretrain import _batch, pretrain

    task = get_task("shapes")
    clean = _batch(task, PretrainConfig(batch_size=256, prompt_dropout=0.0), np.random.default_rng(5))
    noisy = _batch(
        task, PretrainConfig(batch_size=256, prompt_dropout=0.0, caption_noise=0.4), np.random.default_rng(5)
    )
    assert clean[0] == noisy[0]
    changed = (clean[1] != noisy[1]).flatten(1).any(dim=1).float().mean().item()
    assert 0.25 < changed < 0.5, changed
    with pytest.raises(ValueError, match="miscaption"):
        pretrain(PretrainConfig(task="text", caption_noise=0.2))
    with pytest.raises(ValueError, match="caption_noise"):
        pretrain(PretrainConfig(caption_noise=1.0))


def _load_shipped(name: str):
    """The task and its shipped base model, after checking that the model matches the task's current data."""
    task = get_task(name)
    meta = json.loads((task.base_model_dir / "pretrain.json").read_text())
    assert meta["data_version"] == task.data_version, f"the {name} data changed: re-run `vgpo-fast pretrain`"
    assert meta["image_size"] == list(task.image_size)
    return task, load_task_pipeline(task.base_model_dir)


def test_shipped_shapes_base_model_loads_and_samples() -> None:
    task, pipe = _load_shipped("shapes")
    images = sample_images(pipe, ["a red circle", "two blue squares"], [0, 1], steps=4)
    assert images.shape == (2, 3, *task.image_size)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # A trained model paints a flat grey background (the renderer's 128) around its objects: the corners are grey.
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert float((corners - 128 / 255).abs().mean()) < 0.1


def test_shipped_text_base_model_loads_and_samples() -> None:
    task, pipe = _load_shipped("text")
    prompts = ['an image with the text "cat"', 'an image with the text "elephant"']
    images = sample_images(pipe, prompts, [0, 1], steps=6)
    assert images.shape == (2, 3, *task.image_size)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    # The renderer's layout, learned: white paper, dark ink in the cells the word fills (8 px per character) and
    # none in the cells a short word leaves empty.
    gray = images.mean(dim=1)  # [2, 16, 64]
    assert float(gray[:, [0, -1]].mean()) > 0.9  # top and bottom rows
    assert float(gray[0, :, :24].min()) < 0.5 and float(gray[1, :, 40:].min()) < 0.5  # ink where the letters go
    assert float(gray[0, :, 32:].mean()) > 0.95  # "cat" fills 3 of 8 cells


def test_save_task_model_round_trip(tmp_path) -> None:
    task = get_task("shapes")
    pipe = build_models(task, seed=0)
    save_task_model(pipe, task, tmp_path / "m", {"task": "shapes", "image_size": list(task.image_size)})
    loaded = load_task_pipeline(tmp_path / "m")
    x = torch.randn(1, 3, *task.image_size)
    v1 = pipe.velocity_fn(["a red circle"])(x, torch.tensor([0.5]))
    v2 = loaded.velocity_fn(["a red circle"])(x, torch.tensor([0.5]))
    torch.testing.assert_close(v1, v2, rtol=2e-2, atol=2e-2)  # stored in bf16


def test_pretrain_init_continues_from_a_model_directory(tmp_path) -> None:
    from vgpo_fast.tasks.pretrain import pretrain

    task = get_task("shapes")
    first = pretrain(
        PretrainConfig(steps=6, batch_size=8, warmup=1, lr=1e-3, log_every=1, eval_prompts=0, bf16=False),
        out=tmp_path / "a",
        log=lambda *_: None,
    )
    second = pretrain(
        PretrainConfig(
            steps=2,
            batch_size=8,
            warmup=1,
            lr=1e-5,
            log_every=1,
            eval_prompts=0,
            bf16=False,
            seed=1,
            init=str(tmp_path / "a"),
        ),
        out=tmp_path / "b",
        log=lambda *_: None,
    )
    fresh = pretrain(
        PretrainConfig(steps=2, batch_size=8, warmup=1, lr=1e-5, log_every=1, eval_prompts=0, bf16=False, seed=1),
        out=tmp_path / "c",
        log=lambda *_: None,
    )
    # Same batches (seed 1), tiny lr: the continued model starts where the first one ended, far below a fresh one.
    assert second["loss_curve"][0]["loss"] < 0.9 * fresh["loss_curve"][0]["loss"]
    assert second["init_meta"]["config"]["steps"] == 6 and "loss_curve" not in second["init_meta"]
    assert first["loss_curve"][-1]["loss"] < first["loss_curve"][0]["loss"]
    with pytest.raises(ValueError, match="not 'text'"):
        pretrain(
            PretrainConfig(task="text", steps=1, init=str(tmp_path / "a")), out=tmp_path / "d", log=lambda *_: None
        )
    assert task.name == "shapes"
