"""Rendered-text task data: a fixed word list, its train/held-out split, prompts, and a deterministic renderer.

Words are drawn as one line of text with Pillow's bundled font (Aileron Regular, `ImageFont.load_default(size)`,
FreeType), so nothing is read from the system or downloaded. The same text, size, colours and Pillow/FreeType
build always give the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vgpo_fast.rewards.text import extract_quoted_text

# 174 common English words of 3-8 lowercase letters, sorted; the split below depends on this order.
WORDS: tuple[str, ...] = (
    "apple",
    "army",
    "baby",
    "ball",
    "band",
    "bank",
    "bath",
    "bear",
    "bell",
    "bird",
    "blanket",
    "blue",
    "boat",
    "body",
    "bone",
    "book",
    "bowl",
    "bread",
    "brick",
    "bridge",
    "bright",
    "brown",
    "cake",
    "calm",
    "camp",
    "candle",
    "card",
    "castle",
    "cat",
    "chair",
    "cheese",
    "chicken",
    "city",
    "clean",
    "clock",
    "cloud",
    "coat",
    "cold",
    "corn",
    "cotton",
    "country",
    "cow",
    "crown",
    "cup",
    "dance",
    "dark",
    "deep",
    "desk",
    "diamond",
    "dog",
    "door",
    "dream",
    "dress",
    "drink",
    "duck",
    "dust",
    "eagle",
    "earth",
    "egg",
    "elephant",
    "empty",
    "farm",
    "fast",
    "field",
    "fire",
    "fish",
    "flag",
    "flower",
    "fog",
    "forest",
    "fox",
    "frog",
    "fruit",
    "game",
    "garden",
    "gate",
    "gift",
    "girl",
    "glass",
    "gold",
    "grape",
    "green",
    "guitar",
    "hand",
    "happy",
    "hat",
    "heart",
    "hill",
    "horse",
    "house",
    "ice",
    "island",
    "jacket",
    "jump",
    "key",
    "keyboard",
    "king",
    "kitchen",
    "kite",
    "lake",
    "lamp",
    "leaf",
    "lemon",
    "library",
    "light",
    "lion",
    "love",
    "magic",
    "map",
    "milk",
    "moon",
    "morning",
    "mountain",
    "mouse",
    "music",
    "nest",
    "night",
    "north",
    "notebook",
    "ocean",
    "open",
    "orange",
    "paper",
    "park",
    "pear",
    "pencil",
    "penguin",
    "piano",
    "picture",
    "pink",
    "plant",
    "pocket",
    "queen",
    "rabbit",
    "rain",
    "rainbow",
    "red",
    "river",
    "road",
    "rock",
    "rose",
    "salt",
    "sand",
    "ship",
    "shoe",
    "silver",
    "sky",
    "smile",
    "snow",
    "soft",
    "song",
    "star",
    "stone",
    "storm",
    "summer",
    "sun",
    "sunlight",
    "table",
    "tiger",
    "train",
    "tree",
    "umbrella",
    "valley",
    "wall",
    "water",
    "whale",
    "white",
    "wind",
    "window",
    "winter",
    "wolf",
    "wood",
    "yellow",
    "zebra",
)

# Every fifth word (indices 4, 9, ...) is held out: 34 held-out words, 140 training words.
HELDOUT_WORDS: tuple[str, ...] = WORDS[4::5]
TRAIN_WORDS: tuple[str, ...] = tuple(w for i, w in enumerate(WORDS) if i % 5 != 4)

PROMPT_TEMPLATE = 'an image with the text "{text}"'

DEFAULT_SIZE = (32, 128)
DEFAULT_FG = (0, 0, 0)
DEFAULT_BG = (255, 255, 255)


def words(split: str = "train") -> tuple[str, ...]:
    """The words of `split`: 'train' (140), 'heldout' (34) or 'all' (174)."""
    if split == "train":
        return TRAIN_WORDS
    if split == "heldout":
        return HELDOUT_WORDS
    if split == "all":
        return WORDS
    raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")


def make_prompt(text: str) -> str:
    """The prompt asking for `text`: `an image with the text "<text>"`."""
    if '"' in text:
        raise ValueError(f"text must not contain a double quote, got {text!r}")
    return PROMPT_TEMPLATE.format(text=text)


def target_text(prompt: str) -> str:
    """The text a prompt asks for: its first double-quoted span (the inverse of `make_prompt`)."""
    return extract_quoted_text(prompt)


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("Pillow was built without FreeType: its bundled scalable font is unavailable")
    return font


def _check_colour(name: str, colour: Sequence[int]) -> tuple[int, int, int]:
    rgb = tuple(int(c) for c in colour)
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"{name} must be an RGB triple of ints in [0, 255], got {colour!r}")
    return rgb  # type: ignore[return-value]


def render_text(
    text: str,
    size: tuple[int, int] = DEFAULT_SIZE,
    fg: Sequence[int] = DEFAULT_FG,
    bg: Sequence[int] = DEFAULT_BG,
    font_frac: float = 0.625,
    margin_frac: float = 0.0625,
    cells: int | None = None,
) -> np.ndarray:
    """`text` drawn as one line; uint8 `[H, W, 3]` with `size = (H, W)` in pixels.

    Default layout (`cells=None`): one centred line; the font size starts at `font_frac * H` px and shrinks until
    the text's ink fits inside a horizontal margin of `margin_frac * W` px on each side.
    Cell layout (`cells=n`): the width is cut into `n` equal cells and character i is centred in cell i at the
    fixed font size `font_frac * H` px (a fixed pitch: character i lands in the same columns at the same size
    whatever the word's length); text longer than `n` characters is an error.
    The baseline sits where a reference string with ascenders and descenders would be vertically centred, so every
    word shares one baseline at a given size.
    """
    if not isinstance(text, str) or not text or "\n" in text:
        raise ValueError(f"text must be a non-empty single-line string, got {text!r}")
    height, width = (int(s) for s in size)
    if height < 8 or width < 8:
        raise ValueError(f"size must be (H, W) with both >= 8 px, got {size!r}")
    if not 0.1 <= font_frac <= 1.0:
        raise ValueError(f"font_frac must be in [0.1, 1], got {font_frac}")
    if not 0.0 <= margin_frac < 0.5:
        raise ValueError(f"margin_frac must be in [0, 0.5), got {margin_frac}")
    fg_rgb, bg_rgb = _check_colour("fg", fg), _check_colour("bg", bg)
    if cells is not None:
        return _render_cells(text, height, width, fg_rgb, bg_rgb, font_frac, cells)

    max_ink_width = width - 2 * round(margin_frac * width)
    font_size = max(4, round(font_frac * height))
    left, _, right, _ = _font(font_size).getbbox(text, anchor="ls")
    while font_size > 4 and right - left > max_ink_width:
        font_size -= 1
        left, _, right, _ = _font(font_size).getbbox(text, anchor="ls")
    font = _font(font_size)
    x = (width - (right - left)) // 2 - left
    baseline = _baseline(font, height)

    image = Image.new("RGB", (width, height), bg_rgb)
    ImageDraw.Draw(image).text((x, baseline), text, fill=fg_rgb, font=font, anchor="ls")
    return np.asarray(image, dtype=np.uint8).copy()


def _baseline(font: ImageFont.FreeTypeFont, height: int) -> int:
    top = font.getbbox("Hdlk", anchor="ls")[1]
    bottom = font.getbbox("gjpqy", anchor="ls")[3]
    return (height - (bottom - top)) // 2 - top


def _render_cells(
    text: str, height: int, width: int, fg: tuple[int, int, int], bg: tuple[int, int, int], font_frac: float, cells: int
) -> np.ndarray:
    if not isinstance(cells, int) or cells < 1:
        raise ValueError(f"cells must be a positive int, got {cells!r}")
    if len(text) > cells:
        raise ValueError(f"text {text!r} has {len(text)} characters, more than the {cells} cells of the layout")
    font = _font(max(4, round(font_frac * height)))
    baseline = _baseline(font, height)
    image = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(image)
    for i, char in enumerate(text):
        draw.text(((i + 0.5) * width / cells, baseline), char, fill=fg, font=font, anchor="ms")
    return np.asarray(image, dtype=np.uint8).copy()


def render_batch(texts: Sequence[str], size: tuple[int, int] = DEFAULT_SIZE, **kwargs: object) -> np.ndarray:
    """`render_text` over `texts`, stacked: uint8 `[B, H, W, 3]`."""
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError(f"texts must be a non-empty sequence of strings, got {texts!r}")
    return np.stack([render_text(t, size, **kwargs) for t in texts])  # type: ignore[arg-type]
