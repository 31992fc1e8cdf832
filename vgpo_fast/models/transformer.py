"""The MMDiT velocity model: diffusers' `SD3Transformer2DModel`, from a tiny config or a local directory.

Convention (docs/spec.md section 1): the model predicts `v = x1 - x0` and is conditioned on `timestep = sigma * 1000`.
Attention runs through diffusers' default `JointAttnProcessor2_0`, i.e. `F.scaled_dot_product_attention` (SDPA).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import SD3Transformer2DModel
from torch import nn

__all__ = ["build_transformer", "load_transformer", "save_transformer", "tiny_transformer_config", "unwrap", "velocity"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a `torch.compile` wrapper (the module itself when not compiled)."""
    return getattr(model, "_orig_mod", model)


def tiny_transformer_config(
    image_size: int | tuple[int, int],
    channels: int = 3,
    patch_size: int = 2,
    width: int = 128,
    layers: int = 6,
    heads: int = 2,
    text_dim: int = 128,
    pooled_dim: int = 128,
) -> dict:
    """Config for a small pixel-space `SD3Transformer2DModel` (in = out = `channels`, no VAE).

    `image_size` is `S` (square) or `(H, W)`; both sides must be multiples of `patch_size`. `width` must be a
    multiple of `heads` (head dim = width // heads). `text_dim` / `pooled_dim` are the text encoder's widths.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if h % patch_size or w % patch_size:
        raise ValueError(f"image_size must be a multiple of patch_size={patch_size}, got {(h, w)}")
    if width % heads:
        raise ValueError(f"width must be a multiple of heads={heads}, got {width}")
    return {
        "sample_size": h,
        "patch_size": patch_size,
        "in_channels": channels,
        "out_channels": channels,
        "num_layers": layers,
        "attention_head_dim": width // heads,
        "num_attention_heads": heads,
        "joint_attention_dim": text_dim,
        "caption_projection_dim": width,
        "pooled_projection_dim": pooled_dim,
        # Positional embeddings are cropped from a square grid of this many patches per side: covers non-square images.
        "pos_embed_max_size": max(h, w) // patch_size,
    }


def build_transformer(config: dict) -> SD3Transformer2DModel:
    """A freshly initialised `SD3Transformer2DModel` from `config` (e.g. `tiny_transformer_config(...)`)."""
    return SD3Transformer2DModel(**config)


def _model_dir(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"transformer path {path} does not exist")
    for candidate in (path / "transformer", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"no transformer config under {path}: expected {path / 'transformer' / 'config.json'} (SD3 pipeline layout) "
        f"or {path / 'config.json'} (bare model directory)"
    )


def load_transformer(path: str | Path, dtype: torch.dtype = torch.float32) -> SD3Transformer2DModel:
    """Load from a local directory: an SD3 pipeline (`path/transformer/`) or a bare model (`config.json` + weights).

    Never downloads (`local_files_only=True`). Raises FileNotFoundError when the directory, its config or its
    weights are missing, ValueError when the config is not an `SD3Transformer2DModel`.
    """
    model_dir = _model_dir(Path(path))
    class_name = json.loads((model_dir / "config.json").read_text()).get("_class_name", "SD3Transformer2DModel")
    if class_name != "SD3Transformer2DModel":
        raise ValueError(f"{model_dir / 'config.json'} describes a {class_name}, expected SD3Transformer2DModel")
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in model_dir.iterdir()):
        raise FileNotFoundError(f"no weights (*.safetensors, *.bin) in {model_dir}")
    return SD3Transformer2DModel.from_pretrained(model_dir, torch_dtype=dtype, local_files_only=True)


def save_transformer(model: nn.Module, path: str | Path) -> None:
    """Save as a bare model directory (`config.json` + `diffusion_pytorch_model.safetensors`).

    A model carrying LoRA adapters is refused: save the adapter with `lora.save_lora` instead.
    """
    model = unwrap(model)
    if any("lora_" in name for name, _ in model.named_parameters()):
        raise ValueError("model carries LoRA adapters: save them with vgpo_fast.models.save_lora, not save_transformer")
    model.save_pretrained(str(path), safe_serialization=True)


def velocity(
    model: nn.Module,
    x: torch.Tensor,
    sigma: torch.Tensor | float,
    encoder_hidden_states: torch.Tensor,
    pooled: torch.Tensor,
    guidance_scale: float = 1.0,
    uncond: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Velocity `v [B, C, H, W]` at `x [B, C, H, W]`, noise level `sigma` (scalar or `[B]`), with optional CFG.

    `encoder_hidden_states [B, L, D]`, `pooled [B, P]`; `uncond = (ehs [1 or B, L, D], pooled [1 or B, P])` is the
    empty-prompt conditioning. With `guidance_scale != 1` conditional and unconditional rows run in one forward and
    combine as `v = v_u + w (v_c - v_u)`; with `guidance_scale == 1` only the conditional forward runs.
    """
    b = x.shape[0]
    sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
    sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
    if sigma.shape != (b,):
        raise ValueError(f"sigma must be a scalar or [B]=[{b}], got {tuple(sigma.shape)}")
    timestep = sigma * 1000.0
    if guidance_scale == 1.0:
        return model(
            hidden_states=x,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled,
            timestep=timestep,
            return_dict=False,
        )[0]
    if uncond is None:
        raise ValueError(f"guidance_scale={guidance_scale} needs uncond=(encoder_hidden_states, pooled), got None")
    u_ehs, u_pooled = uncond
    u_ehs = u_ehs.expand(b, *encoder_hidden_states.shape[1:]).to(encoder_hidden_states.dtype)
    u_pooled = u_pooled.expand(b, *pooled.shape[1:]).to(pooled.dtype)
    out = model(
        hidden_states=torch.cat([x, x]),
        encoder_hidden_states=torch.cat([u_ehs, encoder_hidden_states]),
        pooled_projections=torch.cat([u_pooled, pooled]),
        timestep=torch.cat([timestep, timestep]),
        return_dict=False,
    )[0]
    v_u, v_c = out.float().chunk(2)
    return (v_u + guidance_scale * (v_c - v_u)).to(out.dtype)
