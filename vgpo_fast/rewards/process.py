"""A reward scored in a child process: CPU-heavy Python rewards without the GIL.

An in-process reward (the shapes verifier, OCR pre- and post-processing) runs Python and small numpy calls. On
the rollout engine's worker thread it holds the GIL in turns with the main thread, which needs the GIL between
every transformer op: the reward then delays the rollout instead of hiding behind it (docs/profiling.md shows
the timeline). `ProcessReward` builds the same reward from its spec in a spawned child process and scores there;
the parent thread that asks only pickles the uint8 images (B x H x W x 3 bytes) and waits on a pipe, without the
GIL.

    reward = ProcessReward({"name": "shapes", "mode": "partial"})   # the child builds build_reward(spec)
    reward.score(images, prompts)                                   # same scores as the in-process reward

The spec is resolved in the parent (`resolve_spec`: a registered name becomes its `package.module:ClassName`
target), so the child, a fresh interpreter that has registered nothing, can build a reward whose name only the
parent knows (a task's reward, registered by the task registry the parent imported); an unknown name fails there,
in the parent. The child is started at construction (a bad spec fails there, raising the child's error), set to
`threads` intra-op threads, and kept until `close()`. Non-finite scores pass from the child as NaN and meet this
object's `nonfinite` policy, so the error names the prompt as the in-process reward does. A child that dies
(killed, out of memory) makes the call raise `RewardError`; the next call starts a new child. The child is
spawned, so a script that builds a `ProcessReward` at import time needs the usual `if __name__ == "__main__":`
guard.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import threading
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from vgpo_fast.rewards.base import NonFinitePolicy, RewardError, RewardModel
from vgpo_fast.rewards.registry import is_server_spec, resolve_spec

_CHILD_REWARD: RewardModel | None = None  # the reward built in the child process (one per child)
_CHILD_ERROR: BaseException | None = None  # why building it failed: raised, as itself, by every call


def _child_init(spec: str | Mapping[str, Any], threads: int) -> None:
    import torch

    from vgpo_fast.rewards.registry import build_reward

    torch.set_num_threads(threads)
    global _CHILD_REWARD, _CHILD_ERROR
    try:
        _CHILD_REWARD = build_reward(spec)
    except Exception as exc:  # an initializer error would only break the pool: keep it for the parent to see
        _CHILD_ERROR = exc
        return
    _CHILD_REWARD.nonfinite = "drop"  # non-finite scores come back as NaN; the parent applies its policy


def _child_reward() -> RewardModel:
    if _CHILD_ERROR is not None:
        raise _CHILD_ERROR
    assert _CHILD_REWARD is not None
    return _CHILD_REWARD


def _child_describe() -> tuple[str, float, float]:
    reward = _child_reward()
    return reward.name, float(reward.low), float(reward.high)


def _child_score(images: np.ndarray, prompts: list[str]) -> np.ndarray:
    return _child_reward().score(images, prompts).numpy()


class ProcessReward(RewardModel):
    """The reward `build_reward(spec)` run in a spawned child process with `threads` intra-op threads.

    `spec`: a reward name known here (built-in or registered), `module:Class` (importable in the child: the
    parent's `sys.path` is passed on) or a dict with "name"; not a reward-server URL (a server is its own process
    already). `self.spec` is the spec as given, `self.child_spec` the resolved one the child builds.
    """

    def __init__(
        self,
        spec: str | Mapping[str, Any],
        threads: int = 1,
        nonfinite: NonFinitePolicy = "raise",
        start_timeout_s: float = 120.0,
    ) -> None:
        super().__init__(nonfinite)
        if is_server_spec(spec):
            raise ValueError(
                f"ProcessReward runs an in-process reward in a child process; {spec!r} is a reward "
                f"server already: use it directly"
            )
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        self.spec = dict(spec) if isinstance(spec, Mapping) else spec
        self.child_spec = resolve_spec(spec)  # an unknown name fails here, in the parent, with the registry's message
        self.threads = threads
        self.start_timeout_s = float(start_timeout_s)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.name, self.low, self.high = self._call(_child_describe, timeout=self.start_timeout_s)

    def _ensure_pool(self) -> cf.ProcessPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = cf.ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=mp.get_context("spawn"),
                    initializer=_child_init,
                    initargs=(self.child_spec, self.threads),
                )
            return self._pool

    def _call(self, fn: Any, *args: Any, timeout: float | None = None) -> Any:
        pool = self._ensure_pool()
        try:
            return pool.submit(fn, *args).result(timeout=timeout)
        except BrokenProcessPool as exc:
            with self._pool_lock:  # the next call starts a fresh child
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise RewardError(f"reward process for {self.spec!r} died ({exc})") from exc
        except cf.TimeoutError as exc:
            raise RewardError(f"reward process for {self.spec!r} did not answer within {timeout} s") from exc

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return self._call(_child_score, np.ascontiguousarray(images), prompts)

    def close(self) -> None:
        """Stops the child process (and the base class's submit thread)."""
        super().close()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
