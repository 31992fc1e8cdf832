"""sde_step: every backend against the float64 reference; the reference against closed forms and diffusers."""

import math

import pytest
import torch
from op_testing import BACKENDS, assert_close_to, schedule, stable_seed, step_sigmas

from vgpo_fast.ops import sde_log_prob, sde_log_prob_reference, sde_step, sde_step_reference

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (4, 16, 8, 8), (3, 4, 17, 9), (5, 1, 33, 31)]


def _inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    v = torch.randn(shape, generator=g).to(dtype)
    noise = torch.randn(shape, generator=g).to(dtype)
    sigma, sigma_next = step_sigmas(shape[0], g)
    return x, v, noise, sigma, sigma_next


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("sde_type", ["flow_grpo", "cps"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_backend_matches_float64_reference(backend, dtype, shape, sde_type, reduce):
    x, v, noise, sigma, sigma_next = _inputs(shape, dtype, seed=stable_seed(shape, sde_type, reduce))
    a = 0.7 if sde_type == "flow_grpo" else 0.5
    out = sde_step(
        x, v, sigma.float(), sigma_next.float(), noise=noise, a=a, sde_type=sde_type, reduce=reduce, backend=backend
    )
    truth = sde_step_reference(x.double(), v.double(), noise.double(), sigma, sigma_next, a, sde_type, reduce)
    assert out.x_next.dtype == dtype and out.x0_hat.dtype == dtype and out.logp.dtype == torch.float32
    assert out.x_next.shape == shape and out.logp.shape == (shape[0],)
    assert_close_to(out.x_next, truth.x_next, dtype, "x_next")
    assert_close_to(out.x0_hat, truth.x0_hat, dtype, "x0_hat")
    # logp is the density of the x_next returned (rounded to dtype): its float64 truth is that density.
    truth_logp = sde_log_prob_reference(
        x.double(), v.double(), out.x_next.double(), sigma, sigma_next, None, a, sde_type, reduce
    ).logp
    assert_close_to(out.logp, truth_logp, dtype, "logp")


def test_reference_logp_is_the_gaussian_density_of_the_noise():
    """x_next - mean = scale * eps exactly, so logp(sum) = sum log N(eps; 0, 1) - N log(scale)."""
    x, v, noise, sigma, sigma_next = _inputs((3, 4, 6, 6), torch.float64, seed=1)
    sigma, sigma_next = torch.tensor([1.0, 0.5, 0.2]).double(), torch.tensor([0.9, 0.4, 0.0]).double()
    a = 0.7
    out = sde_step_reference(x, v, noise, sigma, sigma_next, a, "flow_grpo", "sum")
    s = torch.where(sigma == 1, sigma_next, sigma)
    scale = a * torch.sqrt(sigma / (1 - s)) * torch.sqrt(sigma - sigma_next)
    n = x[0].numel()
    std_normal = torch.distributions.Normal(0.0, 1.0).log_prob(noise).reshape(3, -1).sum(1)
    torch.testing.assert_close(out.logp, std_normal - n * torch.log(scale), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("sde_type", ["flow_grpo", "cps"])
def test_a_zero_is_diffusers_euler_step(backend, sde_type):
    """With a = 0 every step is FlowMatchEulerDiscreteScheduler.step (docs/spec.md section 2.5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    x = torch.randn(2, 4, 8, 8)
    for i, t in enumerate(sched.timesteps):
        v = torch.randn_like(x)
        expected = sched.step(v, t, x).prev_sample
        ours = sde_step(
            x, v, float(sched.sigmas[i]), float(sched.sigmas[i + 1]), a=0.0, sde_type=sde_type, backend=backend
        )
        torch.testing.assert_close(ours.x_next, expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(ours.logp, torch.zeros(2)), "a deterministic step has logp 0"
        x = expected


def test_deterministic_last_cps_step_has_no_nan(backend):
    x, v = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    out = sde_step(x, v, 0.3, 0.0, a=0.8, sde_type="cps", backend=backend)
    assert torch.equal(out.logp, torch.zeros(2))
    torch.testing.assert_close(out.x_next, x - 0.3 * v, rtol=1e-5, atol=1e-6)  # x0_hat: the ODE endpoint


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_logp_is_what_sde_log_prob_recomputes(backend, dtype, reduce):
    """The first PPO ratio is exactly 1: training's sde_log_prob on the stored x_next gives the rollout logp."""
    x, v, noise, sigma, sigma_next = _inputs((4, 4, 9, 9), dtype, seed=3)
    out = sde_step(x, v, sigma.float(), sigma_next.float(), noise=noise, reduce=reduce, backend=backend)
    again = sde_log_prob(x, v, out.x_next, sigma.float(), sigma_next.float(), reduce=reduce, backend=backend)
    torch.testing.assert_close(again.logp, out.logp, rtol=2e-6, atol=2e-6)


def test_generator_gives_the_same_sample_on_every_backend(dtype):
    x, v = torch.randn(3, 4, 8, 8).to(dtype), torch.randn(3, 4, 8, 8).to(dtype)
    outs = [sde_step(x, v, 0.8, 0.6, generator=torch.Generator().manual_seed(7), backend=b) for b in BACKENDS]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    explicit = sde_step(x, v, 0.8, 0.6, noise=noise, backend=BACKENDS[0])
    assert torch.equal(outs[0].x_next, explicit.x_next)
    for out in outs[1:]:
        assert_close_to(out.x_next, outs[0].x_next, dtype, "x_next across backends")


def test_projection_of_the_last_step_is_the_final_sample():
    """docs/spec.md section 3: with sigma_{T} = 0, x0_hat_{T-1} = x_T."""
    sig = schedule()
    x, v = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    out = sde_step(x, v, float(sig[-2]), 0.0, a=0.0)
    assert math.isclose(float(sig[-1]), 0.0)
    torch.testing.assert_close(out.x0_hat, x - float(sig[-2]) * v)
    torch.testing.assert_close(out.x_next, out.x0_hat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"v": torch.randn(2, 3, 4, 5)}, "v must have the shape of x"),
        ({"v": torch.randn(2, 3, 4, 4, dtype=torch.float64)}, "v has dtype"),
        ({"v": torch.randn(2, 3, 4, 4, device="meta")}, "v is on meta but x is on cpu"),
        ({"sigma": 0.5, "sigma_next": 0.6}, "sigma_next must lie in"),
        ({"sigma": 1.5}, "sigma must lie in"),
        ({"sigma": torch.tensor([0.5, 0.4, 0.3])}, "sigma must be a scalar or have 2 elements"),
        ({"a": -0.1}, "a must be >= 0"),
        ({"sde_type": "ddpm"}, "sde_type must be one of"),
        ({"reduce": "max"}, "reduce must be one of"),
        ({"noise": torch.randn(2, 3, 4, 4), "generator": torch.Generator()}, "either noise or generator"),
        ({"noise": torch.randn(2, 3, 4)}, "noise must have the shape of x"),
        ({"x": torch.randn(4)}, "x must have at least 2 dims"),
        ({"x": torch.randint(0, 3, (2, 3, 4, 4))}, "x must be float32"),
        ({"sigma": torch.tensor([0.5, float("nan")])}, "finite"),
    ],
)
def test_bad_input_names_the_argument(kwargs, message):
    args = {"x": torch.randn(2, 3, 4, 4), "v": torch.randn(2, 3, 4, 4), "sigma": 0.5, "sigma_next": 0.4}
    args.update(kwargs)
    if "v" not in kwargs and args["x"].shape != args["v"].shape:
        args["v"] = torch.zeros_like(args["x"]) if args["x"].is_floating_point() else args["v"]
    x, v, sigma, sigma_next = (args.pop(k) for k in ("x", "v", "sigma", "sigma_next"))
    with pytest.raises(ValueError, match=message):
        sde_step(x, v, sigma, sigma_next, **args)


def test_requires_grad_is_rejected():
    x, v = torch.randn(2, 3), torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="without gradients"):
        sde_step(x, v, 0.5, 0.4)
