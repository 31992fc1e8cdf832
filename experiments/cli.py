"""`vgpo-fast experiment NAME`: run (or resume) an experiment's training runs, then write its results.

Building the parser imports nothing heavy (`vgpo-fast experiment --help` must not import torch): the registry (it
reads the estimator registry, hence torch), the runner and the analysis are imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def add_experiment_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("experiment", help="run an evidence experiment (variants x seeds) and write its results")
    p.add_argument("name", nargs="?", help="the experiment to run (`--list` lists them)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--out", default="runs/experiments", help="where the runs and results go")
    p.add_argument("--jobs", type=int, default=2, help="training processes at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--seeds", type=_ints, default=None, help="comma-separated seeds (default: the experiment's)")
    p.add_argument("--iterations", type=int, default=None, help="horizon per run (default: the experiment's)")
    p.add_argument("--variants", default=None, help="comma-separated subset of the variants to run")
    p.add_argument("--analyze", action="store_true", help="only (re)write the results from the runs on disk")
    p.add_argument("overrides", nargs="*", help="config overrides added to every run, key.sub=value")
    p.set_defaults(handler=run_experiment_command)
    return p


def run_experiment_command(args: argparse.Namespace) -> int:
    from .analysis import analyze, write
    from .registry import EXPERIMENTS, get_experiment
    from .runner import plan, run_all

    if args.list or not args.name:
        for e in EXPERIMENTS.values():
            print(
                f"{e.name:<16} {len(e.variants)} variants x {len(e.seeds)} seeds, {e.iterations} iterations: "
                f"{e.description}"
            )
        return 0
    exp = get_experiment(args.name)
    horizon = args.iterations if args.iterations is not None else exp.iterations
    variants = tuple(v for v in args.variants.split(",") if v) if args.variants else None
    runs = plan(exp, Path(args.out), args.seeds, horizon, args.threads, tuple(args.overrides), variants)
    if not args.analyze:
        run_all(runs, horizon, jobs=args.jobs, threads=args.threads)
    out_dir = Path(args.out) / exp.name
    # The results always cover the whole experiment (every variant and seed on disk), whatever this call ran.
    all_seeds = tuple(sorted(set(exp.seeds) | set(args.seeds or ())))
    if variants is not None or set(all_seeds) != {r.seed for r in runs}:
        runs = plan(exp, Path(args.out), all_seeds, horizon, args.threads, tuple(args.overrides))
    results = analyze(exp, runs, horizon)
    paths = write(results, out_dir)
    print((out_dir / "table.md").read_text(), end="")
    if results["missing_runs"]:
        print(f"missing runs (not run, or not at {horizon} iterations yet): {', '.join(results['missing_runs'])}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
