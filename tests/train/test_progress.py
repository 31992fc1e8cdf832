"""The screen of a run: the base model's evaluation is its own phase before the training bar, the bar's elapsed
time leaves evaluations out, and the report's timing shares are of the iteration time with evaluation apart."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from helpers_train import TINY_OVERRIDES, tiny_pipeline
from tqdm import tqdm

from vgpo_fast.train.config import load
from vgpo_fast.train.report import timing_breakdown
from vgpo_fast.train.run import exclude_from_rate, train
from vgpo_fast.train.trainer import Trainer


def test_excluded_seconds_leave_the_bars_elapsed_time() -> None:
    bar = tqdm(total=10, file=io.StringIO())
    bar.update(1)
    before = bar.format_dict["elapsed"]
    exclude_from_rate(bar, 30.0)
    after = bar.format_dict["elapsed"]
    bar.close()
    assert after == pytest.approx(before - 30.0, abs=0.5)
    exclude_from_rate(None, 5.0)  # no bar (progress off, ranks > 0): nothing to do


def test_timing_shares_are_of_the_iteration_and_evaluation_is_apart() -> None:
    records = [
        {"iteration": -1, "heldout_reward": 0.3, "timings": {"eval": 9.0}},
        {"iteration": 0, "timings": {"transformer": 1.0, "train": 2.0, "total": 3.5}},
        {"iteration": 1, "timings": {"transformer": 1.0, "train": 2.0, "total": 3.5, "eval": 1.0}},
    ]
    b = timing_breakdown(records)
    assert set(b["phases"]) == {"transformer", "train"}
    assert b["share"]["transformer"] == pytest.approx(1 / 3.5) and b["share"]["train"] == pytest.approx(2 / 3.5)
    assert sum(b["share"].values()) <= 1.0
    assert b["eval_mean"] == pytest.approx(5.0) and b["evaluations"] == 2


def test_base_evaluation_is_announced_before_the_training_bar(tmp_path: Path, capsys) -> None:
    cfg = load(
        None,
        [
            *TINY_OVERRIDES,
            f"run.output_dir={tmp_path}",
            "run.name=bar",
            "train.iterations=2",
            "run.eval_every=2",
            "run.report=false",
            "run.progress=true",
        ],
    )

    def log(line: str) -> None:
        print(line, file=sys.stderr)

    train(cfg, trainer=Trainer(cfg, pipeline=tiny_pipeline(), log=log), log=log)
    err = capsys.readouterr().err
    announced = err.index("held-out evaluation of the base model")
    assert "reward" in err[announced:].splitlines()[1]  # its result, on the next line
    bar = err.index("bar:")  # tqdm's description is the run name
    assert announced < bar
    assert "2/2" in err[bar:]
