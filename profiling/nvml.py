"""GPU telemetry in a background thread (NVML via `nvidia-ml-py`): utilisation, memory, power, SM clock.

    with NvmlSampler(interval_s=0.05) as nvml:
        ...                                   # the profiled work
    report["nvml"] = nvml.result()            # {"available", "reason", "devices", "samples", "summary"}

Where the package, the driver or a GPU is missing, `available` is False and `reason` says why in one line; the
sampler then does nothing and costs nothing. Samples carry `time.perf_counter()` stamps, the profiler's time axis.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from typing import Any

__all__ = ["NvmlSampler"]

FIELDS = ("gpu_util_pct", "mem_util_pct", "mem_used_mib", "power_w", "sm_clock_mhz")


class NvmlSampler:
    """Samples every `interval_s` seconds the devices `indices` (None: all NVML devices)."""

    def __init__(self, interval_s: float = 0.1, indices: list[int] | None = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = float(interval_s)
        self.indices = indices
        self.available, self.reason = False, None
        self.devices: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> NvmlSampler:
        try:
            import pynvml
        except ImportError as e:
            self.reason = f"nvidia-ml-py is not installed ({e}); pip install nvidia-ml-py"
            return self
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            indices = list(range(count)) if self.indices is None else list(self.indices)
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            for i, h in zip(indices, self._handles, strict=True):
                name = pynvml.nvmlDeviceGetName(h)
                self.devices.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name)})
        except Exception as e:  # pynvml.NVMLError and its many subclasses: no driver, no library, no device
            self.reason = f"NVML unavailable: {type(e).__name__}: {e}"
            return self
        if not self._handles:
            self.reason = "NVML found no GPU"
            return self
        self._nvml, self.available = pynvml, True
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def _read(self, i: int, h: Any) -> dict[str, Any]:
        nv = self._nvml
        sample: dict[str, Any] = {"t": time.perf_counter(), "device": i}
        for key, fn in (
            ("util", lambda: nv.nvmlDeviceGetUtilizationRates(h)),
            ("mem", lambda: nv.nvmlDeviceGetMemoryInfo(h)),
            ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1e3),
            ("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
        ):
            try:
                value = fn()
            except Exception:  # a field the device does not report: leave it out of this sample
                continue
            if key == "util":
                sample["gpu_util_pct"], sample["mem_util_pct"] = float(value.gpu), float(value.memory)
            elif key == "mem":
                sample["mem_used_mib"] = value.used / 2**20
            else:
                sample[key] = float(value)
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            for d, h in zip(self.devices, self._handles, strict=True):
                self.samples.append(self._read(d["index"], h))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._nvml is not None:
            with contextlib.suppress(Exception):  # shutting down telemetry must not fail the profile
                self._nvml.nvmlShutdown()
            self._nvml = None

    def __enter__(self) -> NvmlSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def result(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        for d in self.devices:
            rows = [s for s in self.samples if s["device"] == d["index"]]
            summary[str(d["index"])] = {
                f: {"mean": statistics.fmean(v), "max": max(v)} for f in FIELDS if (v := [s[f] for s in rows if f in s])
            }
        return {
            "available": self.available,
            "reason": self.reason,
            "interval_s": self.interval_s,
            "devices": self.devices,
            "samples": self.samples,
            "summary": summary,
        }

    def line(self) -> str:
        """One line for the console."""
        if not self.available:
            return f"nvml: {self.reason}; GPU telemetry not recorded"
        return f"nvml: sampling {', '.join(d['name'] for d in self.devices)} every {self.interval_s * 1e3:.0f} ms"
