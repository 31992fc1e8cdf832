"""The policy: the trained transformer, its reference (adapters off, or a frozen copy), EMA, autocast and the
CFG velocity, and its weights in and out of checkpoints.

    policy = Policy(pipe, cfg, device)
    cond, uncond = policy.conditioning(prompts)
    v = policy.velocity(policy.forward_model, x, sigma, cond, uncond)        # rollout (no grad)
    v = policy.velocity(policy.train_model, x, sigma, cond, uncond)          # update (grad)
    v_ref = policy.reference_velocity(x, sigma, cond, uncond)                # KL anchor (no grad)

Three views of one model: `model` (the transformer itself; names of its parameters are the checkpoint's),
`train_module` (DDP / FSDP2 wrapper that synchronises gradients across ranks; the model itself on one process),
and `forward_model` / `train_model` (compiled with `model.compile`).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vgpo_fast import distributed
from vgpo_fast.models import add_lora, enable_fp8_training, maybe_compile, reference_policy, velocity
from vgpo_fast.precision import Precision, resolve_precision
from vgpo_fast.rollout.seeds import Stream, iteration_seed

if TYPE_CHECKING:
    from vgpo_fast.models.pipeline import FlowPipeline
    from vgpo_fast.train.config import Config

__all__ = ["Conditioning", "Policy"]

Embeddings = tuple[torch.Tensor, torch.Tensor]
Conditioning = tuple[Embeddings, Embeddings | None]  # (cond, uncond) of CFG; uncond None without CFG


class Policy:
    """The transformer of `pipe` set up for training per `cfg.model` (LoRA or full, FP8, compile, DDP / FSDP2)
    and `cfg.algorithm.beta` (a frozen reference copy for full fine-tuning with KL)."""

    def __init__(self, pipe: FlowPipeline, cfg: Config, device: torch.device) -> None:
        self.pipe, self.cfg, self.device = pipe, cfg, device
        self.precision: Precision = resolve_precision(cfg.train.mixed_precision, device)
        m = cfg.model
        model = pipe.transformer
        model.requires_grad_(not m.lora)
        self.reference: nn.Module | None = None
        if m.lora:  # peft draws lora_A from the global RNG: seed it, so that a run is a function of its config
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(iteration_seed(cfg.train.seed, 0, Stream.LORA_INIT))
                add_lora(model, rank=m.lora_rank, alpha=m.lora_alpha, target_modules=m.lora_targets)
        elif cfg.algorithm.beta > 0:
            self.reference = copy.deepcopy(model).requires_grad_(False).eval()
        if m.fp8:
            if device.type == "cpu":
                warnings.warn(
                    "model.fp8 on a CPU: float8 matmuls are emulated (measured 2.5x slower than eager on "
                    "a tiny SD3 model); FP8 pays off on Hopper-class GPUs",
                    stacklevel=2,
                )
            enable_fp8_training(model, device=device)
        self.model = model
        self.train_module = distributed.wrap_model(
            model, lora=m.lora, device=device, extra_sharded=[self.reference] if self.reference else []
        )
        self.forward_model = maybe_compile(model, "default" if m.compile else None)
        self.train_model = (
            self.forward_model
            if self.train_module is model
            else maybe_compile(self.train_module, "default" if m.compile else None)
        )
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.params] if cfg.optim.ema else None
        self._uncond: Embeddings | None = None

    # ------------------------------------------------------------------------------------------- forward
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision.dtype)

    def velocity(
        self, net: nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Embeddings, uncond: Embeddings | None
    ) -> torch.Tensor:
        """The CFG velocity `[B, C, H, W]` of `net` at `x` (sigma `[B]`), in x's dtype (float32 for float32 x)."""
        with self.autocast():
            v = velocity(net, x, sigma, cond[0], cond[1], self.cfg.rollout.guidance_scale, uncond)
        return v.float() if x.dtype == torch.float32 else v.to(x.dtype)

    @torch.no_grad()
    def reference_velocity(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Embeddings, uncond: Embeddings | None
    ) -> torch.Tensor:
        """The reference policy's velocity: the frozen copy, or the model with its adapters disabled."""
        if self.reference is not None:
            return self.velocity(self.reference, x, sigma, cond, uncond)
        with reference_policy(self.model):
            return self.velocity(self.forward_model, x, sigma, cond, uncond)

    def conditioning(self, prompts: list[str]) -> Conditioning:
        """(cond, uncond) for CFG; the empty prompt's encoding is computed once (the text encoder is frozen)."""
        if self.cfg.rollout.guidance_scale != 1.0 and self._uncond is None:
            self._uncond = self.pipe.encode([""])
        return self.pipe.encode(prompts), self._uncond

    # ----------------------------------------------------------------------------------------------- EMA
    def ema_update(self) -> None:
        if self.ema is None:
            return
        d = self.cfg.optim.ema_decay
        with torch.no_grad():
            for e, p in zip(self.ema, self.params, strict=True):
                e.mul_(d).add_(p.detach(), alpha=1 - d)

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Within the block the trainable parameters hold their EMA (no-op without EMA)."""
        if self.ema is None:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, self.ema, strict=True):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)

    # --------------------------------------------------------------------------------------------- state
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """`{name: full tensor on the CPU}` of the trainable weights (with FSDP2 a collective: call on every rank)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: distributed.full_tensor(p.detach()).cpu().contiguous() for p in self.params}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        missing = [n for n in (names for names, p in params.items() if p.requires_grad) if n not in state]
        if missing or any(n not in params for n in state):
            raise ValueError(
                f"checkpoint weights do not match the model: missing {missing[:3]}, "
                f"unexpected {[n for n in state if n not in params][:3]}"
            )
        for n, t in state.items():
            distributed.copy_full_into(params[n], t)

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        if self.ema is None:
            return None
        return {f"ema.{i}": distributed.full_tensor(t).cpu() for i, t in enumerate(self.ema)}

    def load_ema_state(self, tensors: dict[str, Any]) -> None:
        for i, e in enumerate(self.ema or []):
            distributed.copy_full_into(e, tensors[f"ema.{i}"])
