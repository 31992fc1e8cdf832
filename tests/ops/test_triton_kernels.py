"""Triton launchers called directly (kernels/), on the cases the op tests do not reach: rows that span several
programs (block boundaries, multi-chunk partial sums), bfloat16 rounding, deterministic rows, loops over
groups in the pooled std, and the float64 statistics of tcrm_adae. Truth: the float64 reference ops."""

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any @triton.jit definition runs

import pytest  # noqa: E402
import torch  # noqa: E402
from op_testing import RTOL, assert_close_to, assert_grad_close  # noqa: E402

pytest.importorskip("triton")

from vgpo_fast.kernels import clipped_policy_loss as loss_kernels  # noqa: E402
from vgpo_fast.kernels import grpo_advantage as grpo_kernels  # noqa: E402
from vgpo_fast.kernels import sde_log_prob as log_prob_kernels  # noqa: E402
from vgpo_fast.kernels import sde_step as step_kernels  # noqa: E402
from vgpo_fast.kernels import tcrm_adae as tcrm_kernels  # noqa: E402

from vgpo_fast.ops import (  # noqa: E402
    clipped_policy_loss_reference,
    grpo_advantage_reference,
    sde_log_prob_reference,
    sde_step_reference,
    tcrm_adae_reference,
)
from vgpo_fast.ops.clipped_policy_loss import clipped_policy_loss_backward_reference  # noqa: E402
from vgpo_fast.ops.sde_log_prob import sde_log_prob_backward_reference  # noqa: E402

INTERPRETED = step_kernels.interpreted(step_kernels._sde_step_kernel)
DEVICE = "cpu" if INTERPRETED else "cuda"
if DEVICE == "cuda" and not torch.cuda.is_available():
    pytest.skip("Triton kernels are compiled for the GPU but there is none", allow_module_level=True)

BLOCK = step_kernels.MAX_BLOCK
SDE_TYPES = {0: "flow_grpo", 1: "cps"}
A = {0: 0.7, 1: 0.5}


def _data(batch: int, n: int, dtype: torch.dtype, seed: int, count: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n, generator=g).to(dtype).to(DEVICE) for _ in range(count)]


def _sigmas(last_sigma_next: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows: the first step (sigma = 1: flow_grpo's special case), a middle one, a last one."""
    sigma = torch.tensor([1.0, 0.6, 0.2], device=DEVICE)
    return sigma, torch.tensor([0.9, 0.45, last_sigma_next], device=DEVICE)


def _cpu64(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().cpu().double() for t in tensors]


@pytest.mark.parametrize("n", [BLOCK, BLOCK + 1, 2 * BLOCK + 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sde_type", [0, 1])
@pytest.mark.parametrize("reduce_mean", [True, False])
def test_sde_step_rows_over_several_programs(n, dtype, sde_type, reduce_mean):
    x, v, noise = _data(3, n, dtype, seed=n + sde_type, count=3)
    sigma, sigma_next = _sigmas(0.0)  # the last row is CPS's deterministic step (scale 0)
    a, name, reduce = A[sde_type], SDE_TYPES[sde_type], "mean" if reduce_mean else "sum"
    x_next, logp, x0_hat = step_kernels.sde_step_fwd(x, v, noise, sigma, sigma_next, a, sde_type, reduce_mean)
    assert x_next.dtype == dtype and x0_hat.dtype == dtype and logp.dtype == torch.float32
    x64, v64, noise64, sigma64, sigma_next64, x_next64 = _cpu64(x, v, noise, sigma, sigma_next, x_next)
    truth = sde_step_reference(x64, v64, noise64, sigma64, sigma_next64, a, name, reduce)
    assert_close_to(x_next.cpu(), truth.x_next, dtype, "x_next")
    assert_close_to(x0_hat.cpu(), truth.x0_hat, dtype, "x0_hat")
    truth_logp = sde_log_prob_reference(x64, v64, x_next64, sigma64, sigma_next64, None, a, name, reduce).logp
    assert_close_to(logp.cpu(), truth_logp, dtype, "logp")
    if sde_type == 1:
        assert logp[-1].item() == 0.0, "a scale-0 row has logp 0"


@pytest.mark.parametrize("n", [BLOCK + 1, 2 * BLOCK + 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("sde_type", [0, 1])
@pytest.mark.parametrize("reduce_mean, kl_form", [(True, 0), (False, 0), (True, 1)])
def test_sde_log_prob_rows_over_several_programs(n, dtype, sde_type, reduce_mean, kl_form):
    x, v, noise, v_ref = _data(3, n, dtype, seed=7 * n + sde_type)
    v_ref = (v.float() + 0.1 * v_ref.float()).to(dtype)
    sigma, sigma_next = _sigmas(0.05)
    a, name, reduce = A[sde_type], SDE_TYPES[sde_type], "mean" if reduce_mean else "sum"
    form = ("scale", "flow_grpo")[kl_form]
    options = (a, sde_type, reduce_mean)
    x_next, logp_rollout, _ = step_kernels.sde_step_fwd(x, v, noise, sigma, sigma_next, *options)
    logp, kl = log_prob_kernels.sde_log_prob_fwd(x, v, x_next, v_ref, sigma, sigma_next, *options, kl_form)
    # Same chunking, same element expression: training's first ratio is exactly 1.
    assert torch.equal(logp, logp_rollout)
    x64, v64, x_next64, v_ref64, sigma64, sigma_next64 = _cpu64(x, v, x_next, v_ref, sigma, sigma_next)
    truth = sde_log_prob_reference(x64, v64, x_next64, sigma64, sigma_next64, v_ref64, a, name, reduce, form)
    assert_close_to(logp.cpu(), truth.logp, dtype, "logp")
    assert_close_to(kl.cpu(), truth.kl, dtype, "kl")

    g = torch.Generator().manual_seed(3)
    grad_logp, grad_kl = torch.randn(3, generator=g), torch.randn(3, generator=g)
    grad_v = log_prob_kernels.sde_log_prob_bwd(
        grad_logp.to(DEVICE), grad_kl.to(DEVICE), x, v, x_next, v_ref, sigma, sigma_next, *options, kl_form
    )
    assert grad_v.dtype == dtype
    grad_truth = sde_log_prob_backward_reference(
        grad_logp.double(), grad_kl.double(), x64, v64, x_next64, v_ref64, sigma64, sigma_next64, a, name, reduce, form
    )
    grad_base = sde_log_prob_backward_reference(
        grad_logp,
        grad_kl,
        *(t.cpu() for t in (x, v, x_next, v_ref)),
        sigma.cpu(),
        sigma_next.cpu(),
        a,
        name,
        reduce,
        form,
    )
    assert_grad_close(grad_v.cpu(), grad_truth, grad_base, dtype, "grad_v")


def test_sde_log_prob_without_reference_policy():
    x, v, noise = _data(3, BLOCK + 5, torch.float32, seed=1, count=3)
    sigma, sigma_next = _sigmas(0.05)
    x_next, _, _ = step_kernels.sde_step_fwd(x, v, noise, sigma, sigma_next, 0.7, 0, True)
    logp, kl = log_prob_kernels.sde_log_prob_fwd(x, v, x_next, None, sigma, sigma_next, 0.7, 0, True, 0)
    assert torch.equal(kl, torch.zeros_like(kl))
    grad_logp = torch.ones(3, device=DEVICE)
    options = (sigma, sigma_next, 0.7, 0, True, 0)
    # v_ref = v with grad_kl 0 and no v_ref with grad_kl 1: both are the logp term alone
    bwd = log_prob_kernels.sde_log_prob_bwd
    with_ref = bwd(grad_logp, torch.zeros_like(grad_logp), x, v, x_next, v, *options)
    without = bwd(grad_logp, torch.ones_like(grad_logp), x, v, x_next, None, *options)
    torch.testing.assert_close(without, with_ref, rtol=0, atol=0)


@pytest.mark.parametrize("sde_type", [0, 1])
def test_deterministic_rows_are_the_mean_with_logp_zero(sde_type):
    """Scale 0 (a = 0; CPS's last step): x_next = mean, logp = 0, nothing NaN, rows over several programs."""
    x, v, noise = _data(3, 2 * BLOCK + 1, torch.float32, seed=2, count=3)
    sigma, sigma_next = _sigmas(0.0)
    x_next, logp, _ = step_kernels.sde_step_fwd(x, v, noise, sigma, sigma_next, 0.0, sde_type, True)
    assert torch.equal(logp, torch.zeros(3, device=DEVICE))
    euler = x.double() + v.double() * (sigma_next - sigma).double()[:, None]
    torch.testing.assert_close(x_next.double(), euler, rtol=1e-6, atol=1e-6)
    if sde_type == 1:  # a > 0: only the last row (sigma_next = 0) is deterministic, and lands on x0_hat
        x_next, logp, x0_hat = step_kernels.sde_step_fwd(x, v, noise, sigma, sigma_next, 0.5, 1, True)
        assert logp[-1].item() == 0.0 and bool(torch.isfinite(logp).all())
        torch.testing.assert_close(x_next[-1], x0_hat[-1], rtol=1e-6, atol=1e-6)


def test_bfloat16_output_is_rounded_to_nearest_even():
    """Triton's interpreter truncates float32 -> bfloat16; the kernels round to nearest even as the GPU does:
    every x_next is within half an ulp (plus float32 slack) of the exact value and nearly all equal torch's
    rounding of it (only near-ties may differ, by the float32 error of the kernel's own arithmetic)."""
    x, v, noise = _data(3, 3000, torch.bfloat16, seed=4, count=3)
    sigma, sigma_next = _sigmas(0.05)
    x_next, _, _ = step_kernels.sde_step_fwd(x, v, noise, sigma, sigma_next, 0.7, 0, True)
    x64, v64, noise64, sigma64, sigma_next64 = _cpu64(x, v, noise, sigma, sigma_next)
    # float64 inputs: the reference's x_next is the exact value, not rounded to bfloat16
    exact = sde_step_reference(x64, v64, noise64, sigma64, sigma_next64, 0.7, "flow_grpo", "mean").x_next
    ulp = torch.finfo(torch.bfloat16).eps * torch.exp2(torch.floor(torch.log2(exact.abs().clamp_min(1e-30))))
    err = (x_next.cpu().double() - exact).abs()
    assert (err <= 0.5 * ulp + 1e-6 * exact.abs() + 1e-30).all()
    agree = (x_next.cpu() == exact.to(torch.bfloat16)).double().mean().item()
    assert agree > 0.995, f"only {agree:.4f} of the elements round like torch"


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # numpy's float16 cast of 3.4e38 -> inf
def test_round_to_bf16_matches_torch_bit_for_bit():
    import triton
    import triton.language as tl

    @triton.jit
    def _copy(src, dst, n, EMULATE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        value = tl.load(src + offs, mask=offs < n)
        tl.store(dst + offs, step_kernels.round_to(value, dst.dtype.element_ty, EMULATE), mask=offs < n)

    g = torch.Generator().manual_seed(0)
    src = torch.randn(4096, generator=g) * torch.exp(4 * torch.randn(4096, generator=g))
    src = torch.cat([src, torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3.4e38, 1e-40, 1.00390625])])
    src = src.to(DEVICE)
    for dtype in (torch.bfloat16, torch.float16):
        dst = torch.empty(src.shape, dtype=dtype, device=DEVICE)
        _copy[(triton.cdiv(src.numel(), 1024),)](src, dst, src.numel(), EMULATE=INTERPRETED, BLOCK=1024)
        assert torch.equal(dst, src.to(dtype)), dtype


@pytest.mark.parametrize("shape", [(1, 2, 1), (2, 5, 33), (3, 2, 64)], ids=str)
@pytest.mark.parametrize("global_std", [False, True])
def test_tcrm_adae_odd_tiles_and_tiny_stds(shape, global_std):
    """G = 2 and T = 64 with gamma = 0.5 make stds of a few 1e-4: the float64 statistics keep A within 1e-5
    (float32 statistics measured 4e-5)."""
    g = torch.Generator().manual_seed(sum(shape))
    rewards = torch.rand(shape, generator=g)
    rewards[0, 0] = 0.0  # omega's fallback
    out = tcrm_kernels.tcrm_adae_fwd(rewards.to(DEVICE), 0.5, 0.1, 1e-4, 5.0, True, global_std)
    truth = tcrm_adae_reference(rewards.double(), 0.5, 0.1, 1e-4, 5.0, True, global_std)
    for name, ours, expected in zip(truth._fields, out, truth, strict=True):
        if name == "omega_fallback_frac":
            ours, expected = ours.mean(), expected
        assert ours.dtype == torch.float32
        assert_close_to(ours.cpu(), expected, torch.float32, name)


@pytest.mark.parametrize("groups, columns", [(70, 64), (3000, 1)])
def test_pooled_std_loops_over_groups(groups, columns):
    """More groups than one program's tile: the combine loops, and Chan's formula gives the batch std."""
    g = torch.Generator().manual_seed(groups)
    samples = torch.randn(groups, 3, columns, generator=g, dtype=torch.float64) + 10.0
    mu = samples.mean(dim=1)
    m2 = ((samples - mu[:, None]) ** 2).sum(dim=1)
    ours = grpo_kernels.pooled_std(mu.to(DEVICE), m2.to(DEVICE), 3)
    torch.testing.assert_close(ours.cpu(), samples.std(dim=(0, 1), unbiased=False), rtol=1e-12, atol=0)


@pytest.mark.parametrize("global_std", [False, True])
def test_grpo_advantage_several_programs(global_std):
    rewards = torch.rand(300, 5, generator=torch.Generator().manual_seed(1))
    ours = grpo_kernels.grpo_advantage_fwd(rewards.to(DEVICE), 1e-4, 5.0, global_std)
    truth = grpo_advantage_reference(rewards.double(), 1e-4, 5.0, global_std)
    assert_close_to(ours.cpu(), truth, torch.float32, "A")


@pytest.mark.parametrize("with_kl", [False, True])
def test_clipped_policy_loss_over_several_blocks(with_kl):
    n = 2 * loss_kernels.FWD_BLOCK + 100
    g = torch.Generator().manual_seed(2)
    logp_new = torch.randn(n, generator=g) * 1e-3
    logp_old = logp_new + torch.randn(n, generator=g) * 1e-3
    adv, kl = torch.randn(n, generator=g), torch.rand(n, generator=g)
    beta = 0.04 if with_kl else 0.0
    kl_in = kl if with_kl else None
    args = [t.to(DEVICE) for t in (logp_new, logp_old, adv)]
    out = loss_kernels.clipped_policy_loss_fwd(*args, None if kl_in is None else kl_in.to(DEVICE), 1e-3, beta)
    truth = clipped_policy_loss_reference(
        logp_new.double(), logp_old.double(), adv.double(), None if kl_in is None else kl_in.double(), 1e-3, beta
    )
    for name, ours, expected in zip(truth._fields, out, truth, strict=True):
        assert ours.shape == () and ours.dtype == torch.float32
        assert math.isclose(ours.item(), expected.item(), rel_tol=RTOL[torch.float32], abs_tol=1e-12), name
    grad_loss = torch.tensor(1.7, device=DEVICE)
    grad_logp, grad_kl = loss_kernels.clipped_policy_loss_bwd(grad_loss, *args, 1e-3, beta, with_kl)
    truth_logp, truth_kl = clipped_policy_loss_backward_reference(
        torch.tensor(1.7, dtype=torch.float64), logp_new.double(), logp_old.double(), adv.double(), 1e-3, beta
    )
    assert_close_to(grad_logp.cpu(), truth_logp, torch.float32, "grad_logp_new")
    if with_kl:
        assert_close_to(grad_kl.cpu(), truth_kl, torch.float32, "grad_kl")
    else:
        assert torch.equal(grad_kl.cpu(), torch.zeros(n))
