"""The trainer end to end on a tiny random model: every algorithm runs; advantages and the loss of a batch equal
a slow float64 recomputation with the reference ops; overlap on/off is bit-identical; the rollout and training
passes agree (ratio 1 before any update)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_train import TINY_OVERRIDES, tiny_pipeline

from vgpo_fast.models import reference_policy, velocity
from vgpo_fast.ops import (
    clipped_policy_loss_reference,
    grpo_advantage_reference,
    sde_log_prob_reference,
    tcrm_adae_reference,
)
from vgpo_fast.train.config import load
from vgpo_fast.train.config_io import ConfigError
from vgpo_fast.train.trainer import Trainer

ALGORITHMS = {
    "vgpo": [],
    "flow_grpo": ["algorithm.name=flow_grpo"],
    "vgpo_no_tcrm": ["algorithm.name=vgpo_no_tcrm"],
    "vgpo_no_adae": ["algorithm.name=vgpo_no_adae"],
}


def make_trainer(*overrides: str) -> Trainer:
    cfg = load(None, [*TINY_OVERRIDES, *overrides])
    return Trainer(cfg, pipeline=tiny_pipeline(), log=lambda *_: None)


def perturb_lora(trainer: Trainer, seed: int = 1, scale: float = 0.05) -> None:
    """Non-zero adapters, so the policy differs from the reference (KL > 0) from the first iteration."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainer.params:
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def finite_numbers(record: dict) -> list[tuple[str, float]]:
    out = []
    for key, value in record.items():
        if isinstance(value, dict):
            out += [(f"{key}.{k}", v) for k, v in finite_numbers(value)]
        elif isinstance(value, list):
            out += [(f"{key}[{i}]", float(v)) for i, v in enumerate(value)]
        elif isinstance(value, (int, float)):
            out.append((key, float(value)))
    return out


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_each_algorithm_trains_with_finite_metrics(algorithm: str) -> None:
    trainer = make_trainer(*ALGORITHMS[algorithm])
    before = [p.detach().clone() for p in trainer.params]
    records = [trainer.iteration(it).to_json() for it in range(2)]
    trainer.close()
    for rec in records:
        bad = [(k, v) for k, v in finite_numbers(rec) if not math.isfinite(v)]
        assert not bad, bad
        assert rec["optimizer_steps"] == 2  # 8 trajectories, minibatches of 4, one step each
        assert rec["reward_std"] > 0  # the test reward varies across samples: the update has a signal
    dense = algorithm in ("vgpo", "vgpo_no_adae")
    assert ("instant_reward" in records[0]) == dense
    if dense:
        assert len(records[0]["instant_reward"]) == 4
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(trainer.params, before, strict=True))
    assert moved > 0


@pytest.mark.parametrize("algorithm", ["vgpo", "flow_grpo", "vgpo_no_tcrm", "vgpo_no_adae"])
def test_advantages_and_loss_match_float64_reference(algorithm: str) -> None:
    # One optimiser step for the whole batch: every micro-step's loss is taken at the rollout's weights.
    trainer = make_trainer(
        *ALGORITHMS[algorithm],
        "train.grad_accum=8",
        "algorithm.beta=0.5",
        "train.steps_per_iter=2",
        "train.mixed_precision=no",
    )
    perturb_lora(trainer)
    cfg = trainer.cfg
    P, G, T = cfg.rollout.prompts_per_iter, cfg.rollout.group_size, cfg.rollout.steps
    batch = trainer.rollout(0)
    adv, keep = trainer.advantages(batch)
    assert bool(keep.all())

    # Advantages: the float64 reference of docs/spec.md section 4 on the same rewards.
    R = batch.rewards.reshape(P, G, T).double()
    alg = cfg.algorithm
    if algorithm == "flow_grpo":
        expected = grpo_advantage_reference(R[..., -1], eps=alg.eps, adv_clip=alg.adv_clip)
        expected = expected.unsqueeze(-1).expand(P, G, T)
    elif algorithm == "vgpo_no_tcrm":
        terminal = torch.zeros_like(R)
        terminal[..., -1] = R[..., -1]
        expected = tcrm_adae_reference(
            terminal, gamma=1.0, k=alg.k, eps=alg.eps, adv_clip=alg.adv_clip, omega=False
        ).advantages
    else:
        k = alg.k if algorithm == "vgpo" else 0.0
        expected = tcrm_adae_reference(R, gamma=alg.gamma, k=k, eps=alg.eps, adv_clip=alg.adv_clip).advantages
    torch.testing.assert_close(adv.advantages.double(), expected, rtol=1e-5, atol=1e-6)

    # Loss: recompute every (trajectory, training step) of the plan with the reference ops in float64.
    plan = trainer.step_plan(batch, 0)
    assert plan.shape == (P * G, 2)
    sig = batch.sigmas.double()
    losses = []
    model = trainer.model
    with torch.no_grad():
        for i in range(P * G):
            cond = trainer.pipe.encode([batch.prompts[i]])
            uncond = trainer.pipe.encode([""])
            for j in plan[i].tolist():
                x, x_next = batch.latents[j, i : i + 1], batch.latents[j + 1, i : i + 1]
                s = sig[j].float().reshape(1)
                v = velocity(model, x, s, *cond, cfg.rollout.guidance_scale, uncond)
                with reference_policy(model):
                    v_ref = velocity(model, x, s, *cond, cfg.rollout.guidance_scale, uncond)
                lp = sde_log_prob_reference(
                    x.double(),
                    v.double(),
                    x_next.double(),
                    sig[j],
                    sig[j + 1],
                    v_ref=v_ref.double(),
                    a=cfg.rollout.noise_level,
                )
                out = clipped_policy_loss_reference(
                    lp.logp,
                    batch.logp[j, i : i + 1].double(),
                    expected[i // G, i % G, j].reshape(1),
                    lp.kl,
                    clip=alg.clip_range,
                    beta=alg.beta,
                )
                assert float(lp.kl) > 0
                losses.append(float(out.loss))
    upd = trainer.update(batch, adv, keep, 0)
    trainer.close()
    assert upd.optimizer_steps == 1
    assert upd.loss == pytest.approx(sum(losses) / len(losses), rel=1e-4, abs=1e-6)
    assert upd.ratio_dev < 1e-4  # every micro-step at the rollout's weights: ratio 1


@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.filterwarnings("ignore:train.mixed_precision=bf16 on a CPU without native bf16")  # meant here
def test_rollout_and_training_log_probs_agree_before_any_update(precision: str) -> None:
    trainer = make_trainer(f"train.mixed_precision={precision}", "train.grad_accum=8")
    perturb_lora(trainer)
    batch = trainer.rollout(0)
    adv, keep = trainer.advantages(batch)
    upd = trainer.update(batch, adv, keep, 0)
    trainer.close()
    # The training pass recomputes each step's log-prob under the same weights and autocast: the ratio is 1.
    assert upd.ratio_dev < 1e-4
    assert upd.clip_frac == 0.0


def test_overlap_on_and_off_give_identical_samples_rewards_and_losses() -> None:
    results = []
    for overlap in ("true", "false"):
        trainer = make_trainer(f"reward.overlap={overlap}")
        batch = trainer.rollout(0)
        adv, keep = trainer.advantages(batch)
        upd = trainer.update(batch, adv, keep, 0)
        results.append((batch, upd, [p.detach().clone() for p in trainer.params]))
        trainer.close()
    (b1, u1, p1), (b2, u2, p2) = results
    assert torch.equal(b1.latents, b2.latents)
    assert torch.equal(b1.logp, b2.logp)
    assert torch.equal(b1.rewards, b2.rewards)
    assert u1.loss == u2.loss
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))


def test_reward_in_a_child_process_gives_the_same_rollout_as_the_worker_thread() -> None:
    batches = []
    for worker in ("thread", "process"):
        trainer = make_trainer(f"reward.worker={worker}")
        batches.append(trainer.rollout(0))
        trainer.close()
    assert torch.equal(batches[0].latents, batches[1].latents)
    assert torch.equal(batches[0].rewards, batches[1].rewards)


def test_sparse_reward_steps_fill_from_the_next_evaluated_step() -> None:
    trainer = make_trainer("reward.steps=2")  # T = 4: S = {1, 3}
    batch = trainer.rollout(0)
    trainer.close()
    assert trainer.reward_steps == [1, 3]
    R = batch.rewards
    assert torch.equal(R[:, 0], R[:, 1]) and torch.equal(R[:, 2], R[:, 3])


def test_same_iteration_replays_exactly() -> None:
    a, b = make_trainer(), make_trainer()
    ba, bb = a.rollout(3), b.rollout(3)
    a.close()
    b.close()
    assert ba.prompts == bb.prompts
    assert torch.equal(ba.latents, bb.latents)


def test_shared_init_noise_gives_each_group_one_start_and_distinct_samples() -> None:
    """`rollout.shared_init_noise`: the G trajectories of a prompt start from one x_T (DanceGRPO), the prompts'
    starts differ, and the SDE still makes the group's final samples differ."""
    trainer = make_trainer("rollout.shared_init_noise=true")
    batch = trainer.rollout(0)
    trainer.close()
    G = trainer.cfg.rollout.group_size
    starts = batch.latents[0].reshape(-1, G, *batch.latents.shape[2:])
    assert torch.equal(starts, starts[:, :1].expand_as(starts))
    assert not torch.equal(starts[0, 0], starts[1, 0])
    finals = batch.latents[-1].reshape(-1, G, *batch.latents.shape[2:])
    assert (finals[:, 0] - finals[:, 1]).abs().amax() > 1e-3


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'rollout\.guidance_scale'"):
        load(None, ["rollout.gudance_scale=3"])
    with pytest.raises(ConfigError, match=r"rollout\.group_size must be >= 2"):
        load(None, ["rollout.group_size=1"])
    with pytest.raises(ConfigError, match=r"need algorithm\.name 'vgpo'"):
        load(None, ["algorithm.name=flow_grpo", "algorithm.tcrm=false"])
    with pytest.raises(ConfigError, match=r"rollout\.sde_window"):
        load(None, ["rollout.sde_window=[3,20]"])


def test_heldout_drift_is_zero_for_the_base_and_the_mean_pixel_change_after_updates() -> None:
    trainer = make_trainer()
    before, base = trainer.evaluate()
    assert 0.0 <= before["heldout_reward"] <= 1.0 and "heldout_drift" not in before
    same, _ = trainer.evaluate(base)
    assert same["heldout_drift"] == 0.0 and same["heldout_reward"] == before["heldout_reward"]
    perturb_lora(trainer, scale=0.5)
    after, images = trainer.evaluate(base)
    trainer.close()
    want = (images.mul(255).round() - base.mul(255).round()).abs().mean().item() / 255
    assert after["heldout_drift"] == pytest.approx(want, rel=1e-6) and after["heldout_drift"] > 0.0
    with pytest.raises(ValueError, match="base_images must match"):
        trainer.evaluate(base[:1])


def test_legacy_ablation_keys_load_as_the_estimators_and_unknown_names_are_refused() -> None:
    assert load(None, ["algorithm.tcrm=false"]).algorithm.name == "vgpo_no_tcrm"
    assert load(None, ["algorithm.adae=false"]).algorithm.name == "vgpo_no_adae"
    assert load(None, ["algorithm.tcrm=true", "algorithm.adae=true"]).algorithm.name == "vgpo"
    with pytest.raises(ConfigError, match=r"use algorithm\.name=flow_grpo"):
        load(None, ["algorithm.tcrm=false", "algorithm.adae=false"])
    with pytest.raises(ConfigError, match=r"unknown algorithm 'vgpo_no_tcr'.*did you mean 'vgpo_no_tcrm'"):
        load(None, ["algorithm.name=vgpo_no_tcr"])
