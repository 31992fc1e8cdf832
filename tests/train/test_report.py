"""train.report: exact image-grid geometry, metric plots from synthetic records (full, partial, empty), and the
HTML/Markdown report (image references that resolve, escaping, collapsed config)."""

import random
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vgpo_fast.train.report import GUTTER, PLOTS, grid_geometry, plot_metrics, save_image_grid, write_report

T = 10


def synthetic_records(n: int = 10) -> list[dict]:
    recs = []
    for i in range(n):
        r = {
            "iteration": i,
            "reward_mean": 0.2 + 0.05 * i,
            "reward_std": 0.1,
            "group_std_mean": 0.08 - 0.005 * i,
            "zero_std_frac": 0.05 * i,
            "instant_reward": [0.1 + 0.02 * j + 0.03 * i for j in range(T)],
            "loss": 0.01 * (-1) ** i,
            "approx_kl": 1e-4 * 2**i,
            "kl": 1e-3 * (i + 1),
            "clip_frac": 0.01 * i,
            "grad_norm": 1.0 + i,
            "omega_fallback_frac": 0.0,
            "algorithm": "vgpo",
            "timings": {
                "transformer": 1.0,
                "sde_op": 0.1,
                "reward_wait": 0.2,
                "decode": 0.3,
                "reward": 0.4,
                "train": 2.0,
                "total": 4.1,
            },
        }
        if i % 5 == 4:
            r["heldout_reward"] = 0.25 + 0.04 * i
        recs.append(r)
    return recs


def assert_png(path: Path, min_w: int = 300, min_h: int = 200) -> None:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_w and im.size[1] >= min_h, im.size
        im.verify()


# ---------------------------------------------------------------------------------------------------------------
# Grids


def expected_blocks(canvas: np.ndarray, src: np.ndarray, nrow: int, scale: int, row_h: int) -> None:
    """Every pixel of image k's block equals src[k] at (y // scale, x // scale): the closed form of the layout."""
    b, h, w, _ = src.shape
    for k in range(b):
        r, c = divmod(k, nrow)
        y0, x0 = GUTTER + r * row_h, GUTTER + c * (w * scale + GUTTER)
        block = canvas[y0 : y0 + h * scale, x0 : x0 + w * scale]
        ys, xs = np.meshgrid(np.arange(h * scale), np.arange(w * scale), indexing="ij")
        np.testing.assert_array_equal(block, src[k][ys // scale, xs // scale])


def test_grid_geometry_uint8():
    assert grid_geometry(6, 16, 16, nrow=3, scale=4) == (3, 2, 2 + 3 * 66, 2 + 2 * 66)


@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_grid_pixels_exact(tmp_path, kind):
    rng = np.random.default_rng(0)
    b, h, w, nrow, scale = 6, 16, 16, 3, 4
    if kind == "uint8":
        images = rng.integers(0, 256, size=(b, h, w, 3), dtype=np.uint8)
        src = images
    else:
        images = torch.rand(b, 3, h, w) * 1.2 - 0.1  # out of range values are clamped
        src = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=nrow, scale=scale)
    canvas = np.asarray(Image.open(path).convert("RGB"))
    assert canvas.shape == (2 + 2 * (h * scale + 2), 2 + 3 * (w * scale + 2), 3) == (134, 200, 3)
    expected_blocks(canvas, src, nrow, scale, row_h=h * scale + GUTTER)
    # Gutters: the border and the separating columns/rows are white.
    assert (canvas[:GUTTER] == 255).all() and (canvas[:, :GUTTER] == 255).all()
    assert (canvas[:, GUTTER + 64 : GUTTER + 66] == 255).all() and (canvas[GUTTER + 64 : GUTTER + 66] == 255).all()


def test_grid_incomplete_last_row(tmp_path):
    images = np.zeros((5, 4, 4, 3), dtype=np.uint8)
    canvas = np.asarray(Image.open(save_image_grid(images, tmp_path / "g.png", nrow=3, scale=2)))
    assert canvas.shape[:2] == (2 + 2 * 10, 2 + 3 * 10)
    assert (canvas[12:20, 22:30] == 255).all()  # the empty sixth cell stays background


def test_grid_labels(tmp_path):
    rng = np.random.default_rng(1)
    src = rng.integers(0, 200, size=(6, 16, 16, 3), dtype=np.uint8)
    # One label per column: a band under the grid, image positions unchanged.
    canvas = np.asarray(Image.open(save_image_grid(src, tmp_path / "c.png", nrow=3, labels=["a", "b", "c"])))
    assert canvas.shape[1] == 200 and canvas.shape[0] > 134
    expected_blocks(canvas, src, 3, 4, row_h=66)
    assert (canvas[134:] < 128).any()  # text was drawn in the band
    # One label per image: a band under each row.
    labels = [f"seed {k} with a rather long label that gets cut" for k in range(6)]
    canvas = np.asarray(Image.open(save_image_grid(src, tmp_path / "i.png", nrow=3, labels=labels)))
    band = (canvas.shape[0] - 134) // 2
    assert canvas.shape[1] == 200 and band > 0 and canvas.shape[0] == 134 + 2 * band
    expected_blocks(canvas, src, 3, 4, row_h=66 + band)
    with pytest.raises(ValueError, match="labels"):
        save_image_grid(src, tmp_path / "x.png", nrow=3, labels=["a", "b"])


@pytest.mark.parametrize(
    "bad",
    [
        torch.rand(2, 4, 8, 8),
        torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
        np.zeros((2, 8, 8, 3), dtype=np.float32),
        np.zeros((2, 3, 8, 8), dtype=np.uint8),
    ],
)
def test_grid_rejects_bad_input(tmp_path, bad):
    with pytest.raises(ValueError, match="images"):
        save_image_grid(bad, tmp_path / "x.png", nrow=2)


# ---------------------------------------------------------------------------------------------------------------
# Plots


def test_plot_metrics_all_fields(tmp_path):
    plots = plot_metrics(synthetic_records(), tmp_path)
    assert set(plots) == set(PLOTS)
    for name, path in plots.items():
        assert path == tmp_path / f"{name}.png"
        assert_png(path)


def test_plot_metrics_missing_fields(tmp_path):
    rng = random.Random(0)
    recs = synthetic_records(12)
    for r in recs:  # each record loses a random half of its fields; some values are null (written NaN)
        for k in rng.sample(sorted(set(r) - {"iteration"}), k=len(r) // 2):
            del r[k]
        if "loss" in r and rng.random() < 0.5:
            r["loss"] = None
        if "instant_reward" in r:
            r["instant_reward"][3] = None
        if "timings" in r:
            del r["timings"]["total"]
    rng.shuffle(recs)  # order in the file need not be iteration order
    plots = plot_metrics(recs, tmp_path)
    for path in plots.values():
        assert_png(path)


def test_plot_metrics_skips_absent(tmp_path):
    assert plot_metrics([], tmp_path) == {}
    plots = plot_metrics([{"iteration": 0, "reward_mean": 0.5}, {"iteration": 1, "reward_mean": 0.6}], tmp_path)
    assert set(plots) == {"reward"}
    assert not (tmp_path / "loss.png").exists()
    only_held = plot_metrics([{"iteration": 4, "heldout_reward": 0.5}, {"iteration": 9}], tmp_path / "h")
    assert set(only_held) == {"reward"}


def test_plot_metrics_many_iterations(tmp_path):
    recs = synthetic_records(300)  # timings are binned, instant reward draws a few chosen iterations
    plots = plot_metrics(recs, tmp_path)
    assert set(plots) == set(PLOTS)
    assert_png(plots["timings"])


# ---------------------------------------------------------------------------------------------------------------
# Report


class ImgSrc(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def test_write_report(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    images = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    before = save_image_grid(images, run_dir / "samples_before.png", nrow=2)
    after = save_image_grid(images, tmp_path / "elsewhere" / "after grid.png", nrow=2)  # outside run_dir
    config = {"algorithm": {"name": "vgpo", "note": "a < b & c"}, "path": Path("/x/y"), "ticks": "```"}
    out = write_report(
        run_dir,
        synthetic_records(),
        title="Run <script>alert(1)</script> & more",
        summary={
            "heldout reward before": 0.25,
            "heldout reward after": 0.61234567,
            "algorithm": "vgpo|flow-grpo",
            "<b>key</b>": None,
        },
        grids={"before (iteration 0)": before, "after [final]": after},
        config=config,
    )
    assert out == run_dir / "report.html"
    text = out.read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in text
    assert "&lt;b&gt;key&lt;/b&gt;" in text and "0.6123" in text
    assert "a &lt; b &amp; c" in text and "<details>" in text
    parser = ImgSrc()
    parser.feed(text)
    assert len(parser.srcs) == len(PLOTS) + 2
    for name in PLOTS:
        assert f"{name}.png" in parser.srcs
    for src in parser.srcs:  # relative references that resolve inside the run folder
        assert not src.startswith("/")
        assert_png(run_dir / src.replace("%20", " "), min_w=50, min_h=50)
    assert "samples_before.png" in parser.srcs

    md = (run_dir / "report.md").read_text()
    assert md.startswith("# Run <script>alert(1)</script> & more")
    for src in parser.srcs:
        assert f"({src})" in md
    assert "vgpo\\|flow-grpo" in md and "before (iteration 0)" in md and "![after \\[final\\]]" in md
    assert "````yaml" in md  # the fence outgrows the backticks inside the config


def test_write_report_minimal(tmp_path):
    out = write_report(tmp_path, [{"iteration": 0}], title="empty", summary={})
    text = out.read_text()
    assert "<img" not in text and "<h1>empty</h1>" in text
    assert (tmp_path / "report.md").read_text().startswith("# empty")
