"""sde_log_prob: forward and fused backward of every backend against the float64 reference and its autograd;
the reference against torch.distributions (independent closed forms)."""

import pytest
import torch
from op_testing import assert_close_to, assert_grad_close, stable_seed, step_sigmas

from vgpo_fast.ops import sde_log_prob, sde_log_prob_reference, sde_step_reference
from vgpo_fast.ops._sde_math import sde_terms

SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (4, 16, 8, 8), (3, 1, 33, 31)]


def _inputs(shape, dtype, seed, sde_type):
    g = torch.Generator().manual_seed(seed)
    x, v, v_ref, noise = (torch.randn(shape, generator=g) for _ in range(4))
    sigma, sigma_next = step_sigmas(shape[0], g, include_ends=sde_type == "flow_grpo")
    if sde_type == "cps":  # CPS's last step is deterministic: never a training step
        sigma_next = sigma_next.clamp_min(0.01)
    x_next = sde_step_reference(
        x.double(),
        v.double(),
        noise.double(),
        sigma,
        sigma_next,
        0.7 if sde_type == "flow_grpo" else 0.5,
        sde_type,
        "mean",
    ).x_next
    v_ref = v + 0.1 * v_ref  # a nearby reference policy, as in training
    return x.to(dtype), v.to(dtype), x_next.to(dtype), v_ref.to(dtype), sigma, sigma_next


CASES = [
    (s, t, r, k, ref)
    for s in SHAPES
    for t in ("flow_grpo", "cps")
    for r in ("mean", "sum")
    for k in ("scale", "flow_grpo")
    for ref in (True, False)
    if not (k == "flow_grpo" and not ref)
]


@pytest.mark.parametrize("shape, sde_type, reduce, kl_form, with_ref", CASES, ids=str)
def test_forward_and_backward_match_float64_reference(backend, dtype, shape, sde_type, reduce, kl_form, with_ref):
    a = 0.7 if sde_type == "flow_grpo" else 0.5
    x, v, x_next, v_ref, sigma, sigma_next = _inputs(shape, dtype, stable_seed(shape, sde_type), sde_type)
    v_ref = v_ref if with_ref else None
    kwargs = dict(a=a, sde_type=sde_type, reduce=reduce, kl_form=kl_form)
    v_grad = v.clone().requires_grad_(True)
    out = sde_log_prob(x, v_grad, x_next, sigma.float(), sigma_next.float(), v_ref=v_ref, backend=backend, **kwargs)

    v64 = v.double().requires_grad_(True)
    truth = sde_log_prob_reference(
        x.double(), v64, x_next.double(), sigma, sigma_next, None if v_ref is None else v_ref.double(), **kwargs
    )
    assert out.logp.dtype == torch.float32 and out.logp.shape == (shape[0],)
    assert_close_to(out.logp, truth.logp, dtype, "logp")
    assert_close_to(out.kl, truth.kl, dtype, "kl")

    g = torch.Generator().manual_seed(5)
    w_logp, w_kl = torch.randn(shape[0], generator=g), torch.randn(shape[0], generator=g)
    loss = (out.logp * w_logp).sum() + (out.kl * w_kl).sum()
    (grad,) = torch.autograd.grad(loss, v_grad)
    (grad_truth,) = torch.autograd.grad((truth.logp * w_logp.double()).sum() + (truth.kl * w_kl.double()).sum(), v64)
    v_base = v.clone().requires_grad_(True)
    base = sde_log_prob(
        x, v_base, x_next, sigma.float(), sigma_next.float(), v_ref=v_ref, backend="reference", **kwargs
    )
    (grad_base,) = torch.autograd.grad((base.logp * w_logp).sum() + (base.kl * w_kl).sum(), v_base)
    assert grad.dtype == dtype
    assert_grad_close(grad, grad_truth, grad_base, dtype, "grad wrt v")


@pytest.mark.parametrize("sde_type", ["flow_grpo", "cps"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_float64_op_passes_gradcheck(sde_type, reduce):
    x, v, x_next, v_ref, sigma, sigma_next = _inputs((3, 2, 3, 3), torch.float64, 11, sde_type)
    v = v.requires_grad_(True)

    def f(v):
        return tuple(
            sde_log_prob(x, v, x_next, sigma, sigma_next, v_ref=v_ref, a=0.6, sde_type=sde_type, reduce=reduce)
        )

    assert torch.autograd.gradcheck(f, (v,))


def test_reference_matches_torch_distributions():
    """reduce="sum": logp is the Gaussian log-density and kl the exact KL of two equal-variance Gaussians."""
    x, v, x_next, v_ref, sigma, sigma_next = _inputs((3, 4, 5, 5), torch.float64, 2, "flow_grpo")
    view = (-1, 1, 1, 1)
    mean, _, scale = sde_terms(x, v, sigma.reshape(view), sigma_next.reshape(view), 0.7, "flow_grpo")
    mean_ref, _, _ = sde_terms(x, v_ref, sigma.reshape(view), sigma_next.reshape(view), 0.7, "flow_grpo")
    ours = sde_log_prob_reference(x, v, x_next, sigma, sigma_next, v_ref, 0.7, "flow_grpo", "sum", "scale")
    policy = torch.distributions.Normal(mean, scale.expand_as(mean))
    reference = torch.distributions.Normal(mean_ref, scale.expand_as(mean))
    torch.testing.assert_close(ours.logp, policy.log_prob(x_next).reshape(3, -1).sum(1))
    torch.testing.assert_close(ours.kl, torch.distributions.kl_divergence(policy, reference).reshape(3, -1).sum(1))


def test_flow_grpo_kl_form_drops_the_minus_dt_factor(backend):
    x, v, x_next, v_ref, sigma, sigma_next = _inputs((3, 2, 4, 4), torch.float32, 4, "flow_grpo")
    exact = sde_log_prob(x, v, x_next, sigma.float(), sigma_next.float(), v_ref=v_ref, backend=backend)
    compat = sde_log_prob(
        x, v, x_next, sigma.float(), sigma_next.float(), v_ref=v_ref, kl_form="flow_grpo", backend=backend
    )
    torch.testing.assert_close(compat.kl, exact.kl * (sigma - sigma_next).float(), rtol=1e-5, atol=0)


def test_kl_is_zero_for_the_reference_itself(backend):
    x, v, x_next, _, sigma, sigma_next = _inputs((2, 3, 4, 4), torch.float32, 5, "flow_grpo")
    out = sde_log_prob(x, v, x_next, sigma.float(), sigma_next.float(), v_ref=v.clone(), backend=backend)
    assert torch.equal(out.kl, torch.zeros(2))


def test_only_logp_or_only_kl_backward(backend):
    x, v, x_next, v_ref, sigma, sigma_next = _inputs((2, 3, 4, 4), torch.float32, 6, "flow_grpo")
    for pick in (0, 1):
        v1 = v.clone().requires_grad_(True)
        out = sde_log_prob(x, v1, x_next, sigma.float(), sigma_next.float(), v_ref=v_ref, backend=backend)
        out[pick].sum().backward()
        v2 = v.double().requires_grad_(True)
        truth = sde_log_prob_reference(x.double(), v2, x_next.double(), sigma, sigma_next, v_ref.double())
        truth[pick].sum().backward()
        v3 = v.clone().requires_grad_(True)
        sde_log_prob(x, v3, x_next, sigma.float(), sigma_next.float(), v_ref=v_ref, backend="reference")[
            pick
        ].sum().backward()
        assert_grad_close(v1.grad, v2.grad, v3.grad, torch.float32, f"grad of output {pick}")


def test_deterministic_steps_are_rejected():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="deterministic"):
        sde_log_prob(x, x, x, 0.5, 0.0, a=0.5, sde_type="cps")
    with pytest.raises(ValueError, match="a = 0"):
        sde_log_prob(x, x, x, 0.5, 0.4, a=0.0)


@pytest.mark.parametrize("name", ["x", "x_next", "v_ref"])
def test_gradients_only_through_v(name):
    t = {k: torch.randn(2, 3) for k in ("x", "v", "x_next", "v_ref")}
    t[name].requires_grad_(True)
    with pytest.raises(ValueError, match=f"{name} requires grad"):
        sde_log_prob(t["x"], t["v"], t["x_next"], 0.5, 0.4, v_ref=t["v_ref"])


def test_bad_shapes_and_dtypes():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="x_next must have the shape of x"):
        sde_log_prob(x, x, torch.randn(2, 4), 0.5, 0.4)
    with pytest.raises(ValueError, match="v_ref has dtype"):
        sde_log_prob(x, x, x, 0.5, 0.4, v_ref=x.double())
    with pytest.raises(ValueError, match="kl_form must be one of"):
        sde_log_prob(x, x, x, 0.5, 0.4, kl_form="exact")
