"""LoRA on the MMDiT through `peft`; the adapter-disabled network is the KL reference policy.

`add_lora` injects peft LoRA layers in place (the model keeps its class and forward signature) and freezes
everything else. peft initialises `lora_B = 0`, so a fresh adapter leaves the velocity unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from vgpo_fast.models.transformer import unwrap

__all__ = [
    "MMDIT_LORA_TARGETS",
    "add_lora",
    "load_lora",
    "lora_state_dict",
    "reference_policy",
    "save_lora",
    "trainable_parameters",
]

# Joint attention of every MMDiT block: image-stream q/k/v/out and context-stream q/k/v/out.
MMDIT_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)


def add_lora(
    model: nn.Module,
    rank: int = 16,
    alpha: float | None = None,
    target_modules: Sequence[str] = MMDIT_LORA_TARGETS,
    dropout: float = 0.0,
    adapter_name: str = "default",
) -> nn.Module:
    """Inject LoRA (`rank`, scale `alpha / rank`, default alpha = rank) into `target_modules`; freeze the rest.

    Returns the same module (modified in place).
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        target_modules=list(target_modules),
        lora_dropout=dropout,
        init_lora_weights=True,
    )
    base = unwrap(model)
    inject_adapter_in_model(config, base, adapter_name=adapter_name)
    for name, p in base.named_parameters():
        p.requires_grad_("lora_" in name)
    base._vgpo_lora_config = {
        "rank": rank,
        "alpha": config.lora_alpha,
        "target_modules": list(target_modules),
        "adapter_name": adapter_name,
    }
    return model


def _lora_layers(model: nn.Module) -> list[BaseTunerLayer]:
    layers = [m for m in unwrap(model).modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        raise ValueError("model has no LoRA adapters (call add_lora first)")
    return layers


@contextmanager
def reference_policy(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `model` computes the base (adapter-free) velocity: the reference for the KL term.

    peft's disable toggle also clears requires_grad of adapter weights; it is restored on exit.
    """
    layers = _lora_layers(model)
    was_disabled = [layer.disable_adapters for layer in layers]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer, disabled in zip(layers, was_disabled, strict=True):
            layer.enable_adapters(not disabled)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with `requires_grad` (after `add_lora`: the LoRA A/B matrices only)."""
    return [p for p in unwrap(model).parameters() if p.requires_grad]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors of `model`, keyed as in its state dict (e.g. `...attn.to_q.lora_A.default.weight`)."""
    return {k: v for k, v in unwrap(model).state_dict().items() if "lora_" in k}


def save_lora(model: nn.Module, path: str | Path) -> None:
    """Save the adapter weights to a safetensors file; the LoRA config goes into its metadata."""
    state = lora_state_dict(model)
    if not state:
        raise ValueError("model has no LoRA adapters (call add_lora first)")
    meta = {"vgpo_lora_config": json.dumps(getattr(unwrap(model), "_vgpo_lora_config", {}))}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path), metadata=meta)


def load_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Load adapter weights saved by `save_lora`, adding the adapter (from the file's config) when absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        config = json.loads((f.metadata() or {}).get("vgpo_lora_config", "{}"))
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    base = unwrap(model)
    if not any(isinstance(m, BaseTunerLayer) for m in base.modules()):
        if not config:
            raise ValueError(f"{path} has no LoRA config metadata and the model has no adapter to load it into")
        add_lora(
            base,
            rank=config["rank"],
            alpha=config["alpha"],
            target_modules=config["target_modules"],
            adapter_name=config["adapter_name"],
        )
    expected = set(lora_state_dict(base))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"LoRA file {path} does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    base.load_state_dict(state, strict=False)
    return model
