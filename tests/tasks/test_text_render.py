"""Rendered-text task data: word list and splits, prompts, deterministic rendering."""

from __future__ import annotations

import numpy as np
import pytest

from vgpo_fast.tasks.text import (
    HELDOUT_WORDS,
    PROMPT_TEMPLATE,
    TRAIN_WORDS,
    WORDS,
    make_prompt,
    render_batch,
    render_text,
    target_text,
    words,
)


def test_word_list_is_fixed_sorted_unique_short_lowercase():
    assert len(WORDS) == 174 and len(set(WORDS)) == 174
    assert list(WORDS) == sorted(WORDS)
    assert all(w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 8 for w in WORDS)


def test_splits_partition_the_words_and_cover_the_alphabet():
    assert len(TRAIN_WORDS) == 140 and len(HELDOUT_WORDS) == 34
    assert not set(TRAIN_WORDS) & set(HELDOUT_WORDS)
    assert set(TRAIN_WORDS) | set(HELDOUT_WORDS) == set(WORDS)
    assert set("".join(HELDOUT_WORDS)) <= set("".join(TRAIN_WORDS))  # no held-out letter is unseen
    assert words("train") == TRAIN_WORDS and words("heldout") == HELDOUT_WORDS and words("all") == WORDS
    with pytest.raises(ValueError, match="split must be"):
        words("test")


def test_prompt_round_trip():
    assert make_prompt("cat") == 'an image with the text "cat"' == PROMPT_TEMPLATE.format(text="cat")
    assert all(target_text(make_prompt(w)) == w for w in WORDS)
    assert target_text(make_prompt("two words")) == "two words"
    with pytest.raises(ValueError, match="double quote"):
        make_prompt('say "hi"')


def test_render_shape_dtype_and_colours():
    image = render_text("cat")
    assert image.shape == (32, 128, 3) and image.dtype == np.uint8
    assert (image[0] == 255).all() and (image[-1] == 255).all() and (image[:, 0] == 255).all()
    assert image.min() == 0  # the glyph cores reach the text colour
    coloured = render_text("cat", size=(24, 100), fg=(200, 10, 10), bg=(0, 0, 64))
    assert coloured.shape == (24, 100, 3)
    assert (coloured[0, 0] == [0, 0, 64]).all()
    assert (coloured.reshape(-1, 3) == [200, 10, 10]).all(axis=-1).any()  # the glyph cores are the text colour


def test_render_is_deterministic_and_word_specific():
    np.testing.assert_array_equal(render_text("window"), render_text("window"))
    assert not np.array_equal(render_text("window"), render_text("widow"))


@pytest.mark.parametrize("size", [(32, 128), (16, 64)])
def test_every_word_fits_inside_the_margins(size):
    height, width = size
    margin = round(0.0625 * width)
    batch = render_batch(WORDS, size=size)
    assert batch.shape == (len(WORDS), height, width, 3)
    ink = (batch < 128).any(axis=-1)  # [B, H, W]
    cols = ink.any(axis=1)
    assert cols.any(axis=1).all(), "a word rendered blank"
    assert not cols[:, : margin - 1].any() and not cols[:, width - margin + 1 :].any()
    rows = ink.any(axis=2)
    assert not rows[:, 0].any() and not rows[:, -1].any()  # nothing touches the top or bottom edge


def test_words_share_a_baseline():
    # 'a' and 'c' have no ascender or descender: their ink rows coincide whatever the word.
    rows = [np.flatnonzero((render_text(w) < 128).any(axis=(1, 2))) for w in ("a", "c", "ace")]
    assert rows[0].tolist() == rows[1].tolist() == rows[2].tolist()


def test_long_text_shrinks_to_fit():
    long = render_text("notebook notebook")
    ink_cols = np.flatnonzero((long < 128).any(axis=(0, 2)))
    assert ink_cols.min() >= 8 - 1 and ink_cols.max() <= 128 - 8


def test_cell_layout_puts_character_i_in_cell_i_at_one_font_size():
    # 64 px wide, 8 cells of 8 px: each character's ink is centred on its cell (a glyph may overhang by a pixel or
    # two, as 'm' and 'w' are 9 px wide at 10 px); the same letter looks the same in every word and every cell.
    for word in ("cat", "elephant", "umbrella"):
        image = render_text(word, size=(16, 64), cells=8)
        assert image.shape == (16, 64, 3)
        ink = (image < 128).any(axis=(0, 2))
        assert not ink[8 * len(word) + 1 :].any(), word  # nothing right of the last character's cell
    # A narrow letter in every cell: eight separate ink runs, each centred on its cell.
    ink = (render_text("llllllll", size=(16, 64), cells=8) < 128).any(axis=(0, 2))
    for i in range(8):
        cols = np.flatnonzero(ink[8 * i : 8 * i + 8]) + 8 * i
        assert cols.size and abs((cols.min() + cols.max()) / 2 - (8 * i + 3.5)) <= 1.0, (i, cols)
    a_alone = render_text("a", size=(16, 64), cells=8)[:, 0:8]
    np.testing.assert_array_equal(render_text("apple", size=(16, 64), cells=8)[:, 0:8], a_alone)
    np.testing.assert_array_equal(render_text("baby", size=(16, 64), cells=8)[:, 8:16], a_alone)
    assert render_text("cat", size=(16, 64), cells=8).tobytes() == render_text("cat", size=(16, 64), cells=8).tobytes()
    with pytest.raises(ValueError, match="more than the 8 cells"):
        render_text("notebooks", size=(16, 64), cells=8)
    with pytest.raises(ValueError, match="cells must be a positive int"):
        render_text("cat", cells=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text": ""}, "non-empty single-line"),
        ({"text": "two\nlines"}, "non-empty single-line"),
        ({"text": "cat", "size": (4, 128)}, "size must be"),
        ({"text": "cat", "fg": (0, 0, 256)}, "fg must be an RGB triple"),
        ({"text": "cat", "bg": (0, 0)}, "bg must be an RGB triple"),
        ({"text": "cat", "font_frac": 2.0}, "font_frac"),
        ({"text": "cat", "margin_frac": 0.5}, "margin_frac"),
    ],
)
def test_bad_render_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_text(**kwargs)


def test_render_batch_rejects_a_bare_string():
    with pytest.raises(ValueError, match="texts must be"):
        render_batch("cat")
