"""torch.compile(fullgraph=True) traces every op (forward and fused backward) without a graph break."""

import pytest
import torch
from op_testing import BACKENDS

from vgpo_fast.ops import clipped_policy_loss, grpo_advantage, sde_log_prob, sde_step, tcrm_adae


def _iteration(x, v, noise, v_theta, rewards, logp_old, backend):
    """A rollout step and a training step of VGPO, through all five ops."""
    step = sde_step(x, v, 0.8, 0.6, noise=noise, backend=backend)
    lp = sde_log_prob(x, v_theta, step.x_next, 0.8, 0.6, v_ref=v, backend=backend)
    adv = tcrm_adae(rewards, backend=backend).advantages[..., 0].reshape(-1)
    adv = adv + grpo_advantage(rewards[..., -1], backend=backend).reshape(-1)
    loss = clipped_policy_loss(lp.logp, logp_old, adv, lp.kl, beta=0.04, backend=backend).loss
    return step.x0_hat, loss


def _run(fn, backend):
    g = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
    v_theta = (v + 0.01 * torch.randn(4, 3, 8, 8, generator=g)).requires_grad_(True)
    x0_hat, loss = fn(x, v, noise, v_theta, torch.rand(2, 2, 5, generator=g), torch.randn(4, generator=g), backend)
    loss.backward()
    return x0_hat, loss.detach(), v_theta.grad


def _check(compiler: str, backend: str) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(_iteration, fullgraph=True, backend=compiler)
    for eager, traced in zip(_run(_iteration, backend), _run(compiled, backend), strict=True):
        torch.testing.assert_close(traced, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fullgraph_traces_every_op(backend):
    _check("aot_eager", backend)


@pytest.mark.slow
def test_inductor_compiles_and_matches_eager():
    _check("inductor", BACKENDS[-1])
