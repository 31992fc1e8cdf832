"""CLIP-family preference rewards (CLIPScore, PickScore) from a local `transformers` checkpoint.

Both embed each image and its prompt with a `CLIPModel`, L2-normalise, and take the cosine `cos [B]`:

- `CLIPScore`: `weight * max(cos, 0)`, weight 2.5 by default (Hessel et al. 2021, "CLIP-S"; torchmetrics uses
  weight 100). Range [0, weight].
- `PickScore`: `exp(logit_scale) * cos`, the logit PickScore (Kirstain et al. 2023) gives a (prompt, image) pair;
  `exp(logit_scale)` comes from the checkpoint (about 100 for PickScore_v1). Range [-scale, scale]: negative
  values are possible, so TCRM's omega needs an offset in the reward config (docs/spec.md).

Weights load only from a local directory (`local_files_only=True`); nothing is downloaded. PickScore_v1 ships
without a processor: pass the directory of its CLIP-ViT-H-14 processor as `processor_dir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vgpo_fast.rewards.base import NonFinitePolicy, RewardModel


def _local_dir(path: str | Path, argument: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ValueError(
            f"{argument} must be an existing local directory (CLIP rewards never download weights; "
            f"save them there with save_pretrained), got {str(path)!r}"
        )
    return directory


def _pooled(output: Any) -> torch.Tensor:
    """Projected embeddings `[B, D]` from `get_*_features` (a tensor in transformers 4, a model output in 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _CLIPSimilarity(RewardModel):
    """Shared loading and embedding: `cosine(images, prompts) -> cos [B]` with a `CLIPModel`."""

    def __init__(
        self,
        model_dir: str | Path,
        processor_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
        nonfinite: NonFinitePolicy = "raise",
    ) -> None:
        super().__init__(nonfinite)
        from transformers import CLIPModel, CLIPProcessor

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        model_path = _local_dir(model_dir, "model_dir")
        processor_path = model_path if processor_dir is None else _local_dir(processor_dir, "processor_dir")
        if not (model_path / "config.json").is_file():
            raise ValueError(
                f"model_dir must hold a transformers CLIPModel (config.json + weights), "
                f"found no config.json in {str(model_path)!r}"
            )
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.model = CLIPModel.from_pretrained(model_path, local_files_only=True).to(self.device, dtype).eval()
        self.model.requires_grad_(False)
        processor = CLIPProcessor.from_pretrained(processor_path, local_files_only=True)
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        # Fixed-length padding (as PickScore does) so a prompt's tokens never depend on its batch.
        self.max_length = int(
            min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        )

    @torch.inference_mode()
    def cosine(self, images: np.ndarray, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity float32 `[B]` of uint8 images `[B, H, W, 3]` and their prompts."""
        out = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            pixels = self.image_processor(
                images=list(images[chunk]), input_data_format="channels_last", return_tensors="pt"
            )["pixel_values"]
            tokens = self.tokenizer(
                prompts[chunk], padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
            )
            image_emb = _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
            text_emb = _pooled(
                self.model.get_text_features(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                )
            )
            image_emb = torch.nn.functional.normalize(image_emb.float(), dim=-1)
            text_emb = torch.nn.functional.normalize(text_emb.float(), dim=-1)
            out.append((image_emb * text_emb).sum(dim=-1).cpu())
        return torch.cat(out)


class CLIPScore(_CLIPSimilarity):
    """`weight * max(cos(image, prompt), 0)`, range [0, weight] (weight 2.5: Hessel et al.'s CLIP-S)."""

    name = "clipscore"

    def __init__(self, model_dir: str | Path, weight: float = 2.5, **kwargs: Any) -> None:
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        super().__init__(model_dir, **kwargs)
        self.weight = float(weight)
        self.low, self.high = 0.0, self.weight

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return (self.weight * self.cosine(images, prompts).clamp_min(0.0)).double().numpy()


class PickScore(_CLIPSimilarity):
    """`exp(logit_scale) * cos(image, prompt)`, range [-scale, scale] with the checkpoint's scale (~100)."""

    name = "pickscore"

    def __init__(self, model_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(model_dir, **kwargs)
        self.scale = float(self.model.logit_scale.detach().float().exp())
        self.low, self.high = -self.scale, self.scale

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return (self.scale * self.cosine(images, prompts)).double().numpy()
