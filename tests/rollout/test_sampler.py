"""rollout.sampler: exact velocity fields (point mass, Gaussian data) with known solutions, projections,
log-probabilities against sde_log_prob, seeding, the SDE window and marginal preservation."""

import math

import pytest
import torch

from vgpo_fast.ops import sde_log_prob
from vgpo_fast.rollout import sample_trajectories, sigmas


def point_mass(x0_star: torch.Tensor):
    """Data = a point mass at x0*: x_t = (1-t) x0* + t x1, so v = x1 - x0* = (x - x0*) / t exactly."""

    def vel(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x - x0_star) / sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)

    return vel


def gaussian(mu: torch.Tensor, sd: float):
    """Data N(mu, sd^2 I): x_t = (1-t) x0 + t x1 is Gaussian with Var = (1-t)^2 sd^2 + t^2, and
    E[x0|x_t] = mu + (1-t) sd^2 / Var (x_t - (1-t) mu),  E[x1|x_t] = t / Var (x_t - (1-t) mu);  v = E[x1-x0|x_t]."""

    def vel(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(torch.float64)
        var = (1 - t) ** 2 * sd**2 + t**2
        r = x.to(torch.float64) - (1 - t) * mu
        return (t / var * r - (mu + (1 - t) * sd**2 / var * r)).to(x.dtype)

    return vel


def gaussian_alpha(t: float, sd: float) -> float:
    """d v / d x of the Gaussian field (v is affine in x)."""
    var = (1 - t) ** 2 * sd**2 + t**2
    return t / var - (1 - t) * sd**2 / var


def exact_chain_std(sig: list[float], sd: float, a: float, sde_type: str) -> float:
    """The exact std of x_T for the discrete chain on 1-D Gaussian data: x' = c_x x + c_v v(x) + scale eps with v
    affine, so Var' = (c_x + c_v alpha)^2 Var + scale^2. Coefficients from docs/spec.md section 2 (written afresh)."""
    var = 1.0
    for s, sn in zip(sig[:-1], sig[1:], strict=True):
        dt = sn - s
        if sde_type == "flow_grpo":
            std = a * math.sqrt(s / (1 - (sn if s == 1 else s)))
            cx, cv, scale = 1 + std**2 * dt / (2 * s), (1 + std**2 * (1 - s) / (2 * s)) * dt, std * math.sqrt(-dt)
        else:
            std = sn * math.sin(a * math.pi / 2)
            r = math.sqrt(max(sn**2 - std**2, 0.0))
            cx, cv, scale = (1 - sn) + r, -s * (1 - sn) + r * (1 - s), std
        var = (cx + cv * gaussian_alpha(s, sd)) ** 2 * var + scale**2
    return math.sqrt(var)


def test_point_mass_ode_lands_exactly() -> None:
    x0_star = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    seen = []
    tr = sample_trajectories(
        point_mass(x0_star),
        torch.randn(6, 3, dtype=torch.float64),
        sigmas(12),
        a=0.0,
        on_projection=lambda j, p: seen.append((j, p.clone())),
    )
    torch.testing.assert_close(tr.final, x0_star.expand(6, 3), rtol=0, atol=1e-12)
    assert [j for j, _ in seen] == list(range(12))
    for _, p in seen:
        torch.testing.assert_close(p, x0_star.expand(6, 3), rtol=0, atol=1e-12)
    assert not tr.train_mask.any() and not tr.logp.any()


@pytest.mark.parametrize("sde_type", ["flow_grpo", "cps"])
def test_point_mass_projections_are_exact_under_sde(sde_type: str) -> None:
    x0_star = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    seen = []
    g = torch.Generator().manual_seed(3)
    tr = sample_trajectories(
        point_mass(x0_star),
        torch.randn(5, 2, dtype=torch.float64),
        sigmas(10),
        a=0.7,
        sde_type=sde_type,
        generator=g,
        on_projection=lambda j, p: seen.append((j, p.clone())),
    )
    assert [j for j, _ in seen] == list(range(10))
    for j, p in seen[:-1]:
        torch.testing.assert_close(p, x0_star.expand(5, 2), rtol=0, atol=1e-9, msg=f"step {j}")
    torch.testing.assert_close(seen[-1][1], tr.latents[10], rtol=0, atol=0)


@pytest.mark.parametrize("sde_type", ["flow_grpo", "cps"])
def test_projections_match_recomputation_and_come_immediately(sde_type: str) -> None:
    T, B = 8, 4
    mu = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    vel = gaussian(mu, 0.5)
    calls = []

    def counted(x, sigma):
        calls.append(float(sigma[0]))
        assert sigma.shape == (B,) and sigma.dtype == torch.float32
        return vel(x, sigma)

    seen = []
    s = sigmas(T)
    tr = sample_trajectories(
        counted,
        torch.randn(B, 3),
        s,
        sde_type=sde_type,
        generator=torch.Generator().manual_seed(0),
        keep_projections=True,
        on_projection=lambda j, p: seen.append((j, len(calls), p.clone())),
    )
    assert len(calls) == T and calls == s[:-1].tolist()
    assert [j for j, _, _ in seen] == list(range(T))
    assert tr.latents.shape == (T + 1, B, 3) and tr.projections.shape == (T, B, 3)
    for j, n_calls, p in seen:
        if j < T - 1:
            assert n_calls == j + 2  # handed over right after the velocity of step j+1, before step j+2's
            sig_next = s[j + 1].expand(B)
            expected = tr.latents[j + 1] - s[j + 1] * vel(tr.latents[j + 1], sig_next)
            torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-6)
        else:
            assert n_calls == T
            torch.testing.assert_close(p, tr.latents[T], rtol=0, atol=0)
        torch.testing.assert_close(tr.projections[j], p, rtol=0, atol=0)
    assert tr.projections is not None


@pytest.mark.parametrize(
    ("sde_type", "dtype", "reduce"),
    [
        ("flow_grpo", torch.float32, "mean"),
        ("cps", torch.float32, "mean"),
        ("flow_grpo", torch.float64, "sum"),
        ("flow_grpo", torch.bfloat16, "mean"),
    ],
)
def test_logp_matches_sde_log_prob_on_stored_latents(sde_type: str, dtype: torch.dtype, reduce: str) -> None:
    T, B = 6, 3
    vel = gaussian(torch.tensor([0.5, -0.5], dtype=torch.float64), 0.4)
    s = sigmas(T)
    tr = sample_trajectories(
        vel,
        torch.randn(B, 2, 2).to(dtype),
        s,
        a=0.7,
        sde_type=sde_type,
        reduce=reduce,
        generator=torch.Generator().manual_seed(1),
    )
    assert tr.latents.dtype == dtype and tr.logp.shape == (T, B)
    assert tr.logp.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert tr.train_mask.tolist() == [True] * (T - 1) + [False]
    for j in tr.training_steps:
        x, x_next = tr.latents[j], tr.latents[j + 1]
        out = sde_log_prob(
            x, vel(x, s[j].expand(B)), x_next, float(s[j]), float(s[j + 1]), a=0.7, sde_type=sde_type, reduce=reduce
        )
        torch.testing.assert_close(out.logp, tr.logp[j], rtol=1e-5, atol=1e-5)
        ratio = torch.exp(out.logp - tr.logp[j])
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)


def test_same_seed_same_trajectory() -> None:
    vel = gaussian(torch.tensor([0.2], dtype=torch.float64), 0.6)
    x = torch.randn(4, 3)
    run = [
        sample_trajectories(vel, x, sigmas(6), generator=torch.Generator().manual_seed(seed), keep_projections=True)
        for seed in (7, 7, 8)
    ]
    for field in ("latents", "logp", "projections", "train_mask"):
        assert torch.equal(getattr(run[0], field), getattr(run[1], field))
    assert not torch.equal(run[0].latents[1:], run[2].latents[1:])


def test_sde_window_steps_are_ode_outside() -> None:
    T, B = 8, 4
    vel = gaussian(torch.tensor([0.5, 1.0], dtype=torch.float64), 0.3)
    s = sigmas(T)
    x = torch.randn(B, 2, dtype=torch.float64)
    runs = [
        sample_trajectories(vel, x, s, sde_steps=(2, 5), generator=torch.Generator().manual_seed(seed))
        for seed in (0, 1)
    ]
    tr = runs[0]
    assert tr.sde_mask.tolist() == [j in (2, 3, 4) for j in range(T)]
    assert tr.train_mask.tolist() == tr.sde_mask.tolist()
    for j in range(T):
        xj = tr.latents[j]
        euler = xj + vel(xj, s[j].expand(B)) * (float(s[j + 1]) - float(s[j]))
        if j in (2, 3, 4):
            assert not torch.allclose(tr.latents[j + 1], euler)
        else:  # an ODE step is the Euler step and draws no noise
            torch.testing.assert_close(tr.latents[j + 1], euler, rtol=1e-12, atol=1e-12)
            assert not tr.logp[j].any()
    # different seeds agree until the window starts, then differ
    assert torch.equal(runs[0].latents[:3], runs[1].latents[:3])
    assert not torch.equal(runs[0].latents[3], runs[1].latents[3])
    # a bool mask works the same way
    mask = torch.tensor([j in (2, 3, 4) for j in range(T)])
    again = sample_trajectories(vel, x, s, sde_steps=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.latents, tr.latents)


@pytest.mark.parametrize(
    ("sde_type", "train_last", "expected_last"),
    [("flow_grpo", False, False), ("flow_grpo", True, True), ("cps", True, False)],
)
def test_train_mask_last_step(sde_type: str, train_last: bool, expected_last: bool) -> None:
    T = 5
    tr = sample_trajectories(
        gaussian(torch.zeros(1, dtype=torch.float64), 0.5),
        torch.randn(2, 2),
        sigmas(T),
        sde_type=sde_type,
        train_last_step=train_last,
        generator=torch.Generator().manual_seed(0),
    )
    assert tr.train_mask.tolist() == [True] * (T - 1) + [expected_last]
    if sde_type == "cps":
        assert not tr.logp[T - 1].any()  # scale 0 at sigma_T = 0: deterministic, no log-probability


@pytest.mark.parametrize("sde_type", ["flow_grpo", "cps"])
def test_gaussian_marginals(sde_type: str) -> None:
    """Mean is preserved exactly in expectation; the std equals the discrete chain's exact std (docs/spec.md's step on
    1-D Gaussian data, computed in closed form), within Monte-Carlo tolerance."""
    N, D, T, sd, a = 4000, 2, 40, 0.3, 0.7
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    s = sigmas(T, shift=1.0)
    g = torch.Generator().manual_seed(123)
    tr = sample_trajectories(
        gaussian(mu, sd), torch.randn(N, D, generator=g, dtype=torch.float64), s, a=a, sde_type=sde_type, generator=g
    )
    final = tr.final
    std_exact = exact_chain_std(s.double().tolist(), sd, a, sde_type)
    # MC: se(mean) = sd / sqrt(N) ~ 0.005, se(std) ~ sd / sqrt(2N) ~ 0.0034; 5 sigma
    torch.testing.assert_close(final.mean(0), mu, rtol=0, atol=5 * sd / math.sqrt(N))
    torch.testing.assert_close(
        final.std(0), torch.full((D,), std_exact, dtype=torch.float64), rtol=0, atol=5 * sd / math.sqrt(2 * N)
    )
    if sde_type == "flow_grpo":  # the discretised SDE preserves the data marginal up to O(1/T)
        assert abs(std_exact - sd) < 0.01
        torch.testing.assert_close(final.std(0), torch.full((D,), sd, dtype=torch.float64), rtol=0, atol=0.02)


def test_velocity_fn_runs_without_grad() -> None:
    w = torch.nn.Parameter(torch.tensor(0.5))
    tr = sample_trajectories(
        lambda x, sigma: w * x, torch.randn(2, 3), sigmas(3), generator=torch.Generator().manual_seed(0)
    )
    assert not tr.latents.requires_grad and not tr.logp.requires_grad


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigmas": torch.tensor([1.0, 0.5, 0.1])},  # does not end at 0
        {"sigmas": torch.tensor([1.0, 0.5, 0.6, 0.0])},  # not decreasing
        {"sigmas": torch.tensor([1.5, 0.5, 0.0])},
        {"sigmas": torch.tensor([0.0])},
        {"a": -0.1},
        {"a": float("nan")},
        {"sde_steps": (0, 9)},
        {"sde_steps": torch.ones(2, dtype=torch.bool)},
        {"x": torch.randn(4)},
        {"velocity_fn": lambda x, sigma: x[:1]},
    ],
)
def test_rejects_bad_arguments(kwargs) -> None:
    args = {"velocity_fn": lambda x, sigma: x, "x": torch.randn(2, 3), "sigmas": sigmas(4)}
    args.update(kwargs)
    with pytest.raises(ValueError):
        sample_trajectories(args.pop("velocity_fn"), args.pop("x"), args.pop("sigmas"), **args)
