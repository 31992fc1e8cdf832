"""Sample image grids: a batch of images as one PNG, cells separated by a gutter, optional captions."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["GUTTER", "grid_geometry", "save_image_grid"]

GUTTER = 2  # px between grid cells and around the border


def _to_uint8_hwc(images: Any) -> Any:
    """float [B, 3, H, W] in [0, 1] (torch) or uint8 [B, H, W, 3] (numpy) -> uint8 numpy [B, H, W, 3]."""
    import numpy as np

    if hasattr(images, "detach"):  # torch.Tensor
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images tensor must be float [B, 3, H, W] in [0, 1], got {images.dtype} {tuple(images.shape)}"
            )
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
        raise ValueError(
            f"labels must have B={b} (one per image) or {cols} (one per column) entries, got {len(labels)}"
        )

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
        canvas[y0 : y0 + cell_h, x0 : x0 + cell_w] = big[k]
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
