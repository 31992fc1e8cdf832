"""ProcessReward: an in-process reward scored in a spawned child process gives the same scores and errors."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from helpers_rewards import constant_images

import vgpo_fast.tasks.registry  # noqa: F401 - registers the task rewards ("shapes")
from vgpo_fast.rewards.base import RewardError
from vgpo_fast.rewards.process import ProcessReward
from vgpo_fast.tasks.shapes.render import render_prompts
from vgpo_fast.tasks.shapes.reward import CompositionalReward

PROMPTS = [
    "a red circle",
    "two blue squares",
    "a green triangle left of a yellow circle",
    "a red circle above a blue square",
]


@pytest.fixture(scope="module")
def probe():
    reward = ProcessReward("helpers_rewards:Probe")
    yield reward
    reward.close()


def test_scores_equal_the_in_process_verifier_on_ground_truth_and_near_misses() -> None:
    prompts = PROMPTS * 4
    images = render_prompts(prompts, list(range(len(prompts))), 16)
    images[len(PROMPTS) : 2 * len(PROMPTS)] = images[: len(PROMPTS)][::-1]  # near misses: another prompt's scene
    images[-1] = images[-1][:, ::-1]  # mirrored: the relation flips
    with ProcessReward({"name": "shapes", "mode": "partial"}) as remote:
        got = remote.score(images, prompts)
        assert (remote.name, remote.low, remote.high) == ("compositional_partial", 0.0, 1.0)
        # The child is sent the registered name's explicit target: it has imported no task registry.
        assert remote.spec == {"name": "shapes", "mode": "partial"}
        assert remote.child_spec == {"name": "vgpo_fast.tasks.shapes.reward:CompositionalReward", "mode": "partial"}
    want = CompositionalReward("partial").score(images, prompts)
    assert torch.equal(got, want)
    assert got[: len(PROMPTS)].eq(1).all() and got[len(PROMPTS) : 2 * len(PROMPTS)].lt(1).all()


def test_child_errors_reach_the_caller_as_themselves(probe: ProcessReward) -> None:
    images = constant_images([10, 20])
    with pytest.raises(RewardError, match="returned nan for prompt 'nan x'"):
        probe.score(images, ["nan x", "y"])
    with pytest.raises(ValueError, match="probe cannot score prompt 'raise x'"):
        probe.score(images, ["raise x", "y"])
    assert torch.allclose(probe.score(images, ["a", "b"]), torch.tensor([10 / 255, 20 / 255]))


def test_drop_policy_turns_non_finite_scores_into_nan() -> None:
    with ProcessReward("helpers_rewards:Probe", nonfinite="drop") as reward:
        got = reward.score(constant_images([10, 20, 30]), ["inf a", "b", "nan c"])
    assert torch.isnan(got[0]) and torch.isnan(got[2]) and got[1] == pytest.approx(20 / 255)


def test_a_bad_spec_fails_at_construction_with_the_childs_error() -> None:
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        ProcessReward("no_such_module:Reward")
    with pytest.raises(ValueError, match=r"unknown reward 'shape' \(did you mean 'shapes'\?\)"):
        ProcessReward("shape?mode=partial")  # an unknown name fails in the parent, before any child starts
    with pytest.raises(ValueError, match="reward server already"):
        ProcessReward("http://127.0.0.1:9")


def test_a_killed_child_is_a_reward_error_and_the_next_call_starts_a_new_one() -> None:
    images = constant_images([51])
    with ProcessReward("helpers_rewards:Probe") as reward:
        assert reward.score(images, ["a"]).item() == pytest.approx(0.2)
        pids = [p.pid for p in reward._pool._processes.values()]  # noqa: SLF001 (the test kills the child)
        assert len(pids) == 1 and pids[0] != os.getpid()
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(RewardError, match="died"):
            for _ in range(50):  # the pool notices the death on the next call at the latest
                reward.score(images, ["a"])
        assert reward.score(images, ["a"]).item() == pytest.approx(0.2)


def test_submit_resolves_off_the_callers_thread(probe: ProcessReward) -> None:
    futures = [probe.submit(constant_images([v]), ["p"]) for v in (0, 255)]
    assert [f.result(timeout=60).item() for f in futures] == [0.0, 1.0]
    assert np.isclose(probe.score(constant_images([255]), ["p"]).item(), 1.0)
