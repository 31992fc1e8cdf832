"""Triton `tcrm_adae`: discounted returns, temporal weights, group statistics and ADAE advantages.

Grid `(P,)`: program p owns prompt p's `[G, T]` group as a `[BLOCK_G, BLOCK_T]` register tile and does
everything in one launch: the discounted return-to-go `Q_j = R_j + gamma Q_{j+1}` as a loop over the T steps
(T <= 64 in practice) that carries one `[G]` running sum and loads one reward column per step (the group's
G * T rewards are a few cache lines, so the strided column loads hit cache after the first); the temporal mean
and omega with its fallback; the group mean and population std over G (two-pass, in registers); ADAE and the
clamp.

The loop, not `tl.associative_scan`: it is the reference's own recurrence (same operations, same order), its
cost is a few microseconds at T = 64, and Triton's interpreter runs a custom-combine scan one element at a
time in Python (seconds per call in the CPU tests) while `reverse=True` scans have had operand-order bugs
for non-commutative combines (triton-lang/triton#4362).

The math is float64 (the scalars are fp64 kernel arguments): the relative term (Q - mu) / (s + eps) divides
a difference of near-equal returns by a possibly tiny std, which would amplify float32 rounding of Q past
1e-5 (measured: 4e-5 with G = 2, T = 64). The tile is tiny and the kernel latency-bound: float64 costs
nothing here. Outputs are float32.

With `global_std` the std of Q_j over all P * G trajectories is needed, which no program sees alone, and
Triton has no grid-wide barrier (spinning on an atomic counter deadlocks when not every program is resident,
and always under the sequential interpreter). So it takes three launches: this kernel writes Q, omega, mu
and each group's squared deviations; `pooled_std` (grpo_advantage.py) combines those into the batch std
`[T]`; this kernel runs again, recomputes the identical tile from R (cheaper than storing and reloading it)
and writes A and s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .grpo_advantage import MODE_GLOBAL_STD, MODE_GROUP_STD, MODE_STATS, pooled_std


@triton.jit
def _tcrm_adae_kernel(
    r_ptr,
    adv_ptr,
    q_ptr,
    omega_ptr,
    mu_ptr,
    s_ptr,
    fallback_ptr,
    mu64_ptr,
    m2_ptr,
    s_global_ptr,
    G,
    T,
    gamma: tl.float64,
    k: tl.float64,
    eps: tl.float64,
    adv_clip: tl.float64,
    USE_OMEGA: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    p = tl.program_id(0)
    g = tl.arange(0, BLOCK_G)
    t = tl.arange(0, BLOCK_T)
    g_ok = g < G
    t_ok = t < T
    ok = g_ok[:, None] & t_ok[None, :]
    group = r_ptr + p * G * T + g * T

    q = tl.zeros((BLOCK_G, BLOCK_T), tl.float64)
    running = tl.zeros((BLOCK_G,), tl.float64)
    for i in range(0, T):
        j = T - 1 - i
        running = tl.load(group + j, mask=g_ok, other=0.0).to(tl.float64) + gamma * running
        q = tl.where(t[None, :] == j, running[:, None], q)

    traj_mean = tl.sum(q, axis=1) / T
    if USE_OMEGA:
        fallback = traj_mean <= eps
        omega = tl.where(fallback[:, None], 1.0, q / tl.where(fallback, 1.0, traj_mean)[:, None])
    else:
        fallback = traj_mean != traj_mean  # all False: rewards are finite (the op rejects the others)
        omega = tl.zeros((BLOCK_G, BLOCK_T), tl.float64) + 1.0

    mu = tl.sum(q, axis=0) / G  # padding rows of q are 0
    dev = tl.where(ok, q - mu[None, :], 0.0)
    m2 = tl.sum(dev * dev, axis=0)
    tile = p * G * T + g[:, None] * T + t[None, :]
    row = p * T + t
    if MODE != 2:
        tl.store(q_ptr + tile, q.to(tl.float32), mask=ok)
        tl.store(omega_ptr + tile, omega.to(tl.float32), mask=ok)
        tl.store(mu_ptr + row, mu.to(tl.float32), mask=t_ok)
        tl.store(fallback_ptr + p * G + g, fallback.to(tl.float32), mask=g_ok)
    if MODE == 1:
        tl.store(mu64_ptr + row, mu, mask=t_ok)
        tl.store(m2_ptr + row, m2, mask=t_ok)
    else:
        if MODE == 0:
            s = tl.sqrt(m2 / G)
        else:
            s = tl.load(s_global_ptr + t, mask=t_ok, other=1.0)
        adv = omega * (dev / (s + eps)[None, :] + k * q)
        adv = tl.minimum(tl.maximum(adv, -adv_clip), adv_clip)
        tl.store(adv_ptr + tile, adv.to(tl.float32), mask=ok)
        tl.store(s_ptr + row, s.to(tl.float32), mask=t_ok)


def tcrm_adae_fwd(
    rewards: torch.Tensor, gamma: float, k: float, eps: float, adv_clip: float, use_omega: bool, global_std: bool
) -> tuple[torch.Tensor, ...]:
    """rewards `[P, G, T]` float32 (contiguous) -> `(A, Q, omega [P, G, T], mu, s [P, T], fallback [P, G])`,
    all float32; fallback is 1.0 where omega fell back to 1; with global_std each row of s is the batch
    std."""
    P, G, T = rewards.shape
    adv, q, omega = torch.empty_like(rewards), torch.empty_like(rewards), torch.empty_like(rewards)
    mu = torch.empty((P, T), device=rewards.device, dtype=torch.float32)
    s = torch.empty_like(mu)
    fallback = torch.empty((P, G), device=rewards.device, dtype=torch.float32)
    block_g, block_t = triton.next_power_of_2(G), triton.next_power_of_2(T)
    meta = dict(
        USE_OMEGA=bool(use_omega), BLOCK_G=block_g, BLOCK_T=block_t, num_warps=max(1, min(8, block_g * block_t // 256))
    )
    outputs = (rewards, adv, q, omega, mu, s, fallback)
    scalars = (G, T, float(gamma), float(k), float(eps), float(adv_clip))
    if not global_std:
        # the last three pointers are unused in this mode
        _tcrm_adae_kernel[(P,)](*outputs, s, s, s, *scalars, MODE=MODE_GROUP_STD, **meta)
        return adv, q, omega, mu, s, fallback
    mu64 = torch.empty((P, T), device=rewards.device, dtype=torch.float64)
    m2 = torch.empty_like(mu64)
    _tcrm_adae_kernel[(P,)](*outputs, mu64, m2, s, *scalars, MODE=MODE_STATS, **meta)
    s_global = pooled_std(mu64, m2, G)
    _tcrm_adae_kernel[(P,)](*outputs, mu64, m2, s_global, *scalars, MODE=MODE_GLOBAL_STD, **meta)
    return adv, q, omega, mu, s, fallback
