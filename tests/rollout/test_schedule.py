"""rollout.schedule: diffusers sigmas, the sparse reward-step set S, the fill rule and the SDE window."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpo_fast.rollout import fill_sparse_rewards, reward_steps, sde_window, sigmas, timesteps


@pytest.mark.parametrize(("steps", "shift"), [(1, 3.0), (10, 3.0), (28, 3.0), (16, 1.0)])
def test_sigmas_match_diffusers(steps: int, shift: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(steps)
    s = sigmas(steps, shift)
    assert s.shape == (steps + 1,) and s.dtype == torch.float32
    torch.testing.assert_close(s, ref.sigmas.float(), rtol=0, atol=0)
    assert s[0] == 1 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
    torch.testing.assert_close(timesteps(s), ref.timesteps.float(), rtol=1e-6, atol=1e-4)


def test_shift_one_is_linear() -> None:
    s = sigmas(4, shift=1.0)
    torch.testing.assert_close(s[:-1], torch.linspace(1.0, 1e-3, 4), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("steps", "shift"), [(0, 3.0), (-2, 3.0), (2.5, 3.0), (True, 3.0), (4, 0.0), (4, -1.0), (4, float("nan")), (4, "3")]
)
def test_sigmas_rejects_bad_arguments(steps, shift) -> None:
    with pytest.raises(ValueError):
        sigmas(steps, shift)


@pytest.mark.parametrize(
    ("T", "spec", "expected"),
    [
        (5, "all", [0, 1, 2, 3, 4]),
        (10, 1, list(range(10))),
        (10, 3, [0, 3, 6, 9]),
        (10, 4, [1, 5, 9]),
        (10, 10, [9]),
        (10, 50, [9]),
        (1, "all", [0]),
        (10, [0, 4], [0, 4, 9]),
        (10, [4, 0, 4, 9], [0, 4, 9]),
        (10, [], [9]),
        (10, (2,), [2, 9]),
        (6, torch.tensor([1, 3]), [1, 3, 5]),
    ],
)
def test_reward_steps_hand_examples(T: int, spec, expected: list[int]) -> None:
    assert reward_steps(T, spec) == expected


@pytest.mark.parametrize(
    ("T", "spec"),
    [
        (10, "some"),
        (10, 0),
        (10, -2),
        (10, True),
        (10, [10]),
        (10, [-1]),
        (10, [1.5]),
        (10, 2.0),
        (0, "all"),
        (10, None),
    ],
)
def test_reward_steps_rejects_bad_specs(T: int, spec) -> None:
    with pytest.raises(ValueError):
        reward_steps(T, spec)


def test_fill_sparse_rewards_hand_example() -> None:
    S = reward_steps(10, 4)  # [1, 5, 9]
    R_eval = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    R = fill_sparse_rewards(R_eval, S, 10)
    expected = torch.tensor([[1.0, 1, 2, 2, 2, 2, 3, 3, 3, 3], [10.0, 10, 20, 20, 20, 20, 30, 30, 30, 30]])
    torch.testing.assert_close(R, expected)
    # "all" is the identity
    R_all = torch.randn(3, 2, 7)
    torch.testing.assert_close(fill_sparse_rewards(R_all, reward_steps(7), 7), R_all)


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 40), data=st.data())
def test_fill_is_constant_on_segments(T: int, data) -> None:
    kind = data.draw(st.sampled_from(["all", "stride", "list"]))
    if kind == "all":
        spec = "all"
    elif kind == "stride":
        spec = data.draw(st.integers(1, 50))
    else:
        spec = data.draw(st.lists(st.integers(0, T - 1), max_size=8))
    S = reward_steps(T, spec)
    assert S[-1] == T - 1 and sorted(set(S)) == S and all(0 <= m < T for m in S)
    R_eval = torch.randn(2, 3, len(S))
    R = fill_sparse_rewards(R_eval, S, T)
    assert R.shape == (2, 3, T)
    for j in range(T):
        m = min(s for s in S if s >= j)  # docs/spec.md section 3, literally
        torch.testing.assert_close(R[..., j], R_eval[..., S.index(m)], rtol=0, atol=0)
    lo = 0
    for i, m in enumerate(S):  # constant on each segment (S[i-1], S[i]]
        seg = R[..., lo : m + 1]
        assert bool((seg == R_eval[..., i : i + 1]).all())
        lo = m + 1


@pytest.mark.parametrize(
    ("R_eval", "S", "T"),
    [
        (torch.zeros(2, 3), [1, 5, 9], 8),  # S does not end at T-1
        (torch.zeros(2, 2), [1, 5, 9], 10),  # wrong |S|
        (torch.zeros(2, 3), [5, 1, 9], 10),  # not sorted
        (torch.zeros(2, 3), [1, 1, 9], 10),  # duplicate
        (torch.zeros(2, 0), [], 10),
        (torch.zeros(()), [0], 1),
    ],
)
def test_fill_rejects_bad_inputs(R_eval, S, T) -> None:
    with pytest.raises(ValueError):
        fill_sparse_rewards(R_eval, S, T)


def test_sde_window() -> None:
    assert sde_window(4).tolist() == [True] * 4
    assert sde_window(6, (2, 5)).tolist() == [False, False, True, True, True, False]
    assert sde_window(3, (0, 3)).tolist() == [True] * 3
    for bad in [(3, 3), (-1, 2), (0, 7), (2, 1), (0.0, 2), (1,), "ab", (True, 3)]:
        with pytest.raises(ValueError):
            sde_window(6, bad)
