"""Dynamic micro-batching of score requests across concurrent clients: the reward server's batcher thread.

One batcher thread takes the oldest queued request, adds queued requests with the same image size up to
`max_batch` images, and scores the concatenation with one call. While the batch is short and other requests are
still being received it waits for them, at most `max_wait_ms`; a lone client therefore pays no batching delay, and
requests arriving while a batch is being scored are merged into the next one. If a merged batch fails, each
request in it is scored alone, so one bad request fails only its own client.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vgpo_fast.rewards.wire import ScoreRequest

if TYPE_CHECKING:  # the module imports no torch, so that `reward-server --help` is fast
    from vgpo_fast.rewards.base import RewardModel

__all__ = ["BatchStats", "MicroBatcher", "RequestFailed"]


class RequestFailed(Exception):
    """The reward raised while scoring one request; carries the message for the client (HTTP 422)."""


@dataclass
class _Pending:
    """A decoded request waiting in the queue, and the future its handler thread waits on."""

    request: ScoreRequest
    enqueued: float = field(default_factory=time.perf_counter)
    future: Future = field(default_factory=Future)

    @property
    def size(self) -> int:
        return self.request.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.request.images.shape[1:]


@dataclass
class BatchStats:
    """Counters over the server's life: batches scored, requests and images in them, largest batch."""

    batches: int = 0
    requests: int = 0
    images: int = 0
    max_batch_images: int = 0
    max_batch_requests: int = 0
    failed_batches: int = 0
    score_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        mean = self.images / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "requests": self.requests,
            "images": self.images,
            "max_batch_images": self.max_batch_images,
            "max_batch_requests": self.max_batch_requests,
            "mean_batch_images": round(mean, 3),
            "failed_batches": self.failed_batches,
            "score_seconds": round(self.score_seconds, 6),
        }


class MicroBatcher:
    """Queues requests from handler threads and scores them in merged batches on one thread.

    `submit(request) -> Future` resolving to (float32 scores [B], timing dict), or raising `RequestFailed`.
    """

    def __init__(self, reward: RewardModel, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.reward = reward
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._held: deque[_Pending] = deque()  # taken from the queue but left for the next batch
        self._receiving = 0  # requests whose bodies are being read: worth waiting for
        self._queued_images = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="reward-batcher", daemon=True)
        self._thread.start()

    # Called from handler threads -------------------------------------------------------------------------
    def begin_receiving(self) -> None:
        with self._lock:
            self._receiving += 1

    def end_receiving(self) -> None:
        with self._lock:
            self._receiving -= 1

    def submit(self, request: ScoreRequest) -> Future:
        pending = _Pending(request)
        with self._lock:
            self._queued_images += pending.size
        self._queue.put(pending)
        return pending.future

    @property
    def queue_depth(self) -> int:
        """Images queued and not yet taken into a batch."""
        with self._lock:
            return self._queued_images

    def close(self, timeout: float | None = None) -> None:
        """Scores everything already queued, then stops the batcher thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    # The batcher thread ----------------------------------------------------------------------------------
    def _next(self, timeout: float | None) -> _Pending | None:
        if self._held:
            return self._held.popleft()
        if timeout is None or timeout > 0:
            return self._queue.get(timeout=timeout)
        return self._queue.get_nowait()

    def _run(self) -> None:
        stopping = False
        while True:
            try:
                first = self._next(0 if stopping else None)
            except queue.Empty:
                return  # stopping and nothing left
            if first is None:
                stopping = True
                continue
            batch, images = [first], first.size
            deadline = time.perf_counter() + self.max_wait
            skipped: list[_Pending] = []
            while images < self.max_batch:
                try:
                    item = self._next(0)
                except queue.Empty:
                    with self._lock:
                        more_coming = self._receiving > 0
                    left = deadline - time.perf_counter()
                    if stopping or not more_coming or left <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=min(left, 0.001))
                    except queue.Empty:
                        continue
                if item is None:
                    stopping = True
                    continue
                if item.image_shape != first.image_shape:
                    skipped.append(item)  # another image size: it leads the next batch
                    continue
                if images + item.size > self.max_batch:
                    skipped.append(item)
                    break
                batch.append(item)
                images += item.size
            self._held.extendleft(reversed(skipped))
            with self._lock:
                self._queued_images -= images
            try:
                self._score(batch)
            except Exception as exc:  # a bug here must not leave handler threads waiting forever
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(RequestFailed(f"reward server internal error: {exc!r}"))

    def _score(self, batch: list[_Pending]) -> None:
        start = time.perf_counter()
        error: Exception | None = None
        try:
            scores = self._score_images([p.request for p in batch])
        except Exception as exc:
            error = exc
        elapsed = time.perf_counter() - start
        images = sum(p.size for p in batch)
        stats = self.stats
        stats.batches += 1
        stats.requests += len(batch)
        stats.images += images
        stats.max_batch_images = max(stats.max_batch_images, images)
        stats.max_batch_requests = max(stats.max_batch_requests, len(batch))
        stats.score_seconds += elapsed
        if error is not None:
            stats.failed_batches += 1
            if len(batch) == 1:
                batch[0].future.set_exception(self._failure(batch[0], error))
                return
            # Score each request alone so that only the request(s) the reward rejects fail.
            for p in batch:
                self._score_alone(p)
            return
        offset = 0
        for p in batch:
            timing = {
                "queue_ms": (start - p.enqueued) * 1e3,
                "score_ms": elapsed * 1e3,
                "batch_images": images,
                "batch_requests": len(batch),
            }
            p.future.set_result((scores[offset : offset + p.size], timing))
            offset += p.size

    def _failure(self, p: _Pending, exc: Exception) -> RequestFailed:
        prompts = p.request.prompts
        shown = f"{prompts[:3]!r}"[:-1] + (", ...]" if len(prompts) > 3 else "]")
        return RequestFailed(
            f"reward {self.reward.name!r} failed on request {p.request.request_id} "
            f"(prompts {shown}): {type(exc).__name__}: {exc}"
        )

    def _score_alone(self, p: _Pending) -> None:
        start = time.perf_counter()
        try:
            scores = self._score_images([p.request])
        except Exception as exc:
            p.future.set_exception(self._failure(p, exc))
            return
        timing = {
            "queue_ms": (start - p.enqueued) * 1e3,
            "score_ms": (time.perf_counter() - start) * 1e3,
            "batch_images": p.size,
            "batch_requests": 1,
        }
        p.future.set_result((scores, timing))

    def _score_images(self, requests: list[ScoreRequest]) -> np.ndarray:
        """float32 scores `[sum B]` of the requests' images concatenated.

        Calls `reward._score` rather than `score`: non-finite scores pass through to the client, which applies
        its own non-finite policy, and one NaN does not fail the other requests merged into the batch.
        """
        images = requests[0].images if len(requests) == 1 else np.concatenate([r.images for r in requests])
        prompts = [p for r in requests for p in r.prompts]
        scores = np.asarray(self.reward._score(images, prompts), dtype=np.float64).reshape(-1)
        if scores.shape[0] != images.shape[0]:
            raise RuntimeError(
                f"reward {self.reward.name!r} returned {scores.shape[0]} scores for {images.shape[0]} images"
            )
        return scores.astype(np.float32)
