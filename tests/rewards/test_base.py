"""The reward interface: image conversion, the non-finite policy, WeightedSum, asynchronous submit."""

from __future__ import annotations

import concurrent.futures as cf
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from vgpo_fast.rewards.base import RewardError, RewardModel, WeightedSum, finite_group_mask, to_uint8_images


class MeanPixel(RewardModel):
    """Mean pixel value / 255 of each image, in [0, 1]; records the thread it ran on."""

    name = "mean"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.threads: list[str] = []

    def _score(self, images, prompts):
        self.threads.append(threading.current_thread().name)
        return images.reshape(images.shape[0], -1).mean(axis=1) / 255.0


class Fixed(RewardModel):
    """Returns the given scores whatever the images; `low/high` as given."""

    def __init__(self, scores, low=0.0, high=1.0, name="fixed", **kwargs):
        super().__init__(**kwargs)
        self.scores, self.low, self.high, self.name = np.asarray(scores, dtype=np.float64), low, high, name

    def _score(self, images, prompts):
        return self.scores


class Failing(RewardModel):
    def _score(self, images, prompts):
        raise RuntimeError("scorer exploded")


def _images(b=2, h=4, w=5, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, h, w, 3), dtype=np.uint8)


# ---- to_uint8_images -------------------------------------------------------------------------------------------


def test_uint8_array_passes_through():
    x = _images()
    out = to_uint8_images(x)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(out, x)


def test_uint8_tensor_is_converted():
    x = _images()
    np.testing.assert_array_equal(to_uint8_images(torch.from_numpy(x)), x)


def test_float_chw_to_uint8_hwc_values():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, -0.2, 0.25 / 255.0]).reshape(1, 3, 1, 2)
    out = to_uint8_images(x)
    assert out.shape == (1, 1, 2, 3) and out.dtype == np.uint8
    # channel c of pixel (0, j) is x[0, c, 0, j]; values clip to [0, 1] and round to the nearest level.
    np.testing.assert_array_equal(out[0, 0], [[0, 255, 0], [128, 255, 0]])


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.just(3))))
def test_uint8_float_round_trip_is_exact(x):
    as_float = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    np.testing.assert_array_equal(to_uint8_images(as_float), x)
    np.testing.assert_array_equal(to_uint8_images(as_float.double().numpy()), x)


def test_bfloat16_tensor_is_accepted():
    x = torch.full((1, 3, 2, 2), 0.5, dtype=torch.bfloat16)
    assert (to_uint8_images(x) == 128).all()


def test_pil_list_is_converted_to_rgb():
    x = _images(b=2)
    pils = [Image.fromarray(x[0]), Image.fromarray(x[1]).convert("RGBA")]
    np.testing.assert_array_equal(to_uint8_images(pils), x)
    gray = to_uint8_images([Image.new("L", (5, 4), 7)])
    assert gray.shape == (1, 4, 5, 3) and (gray == 7).all()


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((4, 5, 3), np.uint8), "must be 4-D"),
        (np.zeros((2, 3, 4, 5), np.uint8), r"uint8 images must be \[B, H, W, 3\]"),
        (np.zeros((2, 4, 5, 3), np.float32), r"float images must be \[B, 3, H, W\]"),
        (np.full((1, 3, 2, 2), np.nan, np.float32), "NaN or inf"),
        (np.zeros((1, 2, 2, 3), np.int32), "must be uint8 or floating point, got dtype int32"),
        ([], "empty sequence"),
        ([np.zeros((2, 2, 3), np.uint8)], "list of PIL images"),
        ("not images", "list of PIL images"),
        (5, "got int"),
    ],
)
def test_bad_images_raise_clear_value_errors(images, message):
    with pytest.raises(ValueError, match=message):
        to_uint8_images(images)


def test_mixed_and_mismatched_pil_lists_raise():
    im = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="list holding ndarray"):
        to_uint8_images([im, np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="one size"):
        to_uint8_images([im, Image.new("RGB", (5, 4))])


# ---- score and the non-finite policy ----------------------------------------------------------------------------


def test_score_returns_float32_batch():
    reward = MeanPixel()
    x = _images(b=3)
    scores = reward.score(x, ["a", "b", "c"])
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    torch.testing.assert_close(scores, torch.from_numpy(x.reshape(3, -1).mean(1) / 255.0).float())


def test_prompt_count_and_type_are_checked():
    reward = MeanPixel()
    with pytest.raises(ValueError, match="one entry per image: 2 images, 1 prompts"):
        reward.score(_images(b=2), ["a"])
    with pytest.raises(ValueError, match="got a str"):
        reward.score(_images(b=5), "a cat")  # five characters must not pass as five prompts
    with pytest.raises(ValueError, match="got a str"):
        reward.submit(_images(b=5), "a cat")


def test_wrong_number_of_scores_is_a_reward_error():
    with pytest.raises(RewardError, match="returned 3 scores for 2 images"):
        Fixed([0.1, 0.2, 0.3]).score(_images(b=2), ["a", "b"])


def test_nonfinite_raise_names_the_prompt():
    reward = Fixed([0.5, float("nan"), float("inf")], name="judge")
    with pytest.raises(RewardError, match=r"'judge' returned nan for prompt 'a red cube' \(image 1\); 2 non-finite"):
        reward.score(_images(b=3), ["a blue ball", "a red cube", "a cat"])


def test_nonfinite_drop_returns_nan_in_place():
    reward = Fixed([0.5, float("nan"), -float("inf")], nonfinite="drop")
    scores = reward.score(_images(b=3), ["a", "b", "c"])
    assert scores[0] == 0.5 and torch.isnan(scores[1]) and torch.isnan(scores[2])  # inf too: one marker, NaN


def test_nonfinite_policy_is_validated():
    with pytest.raises(ValueError, match="nonfinite must be 'raise' or 'drop', got 'skip'"):
        MeanPixel(nonfinite="skip")


def test_finite_group_mask():
    rewards = torch.tensor([[[0.1, 0.2], [0.3, 0.4]], [[0.1, float("nan")], [0.3, 0.4]]])
    assert finite_group_mask(rewards).tolist() == [True, False]
    with pytest.raises(ValueError, match=r"\[P, G, ...\]"):
        finite_group_mask(torch.zeros(3))


# ---- WeightedSum ------------------------------------------------------------------------------------------------


def test_weighted_sum_values_range_and_name():
    a = Fixed([0.2, 0.8], low=0.0, high=1.0, name="a")
    b = Fixed([-1.0, 3.0], low=-2.0, high=5.0, name="b")
    total = WeightedSum([(a, 2.0), (b, -0.5)])
    torch.testing.assert_close(total.score(_images(), ["p", "q"]), torch.tensor([0.9, 0.1]))
    assert total.name == "2*a+-0.5*b"
    # 2 * [0, 1] + (-0.5) * [-2, 5] = [0, 2] + [-2.5, 1]
    assert (total.low, total.high) == (-2.5, 3.0)


def test_weighted_sum_of_one_part_with_unit_weight_is_that_part():
    part = MeanPixel()
    x = _images(b=4)
    torch.testing.assert_close(WeightedSum([(part, 1.0)]).score(x, list("abcd")), part.score(x, list("abcd")))


def test_weighted_sum_needs_parts_and_propagates_nonfinite():
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum([])
    nan_part = Fixed([float("nan"), 1.0], nonfinite="drop", name="n")
    total = WeightedSum([(nan_part, 1.0), (Fixed([0.0, 0.0]), 1.0)], nonfinite="drop")
    assert torch.isnan(total.score(_images(), ["a", "b"])[0])
    with pytest.raises(RewardError, match="prompt 'a'"):
        WeightedSum([(nan_part, 1.0)]).score(_images(), ["a", "b"])


def test_weighted_sum_close_closes_parts():
    part = MeanPixel()
    total = WeightedSum([(part, 1.0)])
    part.submit(_images(), ["a", "b"]).result()
    total.close()
    assert part._executor is None


# ---- submit -----------------------------------------------------------------------------------------------------


def test_submit_resolves_to_the_synchronous_scores_on_a_worker_thread():
    reward = MeanPixel()
    x = _images(b=3)
    with reward:
        futures = [reward.submit(x[i : i + 1], ["p"]) for i in range(3)]
        results = [f.result(timeout=30) for f in futures]
    expected = reward.score(x, ["a", "b", "c"])
    torch.testing.assert_close(torch.cat(results), expected)
    assert all(isinstance(f, cf.Future) for f in futures)
    assert reward.threads[:3] == ["reward-mean_0"] * 3
    assert reward._executor is None  # the context manager closed it


def test_submit_future_raises_what_score_raises():
    with Failing() as reward, pytest.raises(RuntimeError, match="scorer exploded"):
        reward.submit(_images(), ["a", "b"]).result(timeout=30)
    with Fixed([float("nan"), 0.0]) as reward, pytest.raises(RewardError, match="prompt 'a'"):
        reward.submit(_images(), ["a", "b"]).result(timeout=30)


def test_submit_after_close_starts_a_new_worker():
    reward = MeanPixel()
    reward.submit(_images(), ["a", "b"]).result(timeout=30)
    reward.close()
    assert reward.submit(_images(), ["a", "b"]).result(timeout=30).shape == (2,)
    reward.close()
