"""The pipelined reward engine (docs/architecture.md: one iteration): decode + score each projection x0_hat_j
while the sampler runs the next denoising steps.

    with RewardPipeline(reward, pipe.decode, T, reward_steps=2) as rp:
        rp.begin(prompts)                                                  # B = len(prompts)
        traj = sample_trajectories(v_fn, noise, sig, on_projection=rp)     # rp(j, x0_hat_j) per step
        result = rp.finish()                                               # rewards [B, T] float32

Per evaluated step j in S = `reward_steps(T, spec)` (docs/spec.md section 3; other steps are a no-op and take the
reward of the next evaluated step, `fill_sparse_rewards`), `__call__` clones `x0_hat_j` (the job owns its data)
and hands it to one worker thread, which decodes it (`intermediate_decode` for j < T-1 when given, `decode`
always for the terminal j = T-1) and scores the images:
- a reward with only the base `RewardModel.submit` (in-process model): the worker calls `reward.score` itself;
- a reward whose `submit` is truly asynchronous (overridden, as `RewardClient`'s: requests to a reward server on
  other GPUs or hosts): the worker decodes, calls `submit` and goes on to the next job, so up to `max_in_flight`
  requests are in flight while denoising continues. Give the client a `max_in_flight` of at least this one's.
At most `max_in_flight` jobs are pending (queued, decoding or scoring) at once; `__call__` blocks while the
bound is reached, which caps the memory held by clones and decoded images at `max_in_flight` batches.

overlap=False runs the same jobs on the same worker thread and waits for each at once, so the decode and the
reward run in the same thread with the same thread budget either way: samples and rewards are bit-identical
with overlap on or off (tested), and the serial mode is the honest baseline of the overlapped one.

Thread budget (CPU). Measured on this build (torch 2.13 CPU, ATen parallel backend OpenMP, MKL): calling
`torch.set_num_threads(n)` in a worker thread changes `at::get_num_threads()`, `omp_get_max_threads()` and
`mkl_get_max_threads()` of that thread only; the main thread still reports its own count afterwards (OpenMP's
nthreads ICV is per thread). A thread created later starts from the count the *main* thread last set. So the
worker sets `worker_threads` for itself when it starts, and the transformer's intra-op pool in the main thread
is untouched. The two pools add up: on C cores give the main thread C - worker_threads
(`torch.set_num_threads`) when the reward is CPU-heavy, or the two oversubscribe the cores. Libraries the reward
uses on its own (numpy's BLAS, onnxruntime) have their own thread settings, which this cannot reach.
An in-process CPU reward overlaps the rollout only as far as a core is free for it and its Python glue leaves
the GIL to the main thread; a reward in a child process (`reward.worker: process`,
`vgpo_fast.rewards.process.ProcessReward`: the worker thread only pickles uint8 images and waits on a pipe) or a
reward-server process (async submit) needs no GIL. On the 2-core development
machine, shared with a pretraining job, two GIL-free matmul threads ran no faster than one after the other, so
`benchmarks/rollout.py` shows no gain there for CompositionalReward and the full gain for a latency-bound reward
(in-process or behind a loopback server).

CUDA (the same interface; exercised on GPU machines only): `__call__` clones x0_hat on the main stream (so the
caller's later writes are ordered after the copy) and records an event; the worker waits for that event on a
side stream, marks the clone `record_stream(side)`, decodes on the side stream, copies the images into pinned
host memory with `non_blocking=True`, synchronises on the copy's event and scores on the CPU. Streams alone
cannot hide the reward when the transformer fills the SMs; a remote reward server (async submit) can.

Errors: an exception in decode or reward is kept with its step and raised from the next `__call__` or from
`finish()` as the same exception type (`RewardError` where the type cannot carry a message) with a message
naming the step, chained to the original; every job releases its slot whatever happens, so nothing hangs.
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..rewards.base import RewardError, RewardModel
from .reward_result import RewardResult, overlap_fraction
from .schedule import RewardStepsSpec, fill_sparse_rewards, reward_steps

Decoder = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["RewardPipeline", "RewardResult"]


@dataclass
class _Batch:
    """State of one rollout batch (between `begin` and `finish`); guarded by the pipeline's condition."""

    prompts: list[str]
    seen: set[int] = field(default_factory=set)
    pending: int = 0
    done: set[int] = field(default_factory=set)
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    errors: list[tuple[int, str, BaseException]] = field(default_factory=list)
    decode_s: dict[int, float] = field(default_factory=dict)
    reward_s: dict[int, float] = field(default_factory=dict)
    wait_s: dict[int, float] = field(default_factory=dict)
    start_t: dict[int, float] = field(default_factory=dict)
    decode_end_t: dict[int, float] = field(default_factory=dict)
    end_t: dict[int, float] = field(default_factory=dict)
    enqueue_s: float = 0.0
    finish_wait_s: float = 0.0
    max_pending: int = 0


# The interpreter's GIL switch interval while an overlapped batch is open (CPython's default is 5 ms). A worker
# holding the GIL for Python work (the reward's glue, pickling for a reward process) otherwise keeps the main
# thread waiting up to 5 ms each time it needs the GIL between transformer ops; profiled on the CPU default:
# overlap efficiency 55-67% at 5 ms, 79% at 0.5 ms (docs/profiling.md).
GIL_SWITCH_S = 5e-4


def _with_step(exc: BaseException, j: int, stage: str, num_steps: int) -> BaseException:
    """`exc`'s type with a message naming the step (RewardError where the type cannot be built from a string)."""
    message = f"reward pipeline: {stage} of step j={j} (of T={num_steps}) failed: {type(exc).__name__}: {exc}"
    try:
        new = type(exc)(message)
        if str(new) != message:
            raise TypeError
    except Exception:
        new = RewardError(message)
    new.__cause__ = exc
    return new


class RewardPipeline:
    """Decodes and scores the projections of a rollout concurrently with the denoising steps (module docstring).

    reward: any `RewardModel`; decode: latents `[B, C, h, w]` -> float images `[B, 3, H, W]` in [0, 1] (e.g.
    `FlowPipeline.decode`), always used for the terminal step; intermediate_decode: a cheaper decoder for
    j < T-1 (a small decoder, a reduced resolution), or None to use `decode`; num_steps: T; reward_steps: S as
    "all" | stride k | list of steps (`schedule.reward_steps`); overlap: False waits for each job at once (the
    serial baseline, bit-identical results); max_in_flight: most jobs pending at once (>= 1); worker_threads:
    torch intra-op threads of the worker (CPU); device: the CUDA device for the side stream, None to follow
    the tensors handed in; async_submit: None detects a reward with its own asynchronous `submit` (such as
    `RewardClient`), True/False forces the choice.
    """

    def __init__(
        self,
        reward: RewardModel,
        decode: Decoder,
        num_steps: int,
        *,
        reward_steps: RewardStepsSpec = "all",
        overlap: bool = True,
        max_in_flight: int = 2,
        intermediate_decode: Decoder | None = None,
        worker_threads: int = 1,
        device: torch.device | str | None = None,
        async_submit: bool | None = None,
        gil_switch_s: float | None = GIL_SWITCH_S,
    ) -> None:
        if not isinstance(reward, RewardModel):
            raise ValueError(f"reward must be a RewardModel, got {type(reward).__name__}")
        if not callable(decode):
            raise ValueError("decode must be callable as decode(latents [B, C, h, w]) -> images [B, 3, H, W]")
        if intermediate_decode is not None and not callable(intermediate_decode):
            raise ValueError("intermediate_decode must be None or callable like decode")
        for name, value in (("max_in_flight", max_in_flight), ("worker_threads", worker_threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.steps = _steps(num_steps, reward_steps)  # S; the argument shadows schedule.reward_steps here
        self.num_steps = int(num_steps)
        self._column = {j: i for i, j in enumerate(self.steps)}
        self.reward = reward
        self.decode = decode
        self.intermediate_decode = intermediate_decode
        self.overlap = bool(overlap)
        self.max_in_flight = int(max_in_flight)
        self.worker_threads = int(worker_threads)
        self.device = None if device is None else torch.device(device)
        self.async_submit = (
            (type(reward).submit is not RewardModel.submit) if async_submit is None else bool(async_submit)
        )
        if gil_switch_s is not None and not gil_switch_s > 0:
            raise ValueError(f"gil_switch_s must be None or > 0, got {gil_switch_s!r}")
        self.gil_switch_s = gil_switch_s
        self._saved_switch_s: float | None = None
        self._cond = threading.Condition()
        self._batch: _Batch | None = None
        self._executor: cf.ThreadPoolExecutor | None = None
        self._side_streams: dict[int, torch.cuda.Stream] = {}

    @property
    def mode(self) -> str:
        return "serial" if not self.overlap else ("async-submit" if self.async_submit else "worker")

    # Batch life cycle --------------------------------------------------------------------------------------
    def begin(self, prompts: Sequence[str]) -> None:
        """Starts one rollout batch; B = len(prompts), one prompt per sample."""
        if (
            isinstance(prompts, str)
            or not isinstance(prompts, Sequence)
            or not prompts
            or not all(isinstance(p, str) for p in prompts)
        ):
            raise ValueError(f"prompts must be a non-empty sequence of strings, one per sample, got {prompts!r:.80}")
        with self._cond:
            if self._batch is not None:
                raise ValueError("begin() called while a batch is in progress: finish() or cancel() it first")
            self._batch = _Batch(prompts=list(prompts))
        if self.overlap and self.gil_switch_s is not None:
            self._saved_switch_s = sys.getswitchinterval()
            sys.setswitchinterval(min(self._saved_switch_s, self.gil_switch_s))
        if self._executor is None:
            self._executor = cf.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="reward-pipeline", initializer=self._init_worker
            )

    def __call__(self, j: int, x0_hat: torch.Tensor) -> None:
        """The sampler's `on_projection`: queues decode + reward of `x0_hat_j [B, ...]`; a no-op for j not in S.
        Blocks while `max_in_flight` jobs are pending; raises an earlier job's error."""
        batch = self._active("__call__")
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < self.num_steps:
            raise ValueError(f"j must be a step in [0, {self.num_steps}), got {j!r}")
        if not isinstance(x0_hat, torch.Tensor) or x0_hat.dim() < 2 or x0_hat.shape[0] != len(batch.prompts):
            raise ValueError(
                f"x0_hat must be a tensor [B={len(batch.prompts)}, ...], got "
                f"{tuple(getattr(x0_hat, 'shape', ())) or type(x0_hat).__name__}"
            )
        with self._cond:
            if j in batch.seen:
                raise ValueError(f"step j={j} was already handed in for this batch")
            batch.seen.add(j)
        self._raise_error(batch)
        if j not in self._column:
            return
        t0 = time.perf_counter()
        with self._cond:
            while batch.pending >= self.max_in_flight:
                self._cond.wait()
            batch.pending += 1
            batch.max_pending = max(batch.max_pending, batch.pending)
        t1 = time.perf_counter()
        try:
            x = x0_hat.detach().clone()  # the job owns its input, whatever the caller does with x0_hat next
            t_clone = time.perf_counter()
            ready = None
            if x.is_cuda:  # the worker's side stream waits for the clone, which is ordered on the main stream
                ready = torch.cuda.Event()
                ready.record()
            assert self._executor is not None
            self._executor.submit(self._job, batch, j, x, ready)
        except BaseException:
            with self._cond:  # the job never started: give its slot back
                batch.pending -= 1
                self._cond.notify_all()
            raise
        t2 = time.perf_counter()
        waited, enqueue = t1 - t0, t2 - t1
        if not self.overlap:  # blocked from the hand-off on: the worker may start before submit returns
            with self._cond:
                while j not in batch.done:
                    self._cond.wait()
            waited, enqueue = waited + time.perf_counter() - t_clone, t_clone - t1
        batch.wait_s[j] = waited
        batch.enqueue_s += enqueue
        self._raise_error(batch)

    def finish(self, timeout: float | None = None) -> RewardResult:
        """Waits for every job of the batch and returns its rewards; ends the batch.

        Raises the first failed job's error (naming its step), ValueError when a step of S never came in, and
        TimeoutError (the batch stays open) when jobs are still pending after `timeout` seconds."""
        batch = self._active("finish")
        t0 = time.perf_counter()
        deadline = None if timeout is None else t0 + timeout
        with self._cond:
            while batch.pending:
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    waiting = sorted(j for j in batch.seen if j in self._column and j not in batch.done)
                    raise TimeoutError(f"reward pipeline: steps {waiting} still pending after {timeout} s")
                self._cond.wait(left)
            self._batch = None
        self._restore_switch()
        batch.finish_wait_s = time.perf_counter() - t0
        self._raise_error(batch)
        missing = [j for j in self.steps if j not in batch.seen]
        if missing:
            raise ValueError(
                f"finish(): no projection was handed in for evaluated steps {missing} "
                f"(S = {self.steps}); call the pipeline for every step j = 0..{self.num_steps - 1}"
            )
        evaluated = torch.stack([batch.scores[j] for j in self.steps], dim=1)
        rewards = fill_sparse_rewards(evaluated, self.steps, self.num_steps)
        return RewardResult(rewards=rewards, evaluated=evaluated, steps=list(self.steps), timings=self._timings(batch))

    def cancel(self) -> None:
        """Ends the current batch, if any, after its pending jobs are done; their results and errors are dropped."""
        with self._cond:
            batch = self._batch
            while batch is not None and batch.pending:
                self._cond.wait()
            self._batch = None
        self._restore_switch()

    def close(self) -> None:
        """Cancels the current batch and stops the worker thread (the reward itself is the caller's to close)."""
        self.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> RewardPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Internals ---------------------------------------------------------------------------------------------
    def _active(self, caller: str) -> _Batch:
        batch = self._batch
        if batch is None:
            raise ValueError(f"{caller}() called with no batch in progress: call begin(prompts) first")
        return batch

    def _restore_switch(self) -> None:
        if self._saved_switch_s is not None:
            sys.setswitchinterval(self._saved_switch_s)
            self._saved_switch_s = None

    def _raise_error(self, batch: _Batch) -> None:
        if batch.errors:
            j, stage, exc = min(batch.errors, key=lambda e: e[0])
            raise _with_step(exc, j, stage, self.num_steps)

    def _init_worker(self) -> None:
        torch.set_num_threads(self.worker_threads)  # this thread's pool only (module docstring)
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def _decoder(self, j: int) -> Decoder:
        if self.intermediate_decode is not None and j < self.num_steps - 1:
            return self.intermediate_decode
        return self.decode

    def _job(self, batch: _Batch, j: int, x: torch.Tensor, ready: torch.cuda.Event | None) -> None:
        """Worker thread: decode, then score (or submit and return). Always ends in `_done` exactly once."""
        stage = "decode"
        try:
            t0 = time.perf_counter()
            with torch.no_grad():
                images = self._decode_cuda(j, x, ready) if ready is not None else self._decoder(j)(x)
            del x
            if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] != len(batch.prompts):
                raise ValueError(
                    f"the decoder must return images [B={len(batch.prompts)}, 3, H, W], got "
                    f"{tuple(getattr(images, 'shape', ())) or type(images).__name__}"
                )
            t1 = time.perf_counter()
            batch.start_t[j], batch.decode_end_t[j] = t0, t1
            batch.decode_s[j] = t1 - t0
            stage = "reward"
            if self.async_submit and self.overlap:
                future = self.reward.submit(images, batch.prompts)
                future.add_done_callback(lambda f: self._collect(batch, j, t1, f))
                return
            scores = self.reward.score(images, batch.prompts)
        except BaseException as exc:  # noqa: BLE001 - every failure must release the job's slot
            self._done(batch, j, None, (j, stage, exc))
            return
        batch.end_t[j] = time.perf_counter()
        batch.reward_s[j] = batch.end_t[j] - t1
        self._done(batch, j, scores, None)

    def _collect(self, batch: _Batch, j: int, t_submit: float, future: cf.Future) -> None:
        batch.end_t[j] = time.perf_counter()
        batch.reward_s[j] = batch.end_t[j] - t_submit
        try:
            scores = future.result()
        except BaseException as exc:  # noqa: BLE001
            self._done(batch, j, None, (j, "reward", exc))
            return
        self._done(batch, j, scores, None)

    def _done(self, batch: _Batch, j: int, scores: object, error: tuple[int, str, BaseException] | None) -> None:
        if error is None:
            b = len(batch.prompts)
            if not isinstance(scores, torch.Tensor) or scores.shape != (b,):
                error = (
                    j,
                    "reward",
                    RewardError(
                        f"reward {type(self.reward).__name__} returned "
                        f"{tuple(getattr(scores, 'shape', ())) or type(scores).__name__}"
                        f" scores, expected a tensor [B={b}]"
                    ),
                )
        with self._cond:
            if error is None:
                batch.scores[j] = scores.detach().to("cpu", torch.float32)
            else:
                batch.errors.append(error)
            batch.done.add(j)
            batch.pending -= 1
            self._cond.notify_all()

    def _decode_cuda(self, j: int, x: torch.Tensor, ready: torch.cuda.Event) -> torch.Tensor:
        """Worker thread, CUDA: decode on a side stream after `ready`, copy to pinned host memory, wait for it."""
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        side = self._side_streams.get(index)
        if side is None:
            side = self._side_streams[index] = torch.cuda.Stream(device=x.device)
        with torch.cuda.device(x.device), torch.cuda.stream(side):
            side.wait_event(ready)
            x.record_stream(side)  # x was allocated on the main stream: keep its memory until side is done
            images = self._decoder(j)(x)
            host = torch.empty(images.shape, dtype=images.dtype, pin_memory=True)
            host.copy_(images, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(side)
        copied.synchronize()
        return host

    def _timings(self, batch: _Batch) -> dict:
        decode = [batch.decode_s.get(j, 0.0) for j in self.steps]
        reward = [batch.reward_s.get(j, 0.0) for j in self.steps]
        wait_steps = [batch.wait_s.get(j, 0.0) for j in self.steps]
        busy = sum(decode) + sum(reward)
        wait = sum(wait_steps) + batch.finish_wait_s
        return {
            "decode": sum(decode),
            "reward": sum(reward),
            "wait": wait,
            "wait_finish": batch.finish_wait_s,
            "enqueue": batch.enqueue_s,
            "per_step": {
                "steps": list(self.steps),
                "decode": decode,
                "reward": reward,
                "wait": wait_steps,
                "start": [batch.start_t.get(j, float("nan")) for j in self.steps],
                "decode_end": [batch.decode_end_t.get(j, float("nan")) for j in self.steps],
                "end": [batch.end_t.get(j, float("nan")) for j in self.steps],
            },
            "overlap_frac": overlap_fraction(wait, busy),
            "max_pending": batch.max_pending,
            "mode": self.mode,
        }


def _steps(num_steps: int, spec: RewardStepsSpec) -> list[int]:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    return reward_steps(num_steps, spec)
