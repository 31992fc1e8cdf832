"""Triton `clipped_policy_loss`: PPO-clip loss with a KL penalty, clip fraction and approx-KL (forward) and
the closed-form gradients wrt logp_new and kl (backward).

Forward: one program loops over the N entries (N = trajectories x training steps of a micro-batch: thousands
at most) in `[BLOCK]` chunks with per-lane float32 accumulators reduced at the end: one launch writes the
three scalars; deterministic, no partial buffer, no second reduction. Backward: elementwise, grid
`(cdiv(N, BLOCK),)`, BLOCK = 1024.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FWD_BLOCK = 1024
BWD_BLOCK = 1024


@triton.jit
def _ppo_terms(logp_new, logp_old, adv, lo, hi):
    """`(log_ratio, ratio, unclipped, clipped)` with the loss terms -A ratio and -A clamp(ratio, lo, hi)."""
    log_ratio = logp_new - logp_old
    ratio = tl.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * tl.minimum(tl.maximum(ratio, lo), hi)
    return log_ratio, ratio, unclipped, clipped


@triton.jit
def _clipped_policy_loss_fwd_kernel(
    logp_new_ptr,
    logp_old_ptr,
    adv_ptr,
    kl_ptr,
    loss_ptr,
    clip_frac_ptr,
    approx_kl_ptr,
    N,
    lo,
    hi,
    clip,
    beta,
    HAS_KL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    loss = tl.zeros((BLOCK,), tl.float32)
    clipped_count = tl.zeros((BLOCK,), tl.float32)
    sq_log_ratio = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < N
        logp_new = tl.load(logp_new_ptr + offs, mask=ok, other=0.0)
        logp_old = tl.load(logp_old_ptr + offs, mask=ok, other=0.0)
        adv = tl.load(adv_ptr + offs, mask=ok, other=0.0)
        log_ratio, ratio, unclipped, clipped = _ppo_terms(logp_new, logp_old, adv, lo, hi)
        term = tl.maximum(unclipped, clipped)
        if HAS_KL:
            term += beta * tl.load(kl_ptr + offs, mask=ok, other=0.0)
        loss += tl.where(ok, term, 0.0)  # masked lanes: log_ratio = 0, ratio = 1, terms 0 anyway
        clipped_count += tl.where(ok & (tl.abs(ratio - 1.0) > clip), 1.0, 0.0)
        sq_log_ratio += log_ratio * log_ratio
    tl.store(loss_ptr, tl.sum(loss, axis=0) / N)
    tl.store(clip_frac_ptr, tl.sum(clipped_count, axis=0) / N)
    tl.store(approx_kl_ptr, 0.5 * tl.sum(sq_log_ratio, axis=0) / N)


@triton.jit
def _clipped_policy_loss_bwd_kernel(
    grad_loss_ptr,
    logp_new_ptr,
    logp_old_ptr,
    adv_ptr,
    grad_logp_ptr,
    grad_kl_ptr,
    N,
    lo,
    hi,
    beta,
    HAS_KL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    scale = tl.load(grad_loss_ptr) / N
    logp_new = tl.load(logp_new_ptr + offs, mask=ok, other=0.0)
    logp_old = tl.load(logp_old_ptr + offs, mask=ok, other=0.0)
    adv = tl.load(adv_ptr + offs, mask=ok, other=0.0)
    _, ratio, unclipped, clipped = _ppo_terms(logp_new, logp_old, adv, lo, hi)
    # d max(-A r, -A clamp(r)) / d logp_new: -A r where the unclipped branch is the max (d r / d logp = r).
    tl.store(grad_logp_ptr + offs, tl.where(unclipped >= clipped, unclipped, 0.0) * scale, mask=ok)
    if HAS_KL:
        grad_kl = tl.zeros((BLOCK,), tl.float32) + beta * scale
    else:
        grad_kl = tl.zeros((BLOCK,), tl.float32)
    tl.store(grad_kl_ptr + offs, grad_kl, mask=ok)


def clipped_policy_loss_fwd(
    logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, kl: torch.Tensor | None, clip: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logp_new, logp_old, adv, kl `[N]` float32 (contiguous) -> `(loss, clip_frac, approx_kl)`, each 0-d
    float32."""
    (n,) = logp_new.shape
    loss, clip_frac, approx_kl = (torch.empty((), device=logp_new.device, dtype=torch.float32) for _ in range(3))
    block = min(FWD_BLOCK, max(16, triton.next_power_of_2(n)))
    _clipped_policy_loss_fwd_kernel[(1,)](
        logp_new,
        logp_old,
        adv,
        logp_new if kl is None else kl,
        loss,
        clip_frac,
        approx_kl,
        n,
        1.0 - clip,
        1.0 + clip,
        float(clip),
        float(beta),
        HAS_KL=kl is not None,
        BLOCK=block,
        num_warps=4,
    )
    return loss, clip_frac, approx_kl


def clipped_policy_loss_bwd(
    grad_loss: torch.Tensor,
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    clip: float,
    beta: float,
    n_kl: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """grad_loss 0-d float32; the rest `[N]` float32. Returns `(grad_logp_new [N], grad_kl [N])` float32;
    grad_kl is zeros when there is no kl term (`n_kl` False)."""
    (n,) = logp_new.shape
    grad_logp = torch.empty_like(logp_new)
    grad_kl = torch.empty_like(logp_new)
    block = min(BWD_BLOCK, max(16, triton.next_power_of_2(n)))
    _clipped_policy_loss_bwd_kernel[(triton.cdiv(n, block),)](
        grad_loss,
        logp_new,
        logp_old,
        adv,
        grad_logp,
        grad_kl,
        n,
        1.0 - clip,
        1.0 + clip,
        float(beta),
        HAS_KL=bool(n_kl),
        BLOCK=block,
        num_warps=4,
    )
    return grad_logp, grad_kl
