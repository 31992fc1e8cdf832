"""Reward server: one reward model behind HTTP, with dynamic micro-batching across concurrent clients.

    vgpo-fast reward-server --reward 'shapes?mode=partial' --host 127.0.0.1 --port 8123
    python -m vgpo_fast.rewards.server --reward 'ocr?mode=rec' --port 0 --port-file /tmp/port

`--reward` is a `build_reward` spec. Names that a task registers (`register_reward`) are known to `vgpo-fast
reward-server`, which imports the task registry first; `python -m vgpo_fast.rewards.server` registers nothing,
so give it the built-in names, the explicit `'package.module:ClassName?k=v'` form (what `resolve_spec` turns a
name into), or call `main(argv, setup=...)` with a `setup` that registers them.

Endpoints: `POST /score` (body in the `wire` format, reply JSON scores), `GET /health` (reward name, range,
queue depth, batch statistics, limits, version). With a token (`--token-file` or $VGPO_FAST_REWARD_TOKEN)
both require `Authorization: Bearer <token>`.

Micro-batching: handler threads decode requests and queue them; one batcher thread takes the oldest request,
adds queued requests with the same image size up to `max_batch` images, and scores the concatenation with one
call. While the batch is short and other requests are still being received it waits for them, at most
`max_wait_ms`; a lone client therefore pays no batching delay, and requests arriving while a batch is being
scored are merged into the next one. If a merged batch fails, each request in it is scored alone, so one bad
request (a prompt the reward rejects) fails only its own client.

Errors: 400 malformed request, 401 bad/missing token, 404/405 wrong path/method, 411 no Content-Length,
413 over the size limits, 422 the reward raised on this request, 503 shutting down. Every error body is
`{"error": ..., "kind": ...}`. Non-finite scores are returned as such ("nan"/"inf") and the client applies its
own non-finite policy. SIGTERM/SIGINT: stop accepting, finish every queued and in-flight request, exit 0.
"""

from __future__ import annotations

import argparse
import functools
import hmac
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vgpo_fast.rewards.batcher import MicroBatcher, RequestFailed
from vgpo_fast.rewards.wire import (
    CONTENT_TYPE,
    WIRE_VERSION,
    Limits,
    PayloadTooLarge,
    WireError,
    decode_request,
    encode_error,
    encode_response,
)

if TYPE_CHECKING:  # the module imports no torch, so that `reward-server --help` is fast
    from vgpo_fast.rewards.base import RewardModel

TOKEN_ENV = "VGPO_FAST_REWARD_TOKEN"
# An over-limit body up to this size is read and discarded so the client sees the 413 rather than a reset.
_DRAIN_LIMIT = 64 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("vgpo-fast")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can pool connections
    # Headers and body go out in two writes; with Nagle on, the second waits on a delayed ACK (40 ms).
    disable_nagle_algorithm = True
    server: _HTTPServer
    timeout = 120  # seconds a connection may sit idle or stall mid-body before its thread gives up

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.app.verbose:
            super().log_message(format, *args)

    def _reply(self, status: int, body: bytes, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, kind: str, close: bool = False) -> None:
        self._reply(status, encode_error(message, kind), close)

    def _refuse(self, status: int, message: str, kind: str) -> None:
        """An error reply before the body was read: read and drop a body of moderate size first, so that the
        client, still sending, sees this reply rather than a reset connection; then close."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        # Up to the request limit, or for a 413 up to _DRAIN_LIMIT: never more than a bounded read.
        cap = _DRAIN_LIMIT if status == 413 else min(_DRAIN_LIMIT, self.server.app.limits.max_request_bytes)
        if 0 < length <= cap:
            self._discard(length)
        self._error(status, message, kind, close=True)

    def _auth_error(self) -> str | None:
        """Why the request's bearer token is refused, or None when it is accepted (or none is needed)."""
        token = self.server.app.token
        if token is None:
            return None
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode("utf-8", "replace"), f"Bearer {token}".encode()):
            return None
        return f"{'wrong' if given else 'missing'} bearer token (send 'Authorization: Bearer <token>')"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") != "/health":
            self._error(
                404 if self.path.rstrip("/") != "/score" else 405,
                f"no GET {self.path}: use GET /health or POST /score",
                "not_found",
            )
            return
        reason = self._auth_error()
        if reason:
            self._error(401, reason, "unauthorized")
            return
        self._reply(200, json.dumps(self.server.app.health()).encode("utf-8"))

    def do_POST(self) -> None:  # noqa: N802
        app = self.server.app
        if self.path.rstrip("/") != "/score":
            self._refuse(
                404 if self.path.rstrip("/") != "/health" else 405,
                f"no POST {self.path}: use POST /score or GET /health",
                "not_found",
            )
            return
        with app.lock:
            app.in_flight += 1
        try:
            self._score()
        finally:
            with app.lock:
                app.in_flight -= 1

    def _score(self) -> None:
        app = self.server.app
        if app.closing.is_set():
            self._refuse(503, "server is shutting down", "shutting_down")
            return
        reason = self._auth_error()
        if reason:
            self._refuse(401, reason, "unauthorized")
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or "chunked" in self.headers.get("Transfer-Encoding", ""):
            self._error(
                411, "POST /score needs a Content-Length (chunked bodies are not accepted)", "bad_request", close=True
            )
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self._error(400, f"bad Content-Length {length_text!r}", "bad_request", close=True)
            return
        limit = app.limits.max_request_bytes
        if length > limit:
            self._refuse(
                413,
                f"request is {length} bytes, over the server's limit of {limit} "
                f"(--max-request-mb); send smaller batches",
                "too_large",
            )
            return
        # Counted as "receiving" until queued, so the batcher knows a request is about to join.
        app.batcher.begin_receiving()
        try:
            body = self._read_body(length)
            if body is None:
                return
            request = decode_request(body, app.limits)
            received = time.perf_counter()
            future = app.batcher.submit(request)
        except PayloadTooLarge as exc:
            self._error(413, str(exc), "too_large")
            return
        except WireError as exc:
            self._error(400, str(exc), "bad_request")
            return
        finally:
            app.batcher.end_receiving()
        try:
            scores, timing = future.result()
        except RequestFailed as exc:
            self._error(422, str(exc), "reward_error")
            return
        timing = dict(timing, server_ms=(time.perf_counter() - received) * 1e3)
        self._reply(
            200,
            encode_response(
                request.request_id, scores, app.reward.name, float(app.reward.low), float(app.reward.high), timing
            ),
        )

    def _read_body(self, length: int) -> bytearray | None:
        """The request body, read into one writable buffer (images decoded from it need no copy)."""
        body = bytearray(length)
        view = memoryview(body)
        got = 0
        while got < length:
            n = self.rfile.readinto(view[got:])
            if not n:
                self._error(400, f"body ended after {got} of {length} bytes", "bad_request", close=True)
                return None
            got += n
        return body

    def _discard(self, length: int) -> None:
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)


class _HTTPServer(ThreadingHTTPServer):
    # Idle keep-alive connections must not hold up exit; in-flight requests are drained before it.
    daemon_threads = True
    allow_reuse_address = True
    app: RewardServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timed out, was killed) is routine, not a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class RewardServer:
    """A reward model served over HTTP on (host, port); port 0 picks a free port (see `.port` after init)."""

    def __init__(
        self,
        reward: RewardModel,
        host: str = "127.0.0.1",
        port: int = 0,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        limits: Limits | None = None,
        token: str | None = None,
        verbose: bool = False,
    ) -> None:
        self.reward = reward
        self.limits = limits or Limits()
        self.token = token or None
        self.verbose = verbose
        self.lock = threading.Lock()
        self.in_flight = 0  # POST /score requests inside a handler
        self.closing = threading.Event()
        self.started = time.time()
        self.batcher = MicroBatcher(reward, max_batch=max_batch, max_wait_ms=max_wait_ms)
        self.httpd = _HTTPServer((host, port), _Handler)
        self.httpd.app = self
        self.host, self.port = self.httpd.server_address[:2]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def health(self) -> dict[str, Any]:
        """The /health reply: reward name and range, queue depth (images), in-flight requests, statistics."""
        with self.lock:
            in_flight = self.in_flight
        return {
            "status": "closing" if self.closing.is_set() else "ok",
            "reward": self.reward.name,
            "low": float(self.reward.low),
            "high": float(self.reward.high),
            "queue_depth": self.batcher.queue_depth,
            "in_flight": in_flight,
            "max_batch": self.batcher.max_batch,
            "max_wait_ms": self.batcher.max_wait * 1e3,
            "limits": {
                "max_request_bytes": self.limits.max_request_bytes,
                "max_images": self.limits.max_images,
                "max_pixels": self.limits.max_pixels,
            },
            "stats": self.batcher.stats.as_dict(),
            "version": package_version(),
            "wire_version": WIRE_VERSION,
            "content_type": CONTENT_TYPE,
            "uptime_s": round(time.time() - self.started, 3),
            "pid": os.getpid(),
        }

    def serve_forever(self, drain_timeout_s: float = 60.0) -> bool:
        """Serves until `shutdown()` (from another thread or a signal), then finishes the queued and in-flight
        requests (waiting at most `drain_timeout_s`) and closes; True if every request was answered."""
        try:
            self.httpd.serve_forever(poll_interval=0.05)
        finally:
            drained = self._drain(drain_timeout_s)
        return drained

    def shutdown(self) -> None:
        """Stops accepting; `serve_forever` then finishes the queued and in-flight requests and returns."""
        self.closing.set()
        self.httpd.shutdown()

    def _drain(self, timeout: float) -> bool:
        self.closing.set()
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                left = self.in_flight
            if left == 0 or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        self.batcher.close(timeout=max(0.0, deadline - time.monotonic()))
        self.httpd.server_close()
        if left:
            print(
                f"reward-server: {left} requests still in flight after {timeout:g} s; exiting without them",
                file=sys.stderr,
                flush=True,
            )
        return left == 0

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT start a graceful shutdown (must be called from the main thread)."""

        def handle(signum: int, _frame: Any) -> None:
            if not self.closing.is_set():
                print(
                    f"reward-server: {signal.Signals(signum).name}, finishing in-flight requests",
                    file=sys.stderr,
                    flush=True,
                )
                self.closing.set()
                # httpd.shutdown() blocks until serve_forever returns, and serve_forever runs on this thread.
                threading.Thread(target=self.httpd.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)


def _read_token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"token file {args.token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vgpo-fast reward-server", description="Serve a reward model over HTTP, micro-batching requests."
    )
    parser.add_argument(
        "--reward",
        required=True,
        help="reward name ('ocr', or one a task registers, e.g. 'shapes' under vgpo-fast) or "
        "'package.module:ClassName', options as '?k=v&k2=v2'",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8123, help="port; 0 picks a free one (see --port-file)")
    parser.add_argument("--port-file", help="write the bound port here once serving (atomically)")
    parser.add_argument("--max-batch", type=int, default=64, help="most images merged into one reward call")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="longest wait for requests still being received before scoring a short batch",
    )
    parser.add_argument("--max-request-mb", type=float, default=256.0, help="largest request body, MiB (413 above)")
    parser.add_argument("--max-images", type=int, default=4096, help="most images in one request (413 above)")
    parser.add_argument("--max-pixels", type=int, default=4096 * 4096, help="most pixels (H*W) per image")
    parser.add_argument("--token-file", help=f"file holding the bearer token (default: ${TOKEN_ENV} if set)")
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=60.0,
        help="on SIGTERM/SIGINT, longest wait for in-flight requests (then exit 1)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None, *, setup: Callable[[], object] | None = None) -> int:
    """Entry point of `vgpo-fast reward-server`; returns the exit code (0 after a graceful shutdown).

    `setup`, if given, runs after the arguments are parsed and before the reward is built: the place to register
    reward names (`register_reward`, or importing a module that registers some)."""
    from vgpo_fast.rewards.registry import build_reward

    args = build_parser().parse_args(argv)
    try:
        if setup is not None:
            setup()
        token = _read_token(args)
        limits = Limits(
            max_request_bytes=int(args.max_request_mb * 1024 * 1024),
            max_images=args.max_images,
            max_pixels=args.max_pixels,
        )
        reward = build_reward(args.reward)
        server = RewardServer(
            reward,
            args.host,
            args.port,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            limits=limits,
            token=token,
            verbose=args.verbose,
        )
    except (ValueError, TypeError, ImportError, OSError) as exc:
        print(f"reward-server: error: {exc}", file=sys.stderr)
        return 2
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"reward-server: warning: serving on {args.host} without a token", file=sys.stderr)
    server.install_signal_handlers()
    if args.port_file:
        tmp = Path(f"{args.port_file}.tmp{os.getpid()}")
        tmp.write_text(str(server.port), encoding="utf-8")
        os.replace(tmp, args.port_file)
    print(
        f"reward-server: serving {reward.name!r} [{reward.low:g}, {reward.high:g}] on {server.url} "
        f"(max_batch {args.max_batch}, max_wait {args.max_wait_ms:g} ms)",
        flush=True,
    )
    try:
        drained = server.serve_forever(args.drain_timeout_s)
    finally:
        reward.close()
    print("reward-server: stopped", flush=True)
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
