"""`vgpo-fast profile` end to end on the tiny model directory: JSON, PNGs, the Chrome trace, NVML's line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from helpers_train import TINY_OVERRIDES, save_tiny_model  # noqa: E402
from vgpo_fast.profiling.cli import main  # noqa: E402


def test_profile_command_writes_its_outputs(tmp_path: Path, capsys) -> None:
    model = save_tiny_model(tmp_path / "model")
    out = tmp_path / "prof"
    code = main(
        [
            "--iters",
            "1",
            "--warmup",
            "0",
            "--modes",
            "flow_grpo,vgpo-overlap",
            "--predict",
            "--trace",
            "--out",
            str(out),
            f"model.path={model}",
            *TINY_OVERRIDES,
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "profile.json").read_text())
    assert list(report["modes"]) == ["flow_grpo", "vgpo-overlap"]
    assert report["nvml"]["available"] in (True, False)
    assert text.splitlines()[0].startswith("nvml: ")
    assert "cost model" in text and "predicted iteration time" in text
    assert report["cost_model"]["costs_from"] == "flow_grpo"
    for name in ("timeline.png", "breakdown.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "traceEvents" in json.loads((out / "trace.json").read_text())


def test_profile_with_the_reward_in_a_child_process(tmp_path: Path, capsys) -> None:
    model = save_tiny_model(tmp_path / "model")
    out = tmp_path / "prof"
    code = main(
        [
            "--iters",
            "1",
            "--warmup",
            "0",
            "--modes",
            "vgpo-overlap",
            "--out",
            str(out),
            f"model.path={model}",
            *TINY_OVERRIDES,
            "reward.worker=process",
        ]
    )
    capsys.readouterr()
    assert code == 0
    mode = json.loads((out / "profile.json").read_text())["modes"]["vgpo-overlap"]
    assert mode["reward_busy"] > 0 and 0.0 <= mode["overlap_efficiency"] <= 1.0
