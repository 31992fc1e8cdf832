"""profiling.profiler on the tiny model (CPU): every mode runs; each iteration's segments partition its measured
wall time; overlap efficiency lies in [0, 1]; the per-step breakdown adds up to the phases; the report is JSON and
plots to PNG; the cost model's validation runs on it."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from helpers_train import TINY_OVERRIDES, tiny_pipeline  # noqa: E402
from vgpo_fast.profiling.cli import validate_cost_model  # noqa: E402
from vgpo_fast.profiling.plots import plot_breakdown, plot_timeline  # noqa: E402
from vgpo_fast.profiling.profiler import MAIN_PHASES, MODES, Profiler, interval_overlap  # noqa: E402

from vgpo_fast.train.config import load  # noqa: E402
from vgpo_fast.train.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def report():
    trainer = Trainer(load(None, TINY_OVERRIDES), pipeline=tiny_pipeline(), log=lambda *_: None)
    prof = Profiler(trainer, sparse_k=2)
    try:
        yield prof.profile(iters=2, warmup=0, train=True)
    finally:
        prof.close()
        trainer.close()


def test_every_mode_runs_with_its_reward_steps(report) -> None:
    assert list(report["modes"]) == list(MODES)
    steps = {m: report["modes"][m]["evaluated_steps"] for m in MODES}
    assert steps == {"flow_grpo": [3], "vgpo-serial": [0, 1, 2, 3], "vgpo-overlap": [0, 1, 2, 3], "vgpo-sparse": [1, 3]}
    assert report["modes"]["flow_grpo"]["reward_overhead"] == 1.0
    assert all(m["iterations"] == 2 for m in report["modes"].values())


def test_segments_partition_the_measured_total(report) -> None:
    for rec in report["records"]:
        named = sum(rec["phases"][p] for p in MAIN_PHASES)
        # The segments come from stamps inside the iteration, the total from perf_counter around it.
        assert named == pytest.approx(rec["total"], rel=0.02, abs=2e-3), rec["phases"]
        assert rec["phases"]["other"] >= -1e-6
        main = rec["lanes"]["main"]
        assert main[0][2] == 0.0
        assert all(a[3] == pytest.approx(b[2], abs=1e-9) for a, b in zip(main, main[1:], strict=False))
        assert all(s[3] >= s[2] for s in main + rec["lanes"]["reward"])
        assert rec["phases"]["train"] > 0 and rec["phases"]["transformer"] > 0


def test_per_step_breakdown_sums_to_the_phases(report) -> None:
    for rec in report["records"]:
        ps = rec["per_step"]
        assert len(ps["transformer"]) == 4
        assert sum(ps["transformer"]) == pytest.approx(rec["phases"]["transformer"], abs=1e-9)
        assert sum(ps["reward_wait"]) + rec["phases"]["reward_finish"] == pytest.approx(
            rec["phases"]["reward_wait"] + rec["phases"]["reward_finish"], abs=1e-9
        )
        busy = sum(ps["decode"]) + sum(ps["reward"])
        assert busy == pytest.approx(rec["reward_busy"], rel=0.05, abs=1e-4)
        assert [j for j in range(4) if ps["decode"][j] > 0] == ps["evaluated"]


def test_overlap_efficiency_is_a_share(report) -> None:
    for rec in report["records"]:
        assert 0.0 <= rec["overlap_efficiency"] <= 1.0
        assert rec["reward_exposed"] <= rec["reward_busy"] + 1e-9
    for m in report["modes"].values():
        assert 0.0 <= m["overlap_efficiency"] <= 1.0
    # Serial: every reward runs while the main thread waits for it; nothing is hidden.
    assert report["modes"]["vgpo-serial"]["overlap_efficiency"] < 0.2
    assert report["modes"]["vgpo-overlap"]["efficiency_ceiling"] == 0.75


def test_report_is_json_and_plots(report, tmp_path: Path) -> None:
    text = json.dumps(report)
    assert json.loads(text)["meta"]["T"] == 4
    for path in (plot_timeline(report, tmp_path / "t.png"), plot_breakdown(report, tmp_path / "b.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cost_model_validation_runs_on_a_profile(report) -> None:
    val = validate_cost_model(report)
    assert val["costs_from"] == "vgpo-serial"
    assert {r["mode"] for r in val["validation"]} == set(MODES)
    assert all(math.isfinite(r["error"]) for r in val["validation"])
    serial = next(r for r in val["validation"] if r["mode"] == "vgpo-serial")
    assert abs(serial["error"]) < 0.02  # the costs come from this mode: it must be reproduced


def test_interval_overlap() -> None:
    assert interval_overlap([(0, 2), (1, 3)], [(0, 10)]) == 3
    assert interval_overlap([(0, 1), (2, 3)], [(0.5, 2.5)]) == 1.0
    assert interval_overlap([], [(0, 1)]) == 0.0


def test_bad_modes_are_errors() -> None:
    with pytest.raises(ValueError, match="modes must be"):
        Profiler(None, modes=["vgpo"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sparse_k"):
        Profiler(None, sparse_k=0)  # type: ignore[arg-type]
