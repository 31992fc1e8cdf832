"""Metric plots of a run (PNG, one file per plot), from the records as `MetricsWriter` wrote them.

Recognised fields, any of which may be missing from any record (what is missing is skipped): iteration,
reward_mean, reward_std, heldout_reward (evaluation iterations only), group_std_mean, zero_std_frac,
instant_reward [T] (mean reward of the one-step projection at each denoising step j), loss, approx_kl, kl,
clip_frac, omega_fallback_frac, grad_norm, timings {phase: seconds} (a "total" entry is drawn as a line).

Matplotlib renders through its Agg canvas (Figure objects, never pyplot), so this runs headless and leaves the
process's pyplot state alone; it is imported on first use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PLOTS", "plot_metrics", "timing_breakdown"]

# (field, label) of the loss-plot panels, each a list of series drawn on one axis.
_LOSS_PANELS = [
    [("loss", "loss")],
    [("approx_kl", "approx KL"), ("kl", "KL to reference")],
    [("clip_frac", "clip fraction"), ("omega_fallback_frac", "omega fallback fraction")],
    [("grad_norm", "grad norm")],
]
# Plot files in report order, with their section titles.
PLOTS = {
    "reward": "Terminal reward",
    "group_std": "Within-group reward spread",
    "instant_reward": "Instant reward per denoising step",
    "loss": "Loss, KL and clipping",
    "timings": "Time per phase",
}


def _value(record: dict[str, Any], field: str) -> Any:
    """record[field]; "a/b" reads record["a"]["b"]. None when missing."""
    for part in field.split("/"):
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


def _series(records: Sequence[dict[str, Any]], field: str) -> tuple[list[int], list[float]]:
    """(iterations, values) of the records where `field` is a finite number, in iteration order."""
    its, vals = [], []
    for r in records:
        v = _value(r, field)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            its.append(r["iteration"])
            vals.append(float(v))
    return its, vals


def _sorted(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with an int iteration, sorted by it (records without one cannot be placed on an axis)."""
    ok = [r for r in records if isinstance(r.get("iteration"), int) and not isinstance(r.get("iteration"), bool)]
    return sorted(ok, key=lambda r: r["iteration"])


def _figure(width: float = 7.0, height: float = 4.0, ncols: int = 1, nrows: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _use_log(values: Sequence[float]) -> bool:
    """Log y for positive series spanning more than a factor 20 (KLs and grad norms typically do)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 20


def _plot_reward(records: list[dict[str, Any]], path: Path) -> bool:
    its, mean = _series(records, "reward_mean")
    h_its, held = _series(records, "heldout_reward")
    if not its and not h_its:
        return False
    fig, axes = _figure()
    ax = axes[0, 0]
    if its:
        ax.plot(its, mean, color="C0", label="train reward (batch mean)")
        std = dict(zip(*_series(records, "reward_std"), strict=True))
        band = [(i, m, std[i]) for i, m in zip(its, mean, strict=True) if i in std]
        if band:
            bi = [i for i, _, _ in band]
            ax.fill_between(
                bi,
                [m - s for _, m, s in band],
                [m + s for _, m, s in band],
                color="C0",
                alpha=0.2,
                linewidth=0,
                label="± batch std",
            )
    if h_its:
        ax.plot(h_its, held, color="C3", marker="o", label="held-out reward (ODE samples)")
    a_its, acc = _series(records, "heldout_accuracy")
    if a_its:
        ax.plot(a_its, acc, color="C2", marker="s", label="held-out accuracy (strict)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("terminal reward")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.savefig(path)
    return True


def _plot_group_std(records: list[dict[str, Any]], path: Path) -> bool:
    its, gstd = _series(records, "group_std_mean")
    z_its, zero = _series(records, "zero_std_frac")
    if not its and not z_its:
        return False
    fig, axes = _figure()
    ax = axes[0, 0]
    handles = []
    if its:
        handles += ax.plot(its, gstd, color="C0", label="mean within-group reward std")
    ax.set_ylabel("reward std")
    ax.set_xlabel("iteration")
    ax.grid(alpha=0.3)
    if z_its:
        ax2 = ax.twinx()
        handles += ax2.plot(z_its, zero, color="C1", linestyle="--", label="fraction of groups with std = 0")
        ax2.set_ylabel("zero-std fraction")
        ax2.set_ylim(-0.02, 1.02)
    ax.legend(handles=handles, loc="best")
    fig.savefig(path)
    return True


def _plot_instant_reward(records: list[dict[str, Any]], path: Path, n_lines: int = 5) -> bool:
    """Instant reward against denoising step j for up to `n_lines` iterations spread over the run (first and last
    included), coloured by iteration."""
    import numpy as np
    from matplotlib import cm, colormaps, colors

    rows = [r for r in records if isinstance(r.get("instant_reward"), list) and r["instant_reward"]]
    if not rows:
        return False
    picks = sorted(set(np.linspace(0, len(rows) - 1, min(n_lines, len(rows))).round().astype(int).tolist()))
    chosen = [rows[i] for i in picks]
    lo, hi = chosen[0]["iteration"], chosen[-1]["iteration"]
    norm = colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    cmap = colormaps["viridis"]
    fig, axes = _figure()
    ax = axes[0, 0]
    for r in chosen:
        y = [
            float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
            for v in r["instant_reward"]
        ]
        ax.plot(range(len(y)), y, marker=".", color=cmap(norm(r["iteration"])), label=f"iteration {r['iteration']}")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="iteration")
    ax.set_xlabel("denoising step j")
    ax.set_ylabel("mean reward of the one-step projection")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path)
    return True


def _plot_loss(records: list[dict[str, Any]], path: Path) -> bool:
    panels = [[(label, *_series(records, field)) for field, label in panel] for panel in _LOSS_PANELS]
    panels = [[s for s in panel if s[1]] for panel in panels]
    panels = [p for p in panels if p]
    if not panels:
        return False
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(width=5.0 * ncols, height=3.2 * nrows, ncols=ncols, nrows=nrows)
    flat = axes.ravel()
    for ax, panel in zip(flat, panels, strict=False):  # flat may have a spare axis
        for label, its, vals in panel:
            ax.plot(its, vals, label=label, marker="." if len(its) < 30 else None)
        if all(_use_log(vals) for _, _, vals in panel):
            ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    fig.savefig(path)
    return True


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def timing_breakdown(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean seconds per iteration of each main-thread phase (training iterations only), the mean iteration
    `total`, each phase's share of it, and the held-out evaluation apart: mean seconds per evaluation (the base
    model's included) and how many there were. Evaluation runs between iterations, so it is not in `total`."""
    rows = [r for r in records if isinstance(r.get("timings"), dict) and r.get("iteration", 0) >= 0]
    phases: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r["timings"].items():
            if k not in ("total", "eval") and _number(v):
                phases.setdefault(k, []).append(float(v))
    totals = [float(r["timings"]["total"]) for r in rows if _number(r["timings"].get("total"))]
    means = {k: sum(v) / len(rows) for k, v in phases.items()}
    total = sum(totals) / len(totals) if totals else sum(means.values())
    evals = [
        float(r["timings"]["eval"])
        for r in records
        if isinstance(r.get("timings"), dict) and _number(r["timings"].get("eval"))
    ]
    return {
        "phases": means,
        "total": total,
        "share": {k: m / total if total > 0 else 0.0 for k, m in means.items()},
        "eval_mean": sum(evals) / len(evals) if evals else None,
        "evaluations": len(evals),
    }


def _plot_timings(records: list[dict[str, Any]], path: Path, max_bars: int = 60) -> bool:
    """Left: seconds per phase per training iteration as stacked bars (averaged over bins of iterations past
    `max_bars`), "total" as a line, so a gap or overshoot shows time not covered by, or overlapping between, the
    phases. Right: mean seconds per phase with its share of the iteration time, and the held-out evaluation
    apart (seconds per evaluation: it runs between iterations)."""
    import numpy as np

    rows = [r for r in records if isinstance(r.get("timings"), dict) and r.get("iteration", 0) >= 0]
    breakdown = timing_breakdown(records)
    phases = list(breakdown["phases"])
    has_total = any(_number(r["timings"].get("total")) for r in rows)
    if not phases and not has_total:
        return False

    def col(name: str) -> Any:
        return np.array([v if _number(v := r["timings"].get(name)) else np.nan for r in rows], dtype=float)

    its = np.array([r["iteration"] for r in rows], dtype=float)
    bins = np.array_split(np.arange(len(rows)), min(max_bars, len(rows)))
    x = np.array([its[b].mean() for b in bins])
    width = 0.8 * (np.min(np.diff(x)) if len(x) > 1 else 1.0)

    fig, axes = _figure(width=11.0, height=4.0, ncols=2)
    ax, ax_mean = axes[0, 0], axes[0, 1]
    bottom = np.zeros(len(bins))
    for i, phase in enumerate(phases):
        v = col(phase)
        binned = np.array([np.nanmean(v[b]) if np.isfinite(v[b]).any() else 0.0 for b in bins])
        ax.bar(x, binned, width=width, bottom=bottom, color=f"C{i % 10}", label=phase)
        bottom += binned
    if has_total:
        t = col("total")
        ax.plot(
            x,
            [np.nanmean(t[b]) if np.isfinite(t[b]).any() else np.nan for b in bins],
            color="k",
            marker="." if len(x) < 30 else None,
            label="total",
        )
    ax.set_xlabel("iteration" if len(bins) == len(rows) else f"iteration (mean over bins of ~{len(rows) // len(bins)})")
    ax.set_ylabel("seconds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4, fontsize="small", frameon=False)
    if phases:
        means = [breakdown["phases"][p] for p in phases]
        labels, colors = list(phases), [f"C{i % 10}" for i in range(len(phases))]
        if breakdown["eval_mean"] is not None:
            means.append(breakdown["eval_mean"])
            labels.append("eval (apart)")
            colors.append("0.6")
        ax_mean.barh(range(len(means)), means, color=colors)
        ax_mean.set_yticks(range(len(means)), labels)
        ax_mean.invert_yaxis()
        for i, m in enumerate(means):
            if i < len(phases):
                text = f" {m:.3g} s ({100 * breakdown['share'][phases[i]]:.0f}%)"
            else:
                text = f" {m:.3g} s per evaluation (x{breakdown['evaluations']}), not in the iteration"
            ax_mean.text(m, i, text, va="center", fontsize="small")
        ax_mean.set_xlabel(f"mean seconds per iteration (total {breakdown['total']:.3g} s; % of it)")
        ax_mean.set_xlim(0, max(means + [1e-9]) * 1.6)
    else:
        ax_mean.set_visible(False)
    fig.savefig(path)
    return True


_PLOTTERS = {
    "reward": _plot_reward,
    "group_std": _plot_group_std,
    "instant_reward": _plot_instant_reward,
    "loss": _plot_loss,
    "timings": _plot_timings,
}


def plot_metrics(records: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `<name>.png` into `out_dir` for each plot in PLOTS whose fields appear in `records`.

    Returns {name: path} of the files written; a plot with no data is left out (and not written).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = _sorted(records)
    written = {}
    for name, plot in _PLOTTERS.items():
        path = out_dir / f"{name}.png"
        if plot(recs, path):
            written[name] = path
    return written
