"""rollout.engine: the pipelined reward engine against real rollouts (closed-form velocity), real rewards and a
real reward-server process: overlap on/off bit-identical, equal to a serial computation, sparse steps, the
intermediate decoder, the in-flight bound, errors naming their step, the worker's thread budget."""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vgpo_fast.rewards.base import RewardError, RewardModel
from vgpo_fast.rewards.client import TOKEN_ENV, RewardClient
from vgpo_fast.rollout import fill_sparse_rewards, reward_steps, sample_trajectories, sigmas
from vgpo_fast.rollout.engine import RewardPipeline, RewardResult

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
T = 6
B = 4
SIZE = 16
PROMPTS = [f"prompt {i}" for i in range(B)]


class PixelReward(RewardModel):
    """A deterministic function of the pixels: mean of (r + 2 g + 3 b) / (6 * 255) per image, in [0, 1].

    delay_s is slept per call (an expensive reward); calls, concurrent and max_concurrent record the calls;
    fail_on_call=k raises ValueError on the k-th call (0-based); nan_on_call=k returns NaN on that call.
    """

    name = "pixel"

    def __init__(self, delay_s: float = 0.0, fail_on_call: int | None = None, nan_on_call: int | None = None) -> None:
        super().__init__()
        self.delay_s = float(delay_s)
        self.fail_on_call = fail_on_call
        self.nan_on_call = nan_on_call
        self.calls = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.completed = 0
        self.lock = threading.Lock()

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        with self.lock:
            call = self.calls
            self.calls += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            time.sleep(self.delay_s)
            if call == self.fail_on_call:
                raise ValueError(f"pixel reward refuses call {call}")
            weights = np.array([1.0, 2.0, 3.0]) / (6 * 255.0)
            scores = (images.astype(np.float64) * weights).sum(axis=-1).reshape(images.shape[0], -1).mean(axis=1)
            if call == self.nan_on_call:
                scores[0] = np.nan
            return scores
        finally:
            with self.lock:
                self.concurrent -= 1
                self.completed += 1


class AsyncPixelReward(PixelReward):
    """PixelReward with a truly asynchronous `submit` (its own pool of 8 threads), as a remote client has."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(delay_s)
        self.pool = cf.ThreadPoolExecutor(max_workers=8)

    def submit(self, images, prompts) -> cf.Future:
        return self.pool.submit(self.score, images, list(prompts))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        super().close()


def unit_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """The decoder of a pixel-space pipeline (`FlowPipeline.decode` without a VAE), written out here so that the
    reward-server process, which imports this module, does not load the model stack."""
    return x.float().add(1.0).mul(0.5).clamp(0.0, 1.0)


def velocity(target: torch.Tensor):
    """v = x - target: the projections x0_hat_j = (1 - sigma) x + sigma target differ from step to step."""

    def vel(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - target

    return vel


def rollout(on_projection=None, seed: int = 0, keep: bool = False, steps: int = T):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(B, 3, SIZE, SIZE, generator=g) * 2 - 1
    noise = torch.randn(B, 3, SIZE, SIZE, generator=g)
    return sample_trajectories(
        velocity(target), noise, sigmas(steps), a=0.7, generator=g, on_projection=on_projection, keep_projections=keep
    )


def run(reward: RewardModel, seed: int = 0, keep: bool = False, **kw) -> tuple[object, RewardResult]:
    with RewardPipeline(reward, unit_to_pixels, T, **kw) as rp:
        rp.begin(PROMPTS)
        traj = rollout(rp, seed, keep)
        return traj, rp.finish()


# Correctness ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["all", 2, [1, 3]])
def test_overlap_on_off_bit_identical_and_equal_to_serial(spec) -> None:
    traj_on, on = run(PixelReward(), keep=True, reward_steps=spec, overlap=True, max_in_flight=3)
    traj_off, off = run(PixelReward(), keep=True, reward_steps=spec, overlap=False)
    assert torch.equal(traj_on.latents, traj_off.latents)
    assert torch.equal(on.rewards, off.rewards) and torch.equal(on.evaluated, off.evaluated)
    S = reward_steps(T, spec)
    assert on.steps == S and on.rewards.shape == (B, T) and on.rewards.dtype == torch.float32
    direct = torch.stack([PixelReward().score(unit_to_pixels(traj_on.projections[j]), PROMPTS) for j in S], dim=1)
    assert torch.equal(on.evaluated, direct)
    assert torch.equal(on.rewards, fill_sparse_rewards(direct, S, T))
    assert len(set(on.rewards[0].tolist())) == len(S)  # the steps really differ: the test can tell them apart
    assert off.timings["mode"] == "serial" and off.timings["overlap_frac"] == 0.0
    assert on.timings["mode"] == "worker" and len(on.timings["per_step"]["decode"]) == len(S)


def test_sparse_steps_score_only_S() -> None:
    reward = PixelReward()
    _, res = run(reward, reward_steps=4)  # S = {1, 5}
    assert res.steps == [1, 5] and reward.calls == 2
    assert torch.equal(res.rewards[:, :2], res.evaluated[:, :1].expand(B, 2))
    assert torch.equal(res.rewards[:, 2:], res.evaluated[:, 1:].expand(B, 4))


def test_intermediate_decode_only_before_the_last_step() -> None:
    seen: dict[str, list[tuple[int, ...]]] = {"full": [], "small": []}

    def full(x: torch.Tensor) -> torch.Tensor:
        seen["full"].append(tuple(x.shape))
        return unit_to_pixels(x)

    def small(x: torch.Tensor) -> torch.Tensor:  # a reduced-resolution decoder
        seen["small"].append(tuple(x.shape))
        return unit_to_pixels(F.avg_pool2d(x.float(), 2))

    with RewardPipeline(PixelReward(), full, T, intermediate_decode=small) as rp:
        rp.begin(PROMPTS)
        traj = rollout(rp, keep=True)
        res = rp.finish()
    assert len(seen["small"]) == T - 1 and len(seen["full"]) == 1
    ref = PixelReward()
    assert torch.equal(res.evaluated[:, -1], ref.score(unit_to_pixels(traj.final), PROMPTS))
    for j in range(T - 1):
        expected = ref.score(unit_to_pixels(F.avg_pool2d(traj.projections[j].float(), 2)), PROMPTS)
        assert torch.equal(res.evaluated[:, j], expected)


def test_pipeline_owns_its_input() -> None:
    """The caller may overwrite x0_hat as soon as the call returns."""
    gate = threading.Event()

    def slow_decode(x: torch.Tensor) -> torch.Tensor:
        gate.wait(10)
        return unit_to_pixels(x)

    x = torch.zeros(B, 3, SIZE, SIZE)
    with RewardPipeline(PixelReward(), slow_decode, 1) as rp:
        rp.begin(PROMPTS)
        rp(0, x)
        x.fill_(1.0)  # would turn every score into 1 if the worker read the caller's tensor
        gate.set()
        res = rp.finish()
    assert torch.equal(res.rewards, torch.full((B, 1), 128 / 255, dtype=torch.float32))  # 0 -> 0.5 -> 128


def test_finish_timeout_keeps_the_batch_open() -> None:
    gate = threading.Event()

    def gated_decode(x: torch.Tensor) -> torch.Tensor:
        gate.wait(10)
        return unit_to_pixels(x)

    with RewardPipeline(PixelReward(), gated_decode, 2, max_in_flight=2) as rp:
        rp.begin(PROMPTS)
        rp(0, torch.zeros(B, 3, SIZE, SIZE))
        rp(1, torch.zeros(B, 3, SIZE, SIZE))
        with pytest.raises(TimeoutError, match=r"steps \[0, 1\] still pending"):
            rp.finish(timeout=0.05)
        gate.set()
        assert rp.finish().rewards.shape == (B, 2)


# Concurrency ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_in_flight", [1, 3])
def test_in_flight_bound(max_in_flight: int) -> None:
    reward = PixelReward(delay_s=0.02)
    pending_seen = []
    with RewardPipeline(reward, unit_to_pixels, T, max_in_flight=max_in_flight) as rp:
        rp.begin(PROMPTS)

        def on_projection(j: int, x: torch.Tensor) -> None:
            rp(j, x)
            with reward.lock:
                pending_seen.append(j + 1 - reward.completed)  # handed in minus scored

        rollout(on_projection)
        res = rp.finish()
    assert max(pending_seen) == max_in_flight  # reached (the reward is the slow part) and never exceeded
    assert res.timings["max_pending"] == max_in_flight
    assert res.timings["wait"] > 0 and 0.0 <= res.timings["overlap_frac"] <= 1.0


def test_async_submit_keeps_several_requests_in_flight() -> None:
    reward = AsyncPixelReward(delay_s=0.1)
    ref_traj, ref = run(PixelReward(), overlap=False)
    with RewardPipeline(reward, unit_to_pixels, T, max_in_flight=3) as rp:
        assert rp.mode == "async-submit"
        rp.begin(PROMPTS)
        traj = rollout(rp)
        res = rp.finish()
    reward.close()
    assert reward.max_concurrent == 3  # not serialised behind one worker, and bounded
    assert torch.equal(traj.latents, ref_traj.latents) and torch.equal(res.rewards, ref.rewards)


def test_worker_thread_budget_leaves_the_main_thread_alone() -> None:
    seen = []

    class Probe(PixelReward):
        def _score(self, images, prompts):
            seen.append(torch.get_num_threads())
            return super()._score(images, prompts)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(Probe(), worker_threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1] * T


# Errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlap", [True, False])
def test_reward_error_names_its_step_and_pipeline_recovers(overlap: bool) -> None:
    with RewardPipeline(PixelReward(delay_s=0.005, fail_on_call=2), unit_to_pixels, T, overlap=overlap) as rp:
        rp.begin(PROMPTS)
        match = r"reward of step j=2 \(of T=6\) failed: ValueError: pixel reward refuses call 2"
        try:
            rollout(rp)  # the error surfaces in a later __call__ (always so with overlap off) ...
        except ValueError as exc:
            assert exc.__cause__ is not None and str(exc.__cause__) == "pixel reward refuses call 2"
            with pytest.raises(ValueError, match=match):
                rp.finish()  # the batch is still open: finish drains it and raises again
        else:
            assert overlap
            with pytest.raises(ValueError, match=match):
                rp.finish()  # ... or here, when the rollout outran the worker
        rp.reward = PixelReward()
        rp.begin(PROMPTS)
        rollout(rp)
        assert rp.finish().rewards.shape == (B, T)


def test_reward_error_type_and_decode_error() -> None:
    with RewardPipeline(PixelReward(nan_on_call=0), unit_to_pixels, T, reward_steps=[0]) as rp:
        rp.begin(PROMPTS)
        with pytest.raises(RewardError, match=r"reward of step j=0 .*returned nan for prompt 'prompt 0'"):
            rollout(rp)
            rp.finish()
        rp.cancel()
    with RewardPipeline(PixelReward(), lambda x: unit_to_pixels(x)[:1], T) as rp:
        rp.begin(PROMPTS)
        with pytest.raises(ValueError, match=r"decode of step j=0 .*\[B=4, 3, H, W\], got \(1, 3, 16, 16\)"):
            rollout(rp)
            rp.finish()


def test_misuse_is_a_value_error() -> None:
    x = torch.zeros(B, 3, SIZE, SIZE)
    with RewardPipeline(PixelReward(), unit_to_pixels, T, reward_steps=2) as rp:
        with pytest.raises(ValueError, match="begin"):
            rp.finish()
        with pytest.raises(ValueError, match="begin"):
            rp(0, x)
        rp.begin(PROMPTS)
        with pytest.raises(ValueError, match="in progress"):
            rp.begin(PROMPTS)
        with pytest.raises(ValueError, match=r"B=4"):
            rp(0, x[:3])
        with pytest.raises(ValueError, match=r"\[0, 6\)"):
            rp(T, x)
        rp(0, x)  # not in S = {1, 3, 5}: accepted, no work
        with pytest.raises(ValueError, match="already"):
            rp(0, x)
        rp(1, x)
        with pytest.raises(ValueError, match=r"evaluated steps \[3, 5\]"):
            rp.finish()
    for bad in ({"max_in_flight": 0}, {"worker_threads": 0}, {"reward_steps": [7]}):
        with pytest.raises(ValueError):
            RewardPipeline(PixelReward(), unit_to_pixels, T, **bad)
    with pytest.raises(ValueError, match="prompts"):
        RewardPipeline(PixelReward(), unit_to_pixels, T).begin("one prompt")


# A real reward server ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("server")
    port_file = tmp / "port"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    env.pop(TOKEN_ENV, None)
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vgpo_fast.cli",
                "reward-server",
                "--reward",
                "test_engine:PixelReward",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--max-wait-ms",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"reward server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{int(port_file.read_text())}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_reward_server_gives_in_process_rewards(server: str) -> None:
    _, local = run(PixelReward(), reward_steps=2)
    with RewardClient(server, read_timeout=30, max_in_flight=4) as client:
        _, remote = run(client, reward_steps=2, max_in_flight=3)
    assert remote.timings["mode"] == "async-submit"
    assert torch.equal(remote.rewards, local.rewards) and torch.equal(remote.evaluated, local.evaluated)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA stream path needs a GPU")
def test_cuda_side_stream_bit_identical() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    target = torch.rand(B, 3, SIZE, SIZE, device="cuda") * 2 - 1
    noise = torch.randn(B, 3, SIZE, SIZE, device="cuda")
    results = []
    for overlap in (True, False):
        g.manual_seed(0)
        with RewardPipeline(PixelReward(), unit_to_pixels, T, overlap=overlap) as rp:
            rp.begin(PROMPTS)
            traj = sample_trajectories(
                velocity(target), noise, sigmas(T), generator=g, on_projection=rp, keep_projections=True
            )
            results.append((traj, rp.finish()))
    (t_on, r_on), (t_off, r_off) = results
    assert torch.equal(t_on.latents, t_off.latents) and torch.equal(r_on.rewards, r_off.rewards)
    direct = torch.stack([PixelReward().score(unit_to_pixels(t_on.projections[j]), PROMPTS) for j in range(T)], 1)
    assert torch.equal(r_on.evaluated, direct)


def test_an_overlapped_batch_shortens_the_gil_switch_interval_and_restores_it() -> None:
    default = sys.getswitchinterval()
    seen: list[float] = []

    class Recording(PixelReward):
        def _score(self, images, prompts):
            seen.append(sys.getswitchinterval())
            return super()._score(images, prompts)

    for overlap, want in ((True, min(default, 5e-4)), (False, default)):
        seen.clear()
        run(Recording(), overlap=overlap)
        assert seen and all(s == pytest.approx(want) for s in seen)
        assert sys.getswitchinterval() == default
    with RewardPipeline(PixelReward(), lambda x: x, 2, gil_switch_s=None) as pipe:
        pipe.begin(["a"])
        assert sys.getswitchinterval() == default
        pipe.cancel()
    with pytest.raises(ValueError, match="gil_switch_s"):
        RewardPipeline(PixelReward(), lambda x: x, 2, gil_switch_s=0.0)
