"""A local SD3 / SD3.5 pipeline directory (diffusers layout) as a latent-space `FlowPipeline`.

Layout: `model_index.json`, `transformer/`, `vae/`, `text_encoder/` + `tokenizer/` (CLIP-L), `text_encoder_2/` +
`tokenizer_2/` (CLIP-G), optionally `text_encoder_3/` + `tokenizer_3/` (T5; without it the T5 states are zeros,
as in diffusers). `scheduler/` is not read: the sampler's schedule comes from the rollout config.
Nothing is downloaded (`local_files_only=True`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from vgpo_fast.models.pipeline import FlowPipeline
from vgpo_fast.models.transformer import load_transformer

__all__ = ["SD3PromptEncoder", "load_sd3_pipeline"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")


class SD3PromptEncoder(nn.Module):
    """CLIP-L + CLIP-G (+ T5) prompt encoder; computes what `StableDiffusion3Pipeline.encode_prompt` computes
    (no CFG, one image per prompt, no clip_skip).

    encode(prompts) -> (`encoder_hidden_states [B, 77 + L, D]`, `pooled [B, P_l + P_g]`): the penultimate hidden
    states of both CLIPs concatenated on features and zero-padded to the T5 width `D`, then the T5 states
    `[B, L, D]` (L = `max_sequence_length`; zeros when there is no T5) on the sequence axis; pooled is the two CLIP
    `text_embeds` concatenated.
    """

    def __init__(
        self,
        clip_l: CLIPTextModelWithProjection,
        tokenizer_l: CLIPTokenizer,
        clip_g: CLIPTextModelWithProjection,
        tokenizer_g: CLIPTokenizer,
        t5: T5EncoderModel | None,
        tokenizer_t5: T5TokenizerFast | None,
        t5_width: int,
        max_sequence_length: int = 256,
    ):
        super().__init__()
        if (t5 is None) != (tokenizer_t5 is None):
            raise ValueError(
                "t5 and tokenizer_t5 must both be given or both be None, "
                f"got t5={type(t5).__name__}, tokenizer_t5={type(tokenizer_t5).__name__}"
            )
        clip_width = clip_l.config.hidden_size + clip_g.config.hidden_size
        if clip_width > t5_width:
            raise ValueError(f"CLIP-L + CLIP-G hidden sizes ({clip_width}) must be <= the T5 width, got {t5_width}")
        if t5 is not None and t5.config.d_model != t5_width:
            raise ValueError(f"T5 d_model must equal t5_width={t5_width}, got {t5.config.d_model}")
        self.clip_l, self.clip_g, self.t5 = clip_l, clip_g, t5
        self.tokenizer_l, self.tokenizer_g, self.tokenizer_t5 = tokenizer_l, tokenizer_g, tokenizer_t5
        # diffusers pads both CLIPs to CLIP-L's length.
        self.clip_length = int(tokenizer_l.model_max_length)
        self.t5_width = int(t5_width)
        self.max_sequence_length = int(max_sequence_length)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> SD3PromptEncoder:
        # Frozen during RL: CLIP/T5 dropout must stay off even when the whole pipeline is put in train mode.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.clip_l.parameters()).device

    def _clip(
        self, model: CLIPTextModelWithProjection, tokenizer: CLIPTokenizer, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(
            prompts, padding="max_length", max_length=self.clip_length, truncation=True, return_tensors="pt"
        ).input_ids
        out = model(ids.to(self.device), output_hidden_states=True)
        return out.hidden_states[-2].to(self.clip_l.dtype), out.text_embeds

    def _t5(self, prompts: list[str]) -> torch.Tensor:
        if self.t5 is None:
            return torch.zeros(
                len(prompts), self.max_sequence_length, self.t5_width, device=self.device, dtype=self.clip_l.dtype
            )
        ids = self.tokenizer_t5(
            prompts,
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids
        return self.t5(ids.to(self.device))[0].to(self.t5.dtype)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts must be a non-empty list of strings, got []")
        states_l, pooled_l = self._clip(self.clip_l, self.tokenizer_l, prompts)
        states_g, pooled_g = self._clip(self.clip_g, self.tokenizer_g, prompts)
        t5_states = self._t5(prompts)
        clip_states = torch.cat([states_l, states_g], dim=-1)
        clip_states = F.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))
        return torch.cat([clip_states, t5_states], dim=-2), torch.cat([pooled_l, pooled_g], dim=-1)


def _model_dir(path: Path, name: str) -> Path:
    sub = path / name
    if not sub.is_dir():
        raise FileNotFoundError(f"SD3 pipeline {path} has no {name}/ subfolder (expected {sub})")
    if not (sub / "config.json").is_file():
        raise FileNotFoundError(f"SD3 pipeline {path}: {name}/ has no config.json (expected {sub / 'config.json'})")
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in sub.iterdir()):
        raise FileNotFoundError(f"SD3 pipeline {path}: no weights (*.safetensors, *.bin) in {name}/ ({sub})")
    return sub


def _tokenizer_dir(path: Path, name: str) -> Path:
    sub = path / name
    if not sub.is_dir() or not any(sub.iterdir()):
        raise FileNotFoundError(f"SD3 pipeline {path} has no {name}/ subfolder with tokenizer files (expected {sub})")
    return sub


def _listed(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and bool(entry) and entry[0] is not None


def _frozen(module: nn.Module, device: torch.device | str) -> nn.Module:
    return module.to(device).requires_grad_(False).eval()


def _latent_shape(
    transformer: nn.Module, vae: AutoencoderKL, resolution: int | tuple[int, int] | None
) -> tuple[int, int, int]:
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    tcfg = transformer.config
    if resolution is None:
        resolution = tcfg.sample_size * scale
    height, width = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    step = scale * tcfg.patch_size
    if height <= 0 or width <= 0 or height % step or width % step:
        raise ValueError(
            f"resolution must be positive multiples of vae scale ({scale}) x patch size "
            f"({tcfg.patch_size}) = {step}, got {(height, width)}"
        )
    h, w = height // scale, width // scale
    max_patches = getattr(tcfg, "pos_embed_max_size", None)
    if max_patches is not None and max(h, w) // tcfg.patch_size > max_patches:
        raise ValueError(
            f"resolution {(height, width)} needs {max(h, w) // tcfg.patch_size} patches per side, "
            f"the transformer's positional embedding covers pos_embed_max_size={max_patches}"
        )
    return int(vae.config.latent_channels), h, w


def load_sd3_pipeline(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    text_dtype: torch.dtype | None = None,
    resolution: int | tuple[int, int] | None = None,
    max_sequence_length: int = 256,
    use_t5: bool = True,
) -> FlowPipeline:
    """A local SD3 / SD3.5 pipeline directory as a `FlowPipeline` with latents `[16, H/8, W/8]` (for SD3).

    `dtype`: transformer and VAE; `text_dtype`: CLIP and T5 (default `dtype`). `resolution`: image side `S` or
    `(H, W)` in pixels (default: `transformer.config.sample_size` x the VAE scale factor, e.g. 1024 for SD3).
    `max_sequence_length`: T5 tokens (diffusers' default 256). `use_t5=False` skips loading T5 (zeros instead).
    Text encoders and VAE are frozen (`requires_grad=False`, eval mode).

    Raises FileNotFoundError when the directory, `model_index.json` or a required component is missing (naming
    the subfolder), ValueError when `model_index.json` is not an SD3 pipeline or the components do not fit.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"SD3 pipeline directory {path} does not exist")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} does not exist: {path} is not a diffusers pipeline directory")
    index = json.loads(index_file.read_text())
    class_name = index.get("_class_name", "")
    if not class_name.startswith("StableDiffusion3"):
        raise ValueError(
            f"{index_file} describes a {class_name or 'pipeline without _class_name'}, "
            f"expected StableDiffusion3Pipeline"
        )
    text_dtype = dtype if text_dtype is None else text_dtype
    for name in _REQUIRED:
        (_tokenizer_dir if name.startswith("tokenizer") else _model_dir)(path, name)
    t5_parts = ("text_encoder_3", "tokenizer_3")
    with_t5 = use_t5 and any(_listed(index, name) or (path / name).is_dir() for name in t5_parts)
    if with_t5:  # a T5 listed or half present is a broken download, not a T5-less pipeline
        try:
            _model_dir(path, "text_encoder_3")
            _tokenizer_dir(path, "tokenizer_3")
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}; pass use_t5=False to run without T5 (zero T5 states)") from None

    transformer = load_transformer(path / "transformer", dtype=dtype).to(device)
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=dtype, local_files_only=True)

    def clip(name: str) -> CLIPTextModelWithProjection:
        model = CLIPTextModelWithProjection.from_pretrained(path / name, dtype=text_dtype, local_files_only=True)
        return _frozen(model, device)

    def tokenizer(cls: type, name: str):
        return cls.from_pretrained(path / name, local_files_only=True)

    t5 = tokenizer_t5 = None
    if with_t5:
        t5 = _frozen(
            T5EncoderModel.from_pretrained(path / "text_encoder_3", dtype=text_dtype, local_files_only=True), device
        )
        tokenizer_t5 = tokenizer(T5TokenizerFast, "tokenizer_3")
    encoder = SD3PromptEncoder(
        clip("text_encoder"),
        tokenizer(CLIPTokenizer, "tokenizer"),
        clip("text_encoder_2"),
        tokenizer(CLIPTokenizer, "tokenizer_2"),
        t5,
        tokenizer_t5,
        t5_width=transformer.config.joint_attention_dim,
        max_sequence_length=max_sequence_length,
    )
    pooled_width = encoder.clip_l.config.projection_dim + encoder.clip_g.config.projection_dim
    if pooled_width != transformer.config.pooled_projection_dim:
        raise ValueError(
            f"CLIP-L + CLIP-G projection dims ({pooled_width}) must equal the transformer's "
            f"pooled_projection_dim, got {transformer.config.pooled_projection_dim}"
        )
    if vae.config.latent_channels != transformer.config.in_channels:
        raise ValueError(
            f"vae latent_channels ({vae.config.latent_channels}) must equal the transformer's "
            f"in_channels, got {transformer.config.in_channels}"
        )
    latent_shape = _latent_shape(transformer, vae, resolution)
    return FlowPipeline(transformer, encoder, latent_shape, vae=_frozen(vae, device))
