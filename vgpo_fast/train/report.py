"""End-of-run report: metric plots (PNG), sample image grids, and report.html + report.md that reference them.

Inputs are the metrics records as `MetricsWriter` wrote them (`read_metrics`). Recognised fields, any of which may
be missing from any record (what is missing is skipped):
    iteration, reward_mean, reward_std, heldout_reward (evaluation iterations only), group_std_mean, zero_std_frac,
    instant_reward [T] (mean reward of the one-step projection at each denoising step j), loss, approx_kl, kl,
    clip_frac, omega_fallback_frac, grad_norm, timings {phase: seconds} (a "total" entry is drawn as a line).

Matplotlib renders through its Agg canvas (Figure objects, never pyplot), so this runs headless and leaves the
process's pyplot state alone. Matplotlib and PIL are imported on first use.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .metrics import summarize

GUTTER = 2  # px between grid cells and around the border

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
# Fields summarised in the report's statistics table (timings/total reads the nested dict).
_STAT_FIELDS = ["reward_mean", "heldout_reward", "heldout_accuracy", "heldout_drift", "group_std_mean",
                "zero_std_frac", "loss", "approx_kl", "kl", "clip_frac", "grad_norm", "timings/total"]


# ---------------------------------------------------------------------------------------------------------------
# Image grids


def _to_uint8_hwc(images: Any) -> Any:
    """float [B, 3, H, W] in [0, 1] (torch) or uint8 [B, H, W, 3] (numpy) -> uint8 numpy [B, H, W, 3]."""
    import numpy as np

    if hasattr(images, "detach"):  # torch.Tensor
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images tensor must be float [B, 3, H, W] in [0, 1], got {images.dtype} "
                             f"{tuple(images.shape)}")
        x = (images.detach().float().clamp(0, 1) * 255).round().to("cpu").numpy().astype(np.uint8)
        return x.transpose(0, 2, 3, 1)
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3:
        raise ValueError(f"images array must be uint8 [B, H, W, 3], got {x.dtype} {x.shape}")
    return x


def grid_geometry(b: int, h: int, w: int, nrow: int, scale: int) -> tuple[int, int, int, int]:
    """(columns, rows, width, height) of the image area of a grid of b images h x w, `nrow` per row.

    Cell (r, c) starts at x = GUTTER + c (w*scale + GUTTER), y = GUTTER + r (h*scale + GUTTER); label bands, when
    there are labels, add to the height only.
    """
    cols = min(nrow, b)
    rows = math.ceil(b / nrow)
    return cols, rows, GUTTER + cols * (w * scale + GUTTER), GUTTER + rows * (h * scale + GUTTER)


def save_image_grid(
    images: Any,
    path: str | os.PathLike,
    nrow: int,
    scale: int = 4,
    labels: Sequence[str] | None = None,
) -> Path:
    """Write `images` as one PNG grid, `nrow` images per row, each upscaled `scale` x by pixel repetition (so that
    16x16 images stay visible), with GUTTER-px white gutters.

    images: float [B, 3, H, W] in [0, 1] (torch tensor) or uint8 [B, H, W, 3] (numpy array).
    labels: B labels, one under each image, or one per column (len == columns), written once under the grid;
            cut to the cell width.
    Returns the path written.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    if nrow < 1 or scale < 1:
        raise ValueError(f"nrow and scale must be >= 1, got nrow={nrow}, scale={scale}")
    x = _to_uint8_hwc(images)
    b, h, w, _ = x.shape
    if b == 0:
        raise ValueError("images must hold at least one image, got B=0")
    cols, rows, width, height = grid_geometry(b, h, w, nrow, scale)
    per_image = labels is not None and len(labels) == b
    if labels is not None and not per_image and len(labels) != cols:
        raise ValueError(f"labels must have B={b} (one per image) or {cols} (one per column) entries, "
                         f"got {len(labels)}")

    font = ImageFont.load_default()
    band = 0
    if labels is not None:
        left, top, right, bottom = font.getbbox("Ag")
        band = bottom - top + 2 * GUTTER + 2
    cell_w, cell_h = w * scale, h * scale
    row_h = cell_h + GUTTER + (band if per_image else 0)
    total_h = GUTTER + rows * row_h + (band if labels is not None and not per_image else 0)

    canvas = np.full((total_h, width, 3), 255, dtype=np.uint8)
    big = x.repeat(scale, axis=1).repeat(scale, axis=2)
    for k in range(b):
        r, c = divmod(k, nrow)
        y0, x0 = GUTTER + r * row_h, GUTTER + c * (cell_w + GUTTER)
        canvas[y0:y0 + cell_h, x0:x0 + cell_w] = big[k]
    img = Image.fromarray(canvas)

    if labels is not None:
        draw = ImageDraw.Draw(img)
        spots = [(k, *divmod(k, nrow)) for k in range(b)] if per_image else [(c, rows - 1, c) for c in range(cols)]
        for k, r, c in spots:
            text = _fit(str(labels[k]), font, cell_w)
            y = GUTTER + r * row_h + cell_h + GUTTER
            draw.text((GUTTER + c * (cell_w + GUTTER), y), text, fill=(0, 0, 0), font=font)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def _fit(text: str, font: Any, width: int) -> str:
    """`text`, shortened with an ellipsis until it is at most `width` px wide in `font`."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..." if text else ""


# ---------------------------------------------------------------------------------------------------------------
# Plots


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
            ax.fill_between(bi, [m - s for _, m, s in band], [m + s for _, m, s in band], color="C0", alpha=0.2,
                            linewidth=0, label="± batch std")
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
        y = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
             for v in r["instant_reward"]]
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
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.savefig(path)
    return True


def _plot_timings(records: list[dict[str, Any]], path: Path, max_bars: int = 60) -> bool:
    """Left: seconds per phase per iteration as stacked bars (averaged over bins of iterations past `max_bars`),
    "total" as a line, so a gap or overshoot shows time not covered by, or overlapping between, the phases.
    Right: mean seconds per phase over the run."""
    import numpy as np

    rows = [r for r in records if isinstance(r.get("timings"), dict)]
    phases: list[str] = []
    for r in rows:
        for k, v in r["timings"].items():
            if k != "total" and k not in phases and isinstance(v, (int, float)) and not isinstance(v, bool):
                phases.append(k)
    has_total = any(isinstance(r["timings"].get("total"), (int, float)) for r in rows)
    if not phases and not has_total:
        return False

    def col(name: str) -> Any:
        return np.array([v if isinstance(v := r["timings"].get(name), (int, float)) and not isinstance(v, bool)
                         and math.isfinite(v) else np.nan for r in rows], dtype=float)

    its = np.array([r["iteration"] for r in rows], dtype=float)
    bins = np.array_split(np.arange(len(rows)), min(max_bars, len(rows)))
    x = np.array([its[b].mean() for b in bins])
    width = 0.8 * (np.min(np.diff(x)) if len(x) > 1 else 1.0)

    fig, axes = _figure(width=11.0, height=4.0, ncols=2)
    ax, ax_mean = axes[0, 0], axes[0, 1]
    bottom = np.zeros(len(bins))
    means = []
    for i, phase in enumerate(phases):
        v = col(phase)
        binned = np.array([np.nanmean(v[b]) if np.isfinite(v[b]).any() else 0.0 for b in bins])
        ax.bar(x, binned, width=width, bottom=bottom, color=f"C{i % 10}", label=phase)
        bottom += binned
        means.append(np.nanmean(v) if np.isfinite(v).any() else 0.0)
    if has_total:
        t = col("total")
        ax.plot(x, [np.nanmean(t[b]) if np.isfinite(t[b]).any() else np.nan for b in bins], color="k",
                marker="." if len(x) < 30 else None, label="total")
    ax.set_xlabel("iteration" if len(bins) == len(rows) else f"iteration (mean over bins of ~{len(rows) // len(bins)})")
    ax.set_ylabel("seconds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4, fontsize="small", frameon=False)
    if phases:
        ax_mean.barh(range(len(phases)), means, color=[f"C{i % 10}" for i in range(len(phases))])
        ax_mean.set_yticks(range(len(phases)), phases)
        ax_mean.invert_yaxis()
        total = float(np.nanmean(col("total"))) if has_total else sum(means)
        for i, m in enumerate(means):
            share = f" ({100 * m / total:.0f}%)" if total > 0 else ""
            ax_mean.text(m, i, f" {m:.3g} s{share}", va="center", fontsize="small")
        ax_mean.set_xlabel("mean seconds per iteration")
        ax_mean.set_xlim(0, max(means + [1e-9]) * 1.35)
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


# ---------------------------------------------------------------------------------------------------------------
# Report


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def _stats_rows(records: Sequence[dict[str, Any]]) -> list[list[str]]:
    """[field, first, last, mean, std, min, max] for each _STAT_FIELDS entry with data."""
    rows = []
    for field in _STAT_FIELDS:
        _, vals = _series(records, field)
        if vals:
            s = summarize(vals)
            rows.append([field, *(_fmt(v) for v in (vals[0], vals[-1], s["mean"], s["std"], s["min"], s["max"]))])
    return rows


def _config_text(config: dict[str, Any]) -> tuple[str, str]:
    """(language, text) of `config` as YAML, or JSON when PyYAML is missing; non-JSON values go through str()."""
    plain = json.loads(json.dumps(config, default=str))
    try:
        import yaml
    except ImportError:
        return "json", json.dumps(plain, indent=2)
    return "yaml", yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)


def _place_grid(run_dir: Path, caption: str, path: Path) -> str:
    """`path` relative to run_dir (POSIX separators); a file outside run_dir is copied into run_dir/grids first,
    so that the report folder is self-contained."""
    path = Path(path)
    try:
        rel = path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", caption).strip("_") or "grid"
        dest = run_dir / "grids" / f"{stem}{path.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
        rel = dest.relative_to(run_dir)
    return rel.as_posix()


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def _html_table(header: list[str], rows: list[list[str]]) -> list[str]:
    e = html.escape
    lines = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
    return lines + ["</table>"]


_CSS = """body { font-family: sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; image-rendering: pixelated; }
figure { margin: 1em 0 2em; }
figcaption { color: #555; margin-top: 0.3em; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }"""


def write_report(
    run_dir: str | os.PathLike,
    records: Sequence[dict[str, Any]],
    *,
    title: str,
    summary: dict[str, Any],
    grids: dict[str, str | os.PathLike] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write run_dir/report.html and run_dir/report.md with the same content, and the plot PNGs beside them.

    Sections: `title`; the `summary` table (e.g. held-out reward before/after, iterations, wall time, algorithm);
    statistics over the run of the main metrics; the plots of `plot_metrics`; the image `grids` ({caption: PNG
    path}, e.g. "before" and "after" on the same held-out prompts and seeds; files outside run_dir are copied into
    run_dir/grids); `config` as a collapsed YAML block. All strings are HTML-escaped. Returns the HTML path.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    e = html.escape
    plots = plot_metrics(records, run_dir)
    summary_rows = [[str(k), _fmt(v)] for k, v in summary.items()]
    stats = _stats_rows(_sorted(records))
    stats_header = ["metric", "first", "last", "mean", "std", "min", "max"]
    figures = [(PLOTS[name], path.relative_to(run_dir).as_posix()) for name, path in plots.items()]
    grid_figures = [(str(caption), _place_grid(run_dir, str(caption), p)) for caption, p in (grids or {}).items()]

    h = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">", f"<title>{e(title)}</title>",
         f"<style>\n{_CSS}\n</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>"]
    md = [f"# {title}", ""]
    if summary_rows:
        h += ["<h2>Summary</h2>", *_html_table(["", "value"], summary_rows)]
        md += ["## Summary", "", *_md_table(["", "value"], summary_rows), ""]
    if stats:
        h += ["<h2>Metrics over the run</h2>", *_html_table(stats_header, stats)]
        md += ["## Metrics over the run", "", *_md_table(stats_header, stats), ""]
    for heading, section in (("Plots", figures), ("Samples", grid_figures)):
        if not section:
            continue
        h.append(f"<h2>{heading}</h2>")
        md += [f"## {heading}", ""]
        for caption, rel in section:
            src = e(quote(rel))
            h += [f"<figure><img src=\"{src}\" alt=\"{e(caption)}\"><figcaption>{e(caption)}</figcaption></figure>"]
            alt = re.sub(r"([\\\[\]])", r"\\\1", caption)
            md += [f"**{caption}**", "", f"![{alt}]({quote(rel)})", ""]
    if config is not None:
        lang, text = _config_text(config)
        h += ["<h2>Config</h2>", "<details><summary>Show config</summary>", f"<pre><code>{e(text)}</code></pre>",
              "</details>"]
        fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
        md += ["## Config", "", "<details><summary>Show config</summary>", "", f"{fence}{lang}", text.rstrip("\n"),
               fence, "", "</details>", ""]
    h += ["</body>", "</html>", ""]

    html_path = run_dir / "report.html"
    html_path.write_text("\n".join(h), encoding="utf-8")
    (run_dir / "report.md").write_text("\n".join(md), encoding="utf-8")
    return html_path
