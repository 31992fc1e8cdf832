"""Timestamps for the main lane: `time.perf_counter` on the CPU, CUDA events on a GPU, both read back as
perf_counter seconds so that the main lane and the reward worker's stamps (perf_counter, from the engine) share
one time axis.

On CUDA a mark is an event recorded on the current stream: it measures when the GPU reached that point, not when
the host queued it; `resolve` maps it to `t0 + base.elapsed_time(event)`, where `base` was recorded right after a
synchronise at `start()` (perf_counter `t0`). Call `sync()` before resolving.
"""

from __future__ import annotations

import time

import torch

__all__ = ["Clock"]


class Clock:
    """mark() -> an opaque stamp; resolve(stamp) -> perf_counter seconds."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.t0 = time.perf_counter()
        self._base = None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def start(self) -> float:
        """Synchronises and sets the origin; returns it (perf_counter seconds)."""
        self.sync()
        self.t0 = time.perf_counter()
        if self.cuda:
            self._base = torch.cuda.Event(enable_timing=True)
            self._base.record()
        return self.t0

    def mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def resolve(self, stamp: object) -> float:
        if isinstance(stamp, float):
            return stamp
        assert self._base is not None, "Clock.start() was not called"
        return self.t0 + self._base.elapsed_time(stamp) / 1e3
