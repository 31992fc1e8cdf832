"""The measures of an experiment, from its runs' `metrics.jsonl`: `results.json`, `table.md` and PNG plots.

Per variant (spread over seeds: mean, sample std, min, max):
- held-out reward (the training reward on held-out prompts, ODE samples) before and after, and the change;
- held-out accuracy (the task's strict score) and drift (mean absolute pixel change of the held-out samples from
  the base model's, same prompts and noises: the reward-hacking guard) after;
- the held-out curve per evaluation iteration;
- group reward std and the zero-std group fraction over training; the omega fallback fraction (dense variants);
- iterations to reach the reference variant's final held-out reward (seed means; None: not within the horizon);
- seconds per iteration.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from vgpo_fast.train.metrics import read_metrics

from .registry import Experiment
from .runner import RunSpec


def spread(values: list[float]) -> dict[str, float | int | None]:
    """mean, sample std (None for one value), min, max and n of finite `values`."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else None,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def _run_measures(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One run's measures; None while it has fewer than two evaluations (the base's and one more)."""
    train = [r for r in records if r["iteration"] >= 0]
    evals = {r["iteration"]: r for r in records if r.get("heldout_reward") is not None}
    if -1 not in evals or len(evals) < 2:
        return None
    first, last = evals[-1], evals[max(evals)]

    def mean_of(key: str) -> float | None:
        xs = [r[key] for r in train if r.get(key) is not None]
        return statistics.fmean(xs) if xs else None

    return {
        "iterations": len(train),
        "heldout_before": first["heldout_reward"],
        "heldout_after": last["heldout_reward"],
        "heldout_change": last["heldout_reward"] - first["heldout_reward"],
        "accuracy_before": first.get("heldout_accuracy"),
        "accuracy_after": last.get("heldout_accuracy"),
        "drift_after": last.get("heldout_drift"),
        "curve": {it: r["heldout_reward"] for it, r in sorted(evals.items())},
        "group_std": mean_of("group_std_mean"),
        "zero_std_frac": mean_of("zero_std_frac"),
        "omega_fallback_frac": mean_of("omega_fallback_frac"),
        "group_std_curve": [r.get("group_std_mean") for r in train],
        "zero_std_curve": [r.get("zero_std_frac") for r in train],
        "seconds_per_iteration": statistics.fmean([r["timings"]["total"] for r in train]) if train else None,
    }


def analyze(exp: Experiment, runs: list[RunSpec], horizon: int | None = None) -> dict[str, Any]:
    """The experiment's measures (module docstring) from the runs on disk; runs without metrics, or (with
    `horizon`) with fewer iterations than it, are listed as missing, not guessed. With `horizon`, records of
    later iterations are ignored: runs extended to a longer horizon still give the shorter one's results."""
    per_run: dict[str, dict[int, dict[str, Any]]] = {}
    missing = []
    for run in runs:
        path = run.run_dir / "metrics.jsonl"
        records = read_metrics(path) if path.is_file() else []
        if horizon is not None:
            records = [r for r in records if r["iteration"] < horizon]
        measures = _run_measures(records)  # None without the base's evaluation and one more
        if measures is None or (horizon is not None and measures["iterations"] < horizon):
            missing.append(run.name)
            continue
        per_run.setdefault(run.label, {})[run.seed] = measures
    variants: dict[str, Any] = {}
    for label, seeds in per_run.items():
        its = sorted(set.intersection(*(set(m["curve"]) for m in seeds.values())))
        variants[label] = {
            "seeds": sorted(seeds),
            **{
                key: spread([m[key] for m in seeds.values()])
                for key in (
                    "heldout_before",
                    "heldout_after",
                    "heldout_change",
                    "accuracy_before",
                    "accuracy_after",
                    "drift_after",
                    "group_std",
                    "zero_std_frac",
                    "omega_fallback_frac",
                    "seconds_per_iteration",
                )
            },
            "curve": [{"iteration": it, **spread([m["curve"][it] for m in seeds.values()])} for it in its],
            "group_std_curve": _mean_curves([m["group_std_curve"] for m in seeds.values()]),
            "zero_std_curve": _mean_curves([m["zero_std_curve"] for m in seeds.values()]),
            "per_seed": {s: {k: v for k, v in m.items() if not k.endswith("curve")} for s, m in seeds.items()},
        }
    ref = exp.reference if exp.reference in variants else None
    if ref is not None:
        target = variants[ref]["heldout_after"]["mean"]
        for v in variants.values():
            hit = [c["iteration"] for c in v["curve"] if c["iteration"] >= 0 and c["mean"] >= target]
            v["iterations_to_reference"] = (hit[0] + 1) if hit else None  # record i is after i + 1 iterations
    return {
        "experiment": exp.name,
        "description": exp.description,
        "reference": ref,
        "variants": variants,
        "missing_runs": missing,
    }


def _mean_curves(curves: list[list[float | None]]) -> list[float | None]:
    n = min(len(c) for c in curves)
    out = []
    for i in range(n):
        xs = [c[i] for c in curves if c[i] is not None]
        out.append(statistics.fmean(xs) if xs else None)
    return out


def _fmt(s: dict[str, Any], digits: int = 3) -> str:
    if s["mean"] is None:
        return "-"
    text = f"{s['mean']:.{digits}f}"
    return text + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


def table(results: dict[str, Any]) -> str:
    """The markdown table of `results` (mean ± sample std over seeds; change also min..max)."""
    ref = results["reference"]
    head = (
        "| variant | seeds | held-out reward before | after | change (min..max) | strict accuracy after | "
        "drift after | group std | zero-std frac | omega fallback |"
        + (f" its to {ref}'s final |" if ref else "")
        + " s / it |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, v in results["variants"].items():
        ch = v["heldout_change"]
        rng = f" ({ch['min']:+.3f}..{ch['max']:+.3f})" if ch["n"] > 1 else ""
        cells = [
            label,
            ",".join(map(str, v["seeds"])),
            _fmt(v["heldout_before"]),
            _fmt(v["heldout_after"]),
            (f"{ch['mean']:+.3f}" + (f" ± {ch['std']:.3f}" if ch["std"] is not None else "") + rng)
            if ch["mean"] is not None
            else "-",
            _fmt(v["accuracy_after"]),
            _fmt(v["drift_after"], 4),
            _fmt(v["group_std"]),
            _fmt(v["zero_std_frac"]),
            _fmt(v["omega_fallback_frac"]),
        ]
        if ref:
            cells.append(str(v.get("iterations_to_reference") or "not reached"))
        cells.append(_fmt(v["seconds_per_iteration"], 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """heldout.png (held-out reward per evaluation, seed mean ± std) and diversity.png (group std and zero-std
    fraction per iteration, seed means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for i, (label, v) in enumerate(results["variants"].items()):
        its = [c["iteration"] + 1 for c in v["curve"]]  # record i is after i + 1 iterations; the base at 0
        mean = [c["mean"] for c in v["curve"]]
        std = [c["std"] or 0.0 for c in v["curve"]]
        ax.plot(its, mean, marker="o", color=f"C{i}", label=f"{label} (n={len(v['seeds'])})")
        ax.fill_between(
            its,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=f"C{i}",
            alpha=0.15,
            linewidth=0,
        )
    ax.set_xlabel("iterations trained")
    ax.set_ylabel("held-out reward (seed mean ± std)")
    ax.set_title(results["experiment"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "heldout.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for i, (label, v) in enumerate(results["variants"].items()):
        for ax, key in zip(axes, ("group_std_curve", "zero_std_curve"), strict=True):
            ys = v[key]
            ax.plot(
                range(len(ys)),
                [y if y is not None else float("nan") for y in ys],
                color=f"C{i}",
                label=label,
                linewidth=1,
            )
    axes[0].set_ylabel("within-group reward std (seed mean)")
    axes[1].set_ylabel("zero-std group fraction (seed mean)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "diversity.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def write(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """results.json, table.md and the plots into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "table.md").write_text(table(results))
    return [out_dir / "results.json", out_dir / "table.md", *plot(results, out_dir)]
