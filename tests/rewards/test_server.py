"""Reward server and client against a real server process on 127.0.0.1 (ephemeral ports).

Every server is a subprocess killed at teardown; every request loop is bounded in count and time. The
test-only rewards live in helpers_rewards.py; the server imports them as 'helpers_rewards:ClassName'.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_rewards import TOKEN, Brightness, Probe, Server, constant_images

import vgpo_fast.tasks.registry  # noqa: F401 - registers the task rewards ("shapes", "compositional")
from vgpo_fast.rewards.base import RewardError
from vgpo_fast.rewards.client import TOKEN_ENV, RewardClient
from vgpo_fast.rewards.registry import available_rewards, build_reward, parse_spec, resolve_spec
from vgpo_fast.rewards.wire import encode_request

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Probe reward with a token, 1 MiB / 64-image request limits, up to 64 images and 20 ms per batch."""
    srv = Server(
        tmp_path_factory.mktemp("server"),
        "helpers_rewards:Probe",
        "--max-request-mb",
        "1",
        "--max-images",
        "64",
        "--max-batch",
        "64",
        "--max-wait-ms",
        "20",
        token=TOKEN,
    )
    yield srv
    srv.kill()


@pytest.fixture
def client(server: Server) -> Iterator[RewardClient]:
    c = RewardClient(server.url, token=TOKEN, read_timeout=20, backoff_s=0.05)
    yield c
    c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Scores -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_scores_equal_in_process(server: Server, encoding: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 12, 3), dtype=np.uint8)
    prompts = [f"prompt {i}" for i in range(5)]
    with RewardClient(server.url, token=TOKEN, encoding=encoding) as c:
        remote = c.score(images, prompts)
        assert (c.name, c.low, c.high) == ("probe", 0.0, 1.0)
        assert c.last_timing is not None and c.last_timing["batch_images"] >= 5
    local = Brightness().score(images, prompts)
    assert remote.dtype == torch.float32
    assert torch.equal(remote, local)


def test_float_tensor_images_and_submit(client: RewardClient) -> None:
    images = torch.rand(3, 3, 8, 8)
    assert torch.equal(
        client.submit(images, ["a", "b", "c"]).result(timeout=20), Brightness().score(images, ["a", "b", "c"])
    )


def test_batch_over_request_limit_is_split(client: RewardClient) -> None:
    images = np.random.default_rng(1).integers(0, 256, (40, 100, 100, 3), dtype=np.uint8)  # 1.2 MB > 1 MiB
    prompts = [str(i) for i in range(40)]
    assert torch.equal(client.score(images, prompts), Brightness().score(images, prompts))


def test_concurrent_clients_unmixed_and_micro_batched(server: Server) -> None:
    n_clients, n_requests = 6, 3
    barrier = threading.Barrier(n_clients, timeout=20)

    def run(k: int) -> tuple[list[tuple[list[float], list[float]]], list[int]]:
        results, batch_requests = [], []
        with RewardClient(server.url, token=TOKEN, read_timeout=20) as c:
            c.health()  # connect before the barrier so the requests arrive together
            barrier.wait()
            for r in range(n_requests):
                values = [40 * k + 2 * r, 40 * k + 2 * r + 1]
                # the sleep keeps the server busy so the other clients' requests queue up and merge
                scores = c.score(constant_images(values), [f"sleep:0.05 c{k}r{r}", f"c{k}r{r}"])
                results.append(([v / 255 for v in values], scores.tolist()))
                batch_requests.append(c.last_timing["batch_requests"])
        return results, batch_requests

    with cf.ThreadPoolExecutor(n_clients) as pool:
        outcomes = [f.result(timeout=60) for f in [pool.submit(run, k) for k in range(n_clients)]]
    for results, _ in outcomes:
        for expected, got in results:
            np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert max(max(b) for _, b in outcomes) > 1, "no request was micro-batched with another"
    stats = RewardClient(server.url, token=TOKEN).health()["stats"]
    assert stats["max_batch_requests"] > 1 and stats["max_batch_images"] > 2


def test_many_in_flight_from_one_client(server: Server) -> None:
    with RewardClient(server.url, token=TOKEN, max_in_flight=8) as c:
        futures = [c.submit(constant_images([i, 255 - i]), ["sleep:0.02", "x"]) for i in range(16)]
        for i, f in enumerate(futures):
            np.testing.assert_allclose(f.result(timeout=30).numpy(), [i / 255, (255 - i) / 255], rtol=1e-6)


def test_small_requests_have_no_delayed_ack_stall(client: RewardClient) -> None:
    # Headers and body written separately with Nagle on cost a 40 ms delayed-ACK wait per request.
    client.score(constant_images([1]), ["warm up"])
    times = []
    for i in range(9):
        start = time.monotonic()
        client.score(constant_images([i]), ["a"])
        times.append(time.monotonic() - start)
    assert sorted(times)[4] < 0.03, times


def test_requests_spread_over_several_servers(server: Server, tmp_path: Path) -> None:
    other = Server(tmp_path, "helpers_rewards:Probe", token=TOKEN)
    try:
        with RewardClient([server.url, other.url], token=TOKEN, max_in_flight=4) as c:
            before = [c.health(u)["stats"]["requests"] for u in (server.url, other.url)]
            futures = [c.submit(constant_images([i]), ["sleep:0.02"]) for i in range(8)]
            assert [round(f.result(timeout=30).item() * 255) for f in futures] == list(range(8))
            after = [c.health(u)["stats"]["requests"] for u in (server.url, other.url)]
        assert after[0] - before[0] >= 2 and after[1] - before[1] >= 2, (before, after)
    finally:
        other.kill()


def test_client_rejects_bad_urls() -> None:
    with pytest.raises(ValueError, match="must look like 'http://host:port'"):
        RewardClient("127.0.0.1:8000")
    with pytest.raises(ValueError, match="no path or query"):
        RewardClient("http://127.0.0.1:8000/score")
    with pytest.raises(ValueError, match="at least one"):
        RewardClient([])


# Failures ---------------------------------------------------------------------------------------------------
def test_server_not_running_fails_fast_and_clearly() -> None:
    port = free_port()
    c = RewardClient(f"http://127.0.0.1:{port}", attempts=3, backoff_s=0.05, connect_timeout=2)
    start = time.monotonic()
    with pytest.raises(
        RewardError,
        match=rf"reward server http://127\.0\.0\.1:{port} unreachable after 3 "
        r"attempts \(connection refused\)",
    ):
        c.score(constant_images([1]), ["a"])
    assert time.monotonic() - start < 3.0


@pytest.mark.parametrize("when", ["between_requests", "during_a_request"])
def test_server_killed(tmp_path: Path, when: str) -> None:
    srv = Server(tmp_path, "helpers_rewards:Probe")
    try:
        with RewardClient(srv.url, attempts=3, backoff_s=0.05, connect_timeout=2, read_timeout=20) as c:
            assert c.score(constant_images([51]), ["a"]).item() == pytest.approx(0.2)  # a pooled connection
            pending = None
            if when == "during_a_request":
                pending = c.submit(constant_images([51]), ["sleep:5"])
                deadline = time.monotonic() + 10
                while c.health()["in_flight"] < 1:
                    assert time.monotonic() < deadline, "request never reached the server"
                    time.sleep(0.01)
            start = time.monotonic()
            srv.proc.send_signal(signal.SIGKILL)
            srv.proc.wait(timeout=10)
            message = rf"{srv.url} unreachable after 3 attempts \(connection refused\)"
            with pytest.raises(RewardError, match=message):
                c.score(constant_images([51]), ["a"]) if pending is None else pending.result(timeout=10)
            assert time.monotonic() - start < 3.0
    finally:
        srv.kill()


def test_slow_server_times_out(server: Server) -> None:
    c = RewardClient(server.url, token=TOKEN, read_timeout=0.25, attempts=2, backoff_s=0.05)
    c.health()
    start = time.monotonic()
    with pytest.raises(RewardError, match=r"unreachable after 2 attempts \(no reply within the 0.25 s read"):
        c.score(constant_images([1]), ["sleep:0.5"])
    assert time.monotonic() - start < 2.5


def test_failover_to_a_live_server(server: Server) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with RewardClient([dead, server.url], token=TOKEN, attempts=3, backoff_s=0.01) as c:
        for i in range(4):
            assert c.score(constant_images([i]), ["x"]).item() == pytest.approx(i / 255)
        assert c._down_until[dead] > 0  # the dead server was tried, then avoided


def with_header(body: bytes, **changes: object) -> bytes:
    """`body` (a valid request) with its JSON header fields replaced."""
    head_len = struct.unpack(">I", body[4:8])[0]
    header = json.loads(body[8 : 8 + head_len])
    header.update(changes)
    head = json.dumps(header).encode()
    return body[:4] + struct.pack(">I", len(head)) + head + body[8 + head_len :]


MALFORMED = {
    "garbage": (b"hello, not a reward request", {}, 400, "does not start with"),
    "payload_short": (encode_request(constant_images([1, 2]), ["a", "b"])[:-5], {}, 400, "payload is"),
    "prompt_count": (
        with_header(encode_request(constant_images([1, 2]), ["a", "b"]), prompts=["a", "b", "c"]),
        {},
        400,
        "3 prompts for 2 images",
    ),
    "too_many_images": (encode_request(constant_images([0] * 65, size=1), ["p"] * 65), {}, 413, "65 images"),
    "too_many_bytes": (b"x" * (16 * 1024 * 1024), {}, 413, "over the server's limit"),
    "no_token": (encode_request(constant_images([1]), ["a"]), {"Authorization": ""}, 401, "missing bearer"),
    "wrong_token": (encode_request(constant_images([1]), ["a"]), {"Authorization": "Bearer nope"}, 401, "wrong bearer"),
    # a body near the limit: the server reads it before refusing, so the client sees the 401, not a reset
    "wrong_token_large": (
        encode_request(constant_images([1], size=550), ["a"]),
        {"Authorization": "Bearer nope"},
        401,
        "wrong bearer",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_bad_request_rejected_and_server_keeps_serving(server: Server, client: RewardClient, case: str) -> None:
    body, headers, status, message = MALFORMED[case]
    got, reply = server.post(body, headers)
    assert got == status, reply
    assert message in reply["error"]
    assert client.score(constant_images([102]), ["a"]).item() == pytest.approx(0.4)


def test_wrong_path_and_method(server: Server) -> None:
    assert server.post(b"", path="/nope")[0] == 404
    assert server.post(b"", path="/score", method="GET")[0] == 405
    status, health = server.post(b"", path="/health", method="GET")
    assert status == 200 and health["reward"] == "probe" and health["queue_depth"] >= 0 and health["version"]


@pytest.mark.parametrize("token", [None, "nope"])
def test_token_rejected_without_retries(server: Server, token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    c = RewardClient(server.url, token=token, attempts=3, backoff_s=1.0)
    start = time.monotonic()
    with pytest.raises(RewardError, match=r"rejected the token \(HTTP 401: (missing|wrong) bearer token"):
        c.score(constant_images([1]), ["a"])
    assert time.monotonic() - start < 1.0  # a 4xx is not retried


def test_nan_raises_naming_prompt_or_drops(server: Server, client: RewardClient) -> None:
    prompts = ["fine", "nan for this one", "inf too"]
    images = constant_images([51, 102, 153])
    with pytest.raises(RewardError, match=r"returned nan for prompt 'nan for this one' \(image 1\)"):
        client.score(images, prompts)
    with RewardClient(server.url, token=TOKEN, nonfinite="drop") as dropping:
        scores = dropping.score(images, prompts)
    assert scores[0].item() == pytest.approx(0.2)
    assert torch.isnan(scores[1]) and not torch.isfinite(scores[2])


def test_reward_error_names_prompt_and_spares_batch_mates(server: Server) -> None:
    with RewardClient(server.url, token=TOKEN, max_in_flight=4, read_timeout=20) as c:
        busy = c.submit(constant_images([1]), ["sleep:0.2"])  # the next two queue behind it and merge
        time.sleep(0.05)
        bad = c.submit(constant_images([2, 3]), ["ok", "raise on this prompt"])
        good = c.submit(constant_images([4]), ["ok"])
        assert good.result(timeout=20).item() == pytest.approx(4 / 255)
        with pytest.raises(RewardError, match=r"ValueError: probe cannot score prompt 'raise on this"):
            bad.result(timeout=20)
        busy.result(timeout=20)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_in_flight_then_exits_0(tmp_path: Path, sig: signal.Signals) -> None:
    srv = Server(tmp_path, "helpers_rewards:Probe")
    try:
        with RewardClient(srv.url, read_timeout=20, attempts=1) as c:
            c.health()
            future = c.submit(constant_images([204]), ["sleep:0.8"])
            deadline = time.monotonic() + 10
            while c.health()["in_flight"] < 1:
                assert time.monotonic() < deadline, "request never reached the server"
                time.sleep(0.01)
            srv.proc.send_signal(sig)
            assert future.result(timeout=20).item() == pytest.approx(0.8)
        assert srv.proc.wait(timeout=20) == 0, srv.log()
        assert "stopped" in srv.log()
    finally:
        srv.kill()


# A real reward through the server ---------------------------------------------------------------------------
def test_shapes_reward_through_server(tmp_path: Path) -> None:
    """`python -m vgpo_fast.rewards.server` registers no task reward: it is given the registered name's explicit
    target (`resolve_spec`), and serves the same scores as the in-process reward built by name."""
    pytest.importorskip("vgpo_fast.tasks.shapes.reward")
    render = pytest.importorskip("vgpo_fast.tasks.shapes.render")
    prompts = ["a red circle", "two blue squares", "a green triangle left of a red circle", "a red circle"]
    images = render.render_prompts(prompts, [0, 1, 2, 3])
    images[3] = 255 - images[3]  # one that should fail
    local = build_reward("shapes?mode=partial").score(images, prompts)
    spec = resolve_spec("shapes?mode=partial")
    assert spec == "vgpo_fast.tasks.shapes.reward:CompositionalReward?mode=partial"
    srv = Server(tmp_path, spec)
    try:
        with RewardClient(srv.url) as c:
            assert torch.equal(c.score(images, prompts), local)
            assert c.name == "compositional_partial"
    finally:
        srv.kill()


# Registry (the server's --reward) -------------------------------------------------------------------------
def test_registry_specs() -> None:
    assert {"ocr", "shapes", "compositional", "clipscore", "pickscore"} <= set(available_rewards())
    assert parse_spec("ocr?mode=rec&num_threads=2&use_cls=true&x=none") == (
        "ocr",
        {"mode": "rec", "num_threads": 2, "use_cls": True, "x": None},
    )
    assert parse_spec({"name": "shapes", "mode": "partial"}) == ("shapes", {"mode": "partial"})
    probe = build_reward("helpers_rewards:Probe?delay_s=0.5", nonfinite="drop")
    assert isinstance(probe, Probe) and probe.delay_s == 0.5 and probe.nonfinite == "drop"
    client = build_reward("http://127.0.0.1:1,http://127.0.0.1:2?attempts=1")
    assert isinstance(client, RewardClient) and client.urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown reward 'nope': known names are clipscore, compositional, ocr, pickscore, shapes"),
        (
            "shape",
            "unknown reward 'shape' (did you mean 'shapes'?): known names are clipscore, compositional, ocr, "
            "pickscore, shapes",
        ),
        ("no_such_module_xyz:Cls", "cannot import module 'no_such_module_xyz'"),
        ("helpers_rewards:Nope", "has no attribute 'Nope'"),
        ("helpers_rewards:np", "is not a class or a function"),
        ("helpers_rewards:Probe?delay=1", "unknown option 'delay'; did you mean 'delay_s'?"),
        ("helpers_rewards:Probe?delay_s", "key=value"),
        ("", "non-empty"),
        ("clipscore", "missing option 'model_dir'"),
    ],
)
def test_registry_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_reward(spec)
