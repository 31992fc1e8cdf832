"""CLIPScore / PickScore on a tiny random-weight CLIP saved to a temporary directory (built offline here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from vgpo_fast.rewards.clip import CLIPScore, PickScore  # noqa: E402

PROMPTS = ["a red cube", "a photo of a cat on a mat", "x", "two dogs", 'an image with the text "sun"']


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (printable bytes map to themselves)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _save_tiny_clip(directory: Path, processor_directory: Path | None = None, seed: int = 0) -> None:
    """A 2-layer CLIP (32-wide, 32x32 images) and a character-level CLIP tokenizer (no merges)."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(directory)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
        directory if processor_directory is None else processor_directory
    )


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_clip")
    _save_tiny_clip(directory)
    return directory


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (len(PROMPTS), 40, 56, 3), dtype=np.uint8)


def _reference_logits(directory: Path, images: np.ndarray, prompts: list[str]) -> tuple[torch.Tensor, float]:
    """`logits_per_image` diagonal `[B]` (= exp(logit_scale) * cos) and exp(logit_scale), from the raw model."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(directory, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(directory, local_files_only=True)
    inputs = processor(
        text=prompts, images=list(images), return_tensors="pt", padding="max_length", max_length=32, truncation=True
    )
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    return logits.diagonal().float(), float(model.logit_scale.detach().exp())


def test_scores_equal_an_independent_computation(clip_dir, images):
    logits, scale = _reference_logits(clip_dir, images, PROMPTS)
    pick = PickScore(clip_dir)
    torch.testing.assert_close(pick.score(images, PROMPTS), logits, rtol=1e-5, atol=1e-5)
    assert pick.scale == pytest.approx(scale) and (pick.low, pick.high) == (-pick.scale, pick.scale)
    clip = CLIPScore(clip_dir, weight=2.5)
    torch.testing.assert_close(clip.score(images, PROMPTS), 2.5 * (logits / scale).clamp_min(0), rtol=1e-5, atol=1e-6)


def test_shapes_and_ranges(clip_dir, images):
    clip, pick = CLIPScore(clip_dir, weight=100.0), PickScore(clip_dir)
    for reward in (clip, pick):
        scores = reward.score(images, PROMPTS)
        assert scores.shape == (len(PROMPTS),) and scores.dtype == torch.float32
        assert (scores >= reward.low).all() and (scores <= reward.high).all()
    assert (clip.low, clip.high) == (0.0, 100.0)
    # Random weights give cosines of both signs, so the clamp at 0 is exercised.
    assert (pick.score(images, PROMPTS) < 0).any() and (clip.score(images, PROMPTS) == 0).any()


@pytest.mark.parametrize("cls", [CLIPScore, PickScore])
def test_batching_invariance(clip_dir, images, cls):
    reward = cls(clip_dir, batch_size=2)  # chunks of 2, 2, 1
    batched = reward.score(images, PROMPTS)
    single = torch.cat([reward.score(images[i : i + 1], PROMPTS[i : i + 1]) for i in range(len(PROMPTS))])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cls(clip_dir, batch_size=64).score(images, PROMPTS), batched, rtol=1e-5, atol=1e-5)


def test_determinism_across_calls_and_loads(clip_dir, images):
    first = PickScore(clip_dir).score(images, PROMPTS)
    again = PickScore(clip_dir)
    assert torch.equal(again.score(images, PROMPTS), first)
    assert torch.equal(again.score(images, PROMPTS), first)


def test_inputs_in_other_forms(clip_dir, images):
    from PIL import Image

    reward = CLIPScore(clip_dir)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    expected = reward.score(images, PROMPTS)
    torch.testing.assert_close(reward.score(as_float, PROMPTS), expected)
    torch.testing.assert_close(reward.score([Image.fromarray(im) for im in images], PROMPTS), expected)
    torch.testing.assert_close(reward.submit(images, PROMPTS).result(timeout=60), expected)
    reward.close()


def test_separate_processor_dir(tmp_path, images):
    model_dir, processor_dir = tmp_path / "model", tmp_path / "processor"
    _save_tiny_clip(model_dir, processor_directory=processor_dir, seed=1)
    assert not (model_dir / "tokenizer.json").exists()
    scores = PickScore(model_dir, processor_dir=processor_dir).score(images[:2], PROMPTS[:2])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_missing_or_bad_directories_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"model_dir must be an existing local directory.*never download"):
        PickScore(tmp_path / "nope")
    with pytest.raises(ValueError, match="model_dir must be an existing local directory"):
        CLIPScore("openai/clip-vit-base-patch32")  # a hub id is not a local directory
    with pytest.raises(ValueError, match="no config.json"):
        CLIPScore(tmp_path)
    with pytest.raises(ValueError, match="processor_dir must be an existing local directory"):
        PickScore(tmp_path, processor_dir=tmp_path / "nope")


def test_bad_arguments(clip_dir):
    with pytest.raises(ValueError, match="weight must be > 0"):
        CLIPScore(clip_dir, weight=0.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PickScore(clip_dir, batch_size=0)
