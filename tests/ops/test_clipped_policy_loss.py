"""clipped_policy_loss: every backend against the float64 reference and its autograd; the reference
against an explicit per-entry loop of docs/spec.md section 5.3."""

import math

import pytest
import torch
from op_testing import assert_close_to

from vgpo_fast.ops import clipped_policy_loss, clipped_policy_loss_reference


def _inputs(n, seed, spread=1e-3):
    g = torch.Generator().manual_seed(seed)
    logp_old = torch.randn(n, generator=g)
    logp_new = logp_old + spread * torch.randn(n, generator=g)
    return logp_new, logp_old, torch.randn(n, generator=g), torch.rand(n, generator=g)


@pytest.mark.parametrize("n", [1, 7, 96, 1000])
@pytest.mark.parametrize("with_kl", [True, False])
def test_backend_matches_float64_reference(backend, n, with_kl):
    logp_new, logp_old, adv, kl = _inputs(n, n)
    kl = kl if with_kl else None
    beta = 0.04 if with_kl else 0.0
    ln = logp_new.clone().requires_grad_(True)
    kl_in = None if kl is None else kl.clone().requires_grad_(True)
    out = clipped_policy_loss(ln, logp_old, adv, kl_in, clip=1e-3, beta=beta, backend=backend)
    ln64 = logp_new.double().requires_grad_(True)
    kl64 = None if kl is None else kl.double().requires_grad_(True)
    truth = clipped_policy_loss_reference(ln64, logp_old.double(), adv.double(), kl64, 1e-3, beta)
    for name in out._fields:
        assert getattr(out, name).shape == ()
        assert_close_to(getattr(out, name).detach(), getattr(truth, name).detach(), torch.float32, name)
    out.loss.backward()
    truth.loss.backward()
    assert_close_to(ln.grad, ln64.grad, torch.float32, "grad logp_new")
    if with_kl:
        assert_close_to(kl_in.grad, kl64.grad, torch.float32, "grad kl")


def test_reference_matches_explicit_loop():
    logp_new, logp_old, adv, kl = (t.double() for t in _inputs(50, 3, spread=0.05))
    clip, beta = 0.02, 0.1
    out = clipped_policy_loss_reference(logp_new, logp_old, adv, kl, clip, beta)
    losses, clipped = [], 0
    for ln, lo, a, k in zip(logp_new.tolist(), logp_old.tolist(), adv.tolist(), kl.tolist(), strict=True):
        ratio = math.exp(ln - lo)
        bounded = min(max(ratio, 1 - clip), 1 + clip)
        losses.append(-min(ratio * a, bounded * a) + beta * k)
        clipped += abs(ratio - 1) > clip
    assert out.loss.item() == pytest.approx(sum(losses) / 50, rel=1e-12)
    assert out.clip_frac.item() == pytest.approx(clipped / 50)
    assert 0 < clipped < 50
    assert out.approx_kl.item() == pytest.approx(0.5 * ((logp_new - logp_old) ** 2).mean().item())


def test_float64_gradcheck():
    logp_new, logp_old, adv, kl = (t.double() for t in _inputs(20, 4, spread=0.05))
    logp_new.requires_grad_(True)
    kl.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: clipped_policy_loss(a, logp_old, adv, b, clip=0.02, beta=0.1).loss, (logp_new, kl)
    )


def test_on_policy_gradient_is_minus_the_mean_advantage(backend):
    """At ratio = 1 the PPO gradient wrt logp_new is -A / N: the policy-gradient estimator."""
    logp = torch.randn(8)
    adv = torch.randn(8)
    ln = logp.clone().requires_grad_(True)
    clipped_policy_loss(ln, logp, adv, backend=backend).loss.backward()
    torch.testing.assert_close(ln.grad, -adv / 8)


def test_works_on_any_shape(backend):
    logp_new, logp_old, adv, kl = (t.reshape(4, 5) for t in _inputs(20, 5))
    out = clipped_policy_loss(logp_new, logp_old, adv, kl, beta=0.04, backend=backend)
    flat = clipped_policy_loss_reference(
        logp_new.reshape(-1), logp_old.reshape(-1), adv.reshape(-1), kl.reshape(-1), 1e-4, 0.04
    )
    torch.testing.assert_close(out.loss, flat.loss)


def test_bad_input():
    x = torch.randn(4)
    with pytest.raises(ValueError, match="beta = 0.04 > 0 needs kl"):
        clipped_policy_loss(x, x, x, beta=0.04)
    with pytest.raises(ValueError, match="advantages must have the shape of logp_new"):
        clipped_policy_loss(x, x, torch.randn(5))
    with pytest.raises(ValueError, match="clip must be > 0"):
        clipped_policy_loss(x, x, x, clip=0.0)
    with pytest.raises(ValueError, match="logp_new is empty"):
        clipped_policy_loss(torch.randn(0), torch.randn(0), torch.randn(0))
