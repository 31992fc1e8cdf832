"""End-to-end benchmark: whole training iterations side by side in one run, alternating, on one config.

Three comparisons, each printed as medians and a ratio:
1. VGPO-overlap vs Flow-GRPO iteration time at equal config (`vgpo_fast.profiling.Profiler`, training included);
2. eager vs `torch.compile` transformer (two trainers, `model.compile` false / true; the first iteration of each,
   which compiles, is reported apart);
3. FP8 vs bf16 training (`model.fp8`), where `fp8_supported` says the hardware can; otherwise it says why.

    python benchmarks/e2e.py                       # the CPU default config (random-init model if none shipped)
    python benchmarks/e2e.py --rounds 2 --skip compile,fp8 rollout.steps=4
    PYTHONPATH=tests/train python benchmarks/e2e.py --tiny     # the test model, a smoke run

Iterations alternate A, B, B, A, ... so that a change in the machine's load hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from vgpo_fast.train.config import load
from vgpo_fast.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


def make_trainer(args: argparse.Namespace, *extra: str) -> Trainer:
    overrides = [*args.overrides, "run.progress=false", *extra]
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests" / "train"))
        from helpers_train import TINY_OVERRIDES, tiny_pipeline

        return Trainer(load(None, [*TINY_OVERRIDES, *overrides]), pipeline=tiny_pipeline(), log=lambda *_: None)
    from vgpo_fast.tasks.pretrain import build_models
    from vgpo_fast.tasks.registry import get_task

    cfg = load(args.config, overrides)
    pipeline = None
    if (
        cfg.model.path is None
        and cfg.model.task
        and not (get_task(cfg.model.task).base_model_dir / "pretrain.json").is_file()
    ):
        print(f"(no shipped base model for task {cfg.model.task!r}: a random-init model of its size)")
        pipeline = build_models(get_task(cfg.model.task), cfg.train.seed)
    return Trainer(cfg, pipeline=pipeline, log=lambda *_: None)


def side_by_side(name: str, a_name: str, a, b_name: str, b, rounds: int) -> None:
    """a, b: callables(iteration) -> seconds; one warm-up each, then `rounds` alternating pairs."""
    first = {a_name: a(0), b_name: b(0)}
    times: dict[str, list[float]] = {a_name: [], b_name: []}
    for r in range(1, rounds + 1):
        pair = [(a_name, a), (b_name, b)]
        for label, fn in pair if r % 2 else pair[::-1]:
            times[label].append(fn(r))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n[{name}] {rounds} rounds, median s per iteration (first iteration, warm-up: "
        f"{first[a_name]:.2f} / {first[b_name]:.2f} s)"
    )
    for k, v in times.items():
        print(f"  {k:<14}{med[k]:>9.3f}   min {min(v):.3f}   all {[round(x, 3) for x in v]}")
    print(f"  {b_name} / {a_name} = {med[b_name] / med[a_name]:.3f}x")


def timed_iteration(trainer: Trainer):
    def run(it: int) -> float:
        t0 = time.perf_counter()
        trainer.iteration(it)
        return time.perf_counter() - t0

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip", default="", help="comma-separated of: overlap, compile, fp8")
    p.add_argument("--tiny", action="store_true", help="the tiny test model and reward (PYTHONPATH=tests/train)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    skip = {s for s in args.skip.split(",") if s}
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.2f} (absolute numbers belong to this machine and its load)"
    )

    if "overlap" not in skip:
        from vgpo_fast.profiling.profiler import Profiler

        trainer = make_trainer(args)
        prof = Profiler(trainer, modes=("flow_grpo", "vgpo-overlap"))

        def mode_fn(mode: str):
            return lambda it: prof.iteration(mode, it, train=True)["total"]

        side_by_side(
            "VGPO-overlap vs Flow-GRPO (equal config, training included)",
            "flow_grpo",
            mode_fn("flow_grpo"),
            "vgpo-overlap",
            mode_fn("vgpo-overlap"),
            args.rounds,
        )
        prof.close()
        trainer.close()

    if "compile" not in skip:
        eager, compiled = make_trainer(args), make_trainer(args, "model.compile=true")
        side_by_side(
            "eager vs torch.compile transformer (whole iteration)",
            "eager",
            timed_iteration(eager),
            "compile",
            timed_iteration(compiled),
            args.rounds,
        )
        eager.close()
        compiled.close()

    if "fp8" not in skip:
        from vgpo_fast.models import fp8_supported

        device = "cuda" if torch.cuda.is_available() else "cpu"
        ok, why = fp8_supported(device)
        if not ok:
            print(f"\n[FP8 vs bf16] not run: {why}")
        else:
            # Full fine-tuning keeps no FP8 copy of the frozen reference: both sides then train without KL.
            extra = [] if load(args.config, args.overrides).model.lora or args.tiny else ["algorithm.beta=0"]
            try:
                bf16, fp8 = make_trainer(args, *extra), make_trainer(args, "model.fp8=true", *extra)
            except (RuntimeError, ValueError) as e:
                print(f"\n[FP8 vs bf16] not run: {e}")
            else:
                note = " ".join(extra) + (", float8 matmuls emulated on the CPU" if device == "cpu" else "")
                side_by_side(
                    f"bf16 vs FP8 training ({device}{'; ' + note if note.strip() else ''})",
                    "bf16",
                    timed_iteration(bf16),
                    "fp8",
                    timed_iteration(fp8),
                    args.rounds,
                )
                bf16.close()
                fp8.close()


if __name__ == "__main__":
    main()
