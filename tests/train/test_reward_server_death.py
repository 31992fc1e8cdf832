"""A reward server killed mid-run: the trainer retries, then stops with one clear line after checkpointing the
last completed iteration; `--resume` against a new server finishes the run with nothing lost."""

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


def env() -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
    )


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    port_file = tmp / f"port-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vgpo_fast.cli",
            "reward-server",
            "--reward",
            "helpers_train:Redness",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
        ],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "reward server did not start"
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{int(port_file.read_text())}"


def iterations_done(metrics: Path) -> list[int]:
    if not metrics.exists():
        return []
    return [json.loads(line)["iteration"] for line in metrics.read_text().splitlines() if line.endswith("}")]


def test_server_killed_mid_run_stops_cleanly_and_resume_completes(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "tiny")
    server, url = start_server(tmp_path)
    base = [
        sys.executable,
        "-m",
        "vgpo_fast.cli",
        "train",
        f"model.path={model}",
        f"run.output_dir={tmp_path}",
        "run.name=r",
        *TINY_OVERRIDES,
        "train.iterations=40",
        "run.checkpoint_every=1000",
        "run.eval_every=0",
        "run.report=false",
    ]
    try:
        with open(tmp_path / "train.log", "wb") as log:
            proc = subprocess.Popen(
                [*base, f"reward.reward={url}"], env=env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        metrics = tmp_path / "r" / "metrics.jsonl"
        deadline = time.monotonic() + 180
        while len(iterations_done(metrics)) < 2:
            assert proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        assert proc.wait(timeout=120) == 2
        out = (tmp_path / "train.log").read_text()
        assert "unreachable" in out and "--resume" in out and "Traceback" not in out
        done = iterations_done(metrics)
        assert done == list(range(len(done))) and len(done) < 40
        latest = (tmp_path / "r" / "checkpoints" / "latest").read_text().strip()
        assert latest == f"step_{len(done):06d}"  # every completed iteration is in the checkpoint

        server, url = start_server(tmp_path)
        resumed = subprocess.run(
            [*base, "train.iterations=" + str(len(done) + 2), f"reward.reward={url}", "--resume"],
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert iterations_done(metrics) == list(range(len(done) + 2))
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)


@pytest.mark.parametrize("spec", ["http://127.0.0.1:9"])
def test_unreachable_server_at_start_is_one_clear_line(tmp_path: Path, spec: str) -> None:
    model = save_tiny_model(tmp_path / "tiny")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vgpo_fast.cli",
            "train",
            f"model.path={model}",
            f"run.output_dir={tmp_path}",
            "run.name=r",
            *TINY_OVERRIDES,
            "train.iterations=2",
            "run.eval_every=0",
            "run.report=false",
            f"reward.reward={spec}",
        ],
        env=env(),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert out.returncode == 2
    assert "127.0.0.1:9" in out.stderr and "Traceback" not in out.stderr
