"""tcrm_adae: every backend against the float64 reference; the reference against a brute-force loop of
docs/spec.md section 4; the section's reductions."""

import statistics

import pytest
import torch
from op_testing import assert_close_to, stable_seed

from vgpo_fast.ops import grpo_advantage, tcrm_adae, tcrm_adae_reference

SHAPES = [(1, 2, 1), (3, 4, 5), (2, 8, 10), (5, 3, 16), (48, 24, 10), (2, 5, 40)]


def _rewards(shape, seed):
    g = torch.Generator().manual_seed(seed)
    R = torch.rand(shape, generator=g)
    R[0, 0] = 0.0  # a trajectory whose mean return is 0: omega falls back to 1
    return R


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("omega", [True, False])
@pytest.mark.parametrize("global_std", [False, True])
def test_backend_matches_float64_reference(backend, shape, omega, global_std):
    R = _rewards(shape, stable_seed(shape))
    kwargs = dict(gamma=0.9, k=0.1, eps=1e-4, adv_clip=5.0, omega=omega, global_std=global_std)
    out = tcrm_adae(R, backend=backend, **kwargs)
    truth = tcrm_adae_reference(R.double(), **kwargs)
    for name in out._fields:
        assert getattr(out, name).dtype == torch.float32
        assert getattr(out, name).shape == getattr(truth, name).shape, name
        assert_close_to(getattr(out, name), getattr(truth, name), torch.float32, name)


def test_reference_matches_brute_force_loops():
    P, G, T, gamma, k, eps = 3, 4, 6, 0.8, 0.3, 1e-4
    R = _rewards((P, G, T), 1).double()
    out = tcrm_adae_reference(R, gamma=gamma, k=k, eps=eps, adv_clip=1e9)
    r = R.tolist()
    Q = [
        [[sum(gamma ** (m - j) * r[p][g][m] for m in range(j, T)) for j in range(T)] for g in range(G)]
        for p in range(P)
    ]
    for p in range(P):
        for g in range(G):
            mean_q = sum(Q[p][g]) / T
            for j in range(T):
                column = [Q[p][h][j] for h in range(G)]
                omega = Q[p][g][j] / mean_q if mean_q > eps else 1.0
                adv = omega * (
                    (Q[p][g][j] - statistics.fmean(column)) / (statistics.pstdev(column) + eps) + k * Q[p][g][j]
                )
                assert out.returns[p, g, j].item() == pytest.approx(Q[p][g][j], rel=1e-12)
                assert out.advantages[p, g, j].item() == pytest.approx(adv, rel=1e-10, abs=1e-12)
    assert out.omega_fallback_frac.item() == pytest.approx(1 / (P * G))


def test_reduces_to_flow_grpo(backend):
    """k = 0, gamma = 1, terminal-only rewards, omega off: VGPO's advantage is Flow-GRPO's at every step."""
    R = torch.zeros(4, 6, 10)
    R[..., -1] = torch.rand(4, 6)
    vgpo = tcrm_adae(R, gamma=1.0, k=0.0, omega=False, backend=backend).advantages
    grpo = grpo_advantage(R[..., -1], backend=backend)
    torch.testing.assert_close(vgpo, grpo[..., None].expand_as(vgpo), rtol=1e-5, atol=1e-6)


def test_equal_rewards_give_the_absolute_term(backend):
    """All G rewards of a group equal: A = omega * k * Q (ADAE keeps a signal when diversity vanishes)."""
    # Dyadic rewards, gamma 1/2 and G = 4 keep every sum and mean exact in float32, so s is exactly 0.
    R = (torch.randint(1, 16, (3, 1, 8)) / 16).expand(3, 4, 8).contiguous()
    out = tcrm_adae(R, gamma=0.5, k=0.2, backend=backend)
    torch.testing.assert_close(out.advantages, out.omega * 0.2 * out.returns, rtol=1e-5, atol=1e-6)
    assert (out.advantages > 0).all()


def test_advantages_are_clamped(backend):
    R = torch.rand(2, 4, 5) * 100
    out = tcrm_adae(R, k=1.0, adv_clip=2.0, backend=backend)
    assert out.advantages.abs().max().item() == pytest.approx(2.0)


def test_omega_is_one_on_average_over_time(backend):
    out = tcrm_adae(torch.rand(3, 4, 7) + 0.1, backend=backend)
    torch.testing.assert_close(out.omega.mean(dim=-1), torch.ones(3, 4), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "rewards, kwargs, message",
    [
        (torch.rand(3, 1, 5), {}, "G >= 2"),
        (torch.rand(3, 4, 0), {}, "T >= 1"),
        (torch.rand(3, 4), {}, "rewards must be 3-D"),
        (torch.rand(3, 4, 5), {"gamma": 1.5}, "gamma must be <= 1"),
        (torch.rand(3, 4, 5), {"eps": 0.0}, "eps must be > 0"),
        (torch.rand(3, 4, 5), {"k": -1.0}, "k must be >= 0"),
        (torch.randint(0, 2, (3, 4, 5)), {}, "rewards must be float32"),
    ],
)
def test_bad_input(rewards, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tcrm_adae(rewards, **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rewards_name_the_prompt_group(backend, bad):
    R = torch.rand(4, 3, 5)
    R[2, 1, 3] = bad
    with pytest.raises(ValueError, match=r"rewards\[p=2, g=1, t=3\] is (nan|inf) \(prompt group 2\)"):
        tcrm_adae(R, backend=backend)
