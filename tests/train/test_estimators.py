"""The estimator registry: the built-ins reproduce the closed forms they name, and a new estimator defined in
this file alone (no other module touched) trains an iteration and shows up in the profiler's and cost model's
modes."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_train import TINY_OVERRIDES, tiny_pipeline

from vgpo_fast.train.config import load
from vgpo_fast.train.estimators import (
    AdvantageResult,
    Estimator,
    estimator_names,
    get_estimator,
    register_estimator,
    unregister_estimator,
)
from vgpo_fast.train.trainer import Trainer


def _sign_advantages(rewards: torch.Tensor, alg) -> AdvantageResult:
    """A toy estimator: +1 above the group's median terminal reward, -1 below, at every step."""
    P, G, T = rewards.shape
    r = rewards[..., -1]
    adv = torch.sign(r - r.median(dim=1, keepdim=True).values)
    return AdvantageResult(
        adv.unsqueeze(-1).expand(P, G, T).contiguous(),
        rewards.clone(),
        torch.ones_like(rewards),
        r.std(dim=1, correction=0).unsqueeze(-1).expand(P, T).contiguous(),
        0.0,
    )


@pytest.fixture
def toy_estimator():
    est = register_estimator(
        Estimator(
            "toy_sign", "sign of the reward minus the group median", dense=False, options=(), compute=_sign_advantages
        )
    )
    try:
        yield est
    finally:
        unregister_estimator("toy_sign")


def test_builtins_are_registered_in_order() -> None:
    assert estimator_names()[:4] == ["flow_grpo", "vgpo", "vgpo_no_tcrm", "vgpo_no_adae"]
    assert [get_estimator(n).dense for n in estimator_names()[:4]] == [False, True, False, True]
    with pytest.raises(ValueError, match="already registered"):
        register_estimator(get_estimator("vgpo"))


def test_flow_grpo_and_no_tcrm_reduce_to_their_closed_forms() -> None:
    alg = load(None).algorithm
    R = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(0))
    r = R[..., -1].double()
    z = (r - r.mean(1, keepdim=True)) / (r.std(1, correction=0, keepdim=True) + alg.eps)
    grpo = get_estimator("flow_grpo").compute(R, alg).advantages
    torch.testing.assert_close(grpo, z.clamp(-alg.adv_clip, alg.adv_clip).float().unsqueeze(-1).expand(3, 4, 5))
    no_tcrm = get_estimator("vgpo_no_tcrm").compute(R, alg).advantages  # (r - mu)/s + k r, every step
    want = (z + alg.k * r).clamp(-alg.adv_clip, alg.adv_clip).float().unsqueeze(-1).expand(3, 4, 5)
    torch.testing.assert_close(no_tcrm, want, rtol=1e-5, atol=1e-5)


def test_a_new_estimator_trains_and_is_profiled(toy_estimator) -> None:
    from vgpo_fast.profiling.cost_model import Workload, evaluated_steps
    from vgpo_fast.profiling.modes import available_modes
    from vgpo_fast.profiling.profiler import Profiler

    cfg = load(None, [*TINY_OVERRIDES, "algorithm.name=toy_sign"])
    trainer = Trainer(cfg, pipeline=tiny_pipeline(), log=lambda *_: None)
    try:
        assert trainer.reward_steps == [cfg.rollout.steps - 1]  # not dense: the terminal reward only
        before = [p.detach().clone() for p in trainer.params]
        rec = trainer.iteration(0)
        assert rec.update.optimizer_steps > 0 and math.isfinite(rec.update.loss)
        assert rec.advantage_abs_mean == pytest.approx(1.0, abs=0.5)  # signs (0 at the median)
        assert max(float((p.detach() - b).abs().max()) for p, b in zip(trainer.params, before, strict=True)) > 0
        assert "toy_sign" in available_modes()
        assert evaluated_steps("toy_sign", 10) == [9] and Workload("toy_sign").mode == "toy_sign"
        prof = Profiler(trainer, modes=("toy_sign", "vgpo-overlap"))
        try:
            out = prof.profile(iters=1, warmup=0, train=True)
        finally:
            prof.close()
        assert set(out["modes"]) == {"toy_sign", "vgpo-overlap"}
        assert out["meta"]["reward_steps"]["toy_sign"] == [cfg.rollout.steps - 1]
    finally:
        trainer.close()
