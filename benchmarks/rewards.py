"""Benchmark of each reward in-process against the same reward behind the reward server, side by side.

For each reward that runs here (the built-ins whose dependencies are installed, plus 'null', which returns
zeros and so measures the server path alone: 'null' on 24 px images, 'null512' on 512 px ones) and each batch
size B: the median time of `reward.score` in this process, the median time of `RewardClient.score` against a
server on 127.0.0.1 serving the same spec (one request at a time), the server's added latency per batch
(server - in-process), the server's own scoring time (its `score_ms`), the path around it (server time -
`score_ms`: encoding, HTTP, decoding, queueing; unlike 'added' it does not move with the noise in the reward's
own timing), and the throughput with `--in-flight` requests of B in flight at once (where the server's
micro-batching merges them). The three are timed in turn, round by round, so that a change in the machine's
load hits all of them alike. OCR runs with one onnxruntime thread in both places, so that the comparison holds
on a shared machine.

    python benchmarks/rewards.py              # B in {1, 4, 16, 64}
    python benchmarks/rewards.py --quick      # same sizes, shorter timing windows
    python benchmarks/rewards.py --rewards shapes,null --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vgpo_fast.rewards.base import RewardModel
from vgpo_fast.rewards.client import RewardClient
from vgpo_fast.rewards.registry import build_reward

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 4, 16, 64)


class NullReward(RewardModel):
    """Zeros, at no cost: what is left of a timing through the server is the server path itself."""

    name = "null"

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return np.zeros(images.shape[0])


def shapes_inputs(n: int) -> tuple[np.ndarray, list[str]]:
    """n ground-truth shape scenes, 24 px: uint8 `[n, 24, 24, 3]` and their prompts."""
    from vgpo_fast.tasks.shapes.prompts import all_prompts
    from vgpo_fast.tasks.shapes.render import render_prompts

    pool = [p for prompts in all_prompts().values() for p in prompts[:12]]
    prompts = [pool[(7 * i) % len(pool)] for i in range(n)]
    return render_prompts(prompts, list(range(n))), prompts


def text_inputs(n: int) -> tuple[np.ndarray, list[str]]:
    """n rendered words, 32 x 128 px: uint8 `[n, 32, 128, 3]` and their prompts."""
    from vgpo_fast.tasks.text.render import make_prompt, render_batch, words

    texts = [words("all")[(5 * i) % len(words("all"))] for i in range(n)]
    return render_batch(texts), [make_prompt(t) for t in texts]


def noise_inputs_512(n: int) -> tuple[np.ndarray, list[str]]:
    """n uniform-noise images at SD3's 512 px: uint8 `[n, 512, 512, 3]` (0.75 MiB each), prompts 'x'."""
    return np.random.default_rng(0).integers(0, 256, (n, 512, 512, 3), dtype=np.uint8), ["x"] * n


# name -> (spec for build_reward and the server, input maker)
REWARDS: dict[str, tuple[str, Callable[[int], tuple[np.ndarray, list[str]]]]] = {
    "null": ("benchmarks.rewards:NullReward", shapes_inputs),
    "null512": ("benchmarks.rewards:NullReward", noise_inputs_512),
    "shapes": ("vgpo_fast.tasks.shapes.reward:CompositionalReward?mode=partial", shapes_inputs),
    "ocr": ("ocr?num_threads=1", text_inputs),
}


def paired_medians(
    fns: list[Callable[[], object]], min_time: float, min_reps: int = 3, max_reps: int = 200
) -> list[float]:
    """Median wall time of each of `fns`, run in turn round by round (so that a change in machine load hits
    all of them alike) for about `min_time` seconds each, after one warm-up call of each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < min_reps or (time.perf_counter() - start < min_time * len(fns) and len(times[0]) < max_reps):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


class ServerProcess:
    """`python -m vgpo_fast.rewards.server --reward spec` on 127.0.0.1, an ephemeral port."""

    def __init__(self, spec: str, max_batch: int, timeout: float = 120.0) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="vgpo-reward-bench-")
        port_file = Path(self.dir.name) / "port"
        self.log = open(Path(self.dir.name) / "log", "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vgpo_fast.rewards.server",
                "--reward",
                spec,
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--max-batch",
                str(max_batch),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"reward server for {spec!r} did not start: "
                    f"{(Path(self.dir.name) / 'log').read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.dir.cleanup()


def bench_reward(name: str, batches: tuple[int, ...], min_time: float, in_flight: int) -> list[dict]:
    """Rows of one reward: in-process and through-server timings per batch size."""
    spec, make_inputs = REWARDS[name]
    local = NullReward() if name.startswith("null") else build_reward(spec)  # the server imports it by path
    images, prompts = make_inputs(max(batches))
    server = ServerProcess(spec, max_batch=max(batches) * in_flight)
    rows = []
    try:
        with RewardClient(server.url, max_in_flight=in_flight) as client:
            for b in batches:
                x, p = images[:b], prompts[:b]
                score_ms: list[float] = []

                def remote(x: np.ndarray = x, p: list[str] = p, score_ms: list[float] = score_ms) -> None:
                    client.score(x, p)
                    score_ms.append(client.last_timing["score_ms"])

                def burst(x: np.ndarray = x, p: list[str] = p) -> None:
                    for f in [client.submit(x, p) for _ in range(in_flight)]:
                        f.result()

                t_local, t_server, t_burst = paired_medians(
                    [lambda x=x, p=p: local.score(x, p), remote, burst], min_time
                )
                batch_sizes = client.health()["stats"]
                rows.append(
                    dict(
                        reward=name,
                        reward_name=local.name,
                        spec=spec,
                        batch=b,
                        image_shape=list(x.shape[1:]),
                        local_ms=t_local * 1e3,
                        local_img_s=b / t_local,
                        server_ms=t_server * 1e3,
                        server_img_s=b / t_server,
                        added_ms=(t_server - t_local) * 1e3,
                        server_score_ms=statistics.median(score_ms),
                        path_ms=t_server * 1e3 - statistics.median(score_ms),
                        in_flight=in_flight,
                        in_flight_img_s=in_flight * b / t_burst,
                        max_batch_images_seen=batch_sizes["max_batch_images"],
                    )
                )
                print(f"  {name} B={b}: done", file=sys.stderr, flush=True)
    finally:
        server.stop()
        local.close()
    return rows


def print_table(rows: list[dict]) -> None:
    burst = f"x{rows[0]['in_flight']} img/s"
    head = (
        f"{'reward':<22} {'B':>3} {'in-proc ms':>10} {'img/s':>8} {'server ms':>10} {'img/s':>8} "
        f"{'added ms':>9} {'srv score ms':>12} {'path ms':>8} {burst:>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['reward']:<22} {r['batch']:>3} {r['local_ms']:>10.2f} {r['local_img_s']:>8.0f} "
            f"{r['server_ms']:>10.2f} {r['server_img_s']:>8.0f} {r['added_ms']:>9.2f} "
            f"{r['server_score_ms']:>12.2f} {r['path_ms']:>8.2f} {r['in_flight_img_s']:>10.0f}"
        )


def available(names: list[str]) -> list[str]:
    """The rewards of `names` that build here; prints why the others are skipped."""
    out = []
    for name in names:
        try:
            if not name.startswith("null"):
                build_reward(REWARDS[name][0]).close()
            REWARDS[name][1](1)
            out.append(name)
        except (ImportError, OSError, ValueError) as exc:
            print(f"skipping {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing windows")
    parser.add_argument("--rewards", default=",".join(REWARDS), help=f"comma-separated, of {sorted(REWARDS)}")
    parser.add_argument("--in-flight", type=int, default=4, help="concurrent requests in the burst column")
    parser.add_argument("--json", default="bench_out/rewards.json", help="where to write the results")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    unknown = sorted(set(names) - set(REWARDS))
    if unknown:
        parser.error(f"unknown rewards {unknown}; choose from {sorted(REWARDS)}")
    min_time = 0.3 if args.quick else 1.5
    print(f"python {platform.python_version()} cpus={os.cpu_count()} rewards={names} min_time={min_time}s")
    rows = [r for name in available(names) for r in bench_reward(name, BATCHES, min_time, args.in_flight)]
    if not rows:
        print("no reward could be benchmarked", file=sys.stderr)
        return 1
    print_table(rows)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    meta = dict(
        python=platform.python_version(),
        machine=platform.machine(),
        processor=platform.processor(),
        cpu_count=os.cpu_count(),
        min_time_s=min_time,
        batches=list(BATCHES),
        load_avg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    )
    with open(args.json, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
