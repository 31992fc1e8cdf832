"""train.checkpoint: bit-exact round trips (weights, AdamW, RNG streams), `latest` and `keep`, corruption errors
naming the file, leftover temporary directories, and a writer killed with SIGKILL mid-save."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vgpo_fast.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]


def tiny_save(run_dir: Path, step: int, **kw) -> Path:
    args = {
        "trainable": {"w": torch.full((3,), float(step))},
        "optimizer_state": {"state": {}, "param_groups": []},
        "config": {"step_was": step},
    }
    args.update(kw)
    return save_checkpoint(run_dir, step, **args)


def steps_on_disk(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))


def test_round_trip_bit_exact(tmp_path: Path) -> None:
    trainable = {
        "a.weight": torch.randn(4, 5),
        "b.bias": torch.randn(7, dtype=torch.float64),
        "c": torch.randn(3, 2).to(torch.bfloat16),
        "d": torch.arange(6).reshape(2, 3).t(),
    }
    extra = {"ema.a.weight": torch.randn(4, 5)}
    config = {"model": {"rank": 8}, "optim": {"lr": 3e-4, "betas": [0.9, 0.999]}}
    path = save_checkpoint(
        tmp_path,
        12,
        trainable=trainable,
        optimizer_state={"state": {}, "param_groups": []},
        config=config,
        user={"reward_mean": 0.25, "tag": "x"},
        extra_tensors=extra,
    )
    assert path == tmp_path / "checkpoints" / "step_000012"
    assert sorted(os.listdir(path)) == ["extra.safetensors", "optimizer.pt", "state.json", "trainable.safetensors"]
    state = json.loads((path / "state.json").read_text())
    assert (
        state["format"] == 1
        and state["step"] == 12
        and set(state["files"]) == {"trainable.safetensors", "optimizer.pt", "extra.safetensors"}
    )
    ckpt = load_checkpoint(path)
    assert ckpt.step == 12 and ckpt.config == config and ckpt.user == {"reward_mean": 0.25, "tag": "x"}
    assert ckpt.trainable.keys() == trainable.keys()
    for k, v in trainable.items():
        assert ckpt.trainable[k].dtype == v.dtype and torch.equal(ckpt.trainable[k], v)
    assert torch.equal(ckpt.extra_tensors["ema.a.weight"], extra["ema.a.weight"])
    assert load_checkpoint(tiny_save(tmp_path, 13)).extra_tensors == {}


def make_model() -> tuple[torch.nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def adam_step(model: torch.nn.Linear, opt: torch.optim.Optimizer, i: int) -> None:
    g = torch.Generator().manual_seed(100 + i)
    x, y = torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def test_adamw_resume_is_bit_identical(tmp_path: Path) -> None:
    model, opt = make_model()
    for i in range(2):
        adam_step(model, opt, i)
    path = save_checkpoint(
        tmp_path,
        2,
        trainable={k: v.detach().clone() for k, v in model.state_dict().items()},
        optimizer_state=opt.state_dict(),
        config={},
    )
    for i in range(2, 4):
        adam_step(model, opt, i)
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2 = make_model()
    ckpt = load_checkpoint(path)
    model2.load_state_dict(ckpt.trainable)
    opt2.load_state_dict(ckpt.optimizer_state)
    assert opt2.state_dict()["state"][0]["step"] == 2
    for i in range(2, 4):
        adam_step(model2, opt2, i)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, reference[k]), k


def draw(tg: torch.Generator, ng: np.random.Generator) -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(4).tolist(),
        torch.randn(2, generator=tg).tolist(),
        ng.standard_normal(3).tolist(),
        ng.integers(0, 1 << 60),
    )


def test_rng_streams_continue(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    tg = torch.Generator().manual_seed(4)
    ng = np.random.default_rng(5)
    philox = np.random.Generator(np.random.Philox(6))
    draw(tg, ng)
    philox.random(5)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    path = tiny_save(tmp_path, 1, generators={"torch_gen": tg, "np_gen": ng, "philox": philox})
    first = draw(tg, ng), philox.random(3).tolist()

    fresh_tg, fresh_ng = torch.Generator().manual_seed(99), np.random.default_rng(99)
    fresh_philox = np.random.Generator(np.random.Philox(99))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    restore_rng(load_checkpoint(path), {"torch_gen": fresh_tg, "np_gen": fresh_ng, "philox": fresh_philox})
    assert (draw(fresh_tg, fresh_ng), fresh_philox.random(3).tolist()) == first


def test_restore_rng_errors(tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_save(tmp_path, 1, generators={"a": torch.Generator()}))
    with pytest.raises(CheckpointError, match=r"generator 'b' is not in checkpoint .* \(it has: a\)"):
        restore_rng(ckpt, {"b": torch.Generator()})
    with pytest.raises(CheckpointError, match="saved as a torch generator, but a numpy generator"):
        restore_rng(ckpt, {"a": np.random.default_rng()})
    with pytest.raises(TypeError, match=r"generators\['x'\] must be a torch.Generator"):
        tiny_save(tmp_path, 2, generators={"x": random.Random()})


def test_latest_pointer_and_fallback(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "no_such_run") is None
    for step in (1, 2, 10):
        tiny_save(tmp_path, step, keep=None)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_000010"
    assert latest_checkpoint(tmp_path) == root / "step_000010"
    tiny_save(tmp_path, 5, keep=None)  # latest means most recently written, not highest
    assert latest_checkpoint(tmp_path) == root / "step_000005"
    (root / "latest").unlink()
    assert latest_checkpoint(tmp_path) == root / "step_000010"
    (root / "latest").write_text("step_000077\n")  # names a directory that is gone
    assert latest_checkpoint(tmp_path) == root / "step_000010"
    (root / "latest").write_text("../../etc\n")
    assert latest_checkpoint(tmp_path) == root / "step_000010"


def test_keep_prunes_oldest_never_the_new_one(tmp_path: Path) -> None:
    for step in range(1, 6):
        tiny_save(tmp_path, step, keep=2)
    assert steps_on_disk(tmp_path) == ["step_000004", "step_000005"]
    tiny_save(tmp_path, 3, keep=2)
    assert steps_on_disk(tmp_path) == ["step_000003", "step_000005"]
    tiny_save(tmp_path, 1, keep=1)
    assert steps_on_disk(tmp_path) == ["step_000001"]
    for step in range(2, 6):
        tiny_save(tmp_path, step, keep=None)
    assert len(steps_on_disk(tmp_path)) == 5
    with pytest.raises(ValueError, match="keep must be an int >= 1 or None, got 0"):
        tiny_save(tmp_path, 6, keep=0)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_resave_same_step_replaces(tmp_path: Path) -> None:
    tiny_save(tmp_path, 4, trainable={"w": torch.zeros(2)})
    path = tiny_save(tmp_path, 4, trainable={"w": torch.ones(2)})
    assert torch.equal(load_checkpoint(path).trainable["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step_000004"]


def test_bad_arguments_touch_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JSON-serialisable"):
        tiny_save(tmp_path, 1, config={"x": object()})
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        tiny_save(tmp_path, -1)
    with pytest.raises(TypeError, match=r"trainable\['w'\] must be a torch.Tensor"):
        tiny_save(tmp_path, 1, trainable={"w": [1.0]})
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


# ------------------------------------------------------------------------------------------------ corruption


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_checkpoint(
        tmp_path,
        3,
        trainable={"w": torch.randn(64, 64)},
        optimizer_state={"state": {0: {"exp_avg": torch.randn(64)}}, "param_groups": []},
        config={"a": 1},
        extra_tensors={"ema": torch.randn(8)},
    )


def test_truncated_file(saved: Path) -> None:
    f = saved / "optimizer.pt"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: \d+ bytes, expected \d+ \(truncated"):
        load_checkpoint(saved)


@pytest.mark.parametrize("name", ["trainable.safetensors", "optimizer.pt", "extra.safetensors"])
def test_flipped_byte(saved: Path, name: str) -> None:
    f = saved / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{name}: sha256 mismatch \(corrupt\)"):
        load_checkpoint(saved)


def test_flipped_byte_in_state_json(saved: Path) -> None:
    f = saved / "state.json"
    text = f.read_text()
    f.write_text(text.replace('"step": 3', '"step": 4'))
    with pytest.raises(CheckpointError, match=r"state\.json: checksum mismatch"):
        load_checkpoint(saved)


def test_missing_files(saved: Path) -> None:
    (saved / "extra.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"extra\.safetensors is missing"):
        load_checkpoint(saved)
    (saved / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"state\.json is missing"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(saved.parent / "step_999999")


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b""])
def test_garbage_state_json(saved: Path, garbage: bytes) -> None:
    (saved / "state.json").write_bytes(garbage)
    with pytest.raises(CheckpointError, match=r"state\.json: "):
        load_checkpoint(saved)


def test_leftover_tmp_dir_ignored_then_cleaned(tmp_path: Path) -> None:
    first = tiny_save(tmp_path, 1)
    junk = tmp_path / "checkpoints" / ".tmp-step_000009-deadbeef"
    junk.mkdir()
    (junk / "trainable.safetensors").write_bytes(b"\x00" * 100)
    (junk / "state.json").write_text("{}")
    assert latest_checkpoint(tmp_path) == first
    (tmp_path / "checkpoints" / "latest").unlink()
    assert latest_checkpoint(tmp_path) == first
    assert load_checkpoint(first).step == 1
    tiny_save(tmp_path, 2)
    assert not junk.exists()


# ------------------------------------------------------------------------------------------------ crash


WRITER = """
import sys, torch
from vgpo_fast.train.checkpoint import save_checkpoint
big = {f"w{i}": torch.randn(25 * 2**20 // 4) for i in range(4)}  # 4 x 25 MB
save_checkpoint(sys.argv[1], 2, trainable=big, optimizer_state={"state": {}, "param_groups": []},
                config={}, extra_tensors={"ema": torch.randn(50 * 2**20 // 4)})
"""


def test_sigkill_mid_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    first = tiny_save(tmp_path, 1, trainable={"w": torch.arange(5.0)})
    root = tmp_path / "checkpoints"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".tmp-step_") for p in root.iterdir()):
            assert proc.poll() is None, f"writer exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, "writer never started its checkpoint"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed mid-write"
    assert [p for p in root.iterdir() if p.name.startswith(".tmp-step_")], "expected the killed writer's tmp dir"
    assert not (root / "step_000002").exists()
    assert latest_checkpoint(tmp_path) == first
    ckpt = load_checkpoint(first)
    assert ckpt.step == 1 and torch.equal(ckpt.trainable["w"], torch.arange(5.0))
    tiny_save(tmp_path, 3)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]
