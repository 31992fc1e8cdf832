"""Models: the MMDiT transformer (tiny config or local path), the task text encoder, LoRA, compile and FP8.

- `transformer`: `tiny_transformer_config`, `build_transformer`, `load_transformer`, `save_transformer`, `velocity`.
- `text_encoder`: `TextEncoder` (tokenizer + tiny transformer -> `[B, L, D]`, pooled `[B, P]`).
- `lora`: `add_lora`, `reference_policy`, `trainable_parameters`, `save_lora`, `load_lora`.
- `acceleration`: `maybe_compile`, `enable_fp8_training`.
"""

from vgpo_fast.models.acceleration import enable_fp8_training, fp8_supported, maybe_compile
from vgpo_fast.models.lora import (
    MMDIT_LORA_TARGETS,
    add_lora,
    load_lora,
    lora_state_dict,
    reference_policy,
    save_lora,
    trainable_parameters,
)
from vgpo_fast.models.text_encoder import TextEncoder, TextEncoderConfig, Tokenizer, build_vocab
from vgpo_fast.models.transformer import (
    build_transformer,
    load_transformer,
    save_transformer,
    tiny_transformer_config,
    unwrap,
    velocity,
)

__all__ = [
    "MMDIT_LORA_TARGETS", "TextEncoder", "TextEncoderConfig", "Tokenizer", "add_lora", "build_transformer",
    "build_vocab", "enable_fp8_training", "fp8_supported", "load_lora", "load_transformer", "lora_state_dict",
    "maybe_compile", "reference_policy", "save_lora", "save_transformer", "tiny_transformer_config",
    "trainable_parameters", "unwrap", "velocity",
]
