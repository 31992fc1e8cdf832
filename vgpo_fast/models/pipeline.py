"""A text-to-image flow pipeline: the MMDiT, its prompt encoder, and the decoder from latents to images.

Two kinds share one interface, so the rollout and the trainer never ask which one they hold:
- pixel space (the built-in tasks): latents are images in [-1, 1], `[B, 3, H, W]`; decode is a rescale;
- latent space (SD3/SD3.5): a `diffusers` VAE decodes `[B, 16, H/8, W/8]` latents (`AutoencoderKL`, with the
  SD3 scaling and shift factors).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from vgpo_fast.models.text_encoder import TextEncoder
from vgpo_fast.models.transformer import load_transformer, velocity

__all__ = ["FlowPipeline", "load_task_pipeline", "pixels_to_unit", "unit_to_pixels"]

Decoder = Callable[[torch.Tensor], torch.Tensor]
PromptEncoder = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


def pixels_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 `[B, H, W, 3]` -> float32 `[B, 3, H, W]` in [-1, 1] (the pixel-space data convention)."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def unit_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """float `[B, 3, H, W]` in [-1, 1] -> float32 `[B, 3, H, W]` in [0, 1] (the rewards' float image form)."""
    return x.float().add(1.0).mul(0.5).clamp(0.0, 1.0)


class FlowPipeline(nn.Module):
    """transformer + prompt encoder (+ VAE).

    latent_shape: `(C, h, w)` of one latent. encode(prompts) -> (`encoder_hidden_states [B, L, D]`,
    `pooled [B, P]`); decode(latents [B, C, h, w]) -> float32 images `[B, 3, H, W]` in [0, 1].
    """

    def __init__(
        self,
        transformer: nn.Module,
        text_encoder: nn.Module,
        latent_shape: tuple[int, int, int],
        vae: nn.Module | None = None,
        encode_fn: PromptEncoder | None = None,
    ):
        super().__init__()
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.vae = vae
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self._encode_fn = encode_fn

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt conditioning (no grad: the text encoder is frozen during RL)."""
        if self._encode_fn is not None:
            return self._encode_fn(prompts)
        return self.text_encoder.encode(list(prompts))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """`[B, C, h, w]` latents -> float32 `[B, 3, H, W]` images in [0, 1]."""
        if self.vae is None:
            return unit_to_pixels(latents)
        cfg = self.vae.config
        shift = getattr(cfg, "shift_factor", None) or 0.0
        z = latents.to(self.vae.dtype) / cfg.scaling_factor + shift
        with torch.no_grad():
            images = self.vae.decode(z, return_dict=False)[0]
        return unit_to_pixels(images)

    def velocity_fn(
        self, prompts: Sequence[str], guidance_scale: float = 1.0, model: nn.Module | None = None
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """`v(x [B, ...], sigma [B])` for a fixed batch of prompts (B = len(prompts)), CFG-guided when
        `guidance_scale != 1`. `model` overrides the transformer (e.g. a compiled one)."""
        ehs, pooled = self.encode(prompts)
        uncond = self.encode([""]) if guidance_scale != 1.0 else None
        net = self.transformer if model is None else model

        def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return velocity(net, x, sigma, ehs.to(x.dtype), pooled.to(x.dtype), guidance_scale, uncond)

        return fn


def load_task_pipeline(path: str | Path, device: torch.device | str = "cpu") -> FlowPipeline:
    """A built-in task's model directory (`transformer/`, `text_encoder/`, `pretrain.json`) as a pipeline."""
    path = Path(path)
    meta_file = path / "pretrain.json"
    if not meta_file.is_file():
        raise FileNotFoundError(
            f"{meta_file} does not exist: {path} is not a task model directory (made by `vgpo-fast pretrain`)"
        )
    meta = json.loads(meta_file.read_text())
    transformer = load_transformer(path / "transformer").to(device)
    text_encoder = TextEncoder.load(path / "text_encoder", device=device)
    h, w = meta["image_size"]
    return FlowPipeline(transformer, text_encoder, (3, h, w))
