"""grpo_advantage: every backend against the float64 reference; the reference against numpy."""

import numpy as np
import pytest
import torch
from op_testing import assert_close_to

from vgpo_fast.ops import grpo_advantage, grpo_advantage_reference


@pytest.mark.parametrize("shape", [(1, 2), (4, 8), (48, 24), (7, 3)], ids=str)
@pytest.mark.parametrize("global_std", [False, True])
def test_backend_matches_float64_reference(backend, shape, global_std):
    r = torch.rand(shape)
    out = grpo_advantage(r, global_std=global_std, backend=backend)
    assert out.dtype == torch.float32 and out.shape == shape
    assert_close_to(out, grpo_advantage_reference(r.double(), global_std=global_std), torch.float32, "A")


@pytest.mark.parametrize("global_std", [False, True])
def test_reference_matches_numpy(global_std):
    r = np.random.default_rng(0).random((5, 6))
    std = r.std() if global_std else r.std(axis=1, keepdims=True)
    expected = np.clip((r - r.mean(axis=1, keepdims=True)) / (std + 1e-4), -5, 5)
    ours = grpo_advantage_reference(torch.from_numpy(r), global_std=global_std).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_equal_rewards_give_zero_advantage(backend):
    assert torch.equal(grpo_advantage(torch.ones(3, 4), backend=backend), torch.zeros(3, 4))


def test_bad_input(backend):
    with pytest.raises(ValueError, match="G >= 2"):
        grpo_advantage(torch.rand(3, 1), backend=backend)
    with pytest.raises(ValueError, match=r"rewards\[p=1, g=0\] is nan"):
        grpo_advantage(torch.tensor([[0.1, 0.2], [float("nan"), 0.3]]), backend=backend)
