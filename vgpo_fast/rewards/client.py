"""`RewardClient`: a reward server (or several) as just another asynchronous `RewardModel`.

    reward = RewardClient("http://127.0.0.1:8123")                      # name/range come from /health
    reward = RewardClient(["http://127.0.0.1:8123", "http://127.0.0.1:8124"], max_in_flight=8)
    futures = [reward.submit(images_j, prompts) for images_j in steps]  # several in flight
    scores = [f.result() for f in futures]                              # float32 [B] each

Connections are pooled (urllib3, keep-alive). Each request has a connect and a read timeout; connection
errors, timeouts and 5xx replies are retried with exponential backoff up to `attempts` tries in all
(preferring another server when there are several), 4xx replies are not retried. With several servers each
request goes to the least loaded one (fewest requests in flight from this client, ties in turn), skipping for
`down_s` seconds a server that just failed to connect. A batch over the server's limits is split into
requests that fit. Non-finite scores come back as such and this client's `nonfinite` policy applies, as for
any `RewardModel`.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import urllib3

from vgpo_fast.rewards.base import NonFinitePolicy, RewardError, RewardModel
from vgpo_fast.rewards.wire import (
    CONTENT_TYPE,
    Encoding,
    WireError,
    decode_response,
    error_message,
    request_parts,
)

TOKEN_ENV = "VGPO_FAST_REWARD_TOKEN"
_HEADER_SLACK = 64 * 1024  # bytes left for the JSON header when splitting a batch to fit the request limit


class _Retryable(Exception):
    """One attempt failed in a way worth retrying: connection error, timeout, 5xx."""

    def __init__(self, reason: str, connect_failed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connect_failed = connect_failed


def _normalise_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"reward server URL must look like 'http://host:port', got {url!r}")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(f"reward server URL must have no path or query (the client adds them), got {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _describe(exc: BaseException, read_timeout: float) -> tuple[str, bool]:
    """A short reason for a failed attempt, and whether the connection itself failed."""
    errors = urllib3.exceptions
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "reason", None)
        if not isinstance(seen, BaseException):
            seen = None
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused", True
    if isinstance(exc, errors.ReadTimeoutError):
        return f"no reply within the {read_timeout:g} s read timeout", False
    if isinstance(exc, errors.NewConnectionError):
        return f"cannot connect: {exc}", True
    if isinstance(exc, errors.ConnectTimeoutError):
        return "connect timed out", True
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return "connection reset by the server", False
    if isinstance(exc, errors.ProtocolError):
        return "the server closed the connection without a reply", False
    return f"{type(exc).__name__}: {exc}", False


class RewardClient(RewardModel):
    """Scores through one or more reward servers; `score`/`submit` as any `RewardModel`.

    urls: one URL or a list ('http://host:port'); token: bearer token (default $VGPO_FAST_REWARD_TOKEN);
    connect_timeout, read_timeout: seconds per attempt; attempts: tries per request in all (>= 1);
    backoff_s: sleep before the second try, doubling each retry up to max_backoff_s (with jitter);
    max_in_flight: requests `submit` keeps in flight at once; encoding: 'raw' bytes or 'png' per image
    (less to send over a network, more CPU); down_s: how long a server that refused a connection is avoided.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
        attempts: int = 3,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        max_in_flight: int = 4,
        encoding: Encoding = "raw",
        down_s: float = 5.0,
        nonfinite: NonFinitePolicy = "raise",
    ) -> None:
        super().__init__(nonfinite)
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise ValueError("urls must name at least one reward server")
        self.urls = [_normalise_url(u) for u in url_list]
        if len(set(self.urls)) != len(self.urls):
            raise ValueError(f"urls must not repeat, got {self.urls}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError(f"timeouts must be > 0, got connect {connect_timeout}, read {read_timeout}")
        if encoding not in ("raw", "png"):
            raise ValueError(f"encoding must be 'raw' or 'png', got {encoding!r}")
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.attempts = int(attempts)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_in_flight = int(max_in_flight)
        self.encoding: Encoding = encoding
        self.down_s = float(down_s)
        # Room for threads calling `score` directly as well as the `submit` pool, so that no connection is
        # opened and thrown away per request.
        self._http = urllib3.PoolManager(
            num_pools=len(self.urls) + 1, maxsize=max(16, 2 * self.max_in_flight), retries=False
        )
        self._lock = threading.Lock()
        self._load = dict.fromkeys(self.urls, 0)  # requests in flight per server
        self._down_until = dict.fromkeys(self.urls, 0.0)
        self._turn = itertools.count()
        self._order = {u: i for i, u in enumerate(self.urls)}
        self._info: dict[str, Any] | None = None
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RewardClient({self.urls if len(self.urls) > 1 else self.urls[0]!r})"

    # Name and range, from /health on first use ---------------------------------------------------------
    def _ensure_info(self) -> dict[str, Any]:
        if self._info is None:
            info = self.health()
            with self._lock:
                if self._info is None:
                    self._info = info
        return self._info

    @property
    def name(self) -> str:  # type: ignore[override]
        return str(self._ensure_info()["reward"])

    @property
    def low(self) -> float:  # type: ignore[override]
        return float(self._ensure_info()["low"])

    @property
    def high(self) -> float:  # type: ignore[override]
        return float(self._ensure_info()["high"])

    @property
    def last_timing(self) -> dict[str, float] | None:
        """The server's timing of this thread's last reply (queue_ms, score_ms, server_ms, batch_images)."""
        return getattr(self._local, "timing", None)

    def health(self, url: str | None = None) -> dict[str, Any]:
        """The /health reply of `url` (default: any of this client's servers), with retries."""
        target = None if url is None else _normalise_url(url)
        _, data = self._request("GET", "/health", None, only=target)
        try:
            info = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RewardError(f"reward server replied to /health with text that is not JSON: {exc}") from None
        if not isinstance(info, dict) or not {"reward", "low", "high"} <= set(info):
            raise RewardError(f"reward server /health reply lacks reward/low/high: {str(info)[:200]}")
        return info

    # Scoring ---------------------------------------------------------------------------------------------
    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        info = self._ensure_info()
        per_image = int(np.prod(images.shape[1:]))
        limits = info.get("limits") or {}
        chunk = int(limits.get("max_images", images.shape[0]))
        if "max_request_bytes" in limits:  # by raw size for PNG too: PNG is rarely larger
            chunk = min(chunk, (int(limits["max_request_bytes"]) - _HEADER_SLACK) // per_image)
        if chunk < 1:
            raise RewardError(
                f"one image of shape {images.shape[1:]} is over the reward server's request "
                f"limit of {limits.get('max_request_bytes')} bytes"
            )
        parts = [
            self._score_chunk(images[i : i + chunk], prompts[i : i + chunk]) for i in range(0, images.shape[0], chunk)
        ]
        return np.concatenate(parts)

    def _score_chunk(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        # Sent as a list of buffers: the pixels go to the socket straight from `images`, uncopied.
        request_id = uuid.uuid4().hex
        body = request_parts(np.ascontiguousarray(images), prompts, request_id, encoding=self.encoding)
        url, data = self._request("POST", "/score", body)
        try:
            scores, reply = decode_response(data, images.shape[0])
        except WireError as exc:
            raise RewardError(f"reward server {url} sent a bad reply: {exc}") from None
        if reply.get("id") != request_id:
            raise RewardError(
                f"reward server {url} answered request {request_id} with the reply to {reply.get('id')!r}"
            )
        info = self._ensure_info()
        if reply.get("reward") != info["reward"]:
            raise RewardError(
                f"reward servers disagree: {url} serves {reply.get('reward')!r}, another serves {info['reward']!r}"
            )
        self._local.timing = reply.get("timing")
        return scores

    def submit(self, images: Any, prompts: Sequence[str]) -> cf.Future:
        """Scores asynchronously on this client's pool (`max_in_flight` at once); resolves as `score`."""
        if isinstance(prompts, str):
            raise ValueError(f"prompts must be a sequence of strings, one per image, got a str: {prompts!r}")
        with self._executor_lock:
            if self._executor is None:
                self._executor = cf.ThreadPoolExecutor(
                    max_workers=self.max_in_flight, thread_name_prefix="reward-client"
                )
        return self._executor.submit(self.score, images, list(prompts))

    def close(self) -> None:
        super().close()
        self._http.clear()

    # One request with retries ----------------------------------------------------------------------------
    def _pick(self, tried: set[str]) -> str:
        now = time.monotonic()
        with self._lock:
            fresh = [u for u in self.urls if u not in tried]
            up = [u for u in fresh if self._down_until[u] <= now]
            candidates = up or fresh or self.urls
            turn = next(self._turn)
            n = len(self.urls)
            url = min(candidates, key=lambda u: (self._load[u], (self._order[u] - turn) % n))
            self._load[url] += 1
        return url

    def _request(
        self, method: str, path: str, body: list[bytes | memoryview] | None, only: str | None = None
    ) -> tuple[str, bytes]:
        """(server URL, reply body) of a 2xx reply; raises `RewardError` on 4xx or after the last attempt."""
        headers = {}
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
            headers["Content-Length"] = str(sum(memoryview(part).nbytes for part in body))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout)
        tried: list[str] = []
        reason = ""
        for attempt in range(self.attempts):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + 0.5 * random.random()))
            if only is not None:
                url = only
                with self._lock:
                    self._load[url] = self._load.get(url, 0) + 1
            else:
                url = self._pick(set(tried))
            tried.append(url)
            try:
                return url, self._attempt(method, url + path, body, headers, timeout)
            except _Retryable as exc:
                reason = exc.reason
                if exc.connect_failed:
                    with self._lock:
                        self._down_until[url] = time.monotonic() + self.down_s
            finally:
                with self._lock:
                    self._load[url] -= 1
        servers = list(dict.fromkeys(tried))
        where = f"reward server {servers[0]}" if len(servers) == 1 else f"reward servers {', '.join(servers)}"
        last = "" if len(servers) == 1 else f"last: {tried[-1]}: "
        raise RewardError(
            f"{where} unreachable after {self.attempts} attempt{'s' * (self.attempts > 1)} ({last}{reason})"
        )

    def _attempt(
        self,
        method: str,
        url: str,
        body: list[bytes | memoryview] | None,
        headers: dict[str, str],
        timeout: urllib3.Timeout,
    ) -> bytes:
        try:
            reply = self._http.request(
                method, url, body=body, headers=headers, timeout=timeout, retries=False, redirect=False
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            reason, connect_failed = _describe(exc, self.read_timeout)
            raise _Retryable(reason, connect_failed) from exc
        status, data = reply.status, reply.data
        if 200 <= status < 300:
            return data
        message = error_message(data)
        if status >= 500:
            raise _Retryable(f"HTTP {status}: {message}")
        server = url.rsplit("/", 1)[0]
        if status == 401:
            raise RewardError(f"reward server {server} rejected the token (HTTP 401: {message})")
        if status == 422:
            raise RewardError(f"reward server {server}: {message}")
        raise RewardError(f"reward server {server} rejected the request (HTTP {status}: {message})")
