"""Models: the MMDiT transformer (tiny config or local path), the task text encoder, LoRA, compile and FP8.

- `transformer`: `tiny_transformer_config`, `build_transformer`, `load_transformer`, `save_transformer`, `velocity`.
- `text_encoder`: `TextEncoder` (tokenizer + tiny transformer -> `[B, L, D]`, pooled `[B, P]`).
- `lora`: `add_lora`, `reference_policy`, `trainable_parameters`, `save_lora`, `load_lora`.
- `acceleration`: `maybe_compile`, `enable_fp8_training`.

The names are imported from their submodules on first use (PEP 562), so that importing one submodule (say
`vgpo_fast.models.text_encoder`) does not import diffusers and peft as well.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_SUBMODULE = {
    "enable_fp8_training": "acceleration",
    "fp8_supported": "acceleration",
    "maybe_compile": "acceleration",
    "MMDIT_LORA_TARGETS": "lora",
    "add_lora": "lora",
    "load_lora": "lora",
    "lora_state_dict": "lora",
    "reference_policy": "lora",
    "save_lora": "lora",
    "trainable_parameters": "lora",
    "TextEncoder": "text_encoder",
    "TextEncoderConfig": "text_encoder",
    "Tokenizer": "text_encoder",
    "build_vocab": "text_encoder",
    "build_transformer": "transformer",
    "load_transformer": "transformer",
    "save_transformer": "transformer",
    "tiny_transformer_config": "transformer",
    "unwrap": "transformer",
    "velocity": "transformer",
}

__all__ = [
    "MMDIT_LORA_TARGETS",
    "TextEncoder",
    "TextEncoderConfig",
    "Tokenizer",
    "add_lora",
    "build_transformer",
    "build_vocab",
    "enable_fp8_training",
    "fp8_supported",
    "load_lora",
    "load_transformer",
    "lora_state_dict",
    "maybe_compile",
    "reference_policy",
    "save_lora",
    "save_transformer",
    "tiny_transformer_config",
    "trainable_parameters",
    "unwrap",
    "velocity",
]


def __getattr__(name: str) -> Any:
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE[name]}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
