"""`vgpo-fast profile`: the reward-loop profiler, NVML telemetry, plots, Chrome trace and the cost model.

    vgpo-fast profile --iters 3 --train                         # the CPU default config, 4 modes
    vgpo-fast profile --config configs/x.yaml --modes flow_grpo,vgpo-overlap rollout.steps=20
    vgpo-fast profile --predict --predict-T 10,20,40 --predict-gpus 1,8
    vgpo-fast profile --iters 0 --predict --costs h100.json     # the table from given costs, nothing run

Writes `<out>/profile.json`, `<out>/timeline.png`, `<out>/breakdown.png` (and `<out>/trace.json` with --trace).
Wired into `vgpo_fast.cli` by `add_profile_parser(sub)`; also runs as `python -m vgpo_fast.profiling.cli`.
Building the parser imports nothing heavy (`vgpo-fast profile --help` must not import torch): the cost model, the
profiler and the mode registry (they import torch) are imported by the functions that use them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cost_model import OpCosts, Workload

__all__ = ["add_profile_parser", "main", "run_profile", "validate_cost_model"]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


# `modes.DEFAULT_MODES`, spelled out: importing `modes` imports the estimator registry, hence torch, and the help
# must not (tests/test_cli.py checks that the two agree).
_DEFAULT_MODES = ("flow_grpo", "vgpo-serial", "vgpo-overlap", "vgpo-sparse")


def _modes(text: str) -> list[str]:
    from .modes import available_modes  # only when --modes is given: it imports the estimators (torch)

    modes = [m.strip() for m in text.split(",") if m.strip()]
    known = available_modes()
    bad = [m for m in modes if m not in known]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes must be some of {', '.join(known)}, got {text!r}")
    return modes


def load_costs(spec: str) -> OpCosts:
    """A JSON file of OpCosts fields, or `key=value,key=value` (seconds per sample)."""
    from .cost_model import OpCosts

    path = Path(spec)
    if path.is_file():
        return OpCosts.parse(json.loads(path.read_text()))
    items = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--costs must be a JSON file or key=value pairs, got {spec!r}")
        items[key.strip()] = float(value)
    return OpCosts.parse(items)


def add_profile_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("profile", help="profile the reward loop: modes, per-step timings, timeline, cost model")
    p.add_argument("--config", default=None, help="YAML config (default: the built-in CPU default)")
    p.add_argument("--iters", type=int, default=3, help="measured rounds per mode (0: no run, --predict only)")
    p.add_argument("--warmup", type=int, default=1, help="rounds dropped before measuring")
    p.add_argument(
        "--modes",
        type=_modes,
        default=list(_DEFAULT_MODES),
        help=f"comma-separated profiler modes: an estimator's name, or NAME-serial|overlap|sparse for a "
        f"dense one (default: {','.join(_DEFAULT_MODES)})",
    )
    p.add_argument("--train", action="store_true", help="include advantages and the update in each iteration")
    p.add_argument("--sparse-k", type=int, default=2, help="vgpo-sparse: reward every k steps")
    p.add_argument(
        "--random-init",
        action="store_true",
        help="a seeded random model of the task's size instead of model.path / the shipped base model "
        "(the costs do not depend on the weights)",
    )
    p.add_argument("--out", default="runs/profile", help="output directory")
    p.add_argument(
        "--trace",
        action="store_true",
        help="also a torch.profiler Chrome trace of one vgpo-overlap iteration (<out>/trace.json)",
    )
    p.add_argument("--nvml-interval", type=float, default=0.05, help="NVML sampling period, s")
    p.add_argument("--predict", action="store_true", help="print the cost model's table of predicted iteration times")
    p.add_argument(
        "--costs",
        default=None,
        help="op costs for the table: a JSON file or key=value,... seconds per "
        "sample (default: measured in this run, from vgpo-serial)",
    )
    p.add_argument("--predict-T", type=_ints, default=None, help="T values of the table (default: the config's)")
    p.add_argument("--predict-G", type=_ints, default=None, help="G values (default: the config's)")
    p.add_argument("--predict-batch", type=_ints, default=None, help="P, prompts per iteration (default: config's)")
    p.add_argument("--predict-gpus", type=_ints, default=[1], help="numbers of GPUs (data parallel)")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.set_defaults(handler=run_profile)
    return p


def workload_of(meta: dict[str, Any], mode: str, train: bool | None = None) -> Workload:
    from .cost_model import Workload

    k = meta["train_steps_per_trajectory"]  # None (T - 1, following T in a table) when it is the default
    return Workload(
        mode=mode,
        T=meta["T"],
        P=meta["P"],
        G=meta["G"],
        sparse_k=meta["sparse_k"],
        max_in_flight=meta["max_in_flight"],
        train=meta["train"] if train is None else train,
        train_steps=None if k == meta["T"] - 1 else k,
        inner_epochs=meta["inner_epochs"],
        minibatch_size=meta["minibatch_size"],
        grad_accum=meta["grad_accum"],
    )


def validate_cost_model(report: dict[str, Any], source: str = "vgpo-serial") -> dict[str, Any]:
    """Per-op costs from `source`'s iterations; predicted vs measured mean iteration time of every mode."""
    from .cost_model import OpCosts, predict

    if source not in report["modes"]:
        source = next(iter(report["modes"]))
    costs = OpCosts.from_profile(report, source)
    rows = []
    for mode, m in report["modes"].items():
        pred = predict(costs, workload_of(report["meta"], mode))
        rows.append(
            {
                "mode": mode,
                "measured": m["total_mean"],
                "predicted": pred.total,
                "error": pred.total / m["total_mean"] - 1.0,
                "predicted_reward_wait": pred.reward_wait,
                "measured_reward_wait": m["reward_wait_total"],
            }
        )
    return {
        "costs_from": source,
        "costs": asdict(costs),
        "validation": rows,
        "max_abs_error": max(abs(r["error"]) for r in rows),
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'mode':<14}{'T':>4}{'G':>4}{'P':>5}{'gpus':>5}{'rollout s':>11}{'waited s':>10}{'train s':>10}"
        f"{'total s':>10}{'vs flow_grpo':>14}"
    )
    for r in rows:
        print(
            f"{r['mode']:<14}{r['T']:>4}{r['G']:>4}{r['P']:>5}{r['gpus']:>5}{r['rollout']:>11.4f}"
            f"{r['reward_wait']:>10.4f}{r['train']:>10.4f}{r['total']:>10.4f}{r['overhead']:>13.3f}x"
        )


def _print_summary(report: dict[str, Any]) -> None:
    meta = report["meta"]
    print(
        f"\n{meta['device']} ({meta['timer']}), torch {meta['torch']}, {meta['cpus']} CPUs, {meta['torch_threads']} "
        f"torch threads, load average {meta['load_average']}; T={meta['T']} P={meta['P']} G={meta['G']} "
        f"train={meta['train']}"
    )
    print(
        f"{'mode':<14}{'iter s':>9}{'vs flow_grpo':>14}{'transformer':>13}{'sde op':>9}{'waited':>9}"
        f"{'reward busy':>13}{'overlap eff':>13}{'(ceiling)':>10}{'train':>9}"
    )
    for mode, m in report["modes"].items():
        ph = m["phases"]
        ov = m["reward_overhead"]
        print(
            f"{mode:<14}{m['total_mean']:>9.3f}{(f'{ov:.3f}x' if ov else '-'):>14}{ph['transformer']:>13.3f}"
            f"{ph['sde_op']:>9.3f}{m['reward_wait_total']:>9.3f}{m['reward_busy']:>13.3f}"
            f"{m['overlap_efficiency']:>13.1%}{m['efficiency_ceiling']:>10.0%}{ph['train']:>9.3f}"
        )


def _build_trainer(args: argparse.Namespace, cfg):
    from vgpo_fast.train.trainer import Trainer

    pipeline = None
    if args.random_init:
        from vgpo_fast.tasks.pretrain import build_models
        from vgpo_fast.tasks.registry import get_task

        if cfg.model.task is None:
            raise ValueError("--random-init needs model.task (the model's size comes from the task)")
        pipeline = build_models(get_task(cfg.model.task), cfg.train.seed)
    return Trainer(cfg, pipeline=pipeline, log=lambda *_: None)


def run_profile(args: argparse.Namespace) -> int:
    from vgpo_fast.train.config import load

    from .cost_model import OpCosts, Workload, prediction_table

    cfg = load(args.config, args.overrides)
    if args.iters < 0 or args.warmup < 0:
        raise ValueError(f"--iters and --warmup must be >= 0, got {args.iters} and {args.warmup}")
    given = load_costs(args.costs) if args.costs else None
    r = cfg.rollout
    grid = (
        args.predict_T or [r.steps],
        args.predict_G or [r.group_size],
        args.predict_batch or [r.prompts_per_iter],
        args.predict_gpus,
    )
    if args.iters == 0:
        if not (args.predict and given):
            raise ValueError("--iters 0 runs nothing: it needs --predict and --costs")
        base = Workload(
            "flow_grpo",
            T=r.steps,
            P=r.prompts_per_iter,
            G=r.group_size,
            sparse_k=args.sparse_k,
            max_in_flight=cfg.reward.max_in_flight,
            minibatch_size=cfg.train.minibatch_size,
            grad_accum=cfg.train.grad_accum,
            inner_epochs=cfg.train.inner_epochs,
        )
        _print_table(prediction_table(given, base, *grid))
        return 0

    from .nvml import NvmlSampler
    from .plots import plot_breakdown, plot_timeline
    from .profiler import Profiler

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trainer = _build_trainer(args, cfg)
    prof = Profiler(trainer, sparse_k=args.sparse_k, modes=args.modes)
    nvml = NvmlSampler(args.nvml_interval)
    try:
        with nvml:
            print(nvml.line())
            report = prof.profile(args.iters, args.warmup, args.train, progress=print)
            if args.trace:
                mode = "vgpo-overlap" if "vgpo-overlap" in args.modes else args.modes[0]
                with prof.chrome_trace(out / "trace.json"):
                    prof.iteration(mode, args.warmup + args.iters, args.train)
                report["trace"] = str(out / "trace.json")
        report["nvml"] = nvml.result()
        report["meta"]["model"] = "random-init" if args.random_init else (cfg.model.path or "task base model")
        report["cost_model"] = validate_cost_model(report)
        _print_summary(report)
        print(f"\ncost model (per-sample op costs from {report['cost_model']['costs_from']}):")
        for row in report["cost_model"]["validation"]:
            print(
                f"  {row['mode']:<14} measured {row['measured']:.3f} s, predicted {row['predicted']:.3f} s, "
                f"error {row['error']:+.1%}"
            )
        if args.predict:
            costs = given or OpCosts(**report["cost_model"]["costs"])
            base = workload_of(report["meta"], "flow_grpo")
            rows = prediction_table(costs, base, *grid)
            report["cost_model"]["table"] = {"costs": asdict(costs), "rows": rows}
            print(f"\npredicted iteration time ({'given' if given else 'measured'} costs):")
            _print_table(rows)
        (out / "profile.json").write_text(json.dumps(report, indent=1, default=_json_default))
        plot_timeline(report, out / "timeline.png")
        plot_breakdown(report, out / "breakdown.png")
        print(
            f"\nwrote {out / 'profile.json'}, {out / 'timeline.png'}, {out / 'breakdown.png'}"
            + (f", {out / 'trace.json'}" if args.trace else "")
        )
    finally:
        prof.close()
        trainer.close()
    return 0


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vgpo-fast")
    sub = parser.add_subparsers(dest="command", required=True)
    add_profile_parser(sub)
    args = parser.parse_args(["profile", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"vgpo-fast profile: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
