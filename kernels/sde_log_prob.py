"""Triton `sde_log_prob`: log-probability and closed-form KL of a taken step (forward, one pass) and the
gradient wrt v of both (backward, one pass).

Both kernels use the grid and chunking of `sde_step.py` (`(num_chunks, B)`, shared `chunking`), and the same
per-row coefficients and element expression for `x_next - mean`, so that this logp equals the one sde_step
returned for the same x_next bit for bit on the same device. Forward partial sums go to `[B, num_chunks]`
float32 buffers that the launcher sums.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .sde_step import LOG_SQRT_2PI, chunking, interpreted, round_to, sde_coefficients


@triton.jit
def _kl_denominator(std, scale, KL_FORM: tl.constexpr):
    """2 scale^2 (kl_form 0, the exact KL) or 2 std^2 (kl_form 1, Flow-GRPO's)."""
    if KL_FORM == 0:
        return 2.0 * scale * scale
    else:
        return 2.0 * std * std


@triton.jit
def _sde_log_prob_fwd_kernel(
    x_ptr,
    v_ptr,
    x_next_ptr,
    v_ref_ptr,
    sigma_ptr,
    sigma_next_ptr,
    logp_part_ptr,
    kl_part_ptr,
    N,
    num_chunks,
    a,
    sin_a,
    weight,
    log_sqrt_2pi,
    SDE_TYPE: tl.constexpr,
    KL_FORM: tl.constexpr,
    HAS_REF: tl.constexpr,
    BLOCK: tl.constexpr,
):
    chunk = tl.program_id(0)
    row = tl.program_id(1)
    sigma = tl.load(sigma_ptr + row)
    sigma_next = tl.load(sigma_next_ptr + row)
    k_x, c_v, std, scale = sde_coefficients(sigma, sigma_next, a, sin_a, SDE_TYPE)

    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    offs = row.to(tl.int64) * N + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x_next = tl.load(x_next_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    diff = tl.where(mask, (x_next - x) - (k_x * x + c_v * v), 0.0)
    sq = tl.sum(diff * diff, axis=0)
    # The op never sends a deterministic row (scale 0); guard anyway so that none can produce NaN.
    live = scale > 0.0
    safe = tl.where(live, scale, 1.0)
    count = tl.minimum(N - chunk * BLOCK, BLOCK).to(tl.float32)
    part = weight * (-sq / (2.0 * safe * safe) - count * (tl.log(safe) + log_sqrt_2pi))
    tl.store(logp_part_ptr + row * num_chunks + chunk, tl.where(live, part, 0.0))

    if HAS_REF:
        v_ref = tl.load(v_ref_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dv = v - v_ref  # mean_theta - mean_ref = c_v (v - v_ref): no cancellation between the two means
        den = _kl_denominator(std, scale, KL_FORM)
        kl = weight * c_v * c_v * tl.sum(dv * dv, axis=0) / tl.where(live, den, 1.0)
        tl.store(kl_part_ptr + row * num_chunks + chunk, tl.where(live, kl, 0.0))


@triton.jit
def _sde_log_prob_bwd_kernel(
    grad_logp_ptr,
    grad_kl_ptr,
    x_ptr,
    v_ptr,
    x_next_ptr,
    v_ref_ptr,
    sigma_ptr,
    sigma_next_ptr,
    grad_v_ptr,
    N,
    a,
    sin_a,
    weight,
    SDE_TYPE: tl.constexpr,
    KL_FORM: tl.constexpr,
    HAS_REF: tl.constexpr,
    EMULATE_BF16_RNE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    chunk = tl.program_id(0)
    row = tl.program_id(1)
    sigma = tl.load(sigma_ptr + row)
    sigma_next = tl.load(sigma_next_ptr + row)
    k_x, c_v, std, scale = sde_coefficients(sigma, sigma_next, a, sin_a, SDE_TYPE)
    live = scale > 0.0
    safe = tl.where(live, scale, 1.0)
    # grad_v = w c_v (grad_logp (x_next - mean) / scale^2 + grad_kl 2 c_v (v - v_ref) / kl_den)
    coef_logp = tl.where(live, weight * c_v * tl.load(grad_logp_ptr + row) / (safe * safe), 0.0)

    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    offs = row.to(tl.int64) * N + cols
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x_next = tl.load(x_next_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    grad = coef_logp * ((x_next - x) - (k_x * x + c_v * v))
    if HAS_REF:
        den = _kl_denominator(std, scale, KL_FORM)
        safe_den = tl.where(live, den, 1.0)
        coef_kl = tl.where(live, weight * 2.0 * c_v * c_v * tl.load(grad_kl_ptr + row) / safe_den, 0.0)
        v_ref = tl.load(v_ref_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        grad += coef_kl * (v - v_ref)
    tl.store(grad_v_ptr + offs, round_to(grad, grad_v_ptr.dtype.element_ty, EMULATE_BF16_RNE), mask=mask)


def sde_log_prob_fwd(
    x: torch.Tensor,
    v: torch.Tensor,
    x_next: torch.Tensor,
    v_ref: torch.Tensor | None,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    a: float,
    sde_type: int,
    reduce_mean: bool,
    kl_form: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, v, x_next, v_ref `[B, N]` (one dtype, contiguous); sigma, sigma_next `[B]` float32.

    Returns `(logp [B] float32, kl [B] float32)`; kl is zeros when v_ref is None.
    """
    B, N = x.shape
    block, num_chunks, num_warps = chunking(N)
    logp_part = torch.empty((B, num_chunks), device=x.device, dtype=torch.float32)
    has_ref = v_ref is not None
    kl_part = torch.empty_like(logp_part) if has_ref else torch.zeros((B, 1), device=x.device, dtype=torch.float32)
    _sde_log_prob_fwd_kernel[(num_chunks, B)](
        x,
        v,
        x_next,
        v_ref if has_ref else v,
        sigma,
        sigma_next,
        logp_part,
        kl_part,
        N,
        num_chunks,
        float(a),
        math.sin(a * math.pi / 2.0),
        1.0 / N if reduce_mean else 1.0,
        LOG_SQRT_2PI,
        SDE_TYPE=int(sde_type),
        KL_FORM=int(kl_form),
        HAS_REF=has_ref,
        BLOCK=block,
        num_warps=num_warps,
    )
    logp = logp_part[:, 0] if num_chunks == 1 else logp_part.sum(dim=1)
    kl = kl_part[:, 0] if kl_part.shape[1] == 1 else kl_part.sum(dim=1)
    return logp, kl


def sde_log_prob_bwd(
    grad_logp: torch.Tensor,
    grad_kl: torch.Tensor,
    x: torch.Tensor,
    v: torch.Tensor,
    x_next: torch.Tensor,
    v_ref: torch.Tensor | None,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    a: float,
    sde_type: int,
    reduce_mean: bool,
    kl_form: int,
) -> torch.Tensor:
    """grad_logp, grad_kl `[B]` float32; the rest as in `sde_log_prob_fwd`. Returns grad_v `[B, N]` in v's
    dtype."""
    B, N = x.shape
    block, num_chunks, num_warps = chunking(N)
    grad_v = torch.empty_like(v)
    has_ref = v_ref is not None
    _sde_log_prob_bwd_kernel[(num_chunks, B)](
        grad_logp,
        grad_kl,
        x,
        v,
        x_next,
        v_ref if has_ref else v,
        sigma,
        sigma_next,
        grad_v,
        N,
        float(a),
        math.sin(a * math.pi / 2.0),
        1.0 / N if reduce_mean else 1.0,
        SDE_TYPE=int(sde_type),
        KL_FORM=int(kl_form),
        HAS_REF=has_ref,
        EMULATE_BF16_RNE=interpreted(_sde_log_prob_bwd_kernel),
        BLOCK=block,
        num_warps=num_warps,
    )
    return grad_v
