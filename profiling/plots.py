"""PNG plots of a profile (matplotlib, Agg): the timeline of one iteration per mode (main lane and reward lane
side by side) and a bar chart of the phases per mode with the per-step breakdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["COLORS", "plot_breakdown", "plot_timeline"]

COLORS = {
    "setup": "#bbbbbb",
    "transformer": "#4c72b0",
    "sde_op": "#55a868",
    "reward_wait": "#c44e52",
    "reward_finish": "#8c1c1f",
    "advantage": "#8172b2",
    "train": "#dddd99",
    "other": "#ffffff",
    "decode": "#dd8452",
    "reward": "#937860",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_timeline(
    report: dict[str, Any], path: str | Path, iteration: int | None = None, include_train: bool = False
) -> Path:
    """One row pair per mode: main lane (top) and reward lane (bottom), ms from the iteration's start, of the
    first kept round (or `iteration`). The update is drawn only with include_train (it dwarfs the rollout)."""
    plt = _plt()
    records = report["records"]
    it = iteration if iteration is not None else min(r["iteration"] for r in records)
    chosen = [r for r in records if r["iteration"] == it]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(13, 1.5 + 1.3 * len(chosen)), squeeze=False)
    xmax = 0.0
    for ax, rec in zip(axes[:, 0], chosen, strict=True):
        main = [s for s in rec["lanes"]["main"] if include_train or s[0] not in ("advantage", "train")]
        for lane_y, segs in ((1, main), (0, rec["lanes"]["reward"])):
            for phase, _j, s, e in segs:
                ax.broken_barh(
                    [(s * 1e3, (e - s) * 1e3)],
                    (lane_y - 0.4, 0.8),
                    facecolors=COLORS[phase],
                    edgecolor="black" if phase in ("decode", "reward") else "none",
                    linewidth=0.3,
                )
            xmax = max([xmax, *[e * 1e3 for _, _, _, e in segs]])
        for phase, j, s, e in main:  # step numbers on the transformer blocks
            if phase == "transformer":
                ax.text((s + e) / 2 * 1e3, 1, str(j), ha="center", va="center", fontsize=6, color="white")
        train = rec["phases"]["train"] + rec["phases"]["advantage"]
        note = f"; + {train * 1e3:.0f} ms advantage/train not drawn" if train > 0 and not include_train else ""
        ax.set_title(
            f"{rec['mode']}: iteration {rec['total'] * 1e3:.1f} ms, reward busy {rec['reward_busy'] * 1e3:.1f}"
            f" ms, waited {(rec['phases']['reward_wait'] + rec['phases']['reward_finish']) * 1e3:.1f} ms, "
            f"overlap efficiency {rec['overlap_efficiency']:.0%}{note}",
            fontsize=8,
            loc="left",
        )
        ax.set_yticks([1, 0], ["main", "reward"])
        ax.set_ylim(-0.6, 1.6)
    for ax in axes[:, 0]:
        ax.set_xlim(0, xmax * 1.01)
    axes[-1, 0].set_xlabel("ms from the start of the iteration")
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=COLORS[p])
        for p in ("setup", "transformer", "sde_op", "reward_wait", "reward_finish", "decode", "reward")
    ]
    fig.legend(
        handles,
        ["setup", "transformer", "sde op", "reward wait (hand-off)", "reward wait (finish)", "decode", "reward"],
        loc="upper center",
        ncol=7,
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_breakdown(report: dict[str, Any], path: str | Path, step_mode: str = "vgpo-overlap") -> Path:
    """Left: stacked mean phases per mode, with the reward overhead against flow_grpo. Right: mean per-step
    main-lane (transformer, sde op, reward wait) and reward-lane (decode, reward) times of `step_mode`."""
    plt = _plt()
    modes = report["modes"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(modes)
    phases = [
        p
        for p in ("setup", "transformer", "sde_op", "reward_wait", "reward_finish", "advantage", "train")
        if any(modes[m]["phases"].get(p, 0) > 0 for m in names)
    ]
    bottom = [0.0] * len(names)
    for p in phases:
        vals = [modes[m]["phases"].get(p, 0.0) for m in names]
        ax.bar(names, vals, bottom=bottom, color=COLORS[p], label=p, edgecolor="black", linewidth=0.3)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    for i, m in enumerate(names):
        ov = modes[m]["reward_overhead"]
        ax.text(
            i,
            bottom[i],
            f"{modes[m]['total_mean']:.2f} s" + (f"\n{ov:.3f}x" if ov else ""),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("seconds per iteration (mean)")
    ax.set_title("phases per mode (x: iteration time / flow_grpo)", fontsize=9)
    ax.set_ylim(0, max(bottom) * 1.2)
    ax.legend(fontsize=7)
    mode = step_mode if step_mode in modes else names[-1]
    ps = modes[mode]["per_step"]
    T = len(ps["transformer"])
    width = 0.4
    xs = list(range(T))
    b = [0.0] * T
    for k in ("transformer", "sde_op", "reward_wait"):
        ax2.bar(
            [x - width / 2 for x in xs], [v * 1e3 for v in ps[k]], width, bottom=b, color=COLORS[k], label=f"main: {k}"
        )
        b = [u + v * 1e3 for u, v in zip(b, ps[k], strict=True)]
    b = [0.0] * T
    for k in ("decode", "reward"):
        ax2.bar(
            [x + width / 2 for x in xs],
            [v * 1e3 for v in ps[k]],
            width,
            bottom=b,
            color=COLORS[k],
            label=f"reward lane: {k}",
        )
        b = [u + v * 1e3 for u, v in zip(b, ps[k], strict=True)]
    ax2.set_xticks(xs)
    ax2.set_xlabel("step j (reward lane: the job of x0_hat_j)")
    ax2.set_ylabel("ms (mean)")
    ax2.set_title(f"per step, {mode}", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
