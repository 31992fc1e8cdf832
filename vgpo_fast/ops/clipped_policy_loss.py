"""`clipped_policy_loss`: PPO-clip loss with a KL penalty, plus clip fraction and approx-KL (docs/spec.md 5.3)."""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch

from ._backend import launcher, resolve_backend
from ._validate import check_like, check_number, check_tensor, compute_dtype


def _triton_kernels() -> ModuleType:
    """This op's Triton launchers, kernels/clipped_policy_loss.py, imported on the first triton call and not with
    this module: it imports triton (optional) and reads TRITON_INTERPRET when defined (see _backend)."""
    from vgpo_fast.kernels import clipped_policy_loss as kernels

    return kernels


class PolicyLossOutput(NamedTuple):
    loss: torch.Tensor  # [] mean over all entries of L_clip + beta * kl
    clip_frac: torch.Tensor  # [] share of entries with |ratio - 1| > clip
    approx_kl: torch.Tensor  # [] mean of 0.5 (logp_new - logp_old)^2


def clipped_policy_loss_reference(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    kl: torch.Tensor | None = None,
    clip: float = 1e-4,
    beta: float = 0.0,
) -> PolicyLossOutput:
    """docs/spec.md section 5.3 in plain torch; all tensors of one shape (e.g. `[B]` or `[B, steps]`)."""
    cdt = compute_dtype(logp_new.dtype)
    log_ratio = logp_new.to(cdt) - logp_old.to(cdt)
    ratio = torch.exp(log_ratio)
    adv = advantages.to(cdt)
    per_entry = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    if kl is not None:
        per_entry = per_entry + beta * kl.to(cdt)
    clip_frac = ((ratio - 1).abs() > clip).to(cdt).mean()
    return PolicyLossOutput(per_entry.mean(), clip_frac, 0.5 * (log_ratio**2).mean())


def clipped_policy_loss_backward_reference(
    grad_loss: torch.Tensor,
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form `(d loss/d logp_new, d loss/d kl)`: the unclipped branch's -A ratio where it is the max."""
    cdt = compute_dtype(logp_new.dtype)
    ratio = torch.exp(logp_new.to(cdt) - logp_old.to(cdt))
    adv = advantages.to(cdt)
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)
    scale = grad_loss.to(cdt) / logp_new.numel()
    grad_logp = torch.where(unclipped >= clipped, unclipped, torch.zeros_like(unclipped)) * scale
    return grad_logp, torch.full_like(grad_logp, beta) * scale


@torch.library.custom_op("vgpo_fast::clipped_policy_loss", mutates_args=())
def _loss_op(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    kl: torch.Tensor | None,
    clip: float,
    beta: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "reference":
        return tuple(clipped_policy_loss_reference(logp_new, logp_old, advantages, kl, clip, beta))
    fwd = launcher(backend, _triton_kernels, "clipped_policy_loss_fwd")
    return tuple(fwd(logp_new, logp_old, advantages, kl, clip, beta))


@_loss_op.register_fake
def _(logp_new, logp_old, advantages, kl, clip, beta, backend):
    scalar = logp_new.new_empty((), dtype=compute_dtype(logp_new.dtype))
    return scalar, torch.empty_like(scalar), torch.empty_like(scalar)


@torch.library.custom_op("vgpo_fast::clipped_policy_loss_backward", mutates_args=())
def _loss_backward_op(
    grad_loss: torch.Tensor,
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    beta: float,
    has_kl: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "reference":
        return clipped_policy_loss_backward_reference(grad_loss, logp_new, logp_old, advantages, clip, beta)
    bwd = launcher(backend, _triton_kernels, "clipped_policy_loss_bwd")
    return tuple(bwd(grad_loss.float().contiguous(), logp_new, logp_old, advantages, clip, beta, has_kl))


@_loss_backward_op.register_fake
def _(grad_loss, logp_new, logp_old, advantages, clip, beta, has_kl, backend):
    return torch.empty_like(logp_new), torch.empty_like(logp_new)


def _setup_context(ctx, inputs, output) -> None:
    logp_new, logp_old, advantages, kl, clip, beta, backend = inputs
    ctx.save_for_backward(logp_new, logp_old, advantages)
    ctx.options = (clip, beta, kl is not None, backend)


def _backward(ctx, grad_loss: torch.Tensor, _grad_clip_frac, _grad_approx_kl):
    logp_new, logp_old, advantages = ctx.saved_tensors
    clip, beta, has_kl, backend = ctx.options
    grad_logp, grad_kl = torch.ops.vgpo_fast.clipped_policy_loss_backward(
        grad_loss, logp_new, logp_old, advantages, clip, beta, has_kl, backend
    )
    return grad_logp, None, None, (grad_kl if has_kl else None), None, None, None


torch.library.register_autograd("vgpo_fast::clipped_policy_loss", _backward, setup_context=_setup_context)


def clipped_policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    kl: torch.Tensor | None = None,
    *,
    clip: float = 1e-4,
    beta: float = 0.0,
    backend: str | None = None,
) -> PolicyLossOutput:
    """PPO-clip loss averaged over all entries, with `beta * kl`; gradients flow to logp_new and kl.

    logp_old and advantages are constants of the update (their gradients are zero by definition of PPO).
    All tensors share one shape and device; math in float32 (float64 for float64 logp_new).
    """
    check_tensor("logp_new", logp_new)
    if logp_new.numel() == 0:
        raise ValueError("logp_new is empty: there is no training step to average over")
    check_like("logp_old", logp_old, "logp_new", logp_new, dtype=False)
    check_like("advantages", advantages, "logp_new", logp_new, dtype=False)
    if kl is not None:
        check_like("kl", kl, "logp_new", logp_new, dtype=False)
    check_number("clip", clip, low=0.0, low_open=True)
    check_number("beta", beta, low=0.0)
    if beta > 0 and kl is None:
        raise ValueError(f"beta = {beta} > 0 needs kl (from sde_log_prob with v_ref)")
    cdt = compute_dtype(logp_new.dtype)
    chosen = resolve_backend(backend, logp_new.device, cdt)
    flat = [t.reshape(-1).to(cdt).contiguous() for t in (logp_new, logp_old.detach(), advantages.detach())]
    kl_flat = None if kl is None else kl.reshape(-1).to(cdt).contiguous()
    return PolicyLossOutput(*torch.ops.vgpo_fast.clipped_policy_loss(*flat, kl_flat, float(clip), float(beta), chosen))
