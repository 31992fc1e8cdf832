"""profiling.nvml: with no driver (this machine) or no package the sampler reports why in one line and records
nothing; with NVML present (a stand-in module) it samples in the background."""

from __future__ import annotations

import sys
import time
import types

import pytest
from vgpo_fast.profiling.nvml import NvmlSampler


def test_no_driver_is_reported_in_one_line() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here")
    except pynvml.NVMLError:
        pass
    with NvmlSampler(0.01) as s:
        time.sleep(0.03)
    out = s.result()
    assert out["available"] is False and out["samples"] == []
    assert "NVML" in out["reason"] and "\n" not in s.line()
    assert s.line().startswith("nvml: ")


def test_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    with NvmlSampler(0.01) as s:
        pass
    assert not s.result()["available"] and "nvidia-ml-py" in s.result()["reason"]


def fake_pynvml() -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.NVML_CLOCK_SM = 1
    state = {"shutdown": False}
    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: state.__setitem__("shutdown", True)
    m.nvmlDeviceGetCount = lambda: 1
    m.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    m.nvmlDeviceGetName = lambda h: b"Fake H100"
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=87, memory=40)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=3 * 2**30)
    m.nvmlDeviceGetPowerUsage = lambda h: 650_000  # mW

    def clock(h, kind):
        raise RuntimeError("not supported")  # a field the device does not report

    m.nvmlDeviceGetClockInfo = clock
    m.state = state
    return m


def test_samples_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with NvmlSampler(0.005) as s:
        time.sleep(0.05)
    out = s.result()
    assert out["available"] and out["devices"] == [{"index": 0, "name": "Fake H100"}]
    assert len(out["samples"]) >= 2 and fake.state["shutdown"]
    first = out["samples"][0]
    assert first["gpu_util_pct"] == 87 and first["mem_used_mib"] == 3072 and first["power_w"] == 650
    assert "sm_clock_mhz" not in first
    assert out["summary"]["0"]["power_w"] == {"mean": 650, "max": 650}
    assert "Fake H100" in s.line()
