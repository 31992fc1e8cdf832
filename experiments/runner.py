"""Running an experiment's training runs: `vgpo-fast train` subprocesses, `jobs` at a time, resumable.

Run `(variant, seed)` lives in `<out>/<experiment>/<variant>-s<seed>/` (a normal run directory), its log in
`<out>/<experiment>/logs/`. A run whose `summary.json` reports the full horizon is done and skipped; a run with a
checkpoint is continued with `--resume` (so a killed experiment loses at most one checkpoint interval per run);
anything else starts fresh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vgpo_fast.tasks.registry import get_task
from vgpo_fast.train.checkpoint import latest_checkpoint
from vgpo_fast.train.config import load

from .registry import Experiment


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment: variant label, seed, and the full `vgpo-fast train` overrides."""

    label: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.run_dir.name


def plan(
    exp: Experiment,
    out: Path,
    seeds: tuple[int, ...] | None = None,
    iterations: int | None = None,
    threads: int = 1,
    extra: tuple[str, ...] = (),
    variants: tuple[str, ...] | None = None,
) -> list[RunSpec]:
    """The runs of `exp` (variants in order, then seeds; `variants` a subset of its labels), each config
    validated now rather than mid-experiment."""
    seeds = tuple(seeds if seeds is not None else exp.seeds)
    horizon = iterations if iterations is not None else exp.iterations
    unknown = sorted(set(variants or ()) - set(exp.variants))
    if unknown:
        raise ValueError(f"experiment {exp.name!r} has no variants {unknown}; it has {list(exp.variants)}")
    runs = []
    for label, overrides in exp.variants.items():
        if variants is not None and label not in variants:
            continue
        for seed in seeds:
            run_dir = out / exp.name / f"{label}-s{seed}"
            full = (
                *exp.common,
                *overrides,
                f"train.seed={seed}",
                f"train.iterations={horizon}",
                f"run.eval_every={exp.eval_every}",
                f"run.output_dir={run_dir.parent}",
                f"run.name={run_dir.name}",
                f"run.threads={threads}",
                "run.progress=false",
                *extra,
            )
            cfg = load(None, list(full))
            if cfg.model.path is None and cfg.model.task:
                base = get_task(cfg.model.task).base_model_dir
                if not (base / "pretrain.json").is_file():
                    raise FileNotFoundError(
                        f"experiment {exp.name!r} needs the {cfg.model.task!r} task's base model, "
                        f"which is not in {base}: run `vgpo-fast pretrain --task "
                        f"{cfg.model.task}` first (or pass model.path=...)"
                    )
            runs.append(RunSpec(label, seed, run_dir, full))
    return runs


def status(run: RunSpec, horizon: int) -> str:
    """'done' (summary.json at the horizon), 'resume' (a checkpoint) or 'start'."""
    summary = run.run_dir / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("iterations", -1) >= horizon:
        return "done"
    return "resume" if latest_checkpoint(run.run_dir) is not None else "start"


def run_all(runs: list[RunSpec], horizon: int, jobs: int = 2, threads: int = 1, log=print, poll_s: float = 1.0) -> None:
    """Runs every run not yet done, `jobs` processes at a time with `threads` threads each. Raises RuntimeError
    naming the logs of the runs that failed (the others still run to the end)."""
    if jobs < 1 or threads < 1:
        raise ValueError(f"jobs and threads must be >= 1, got {jobs} and {threads}")
    todo = [(r, s) for r in runs if (s := status(r, horizon)) != "done"]
    log(f"{len(runs) - len(todo)} of {len(runs)} runs already done; {len(todo)} to run, {jobs} at a time")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    running: list[tuple[RunSpec, subprocess.Popen, float, object]] = []
    failed: list[str] = []
    while todo or running:
        while todo and len(running) < jobs:
            run, state = todo.pop(0)
            logs = run.run_dir.parent / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            log_file = open(logs / f"{run.name}.log", "a")  # noqa: SIM115 (closed when the process ends)
            cmd = [
                sys.executable,
                "-m",
                "vgpo_fast.cli",
                "train",
                *(["--resume"] if state == "resume" else []),
                *run.overrides,
            ]
            log(f"  {state:<6} {run.name}")
            running.append(
                (
                    run,
                    subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env),
                    time.perf_counter(),
                    log_file,
                )
            )
        time.sleep(poll_s)
        for item in list(running):
            run, proc, t0, log_file = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log_file.close()
            seconds = time.perf_counter() - t0
            if proc.returncode == 0:
                log(f"  done   {run.name} ({seconds:.0f} s)")
            else:
                failed.append(f"{run.name} (exit {proc.returncode}, log {log_file.name})")
                log(f"  FAILED {failed[-1]}")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {'; '.join(failed)}")
