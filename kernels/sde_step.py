"""Triton `sde_step`: one SDE sampling step, its log-probability and the ODE projection in one pass.

Grid `(num_chunks, B)`: program (c, b) streams elements `[c * BLOCK, (c + 1) * BLOCK)` of row b, reads x, v
and noise once, writes x_next and x0_hat, and leaves its share of the row's log-probability in a
`[B, num_chunks]` float32 buffer that the launcher sums (deterministic, no atomics, no second pass over the
data). BLOCK = 2048 elements at 8 warps (smaller for short rows); per-row coefficients are computed in-kernel
in float32 from sigma[b], sigma_next[b]; all element math is float32 whatever the data dtype.

The per-row coefficients, the output rounding helper and the chunking below are shared with
`sde_log_prob.py`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
MAX_BLOCK = 2048  # elements per program: 8 per thread at 8 warps, several 16-byte loads in flight per input


@triton.jit
def sde_coefficients(sigma, sigma_next, a, sin_a, SDE_TYPE: tl.constexpr):
    """Per-row float32 `(k_x, c_v, std, scale)` of docs/ops.md with `mean = x + (k_x x + c_v v)`.

    `k_x = c_x - 1` is formed without the subtraction, so that `mean - x` (small at late steps) and hence
    `x_next - mean` keep their relative precision. `sin_a` = sin(a pi / 2) (cps only).
    """
    dt = sigma_next - sigma
    if SDE_TYPE == 0:  # flow_grpo
        s = tl.where(sigma == 1.0, sigma_next, sigma)
        std = a * tl.sqrt(sigma / (1.0 - s))
        half_var = std * std / (2.0 * sigma)
        k_x = half_var * dt
        c_v = (1.0 + half_var * (1.0 - sigma)) * dt
        scale = std * tl.sqrt(-dt)
    else:  # cps
        std = sigma_next * sin_a
        # a = 1 makes the radicand 0 in exact arithmetic: keep rounding from turning it into NaN.
        r = tl.sqrt(tl.maximum(sigma_next * sigma_next - std * std, 0.0))
        # c_x - 1 = r - sigma_next = -std^2 / (r + sigma_next); both are 0 when sigma_next = 0.
        k_x = tl.where(sigma_next > 0.0, -(std * std) / tl.maximum(r + sigma_next, 1e-30), 0.0)
        c_v = r * (1.0 - sigma) - sigma * (1.0 - sigma_next)
        scale = std
    return k_x, c_v, std, scale


@triton.jit
def round_to(y, dtype: tl.constexpr, EMULATE_BF16_RNE: tl.constexpr):
    """float32 `y` rounded to `dtype` to nearest even.

    Triton's CPU interpreter truncates float32 -> bfloat16 (round toward zero), unlike the GPU's cvt.rn and
    torch; under the interpreter (EMULATE_BF16_RNE) the rounding is done on the bits instead. The GPU path is
    the plain conversion.
    """
    if EMULATE_BF16_RNE and dtype == tl.bfloat16:
        bits = y.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        high = tl.where(y != y, 0x7FC0, (bits >> 16).to(tl.uint16)).to(tl.uint16)
        return high.to(tl.bfloat16, bitcast=True)
    else:
        return y.to(dtype)


def interpreted(kernel: object) -> bool:
    """True when `kernel` runs under Triton's CPU interpreter (TRITON_INTERPRET=1 when it was defined)."""
    return not isinstance(kernel, triton.runtime.jit.JITFunction)


def chunking(n: int) -> tuple[int, int, int]:
    """`(BLOCK, num_chunks, num_warps)` for rows of n elements. Shared by sde_step and sde_log_prob so that
    both sum a row's terms in the same order (the rollout's logp equals training's first recomputation)."""
    block = min(MAX_BLOCK, max(16, triton.next_power_of_2(n)))
    return block, triton.cdiv(n, block), max(1, min(8, block // 256))


@triton.jit
def _sde_step_kernel(
    x_ptr,
    v_ptr,
    noise_ptr,
    sigma_ptr,
    sigma_next_ptr,
    x_next_ptr,
    x0_hat_ptr,
    partial_ptr,
    N,
    num_chunks,
    a,
    sin_a,
    weight,
    log_sqrt_2pi,
    SDE_TYPE: tl.constexpr,
    EMULATE_BF16_RNE: tl.constexpr,
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
    eps = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    drift = k_x * x + c_v * v  # mean - x
    out_ty: tl.constexpr = x_next_ptr.dtype.element_ty
    x_next = round_to(x + (drift + scale * eps), out_ty, EMULATE_BF16_RNE)
    tl.store(x_next_ptr + offs, x_next, mask=mask)
    tl.store(x0_hat_ptr + offs, round_to(x - sigma * v, out_ty, EMULATE_BF16_RNE), mask=mask)

    # The density of the x_next actually stored (rounded to the output dtype), see docs/ops.md.
    diff = tl.where(mask, (x_next.to(tl.float32) - x) - drift, 0.0)
    sq = tl.sum(diff * diff, axis=0)
    live = scale > 0.0  # scale == 0: deterministic row, logp = 0
    safe = tl.where(live, scale, 1.0)
    count = tl.minimum(N - chunk * BLOCK, BLOCK).to(tl.float32)
    part = weight * (-sq / (2.0 * safe * safe) - count * (tl.log(safe) + log_sqrt_2pi))
    tl.store(partial_ptr + row * num_chunks + chunk, tl.where(live, part, 0.0))


def sde_step_fwd(
    x: torch.Tensor,
    v: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    a: float,
    sde_type: int,
    reduce_mean: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, v, noise `[B, N]` (float32/bfloat16/float16, contiguous); sigma, sigma_next `[B]` float32.

    Returns `(x_next [B, N] x.dtype, logp [B] float32, x0_hat [B, N] x.dtype)`.
    """
    B, N = x.shape
    block, num_chunks, num_warps = chunking(N)
    x_next = torch.empty_like(x)
    x0_hat = torch.empty_like(x)
    partial = torch.empty((B, num_chunks), device=x.device, dtype=torch.float32)
    _sde_step_kernel[(num_chunks, B)](
        x,
        v,
        noise,
        sigma,
        sigma_next,
        x_next,
        x0_hat,
        partial,
        N,
        num_chunks,
        float(a),
        math.sin(a * math.pi / 2.0),
        1.0 / N if reduce_mean else 1.0,
        LOG_SQRT_2PI,
        SDE_TYPE=int(sde_type),
        EMULATE_BF16_RNE=interpreted(_sde_step_kernel),
        BLOCK=block,
        num_warps=num_warps,
    )
    logp = partial[:, 0] if num_chunks == 1 else partial.sum(dim=1)
    return x_next, logp, x0_hat
