"""`vgpo-fast train` under a real torchrun on 2 CPU processes (gloo): the same trainable weights and metrics as one
process with the same global batch; a rank killed mid-run stops the job with a clear error, and `--resume` on 1 and
then 2 processes finishes the run as if nothing had happened. Plus the rank-invariant work split, in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers_train import TINY_OVERRIDES, save_tiny_model

from vgpo_fast import distributed
from vgpo_fast.distributed import World

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ITERATIONS = 4
VOLATILE = ("timings", "reward_worker", "overlap_frac")
# Float32 throughout: the two runs differ only in how the update's minibatches are batched and summed.
OVERRIDES = [
    *TINY_OVERRIDES,
    "train.mixed_precision=no",
    "run.eval_every=0",
    "run.report=false",
    "run.checkpoint_every=1",
    "run.dist_timeout_s=60",
]


def env() -> dict[str, str]:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
    )


def train_cmd(nproc: int, model_dir: Path, out: Path, name: str, *extra: str) -> list[str]:
    launcher = (
        [sys.executable]
        if nproc == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    )
    return [
        *launcher,
        "-m",
        "vgpo_fast.cli",
        "train",
        f"model.path={model_dir}",
        f"run.output_dir={out}",
        f"run.name={name}",
        *OVERRIDES,
        f"train.iterations={ITERATIONS}",
        *extra,
    ]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return safetensors.torch.load_file(str(run_dir / "checkpoints" / latest / "trainable.safetensors"))


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)
    ra, rb = records(a), records(b)
    assert [r["iteration"] for r in ra] == [r["iteration"] for r in rb] == list(range(ITERATIONS))
    for x, y in zip(ra, rb, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-3, abs=1e-6), (x["iteration"], key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the model directory, the output directory holding the uninterrupted 1-process run 'one')."""
    root = tmp_path_factory.mktemp("dist")
    model_dir = save_tiny_model(root / "tiny")
    run(train_cmd(1, model_dir, root, "one"))
    return model_dir, root


def test_work_split_is_rank_invariant() -> None:
    # 10 trajectories in chunks of 4: chunks (0..3), (4..7), (8, 9); ranks take whole chunks, in order.
    assert distributed.chunk_plan(10, 4, World(0, 1)) == [(0, 0, 4), (1, 4, 8), (2, 8, 10)]
    assert distributed.chunk_plan(10, 4, World(0, 2)) == [(0, 0, 4)]
    assert distributed.chunk_plan(10, 4, World(1, 2)) == [(1, 4, 8), (2, 8, 10)]
    assert distributed.rows_per_rank(10, 4, World(0, 2)) == [4, 6]
    with pytest.raises(ValueError, match="fewer than the 4 ranks"):
        distributed.chunk_plan(8, 4, World(0, 4))
    # Minibatch rows: the parts cover the minibatch; the weights make the DDP average the whole minibatch's mean.
    mb = torch.arange(5)
    parts = [distributed.my_rows(mb, World(r, 2)) for r in range(2)]
    assert torch.equal(torch.cat([p for p, _ in parts]), mb)
    x = torch.arange(5.0) ** 2
    ddp_average = sum(w * x[p].mean() for p, w in parts) / 2
    assert float(ddp_average) == pytest.approx(float(x.mean()))
    idx, w = distributed.my_rows(torch.arange(1), World(1, 2))
    assert idx.numel() == 1 and w == 0.0  # a rank without rows computes one row at weight 0


def test_two_processes_reach_the_weights_of_one_process(runs: tuple[Path, Path]) -> None:
    model_dir, root = runs
    t0 = time.monotonic()
    out = run(train_cmd(2, model_dir, root, "two"))
    assert "2 ranks (gloo)" in out.stdout + out.stderr
    assert_same_run(root / "one", root / "two")
    assert time.monotonic() - t0 < 120


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (a child of the launcher)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_killed_rank_stops_the_job_and_resume_on_one_then_two_processes_loses_nothing(runs: tuple[Path, Path]) -> None:
    model_dir, root = runs
    cmd = train_cmd(2, model_dir, root, "killed")
    with open(root / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    marker = root / "killed" / "checkpoints" / "step_000001"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, (root / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never wrote its first checkpoint"
        time.sleep(0.02)
    os.kill(_rank_pid(proc, 1), signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    text = (root / "killed.log").read_text()
    # Rank 0 says what happened and where to resume from (torchrun adds its own summary naming rank 1's SIGKILL).
    assert "vgpo-fast train: error: rank 0:" in text, text[-3000:]
    assert "another rank" in text and "--resume" in text and "checkpoints/step_0000" in text
    done = [r["iteration"] for r in records(root / "killed")]
    assert max(done) < ITERATIONS - 1, "the run finished before it was killed: the test did not interrupt it"

    # Resume on one process for one more iteration, then on two to the end: the run of a single process.
    run([*train_cmd(1, model_dir, root, "killed", f"train.iterations={ITERATIONS - 1}"), "--resume"])
    out = run([*train_cmd(2, model_dir, root, "killed"), "--resume"])
    assert "resumed from" in out.stdout + out.stderr
    assert_same_run(root / "one", root / "killed")
