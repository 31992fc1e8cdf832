"""`vgpo-fast experiment`: real training subprocesses on the tiny model; results recomputed from the metrics."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from helpers_train import TINY_OVERRIDES, save_tiny_model  # noqa: E402
from vgpo_fast.experiments.analysis import analyze, table, write  # noqa: E402
from vgpo_fast.experiments.registry import EXPERIMENTS, Experiment, get_experiment  # noqa: E402
from vgpo_fast.experiments.runner import plan, run_all, status  # noqa: E402

from vgpo_fast.tasks import registry as task_registry  # noqa: E402

TRAIN_DIR = str(Path(__file__).resolve().parents[1] / "train")


def tiny_experiment(model: Path, variants: dict | None = None) -> Experiment:
    return Experiment(
        "tiny",
        "tiny model, Redness reward",
        variants or {"flow_grpo": ("algorithm.name=flow_grpo",), "vgpo": ("algorithm.name=vgpo",)},
        seeds=(0, 1),
        iterations=2,
        eval_every=1,
        common=(*TINY_OVERRIDES, f"model.path={model}"),
    )


def heldout(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r["heldout_reward"] for r in recs if "heldout_reward" in r}


def test_runs_resume_and_results_match_the_metrics(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", TRAIN_DIR)
    exp = tiny_experiment(save_tiny_model(tmp_path / "model"))
    out = tmp_path / "exp"
    runs = plan(exp, out)
    assert [r.name for r in runs] == ["flow_grpo-s0", "flow_grpo-s1", "vgpo-s0", "vgpo-s1"]
    logs: list[str] = []
    run_all(runs, 2, jobs=2, log=logs.append, poll_s=0.2)
    assert all(status(r, 2) == "done" for r in runs)
    run_all(runs, 2, jobs=2, log=logs.append)
    assert logs[-1].startswith("4 of 4 runs already done")
    at_two = analyze(exp, runs, horizon=2)

    longer = plan(exp, out, iterations=3)  # a longer horizon continues every run from its checkpoint
    assert {status(r, 3) for r in longer} == {"resume"}
    run_all(longer, 3, jobs=2, log=logs.append, poll_s=0.2)

    assert analyze(exp, longer, horizon=4)["missing_runs"] == [r.name for r in longer]  # not at 4 iterations yet
    assert analyze(exp, longer, horizon=2) == at_two  # the shorter horizon's results survive the extension
    results = analyze(exp, longer, horizon=3)
    assert results["missing_runs"] == [] and results["reference"] == "flow_grpo"
    for label in ("flow_grpo", "vgpo"):
        curves = [heldout(out / "tiny" / f"{label}-s{s}") for s in (0, 1)]
        assert all(sorted(c) == [-1, 0, 1, 2] for c in curves)
        changes = [c[2] - c[-1] for c in curves]
        v = results["variants"][label]
        assert v["heldout_change"]["mean"] == pytest.approx(statistics.fmean(changes), abs=1e-12)
        assert v["heldout_change"]["std"] == pytest.approx(statistics.stdev(changes), abs=1e-12)
        assert [c["iteration"] for c in v["curve"]] == [-1, 0, 1, 2]
        assert v["curve"][-1]["mean"] == pytest.approx(statistics.fmean(c[2] for c in curves), abs=1e-12)
        assert v["drift_after"]["n"] == 2 and v["drift_after"]["mean"] >= 0.0
        target = results["variants"]["flow_grpo"]["heldout_after"]["mean"]
        reached = [c["iteration"] + 1 for c in v["curve"] if c["iteration"] >= 0 and c["mean"] >= target]
        assert v["iterations_to_reference"] == (reached[0] if reached else None)
    assert results["variants"]["flow_grpo"]["iterations_to_reference"] is not None
    paths = write(results, out / "tiny")
    assert json.loads((out / "tiny" / "results.json").read_text())["experiment"] == "tiny"
    assert table(results).count("\n") == 4 and all(p.is_file() and p.stat().st_size > 0 for p in paths)


def test_a_failing_run_is_reported_with_its_log_and_the_others_finish(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", TRAIN_DIR)
    exp = tiny_experiment(
        save_tiny_model(tmp_path / "model"), {"ok": (), "bad": ("reward.reward=helpers_train:NoSuchReward",)}
    )
    runs = [r for r in plan(exp, tmp_path / "exp", seeds=(0,), iterations=1)]
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed: bad-s0 \(exit 2, log .*bad-s0.log\)"):
        run_all(runs, 1, jobs=2, log=lambda *_: None, poll_s=0.2)
    assert status(runs[0], 1) == "done"
    assert "NoSuchReward" in (tmp_path / "exp" / "tiny" / "logs" / "bad-s0.log").read_text()


def test_registry_and_plan_errors(tmp_path: Path, monkeypatch) -> None:
    assert set(EXPERIMENTS) == {"shapes-ablation", "text", "shapes-sweep"}
    ablation = get_experiment("shapes-ablation")
    assert list(ablation.variants) == ["flow_grpo", "vgpo", "vgpo_no_tcrm", "vgpo_no_adae"]
    assert len(ablation.seeds) >= 3 and len(get_experiment("text").seeds) >= 2
    with pytest.raises(ValueError, match="did you mean 'shapes-sweep'"):
        get_experiment("shapes-swep")
    subset = plan(ablation, tmp_path, seeds=(0, 1), variants=("vgpo_no_adae",))
    assert [r.name for r in subset] == ["vgpo_no_adae-s0", "vgpo_no_adae-s1"]
    with pytest.raises(ValueError, match="no variants \\['vgpo_no_kl'\\]"):
        plan(ablation, tmp_path, variants=("vgpo_no_kl",))
    with pytest.raises(ValueError, match="algorithm.nme"):  # a bad override fails at planning, not mid-run
        plan(ablation, tmp_path, extra=("algorithm.nme=vgpo",))
    monkeypatch.setattr(task_registry, "_TASK_DIR", tmp_path)  # as if the text task's base model were absent
    with pytest.raises(FileNotFoundError, match="vgpo-fast pretrain --task text"):
        plan(get_experiment("text"), tmp_path)
