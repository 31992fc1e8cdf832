"""profiling.cost_model: hand-computed synthetic cases are reproduced exactly; costs read back from a profile
reproduce the profile's serial iteration; `vgpo-fast profile --iters 0 --predict --costs` prints the table."""

from __future__ import annotations

import pytest
from vgpo_fast.profiling.cli import main
from vgpo_fast.profiling.cost_model import OpCosts, Workload, evaluated_steps, predict, prediction_table

# One sample, transformer step 1 s, decode + reward 0.5 s, train step 0.1 s per sample-step.
COSTS = OpCosts(transformer_step=1.0, decode=0.2, reward=0.3, train_step=0.1)


@pytest.mark.parametrize(
    "mode, rollout, waited",
    [
        ("flow_grpo", 4.5, 0.5),  # 4 steps, then the terminal reward
        ("vgpo-serial", 6.0, 2.0),  # 4 steps + 4 rewards, one after the other
        ("vgpo-overlap", 5.0, 1.0),  # jobs 0..2 hidden behind steps 2..4; job 3 queues behind job 2 (ends 4.5)
        ("vgpo-sparse", 4.5, 0.5),  # S = {1, 3}: job 1 hidden behind step 3, the terminal one not
    ],
)
def test_synthetic_case_is_exact(mode: str, rollout: float, waited: float) -> None:
    pred = predict(COSTS, Workload(mode, T=4, P=1, G=1, train=False))
    assert pred.rollout == rollout and pred.reward_wait == waited and pred.total == rollout


def test_in_flight_bound_and_training_and_gpus() -> None:
    slow = OpCosts(transformer_step=1.0, decode=1.0, reward=1.0, train_step=0.5, setup=0.25)
    # max_in_flight 1, jobs of 2 s: step1 hands off j0 (done 4); step2 blocks until 4 (j1 done 6); after the
    # loop j2 blocks until 6 (done 8).
    pred = predict(slow, Workload("vgpo-overlap", T=3, P=1, G=1, max_in_flight=1))
    assert pred.rollout == 8.0 and pred.reward_wait == 5.0
    assert pred.train == 1 * 2 * 0.5 and pred.total == 8.0 + 1.0 + 0.25
    # 16 samples on 8 GPUs: 2 per GPU; the allreduce counts once per optimiser step with more than one GPU.
    two = predict(
        OpCosts(transformer_step=1.0, decode=0.0, reward=0.0, train_step=1.0, allreduce=3.0),
        Workload("flow_grpo", T=2, P=4, G=4, gpus=8),
    )
    assert two.rollout == 4.0 and two.train == 2 * 1 * 1.0 + 3.0


def test_evaluated_steps() -> None:
    assert evaluated_steps("flow_grpo", 10) == [9]
    assert evaluated_steps("vgpo-sparse", 10, 3) == [0, 3, 6, 9]
    assert evaluated_steps("vgpo-overlap", 3) == [0, 1, 2]


def test_costs_from_a_profile_reproduce_it() -> None:
    n, T = 4, 5
    c = OpCosts(transformer_step=0.01, sde_step=0.001, decode=0.002, reward=0.003, train_step=0.02, setup=0.05)
    job = n * (c.decode + c.reward)
    phases = {
        "setup": 0.05,
        "transformer": n * T * c.transformer_step,
        "sde_op": n * T * c.sde_step,
        "reward_wait": (T - 1) * job,
        "reward_finish": job,
        "advantage": 0.0,
        "train": n * (T - 1) * 0.02,
        "other": 0.0,
    }
    report = {
        "meta": {"P": 2, "G": 2, "T": T, "train": True, "train_steps_per_trajectory": T - 1, "inner_epochs": 1},
        "modes": {
            "vgpo-serial": {
                "phases": phases,
                "evaluated_steps": list(range(T)),
                "per_step": {"decode": [n * c.decode] * T, "reward": [n * c.reward] * T},
            }
        },
    }
    got = OpCosts.from_profile(report)
    for name in ("transformer_step", "sde_step", "decode", "reward", "train_step", "setup"):
        assert getattr(got, name) == pytest.approx(getattr(c, name), rel=1e-12)
    measured = sum(phases.values())
    assert predict(got, Workload("vgpo-serial", T=T, P=2, G=2)).total == pytest.approx(measured, rel=1e-12)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="OpCosts.decode"):
        OpCosts(transformer_step=1.0, decode=-1.0, reward=0.0)
    with pytest.raises(ValueError, match=r"unknown op cost\(s\) \['vae'\]"):
        OpCosts.parse({"transformer_step": 1, "decode": 0, "reward": 0, "vae": 1})
    with pytest.raises(ValueError, match="mode must be one of"):
        Workload("grpo")


def test_table_and_cli(capsys: pytest.CaptureFixture) -> None:
    rows = prediction_table(COSTS, Workload("flow_grpo", T=4, P=1, G=1), [4, 8], [1], [1], [1, 2])
    assert len(rows) == 2 * 2 * 4 and {r["overhead"] for r in rows if r["mode"] == "flow_grpo"} == {1.0}
    code = main(
        [
            "--iters",
            "0",
            "--predict",
            "--costs",
            "transformer_step=0.01,decode=0.001,reward=0.002",
            "--predict-T",
            "10,20",
            "--predict-gpus",
            "1,8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.count("vgpo-overlap") == 4 and "vs flow_grpo" in out
    assert main(["--iters", "0"]) == 2
