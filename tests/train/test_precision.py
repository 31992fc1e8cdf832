"""`train.mixed_precision`: what `auto` picks for each device and CPU kind, the warning for emulated bf16, and what
a run logs and saves about it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers_train import TINY_OVERRIDES, tiny_pipeline

from vgpo_fast import precision
from vgpo_fast.precision import cpu_has_native_bf16, resolve_precision
from vgpo_fast.train.config import load
from vgpo_fast.train.run import train
from vgpo_fast.train.trainer import Trainer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("device", "native", "want"),
    [(CPU, True, torch.bfloat16), (CPU, False, None), (CUDA, False, torch.bfloat16), (CUDA, True, torch.bfloat16)],
)
def test_auto_is_bf16_on_cuda_and_on_cpus_with_native_bf16_else_float32(device, native, want) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = resolve_precision("auto", device, native_bf16=native)
    assert p.dtype == want and p.name == ("bf16" if want is not None else "no")
    assert p.summary.startswith("auto -> ")
    assert device.type != "cpu" or ("no native bf16" in p.reason) == (not native)


def test_explicit_bf16_on_a_cpu_without_native_bf16_warns_and_is_honoured() -> None:
    with pytest.warns(UserWarning, match="without native bf16.*emulated"):
        p = resolve_precision("bf16", CPU, native_bf16=False)
    assert p.dtype == torch.bfloat16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", CPU, native_bf16=True).dtype == torch.bfloat16
        assert resolve_precision("no", CPU, native_bf16=False).dtype is None
    with pytest.raises(ValueError, match="train.mixed_precision must be one of"):
        resolve_precision("fp32", CPU)


@pytest.mark.parametrize(
    ("cpuinfo", "machine", "native"),
    [
        ("flags\t\t: fpu sse avx2 fma\n", "x86_64", False),
        ("flags\t\t: fpu avx2 avx512f avx512_bf16\n", "x86_64", True),
        ("flags\t\t: fpu avx2 amx_bf16 amx_tile\n", "x86_64", True),
        ("Features\t: fp asimd bf16 i8mm\n", "aarch64", True),
        ("Features\t: fp asimd\n", "aarch64", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path: Path, cpuinfo, machine, native) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.delenv("VGPO_FAST_CPU_BF16", raising=False)  # the override would answer instead of the flags
    real_path = precision.Path
    monkeypatch.setattr(
        precision, "Path", lambda p: real_path(tmp_path / "cpuinfo") if p == "/proc/cpuinfo" else real_path(p)
    )
    monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    cpu_has_native_bf16.cache_clear()
    try:
        assert cpu_has_native_bf16() is native
    finally:
        cpu_has_native_bf16.cache_clear()


def test_the_default_config_is_auto_and_a_run_logs_and_saves_the_choice(tmp_path: Path) -> None:
    assert load(None).train.mixed_precision == "auto"
    cfg = load(
        None,
        [
            *TINY_OVERRIDES,
            f"run.output_dir={tmp_path}",
            "run.name=p",
            "train.iterations=1",
            "run.eval_every=0",
            "run.report=false",
        ],
    )
    lines: list[str] = []
    trainer = Trainer(cfg, pipeline=tiny_pipeline(), log=lines.append)
    want = resolve_precision("auto", trainer.device)
    assert trainer.policy.precision == want
    summary = train(cfg, trainer=trainer, log=lines.append)
    assert f"precision: {want.summary}" in lines
    saved = (tmp_path / "p" / "config.yaml").read_text()
    assert saved.startswith(f"# train.mixed_precision: {want.summary}\n")
    assert load(tmp_path / "p" / "config.yaml").train.mixed_precision == "auto"  # the comment does not change it
    assert summary["precision"] == want.name


@pytest.mark.parametrize("value", ["0", "1"])
def test_the_environment_overrides_the_detection(monkeypatch, value: str) -> None:
    monkeypatch.setenv("VGPO_FAST_CPU_BF16", value)
    cpu_has_native_bf16.cache_clear()
    try:
        assert cpu_has_native_bf16() is (value == "1")
        assert resolve_precision("auto", CPU).dtype == (torch.bfloat16 if value == "1" else None)
    finally:
        cpu_has_native_bf16.cache_clear()
