"""train.metrics: JSONL records (null for non-finite floats), fsync'ed appends, truncation on resume, partial and
corrupt lines, TensorBoard flattening (with a stand-in SummaryWriter, the tensorboard package being optional)."""

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from vgpo_fast.train.metrics import MetricsWriter, flatten_scalars, read_metrics, summarize


def record(i: int, T: int = 10) -> dict:
    return {
        "iteration": i,
        "reward_mean": 0.1 * i,
        "loss": -0.01 * i,
        "algorithm": "vgpo",
        "instant_reward": [0.01 * (i + j) for j in range(T)],
        "timings": {"transformer": 1.5, "total": 2.0},
    }


def write_n(path, n: int) -> None:
    with MetricsWriter(path) as w:
        for i in range(n):
            w.write(record(i))


def test_round_trip(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"  # the parent folder is created
    write_n(path, 10)
    lines = path.read_text().splitlines()
    assert len(lines) == 10 and all(isinstance(json.loads(line), dict) for line in lines)
    assert read_metrics(path) == [record(i) for i in range(10)]


def test_non_finite_written_as_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as w:
        w.write(
            {
                "iteration": 0,
                "loss": float("nan"),
                "kl": float("inf"),
                "instant_reward": [1.0, float("-inf")],
                "timings": {"train": float("nan"), "total": 3.0},
            }
        )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert read_metrics(path) == [
        {
            "iteration": 0,
            "loss": None,
            "kl": None,
            "instant_reward": [1.0, None],
            "timings": {"train": None, "total": 3.0},
        }
    ]


def test_tensor_and_numpy_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as w:
        w.write(
            {
                "iteration": np.int64(3),
                "loss": torch.tensor(0.5),
                "instant_reward": torch.tensor([0.25, 0.5]),
                "grad_norm": np.float32(2.0),
                "ok": True,
            }
        )
    assert read_metrics(path) == [
        {"iteration": 3, "loss": 0.5, "instant_reward": [0.25, 0.5], "grad_norm": 2.0, "ok": True}
    ]


@pytest.mark.parametrize("bad", [{}, {"iteration": 1.0}, {"iteration": True}, {"iteration": "3"}])
def test_iteration_required(tmp_path, bad):
    with MetricsWriter(tmp_path / "m.jsonl") as w, pytest.raises(ValueError, match="iteration"):
        w.write(bad)


def test_unsupported_value_names_field(tmp_path):
    with MetricsWriter(tmp_path / "m.jsonl") as w, pytest.raises(ValueError, match="timings/train"):
        w.write({"iteration": 0, "timings": {"train": object()}})


def test_write_after_close(tmp_path):
    w = MetricsWriter(tmp_path / "m.jsonl")
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write({"iteration": 0})


def test_each_line_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = __import__("os").fsync
    monkeypatch.setattr("vgpo_fast.train.metrics.os.fsync", lambda fd: (synced.append(fd), real(fd)))
    with MetricsWriter(tmp_path / "m.jsonl") as w:
        for i in range(3):
            w.write({"iteration": i})
    assert len(synced) == 3


def test_resume_truncates_later_iterations_and_partial_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_n(path, 10)
    with open(path, "ab") as f:  # a kill in the middle of writing iteration 10
        f.write(json.dumps(record(10)).encode()[:25])
    assert len(read_metrics(path)) == 10
    with MetricsWriter(path, resume_from_iteration=6) as w:
        assert [r["iteration"] for r in read_metrics(path)] == list(range(7))
        assert path.read_bytes().endswith(b"\n")
        w.write(record(7))
    assert [r["iteration"] for r in read_metrics(path)] == list(range(8))
    assert list(tmp_path.iterdir()) == [path]  # the temporary file was renamed over the original


def test_resume_from_minus_one_drops_everything(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_n(path, 4)
    MetricsWriter(path, resume_from_iteration=-1).close()
    assert path.read_bytes() == b""


def test_reopen_without_resume_appends_and_drops_partial_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_n(path, 3)
    with open(path, "ab") as f:
        f.write(b'{"iteration": 3, "lo')
    with MetricsWriter(path) as w:
        w.write(record(4))
    assert [r["iteration"] for r in read_metrics(path)] == [0, 1, 2, 4]


def test_reopen_keeps_complete_unterminated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 0}\n{"iteration": 1}')  # hand-written, no final newline
    assert [r["iteration"] for r in read_metrics(path)] == [0, 1]
    with MetricsWriter(path) as w:
        w.write({"iteration": 2})
    assert path.read_text() == '{"iteration": 0}\n{"iteration": 1}\n{"iteration":2}\n'


def test_resume_without_changes_leaves_file_alone(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_n(path, 5)
    inode = path.stat().st_ino
    MetricsWriter(path, resume_from_iteration=4).close()
    assert path.stat().st_ino == inode and len(read_metrics(path)) == 5


def test_read_ignores_partial_final_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_n(path, 5)
    with open(path, "ab") as f:
        f.write(b'{"iteration": 5, "reward_me')
    assert [r["iteration"] for r in read_metrics(path)] == list(range(5))


@pytest.mark.parametrize("bad", [b'{"iteration": 2, "loss": }', b"[1, 2]", b"\xff\xfe"])
def test_corrupt_middle_line_names_file_and_line(tmp_path, bad):
    path = tmp_path / "metrics.jsonl"
    write_n(path, 5)
    lines = path.read_bytes().split(b"\n")
    lines[2] = bad
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 3"):
        read_metrics(path)
    with pytest.raises(ValueError, match="line 3"):
        MetricsWriter(path, resume_from_iteration=1)


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 0}\n\n{"iteration": 1}\n')
    assert [r["iteration"] for r in read_metrics(path)] == [0, 1]


def test_flatten_scalars():
    rec = {
        "iteration": 4,
        "loss": 0.5,
        "algorithm": "vgpo",
        "kl": None,
        "n": 3,
        "flag": True,
        "instant_reward": [0.1, None, 0.3],
        "timings": {"train": 1.5, "sub": {"a": 2}},
    }
    assert flatten_scalars(rec) == {
        "loss": 0.5,
        "n": 3.0,
        "flag": 1.0,
        "instant_reward/step_0": 0.1,
        "instant_reward/step_2": 0.3,
        "timings/train": 1.5,
        "timings/sub/a": 2.0,
    }


def test_tensorboard_missing_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    with MetricsWriter(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb") as w:
        assert not w.tensorboard_enabled
        w.write(record(0))
    assert len(read_metrics(tmp_path / "m.jsonl")) == 1


def test_tensorboard_logs_flattened_scalars(tmp_path, monkeypatch):
    calls = {"init": [], "scalars": [], "closed": False}

    class FakeSummaryWriter:
        def __init__(self, log_dir, purge_step=None):
            calls["init"].append((log_dir, purge_step))

        def add_scalar(self, tag, value, global_step):
            calls["scalars"].append((tag, value, global_step))

        def flush(self):
            pass

        def close(self):
            calls["closed"] = True

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeSummaryWriter))
    with MetricsWriter(tmp_path / "m.jsonl", tensorboard_dir=tmp_path / "tb", resume_from_iteration=6) as w:
        assert w.tensorboard_enabled
        w.write({"iteration": 7, "loss": 0.5, "instant_reward": [0.1, 0.2], "timings": {"train": 1.0}, "s": "x"})
    assert calls["init"] == [(str(tmp_path / "tb"), 7)]  # events past the checkpoint are purged
    assert sorted(calls["scalars"]) == [
        ("instant_reward/step_0", 0.1, 7),
        ("instant_reward/step_1", 0.2, 7),
        ("loss", 0.5, 7),
        ("timings/train", 1.0, 7),
    ]
    assert calls["closed"]


def test_summarize():
    s = summarize([1.0, None, 3.0, float("nan"), 2.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["min"] == 1.0 and s["max"] == 3.0
    assert math.isclose(s["std"], math.sqrt(2 / 3))
    assert summarize([None]) == {"n": 0, "mean": None, "std": None, "min": None, "max": None}
