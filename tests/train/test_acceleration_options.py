"""`model.compile` and `model.fp8` run a whole iteration on the tiny model on the CPU and match eager."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_train import TINY_OVERRIDES, tiny_pipeline

from vgpo_fast.models import fp8_supported
from vgpo_fast.train.config import load
from vgpo_fast.train.trainer import Trainer
from vgpo_fast.train.update import UpdateStats


def trainer(*overrides: str) -> Trainer:
    return Trainer(
        load(None, [*TINY_OVERRIDES, "train.mixed_precision=no", *overrides]),
        pipeline=tiny_pipeline(),
        log=lambda *_: None,
    )


def rollout_and_record(*overrides: str) -> tuple[torch.Tensor, UpdateStats]:
    t = trainer(*overrides)
    batch = t.rollout(0)
    adv, keep = t.advantages(batch)
    upd = t.update(batch, adv, keep, 0)
    t.close()
    return batch.latents, upd


@pytest.mark.slow
def test_compiled_transformer_matches_eager() -> None:
    eager, upd_e = rollout_and_record()
    compiled, upd_c = rollout_and_record("model.compile=true")
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert upd_c.loss == pytest.approx(upd_e.loss, rel=1e-3, abs=1e-5)


@pytest.mark.skipif(not fp8_supported("cpu")[0], reason="torchao float8 unavailable")
def test_fp8_linears_run_and_stay_close_to_eager() -> None:
    eager, _ = rollout_and_record()
    with pytest.warns(UserWarning, match="model.fp8 on a CPU: float8 matmuls are emulated"):
        fp8, upd = rollout_and_record("model.fp8=true")
    # float8 e4m3 activations and weights (3 mantissa bits): a few percent per matmul, not bitwise equality.
    err = float((fp8 - eager).abs().max())
    assert 0 < err < 0.1 * float(eager.abs().max())
    assert math.isfinite(upd.loss) and upd.grad_norm > 0
