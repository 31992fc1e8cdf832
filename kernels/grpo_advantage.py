"""Triton `grpo_advantage`: Flow-GRPO's group-normalised advantage of terminal rewards `[P, G]`.

Grid `(cdiv(P, BLOCK_P),)`: a program holds a `[BLOCK_P, BLOCK_G]` tile of whole prompt groups and reduces
it in registers (two-pass mean and population variance). The math is float64 (the scalars are fp64 kernel
arguments): `(r - mu) / (s + eps)` divides a difference of near-equal rewards by a possibly tiny std, which
amplifies float32 rounding of mu; the data is tiny and the kernel latency-bound, so float64 costs nothing.
Output float32.

With `global_std` the std is over all P * G rewards, which no program sees alone, and Triton has no
grid-wide barrier (spinning on an atomic counter deadlocks when not every program is resident, and always
under the sequential interpreter). So it takes three launches: per-group statistics, the pooled std
(`pooled_std`, shared with tcrm_adae.py), the advantages.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MODE_GROUP_STD = 0  # advantages with each group's own std: the whole op in one launch
MODE_STATS = 1  # write each group's mean and sum of squared deviations (global std, first launch)
MODE_GLOBAL_STD = 2  # advantages with the pooled std computed in between (global std, last launch)


@triton.jit
def _pooled_std_kernel(mu_ptr, m2_ptr, s_ptr, P, C, G, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """s[c] = population std of column c over P groups of G samples from the groups' means mu [P, C] and sums
    of squared deviations m2 [P, C]: M2 = sum_p m2_p + G sum_p (mu_p - mean)^2 (Chan et al.). float64."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float64)
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)
        ok = (rows < P)[:, None] & col_ok[None, :]
        acc += tl.load(mu_ptr + rows[:, None] * C + cols[None, :], mask=ok, other=0.0)
    mean = tl.sum(acc, axis=0) / P
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float64)
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)
        ok = (rows < P)[:, None] & col_ok[None, :]
        offs = rows[:, None] * C + cols[None, :]
        dev = tl.where(ok, tl.load(mu_ptr + offs, mask=ok, other=0.0) - mean[None, :], 0.0)
        acc += tl.load(m2_ptr + offs, mask=ok, other=0.0) + G * dev * dev
    tl.store(s_ptr + cols, tl.sqrt(tl.sum(acc, axis=0) / (P * G)), mask=col_ok)


def pooled_std(mu: torch.Tensor, m2: torch.Tensor, group_size: int) -> torch.Tensor:
    """Population std `[C]` float64 over all groups, from per-group means `mu [P, C]` and sums of squared
    deviations `m2 [P, C]` (float64, contiguous), groups of `group_size`. A program per 64 columns."""
    P, C = mu.shape
    s = torch.empty(C, device=mu.device, dtype=torch.float64)
    block_c = min(64, triton.next_power_of_2(C))
    block_p = min(triton.next_power_of_2(P), max(1, 2048 // block_c))
    _pooled_std_kernel[(triton.cdiv(C, block_c),)](
        mu, m2, s, P, C, group_size, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4
    )
    return s


@triton.jit
def _grpo_advantage_kernel(
    r_ptr,
    adv_ptr,
    mu_ptr,
    m2_ptr,
    s_global_ptr,
    P,
    G,
    eps: tl.float64,
    adv_clip: tl.float64,
    MODE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.arange(0, BLOCK_G)
    row_ok = rows < P
    ok = row_ok[:, None] & (cols < G)[None, :]
    offs = rows[:, None] * G + cols[None, :]
    r = tl.load(r_ptr + offs, mask=ok, other=0.0).to(tl.float64)
    mu = tl.sum(r, axis=1) / G
    dev = tl.where(ok, r - mu[:, None], 0.0)
    m2 = tl.sum(dev * dev, axis=1)
    if MODE == 1:
        tl.store(mu_ptr + rows, mu, mask=row_ok)
        tl.store(m2_ptr + rows, m2, mask=row_ok)
    else:
        if MODE == 0:
            adv = dev / (tl.sqrt(m2 / G) + eps)[:, None]
        else:
            adv = dev / (tl.load(s_global_ptr) + eps)
        adv = tl.minimum(tl.maximum(adv, -adv_clip), adv_clip)
        tl.store(adv_ptr + offs, adv.to(tl.float32), mask=ok)


def grpo_advantage_fwd(rewards: torch.Tensor, eps: float, adv_clip: float, global_std: bool) -> torch.Tensor:
    """rewards `[P, G]` float32 (contiguous) -> A `[P, G]` float32 = clamp((r - mu_p) / (s + eps),
    -adv_clip, adv_clip), s per group or (global_std) over all rewards."""
    P, G = rewards.shape
    adv = torch.empty_like(rewards)
    block_g = triton.next_power_of_2(G)
    block_p = min(triton.next_power_of_2(P), max(1, 1024 // block_g))
    grid = (triton.cdiv(P, block_p),)
    meta = dict(BLOCK_P=block_p, BLOCK_G=block_g, num_warps=4)
    scalars = (P, G, float(eps), float(adv_clip))
    if not global_std:
        # the three statistics pointers are unused in this mode
        _grpo_advantage_kernel[grid](rewards, adv, adv, adv, adv, *scalars, MODE=MODE_GROUP_STD, **meta)
        return adv
    mu = torch.empty((P, 1), device=rewards.device, dtype=torch.float64)
    m2 = torch.empty_like(mu)
    _grpo_advantage_kernel[grid](rewards, adv, mu, m2, adv, *scalars, MODE=MODE_STATS, **meta)
    s = pooled_std(mu, m2, G)
    _grpo_advantage_kernel[grid](rewards, adv, mu, m2, s, *scalars, MODE=MODE_GLOBAL_STD, **meta)
    return adv
