"""`vgpo-fast train` as a real process: SIGKILL mid-iteration then `--resume` gives the metrics of an
uninterrupted run; a corrupt checkpoint is a clear error; a reward server that dies stops training cleanly with
a checkpoint; config typos are one clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_train import TINY_OVERRIDES, save_tiny_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VOLATILE = ("timings", "reward_worker", "overlap_frac")  # wall-clock measurements differ between runs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def train_cmd(model_dir: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vgpo_fast.cli",
        "train",
        f"model.path={model_dir}",
        f"run.output_dir={out}",
        f"run.name={name}",
        *TINY_OVERRIDES,
        "train.iterations=5",
        "run.checkpoint_every=1",
        "run.eval_every=2",
        "run.report=false",
        *extra,
    ]


def env() -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
    )


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def stable(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def test_sigkill_mid_iteration_then_resume_matches_uninterrupted_run(model_dir: Path, tmp_path: Path) -> None:
    full = run(train_cmd(model_dir, tmp_path, "full"))
    assert full.returncode == 0, full.stderr[-3000:]

    cmd = train_cmd(model_dir, tmp_path, "killed")
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    marker = tmp_path / "killed" / "checkpoints" / "step_000002"
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never wrote its second checkpoint"
        time.sleep(0.02)
    # Into iteration 2's rollout or update: half an iteration of the uninterrupted run (a fixed pause overshot
    # whole iterations on an idle machine).
    totals = [
        r["timings"]["total"]
        for r in map(json.loads, (tmp_path / "full" / "metrics.jsonl").read_text().splitlines())
        if r["iteration"] >= 0
    ]
    time.sleep(0.5 * sorted(totals)[len(totals) // 2])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = [json.loads(line)["iteration"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert max(done) < 4, "the run finished before it was killed: the test did not interrupt it"

    resumed = run([*cmd, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert stable(tmp_path / "killed" / "metrics.jsonl") == stable(tmp_path / "full" / "metrics.jsonl")


def test_rerun_without_resume_starts_a_new_run_and_corrupt_checkpoint_is_a_clear_error(
    model_dir: Path, tmp_path: Path
) -> None:
    cmd = train_cmd(model_dir, tmp_path, "r", "train.iterations=2")
    assert run(cmd).returncode == 0
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "this run is" in again.stdout and (tmp_path / "r-2" / "metrics.jsonl").is_file()
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before  # the first run is untouched
    latest = (tmp_path / "r" / "checkpoints" / "latest").read_text().strip()
    weights = tmp_path / "r" / "checkpoints" / latest / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    broken = run([*cmd, "--resume"])
    assert broken.returncode == 2
    assert "trainable.safetensors" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_config_typo_is_one_line_with_a_suggestion(tmp_path: Path) -> None:
    out = run([sys.executable, "-m", "vgpo_fast.cli", "train", "rollout.gudance_scale=3"], timeout=120)
    assert out.returncode == 2
    assert "did you mean 'rollout.guidance_scale'" in out.stderr
    assert "Traceback" not in out.stderr
    missing = run([sys.executable, "-m", "vgpo_fast.cli", "train", f"model.path={tmp_path / 'nope'}"], timeout=120)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr


def test_eval_and_sample_read_a_finished_run(model_dir: Path, tmp_path: Path) -> None:
    assert run(train_cmd(model_dir, tmp_path, "done", "train.iterations=1")).returncode == 0
    cli = [sys.executable, "-m", "vgpo_fast.cli"]
    ev = run([*cli, "eval", "--run", str(tmp_path / "done")])
    assert ev.returncode == 0, ev.stderr[-2000:]
    scores = json.loads(ev.stdout.strip().splitlines()[-1])
    assert scores["weights"] == "latest checkpoint" and 0.0 <= scores["heldout_reward"] <= 1.0
    out = tmp_path / "grid.png"
    sample = run([*cli, "sample", "--run", str(tmp_path / "done"), "--n", "2", "--seeds", "2", "--out", str(out)])
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert out.is_file() and len(out.with_suffix(".txt").read_text().splitlines()) == 4
