"""C++-specific checks of the CPU backend (csrc/), called through torch.ops.vgpo_fast_C directly.

The shared tests (tests/ops/test_<op>.py) compare every backend with the reference; these cover what only the
C++ kernels can get wrong: vector tails and chunk boundaries, results that depend on the thread count,
float32 accumulation over large N, and deterministic rows that must not read the noise.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("vgpo_fast._C", reason="the C++ extension vgpo_fast._C is not built")
ops = torch.ops.vgpo_fast_C

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
RTOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def _coefficients(sigma, sigma_next, a, sde_type):
    """docs/ops.md per-sample coefficients in float64, as [B, 1] columns: c_x, c_v, scale, std."""
    s, sn = sigma.double(), sigma_next.double()
    dt = sn - s
    if sde_type == 0:
        std = a * torch.sqrt(s / (1 - torch.where(s == 1, sn, s)))
        c_x = 1 + std**2 * dt / (2 * s)
        c_v = (1 + std**2 * (1 - s) / (2 * s)) * dt
        scale = std * torch.sqrt(-dt)
    else:
        std = sn * math.sin(a * math.pi / 2)
        r = torch.sqrt(sn**2 - std**2)
        c_x, c_v, scale = (1 - sn) + r, -s * (1 - sn) + r * (1 - s), std
    return c_x[:, None], c_v[:, None], scale[:, None], std[:, None]


def _logp64(x, v, x_next, sigma, sigma_next, a, sde_type, reduce_mean):
    c_x, c_v, scale, _ = _coefficients(sigma, sigma_next, a, sde_type)
    mean = c_x * x.double() + c_v * v.double()
    term = -((x_next.double() - mean) ** 2) / (2 * scale**2) - torch.log(scale) - 0.5 * math.log(2 * math.pi)
    return term.mean(1) if reduce_mean else term.sum(1)


def _data(B, N, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, N, generator=g).to(dtype) for _ in range(4)]


def _schedule(B):
    """Rows cycling through the first step (sigma = 1), a middle one and the last one (sigma_next = 0)."""
    steps = [(1.0, 0.9), (0.6, 0.45), (0.15, 0.0)]
    sigma = torch.tensor([steps[b % 3][0] for b in range(B)])
    sigma_next = torch.tensor([steps[b % 3][1] for b in range(B)])
    return sigma, sigma_next


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N", [1, 31, 33, 1025, 8193])
@pytest.mark.parametrize("reduce_mean", [True, False])
def test_sde_step_tails_and_chunk_edges(dtype, N, reduce_mean):
    B = 3
    x, v, noise, _ = _data(B, N, dtype)
    sigma, sigma_next = _schedule(B)
    x_next, logp, x0_hat = ops.sde_step_fwd(x, v, noise, sigma, sigma_next, 0.7, 0, reduce_mean)
    c_x, c_v, scale, _ = _coefficients(sigma, sigma_next, 0.7, 0)
    mean = c_x * x.double() + c_v * v.double()
    rtol = RTOL[dtype]
    torch.testing.assert_close(x_next.double(), mean + scale * noise.double(), rtol=rtol, atol=rtol)
    torch.testing.assert_close(x0_hat.double(), x.double() - sigma.double()[:, None] * v.double(), rtol=rtol, atol=rtol)
    # logp is taken from x_next as stored (rounded to dtype), like a later sde_log_prob call sees it.
    expected = _logp64(x, v, x_next, sigma, sigma_next, 0.7, 0, reduce_mean)
    torch.testing.assert_close(logp.double(), expected, rtol=1e-5, atol=1e-5 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_thread_count(dtype):
    B, N = 5, 3 * 8192 + 77  # several chunks per row, a vector tail
    x, v, noise, v_ref = _data(B, N, dtype, seed=1)
    sigma, sigma_next = _schedule(B)
    grads = torch.randn(B), torch.randn(B)
    rewards = torch.rand(400, 16, 10)  # big enough to run tcrm_adae's groups in parallel
    previous = torch.get_num_threads()

    def run():
        x_next, logp, x0_hat = ops.sde_step_fwd(x, v, noise, sigma, sigma_next, 0.7, 0, True)
        fwd = ops.sde_log_prob_fwd(x, v, x_next, v_ref, sigma, sigma_next, 0.7, 0, False, 0)
        grad_v = ops.sde_log_prob_bwd(*grads, x, v, x_next, v_ref, sigma, sigma_next, 0.7, 0, False, 0)
        tcrm = [t for g in (False, True) for t in ops.tcrm_adae_fwd(rewards, 0.9, 0.1, 1e-4, 5.0, True, g)]
        return (x_next, logp, x0_hat, *fwd, grad_v, *tcrm)

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        three = run()
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(one, three, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("reduce_mean", [True, False])
def test_large_n_accumulation(reduce_mean):
    B, N = 2, 1 << 20
    x, v, noise, v_ref = _data(B, N, torch.float32, seed=2)
    sigma, sigma_next = torch.tensor([0.7, 0.3]), torch.tensor([0.6, 0.2])
    x_next, logp, _ = ops.sde_step_fwd(x, v, noise, sigma, sigma_next, 0.7, 0, reduce_mean)
    expected = _logp64(x, v, x_next, sigma, sigma_next, 0.7, 0, reduce_mean)
    torch.testing.assert_close(logp.double(), expected, rtol=1e-5, atol=0)
    logp2, kl = ops.sde_log_prob_fwd(x, v, x_next, v_ref, sigma, sigma_next, 0.7, 0, reduce_mean, 0)
    torch.testing.assert_close(logp2.double(), expected, rtol=1e-5, atol=0)
    _, c_v, scale, _ = _coefficients(sigma, sigma_next, 0.7, 0)
    kl_terms = (c_v * (v.double() - v_ref.double())) ** 2 / (2 * scale**2)
    torch.testing.assert_close(kl.double(), kl_terms.mean(1) if reduce_mean else kl_terms.sum(1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_row_ignores_noise(dtype):
    """CPS's last step has scale 0: x_next = mean, logp = 0, and the noise (here NaN) is never read."""
    B, N = 2, 100
    x, v, noise, _ = _data(B, N, dtype, seed=3)
    noise[1] = float("nan")
    sigma, sigma_next = torch.tensor([0.5, 0.2]), torch.tensor([0.3, 0.0])
    x_next, logp, _ = ops.sde_step_fwd(x, v, noise, sigma, sigma_next, 0.7, 1, True)
    c_x, c_v, _, _ = _coefficients(sigma, sigma_next, 0.7, 1)
    mean = c_x * x.double() + c_v * v.double()
    assert logp[1].item() == 0.0 and torch.isfinite(logp).all()
    torch.testing.assert_close(x_next[1].double(), mean[1], rtol=RTOL[dtype], atol=RTOL[dtype])


def test_zero_noise_level_is_the_euler_step():
    x, v, noise, _ = _data(4, 257, torch.float32, seed=4)
    sigma, sigma_next = torch.tensor([1.0, 0.8, 0.5, 0.1]), torch.tensor([0.8, 0.5, 0.1, 0.0])
    for sde_type in (0, 1):
        x_next, logp, _ = ops.sde_step_fwd(x, v, noise, sigma, sigma_next, 0.0, sde_type, True)
        torch.testing.assert_close(x_next, x + v * (sigma_next - sigma)[:, None], rtol=1e-6, atol=1e-6)
        assert torch.equal(logp, torch.zeros(4))


@pytest.mark.parametrize("global_std", [False, True])
def test_tcrm_adae_many_groups_against_float64(global_std):
    """Enough groups to run in parallel; global_std combines per-group moments, checked here against float64."""
    P, G, T, gamma, k, eps = 300, 16, 12, 0.9, 0.1, 1e-4
    rewards = torch.rand(P, G, T, generator=torch.Generator().manual_seed(5))
    rewards[0] = rewards[0, :1]  # one group without diversity: A = omega k Q
    rewards[1, 0] = -1.0  # one trajectory whose mean return is negative: omega falls back to 1
    A, Q, omega, mu, s, fallback = ops.tcrm_adae_fwd(rewards, gamma, k, eps, 5.0, True, global_std)
    R = rewards.double()
    Q64 = torch.empty_like(R)
    running = torch.zeros_like(R[..., 0])
    for j in reversed(range(T)):
        running = R[..., j] + gamma * running
        Q64[..., j] = running
    traj_mean = Q64.mean(-1, keepdim=True)
    omega64 = torch.where(traj_mean <= eps, torch.ones_like(Q64), Q64 / traj_mean)
    mu64 = Q64.mean(1)
    s64 = Q64.std(dim=(0, 1), unbiased=False).expand(P, T) if global_std else Q64.std(1, unbiased=False)
    A64 = (omega64 * ((Q64 - mu64[:, None]) / (s64[:, None] + eps) + k * Q64)).clamp(-5.0, 5.0)
    for got, want in [(A, A64), (Q, Q64), (omega, omega64), (mu, mu64), (s, s64)]:
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(fallback, (traj_mean[..., 0] <= eps).float())
    assert fallback[1, 0] == 1.0


def test_tcrm_adae_rejects_non_finite_rewards():
    rewards = torch.rand(3, 4, 5)
    rewards[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"rewards\[p=1, g=2, t=3\] is nan \(prompt group 1\)"):
        ops.tcrm_adae_fwd(rewards, 0.9, 0.1, 1e-4, 5.0, True, False)
