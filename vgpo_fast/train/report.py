"""End-of-run report: report.html + report.md with the metric plots (`plots.py`), the sample image grids
(`grids.py`), a statistics table and the config.

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

from .grids import GUTTER, grid_geometry, save_image_grid
from .metrics import summarize
from .plots import PLOTS, _series, _sorted, plot_metrics, timing_breakdown

__all__ = ["GUTTER", "PLOTS", "grid_geometry", "plot_metrics", "save_image_grid", "timing_breakdown", "write_report"]

# Fields summarised in the report's statistics table (timings/total reads the nested dict).
_STAT_FIELDS = [
    "reward_mean",
    "heldout_reward",
    "heldout_accuracy",
    "heldout_drift",
    "group_std_mean",
    "zero_std_frac",
    "loss",
    "approx_kl",
    "kl",
    "clip_frac",
    "grad_norm",
    "timings/total",
]


# ---------------------------------------------------------------------------------------------------------------
# Image grids


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

    h = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
    ]
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
            h += [f'<figure><img src="{src}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption></figure>']
            alt = re.sub(r"([\\\[\]])", r"\\\1", caption)
            md += [f"**{caption}**", "", f"![{alt}]({quote(rel)})", ""]
    if config is not None:
        lang, text = _config_text(config)
        h += [
            "<h2>Config</h2>",
            "<details><summary>Show config</summary>",
            f"<pre><code>{e(text)}</code></pre>",
            "</details>",
        ]
        fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
        md += [
            "## Config",
            "",
            "<details><summary>Show config</summary>",
            "",
            f"{fence}{lang}",
            text.rstrip("\n"),
            fence,
            "",
            "</details>",
            "",
        ]
    h += ["</body>", "</html>", ""]

    html_path = run_dir / "report.html"
    html_path.write_text("\n".join(h), encoding="utf-8")
    (run_dir / "report.md").write_text("\n".join(md), encoding="utf-8")
    return html_path
