"""Benchmark of the pipelined reward engine: one rollout with per-step rewards, serial vs overlapped.

The rollout is T steps of a real tiny `SD3Transformer2DModel` (pixel space, `tiny_transformer_config`) on the
shapes task; its velocity is `x - target + 0.01 * v_net(x)`, which keeps the transformer's full cost while the
projections stay near rendered scenes, so the rewards see images of the kind they score in training. Every
evaluated step's projection is decoded (the pixel-space rescale) and scored by one of three rewards, each a
block of the output:

- `compositional`: the real `CompositionalReward` (partial mode) in the reward worker thread; it needs a free
  CPU core (and the GIL for its numpy glue) to overlap anything;
- `latency`: a reward that waits `delay` ms per call and uses no CPU, as a reward server on other GPUs does
  from the trainer's side; `delay` is set to the measured cost of one rollout step (matched costs);
- `server`: the same latency reward behind a real reward-server process on 127.0.0.1 (`RewardClient`, async
  submit: several requests in flight while denoising continues).

Per block, three modes are timed in turn round by round (the order alternating), so that a change in the
machine's load hits all of them alike: `rollout` (no reward: the floor), `serial` (RewardPipeline
overlap=False: the rollout waits for each reward) and `overlap`. Printed: median wall times, serial / overlap,
the ideal ratio (rollout + rewards) / (max(rollout, rewards) + one reward call: the terminal reward is never
hidden), the engine's overlap_frac (the share of reward time the main thread did not wait for; on a contended
CPU the overlapped reward itself runs slower, so it can be high with no gain in wall time). The main thread and the
reward worker get `--threads` and `--worker-threads` torch threads (default 1 + 1).

    python benchmarks/rollout.py               # B=16, 128 px, T=10, 7 rounds, all three rewards
    python benchmarks/rollout.py --quick       # 3 rounds
    python benchmarks/rollout.py --rewards compositional --reward-steps 2 --max-in-flight 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vgpo_fast.rewards.base import RewardModel

REPO = Path(__file__).resolve().parents[1]
REWARDS = ("compositional", "latency", "server")


class LatencyReward(RewardModel):
    """Mean brightness after waiting `delay_ms` per call: the trainer's view of a reward on other GPUs."""

    name = "latency"

    def __init__(self, delay_ms: float = 30.0) -> None:
        super().__init__()
        self.delay_s = float(delay_ms) / 1e3

    def _score(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        time.sleep(self.delay_s)
        return images.reshape(images.shape[0], -1).mean(axis=1, dtype=np.float64) / 255.0


class Server:
    """`python -m vgpo_fast.cli reward-server --reward spec` on 127.0.0.1, an ephemeral port."""

    def __init__(self, spec: str) -> None:
        self.dir = tempfile.TemporaryDirectory()
        port_file = Path(self.dir.name) / "port"
        env = dict(
            os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vgpo_fast.cli",
                "reward-server",
                "--reward",
                spec,
                "--port",
                "0",
                "--port-file",
                str(port_file),
                "--max-wait-ms",
                "1",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"reward server ({spec}) did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.dir.cleanup()


def setup(args: argparse.Namespace):
    """(velocity fn, prompts, decode): the tiny transformer pulled towards rendered scenes of the prompts."""
    from vgpo_fast.models.pipeline import pixels_to_unit, unit_to_pixels
    from vgpo_fast.models.transformer import build_transformer, tiny_transformer_config, velocity
    from vgpo_fast.tasks.shapes.prompts import all_prompts
    from vgpo_fast.tasks.shapes.render import render_prompts

    torch.manual_seed(0)
    cfg = tiny_transformer_config(
        args.size, patch_size=args.patch, width=args.width, layers=args.layers, heads=2, text_dim=64, pooled_dim=64
    )
    net = build_transformer(cfg).eval()
    pool = [p for prompts in all_prompts().values() for p in prompts[:8]]
    prompts = [pool[(7 * i) % len(pool)] for i in range(args.batch)]
    target = pixels_to_unit(torch.from_numpy(render_prompts(prompts, list(range(args.batch)), args.size)))
    ehs, pooled = torch.randn(args.batch, 8, 64), torch.randn(args.batch, 64)

    def vel(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - target + 0.01 * velocity(net, x, sigma, ehs, pooled)

    return vel, prompts, unit_to_pixels


def rollout_once(vel, args: argparse.Namespace, sig: torch.Tensor, on_projection=None):
    from vgpo_fast.rollout import sample_trajectories

    g = torch.Generator().manual_seed(1)
    noise = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    return sample_trajectories(vel, noise, sig, a=0.7, generator=g, on_projection=on_projection)


def block(
    name: str, reward: RewardModel, vel, prompts, decode, sig, spec, args: argparse.Namespace, rounds: int
) -> None:
    from vgpo_fast.rollout import reward_steps
    from vgpo_fast.rollout.engine import RewardPipeline

    S = reward_steps(args.steps, spec)
    walls: dict[str, list[float]] = {"rollout": [], "serial": [], "overlap": []}
    fracs: list[float] = []
    results = {}
    kw = {"reward_steps": spec, "max_in_flight": args.max_in_flight, "worker_threads": args.worker_threads}
    with (
        RewardPipeline(reward, decode, args.steps, overlap=False, **kw) as serial,
        RewardPipeline(reward, decode, args.steps, overlap=True, **kw) as overlapped,
    ):
        pipes = {"serial": serial, "overlap": overlapped}
        for r in range(rounds):
            order = ["rollout", "serial", "overlap"]
            for mode in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                if mode == "rollout":
                    rollout_once(vel, args, sig)
                else:
                    pipes[mode].begin(prompts)
                    rollout_once(vel, args, sig, pipes[mode])
                    results[mode] = pipes[mode].finish()
                walls[mode].append(time.perf_counter() - t0)
                if mode == "overlap":
                    fracs.append(results[mode].timings["overlap_frac"])
    if not torch.equal(results["serial"].rewards, results["overlap"].rewards):
        raise SystemExit(f"{name}: serial and overlapped rewards differ")
    med = {mode: statistics.median(w) for mode, w in walls.items()}
    busy = results["serial"].timings["decode"] + results["serial"].timings["reward"]
    # The terminal reward starts after the last step, so one reward call is never hidden.
    ideal = (med["rollout"] + busy) / (max(med["rollout"], busy) + busy / len(S))
    print(
        f"\n[{name}] {results['overlap'].timings['mode']}; one step (transformer + sde_step) "
        f"{med['rollout'] / args.steps * 1e3:.1f} ms, one decode + reward call {busy / len(S) * 1e3:.1f} ms "
        f"(serial run), |S|={len(S)}"
    )
    print(f"{'mode':<10}{'median s':>10}{'min s':>10}")
    for mode, w in walls.items():
        print(f"{mode:<10}{med[mode]:>10.3f}{min(w):>10.3f}")
    print(
        f"serial / overlap = {med['serial'] / med['overlap']:.2f}x   (ideal {ideal:.2f}x; overlap_frac median "
        f"{statistics.median(fracs):.2f}; rewards bit-identical)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128, help="image side, px")
    p.add_argument("--patch", type=int, default=16, help="transformer patch size")
    p.add_argument("--steps", type=int, default=10, help="T")
    p.add_argument("--layers", type=int, default=2, help="transformer depth (sets the step's cost)")
    p.add_argument("--width", type=int, default=128, help="transformer width")
    p.add_argument("--reward-steps", default="all", help="'all', a stride k, or a comma-separated list")
    p.add_argument("--rewards", default=",".join(REWARDS), help=f"comma-separated, of {', '.join(REWARDS)}")
    p.add_argument("--max-in-flight", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main (transformer) thread")
    p.add_argument("--worker-threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="3 rounds")
    args = p.parse_args()
    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    if not names or any(n not in REWARDS for n in names):
        p.error(f"--rewards must name some of {', '.join(REWARDS)}, got {args.rewards!r}")
    rounds = 3 if args.quick else args.rounds
    spec = args.reward_steps
    spec = "all" if spec == "all" else (int(spec) if spec.isdigit() else [int(s) for s in spec.split(",")])
    torch.set_num_threads(args.threads)

    from vgpo_fast.rewards.client import RewardClient
    from vgpo_fast.rollout import sigmas
    from vgpo_fast.tasks.shapes.reward import CompositionalReward

    vel, prompts, decode = setup(args)
    sig = sigmas(args.steps)
    rollout_once(vel, args, sig)  # warm-up
    t0 = time.perf_counter()
    rollout_once(vel, args, sig)
    step_ms = (time.perf_counter() - t0) / args.steps * 1e3
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; threads main {args.threads} + worker {args.worker_threads}"
    )
    print(
        f"B={args.batch}, {args.size} px, T={args.steps}, reward_steps={spec}, max_in_flight={args.max_in_flight}, "
        f"transformer {args.layers} x {args.width}, patch {args.patch}; latency rewards wait {step_ms:.1f} ms "
        f"(one step, measured)"
    )
    for name in names:
        if name == "compositional":
            block(name, CompositionalReward(mode="partial"), vel, prompts, decode, sig, spec, args, rounds)
        elif name == "latency":
            block(name, LatencyReward(step_ms), vel, prompts, decode, sig, spec, args, rounds)
        else:
            server = Server(f"benchmarks.rollout:LatencyReward?delay_ms={step_ms:.3f}")
            try:
                with RewardClient(server.url, max_in_flight=max(4, args.max_in_flight)) as client:
                    block(name, client, vel, prompts, decode, sig, spec, args, rounds)
            finally:
                server.close()


if __name__ == "__main__":
    main()
